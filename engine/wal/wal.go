package wal

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohortd/cohortd/engine/codec"
)

// SyncMode says when appended records are forced to stable storage.
type SyncMode uint8

const (
	// SyncAlways makes Wait return only after the record is written and
	// fdatasync'ed. Concurrent waiters share one write and one fdatasync.
	SyncAlways SyncMode = iota
	// SyncInterval makes Wait return once the record is written to the OS;
	// a background goroutine fdatasyncs every Options.SyncInterval, so a
	// machine crash loses at most about one interval of acknowledged records.
	SyncInterval
	// SyncOff makes Wait return once the record is written to the OS and
	// never syncs except when a segment is closed (roll, Cut, Close). A
	// process crash loses nothing; a machine crash may lose anything not
	// yet written back by the OS.
	SyncOff
)

// String returns the flag spelling of m.
func (m SyncMode) String() string {
	switch m {
	case SyncAlways:
		return "always"
	case SyncInterval:
		return "interval"
	case SyncOff:
		return "off"
	}
	return fmt.Sprintf("SyncMode(%d)", uint8(m))
}

// ParseSyncMode parses the -fsync flag: "always", "interval" or "off".
func ParseSyncMode(s string) (SyncMode, error) {
	switch s {
	case "always":
		return SyncAlways, nil
	case "interval":
		return SyncInterval, nil
	case "off":
		return SyncOff, nil
	}
	return 0, fmt.Errorf("wal: unknown sync mode %q (want always, interval or off)", s)
}

const (
	// DefaultSegmentSize is the segment size used when Options.SegmentSize is 0.
	DefaultSegmentSize = 64 << 20
	// DefaultSyncInterval is the interval used when Options.SyncInterval is 0.
	DefaultSyncInterval = time.Second

	// flushThreshold is the amount of pending data at which Append writes it
	// out itself, so that a caller who never calls Wait does not grow the
	// pending buffer without bound. It is small because the buffer is Go
	// heap, which RSS pays about twice for (GC headroom): 1 MiB already
	// makes each write large enough for the disk.
	flushThreshold = 1 << 20
	// maxSpareBuffer is the largest pending buffer kept for reuse: a full
	// one plus the record that crossed flushThreshold (user records are cut
	// at 512 KiB).
	maxSpareBuffer = 2 << 20
)

// Options configures a Log.
type Options struct {
	// Dir holds the segment files. It is created if needed.
	Dir string
	// Sync is the durability mode; see SyncMode.
	Sync SyncMode
	// SyncInterval is the fdatasync period for SyncInterval; default 1s.
	SyncInterval time.Duration
	// SegmentSize is the size at which a segment is closed and a new one
	// started; default 64 MiB. A record larger than it gets a segment of its
	// own.
	SegmentSize int64
	// Logger receives the torn-tail warnings; nil means slog.Default().
	Logger *slog.Logger
	// OnFatal is called, once, when a write or fsync fails: the process must
	// stop (an fsync is never retried, since the kernel may have dropped the
	// dirty pages). nil means panic. The Log refuses further work either way.
	OnFatal func(error)
	// OnSync, if set, is called with the duration of every fdatasync of the
	// active segment (commits, rolls, Cut, Close), for a latency metric. It
	// runs on the flush leader's goroutine and must be cheap.
	OnSync func(time.Duration)
}

var (
	// ErrClosed is returned by calls on a closed Log.
	ErrClosed = errors.New("wal: closed")
	// ErrNotReplayed is returned by Append, Wait, Cut and Retire before Replay.
	ErrNotReplayed = errors.New("wal: Replay must be called before appending")
	// ErrRecordTooLarge is returned by Append for a payload over MaxRecordSize.
	ErrRecordTooLarge = errors.New("wal: record larger than MaxRecordSize")
)

// Stats counts the Log's I/O since Open.
type Stats struct {
	// Syncs is the number of fdatasync calls on segment files.
	Syncs uint64
	// Writes is the number of write calls on segment files.
	Writes uint64
	// Bytes is the number of record bytes written (headers of segments excluded).
	Bytes uint64
}

// batch is a run of encoded records that go to one segment. If newSegment
// is set, the leader starts a new segment named first before writing buf.
type batch struct {
	newSegment bool
	first      uint64 // lsn of the first record in buf
	last       uint64 // lsn of the last record in buf
	buf        []byte
}

// Log is a segmented, append-only write-ahead log with group commit.
//
// # Records and segments
//
// Every record gets the next LSN, starting at 1 and increasing by one across
// segments. Records are framed and checksummed as described in the package
// documentation and in docs/FORMATS.md. Segments are named after the LSN of
// their first record and roll over at Options.SegmentSize.
//
// # Write path
//
// Append (fast path) assigns the LSN, encodes the record into a pending
// buffer under the mutex and returns: no syscall. Wait (slow path) makes a
// prefix of the log durable with leader-style group commit: the first waiter
// that finds no flush in progress becomes the leader, takes every pending
// record, does one write per segment touched and, under SyncAlways, one
// fdatasync, then wakes every waiter. Waiters that arrive during a flush wait
// for it and then either find their record covered or lead the next flush,
// which carries everything queued in the meantime.
//
// # Ownership
//
// Append copies the payload; the caller may reuse it at once. Replay passes
// payloads that alias an internal read buffer valid only during the callback.
//
// # Failure
//
// A failed write or fdatasync is fatal: Options.OnFatal is called and every
// later call returns the error. Nothing is retried.
type Log struct {
	opts   Options
	logger *slog.Logger

	// mu guards the fields in it. cond (on mu) is signalled when a flush
	// ends.
	mu struct {
		sync.Mutex
		replayed   bool
		closed     bool  // no more appends
		fileClosed bool  // Close finished its flush: no more flushes
		err        error // sticky fatal error

		nextLSN  uint64 // lsn of the next Append
		written  uint64 // every lsn <= written was written to the OS
		synced   uint64 // every lsn <= synced was fdatasync'ed
		flushing bool   // a leader owns the active segment file

		pending      []batch
		pendingBytes int
		spare        []byte  // a reusable pending buffer
		spareBatches []batch // a reusable pending slice

		segFirst  uint64 // first lsn of the logical current segment (incl. pending rolls)
		segBytes  int64  // logical size of that segment
		liveBytes int64  // logical size of all live segments

		segments []segmentInfo // created segments; the last is the active one
	}
	cond sync.Cond

	// active is the segment file being appended to. Only the flush leader
	// (mu.flushing), Replay and Close touch it.
	active struct {
		f     *os.File
		first uint64
		size  int64
	}

	fatalOnce sync.Once

	syncs, writes, bytes atomic.Uint64

	stop chan struct{}
	wg   sync.WaitGroup
}

// Open opens the log in opts.Dir, creating the directory if needed. It does
// not read the segments: call Replay, exactly once, before the first Append.
//
// Under SyncInterval, Open starts one background goroutine that fdatasyncs
// the active segment every opts.SyncInterval; Close stops it. No other mode
// starts a goroutine.
func Open(opts Options) (*Log, error) {
	if opts.Dir == "" {
		return nil, errors.New("wal: Options.Dir is empty")
	}
	if opts.Sync > SyncOff {
		return nil, fmt.Errorf("wal: invalid sync mode %d", opts.Sync)
	}
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = DefaultSyncInterval
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("wal: create dir %q: %w", opts.Dir, err)
	}
	l := &Log{opts: opts, logger: opts.Logger, stop: make(chan struct{})}
	if l.logger == nil {
		l.logger = slog.Default()
	}
	l.cond.L = &l.mu
	if opts.Sync == SyncInterval {
		l.wg.Add(1)
		go l.syncLoop()
	}
	return l, nil
}

// syncLoop fdatasyncs the log every SyncInterval until Close.
func (l *Log) syncLoop() {
	defer l.wg.Done()
	t := time.NewTicker(l.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		l.mu.Lock()
		ok := l.mu.replayed && !l.mu.closed && l.mu.err == nil
		target := l.mu.nextLSN - 1
		l.mu.Unlock()
		if ok {
			// Errors reach OnFatal and the callers; nothing to do here.
			_ = l.flush(target, true)
		}
	}
}

// Append assigns the next lsn to a record of type typ and queues it. The
// payload is copied. Append does not wait for durability (see Wait), except
// that once the queue holds flushThreshold (1 MiB) it writes the queue out
// itself, which bounds the memory of callers that append without waiting.
func (l *Log) Append(typ uint8, payload []byte) (lsn uint64, err error) {
	if len(payload) > MaxRecordSize {
		return 0, fmt.Errorf("%w: %d bytes", ErrRecordTooLarge, len(payload))
	}
	// The payload CRC is computed outside the lock; the header, which holds
	// the lsn, is folded in under it.
	crc := codec.Checksum(payload)
	size := int64(recordOverhead + len(payload))

	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	lsn = l.mu.nextLSN
	l.mu.nextLSN++
	if l.mu.segBytes > segmentHeaderSize && l.mu.segBytes+size > l.opts.SegmentSize {
		// Roll: the record starts a new segment.
		l.mu.segFirst = lsn
		l.mu.segBytes = segmentHeaderSize
		l.mu.liveBytes += segmentHeaderSize
		l.mu.pending = append(l.mu.pending, batch{newSegment: true, first: lsn})
	} else if len(l.mu.pending) == 0 {
		if l.mu.pending == nil {
			l.mu.pending, l.mu.spareBatches = l.mu.spareBatches, nil
		}
		l.mu.pending = append(l.mu.pending, batch{first: lsn, buf: l.mu.spare})
		l.mu.spare = nil
	}
	b := &l.mu.pending[len(l.mu.pending)-1]
	b.buf = appendRecord(b.buf, typ, lsn, payload, crc)
	b.last = lsn
	l.mu.segBytes += size
	l.mu.liveBytes += size
	l.mu.pendingBytes += int(size)
	flushNow := l.mu.pendingBytes >= flushThreshold
	l.mu.Unlock()

	if flushNow {
		if err := l.flush(lsn, false); err != nil {
			return 0, err
		}
	}
	return lsn, nil
}

// Wait blocks until every record up to lsn is as durable as the mode
// promises: under SyncAlways written and fdatasync'ed, under SyncInterval and
// SyncOff written to the OS. Waiting for an lsn that was not appended yet is
// an error.
func (l *Log) Wait(lsn uint64) error {
	return l.flush(lsn, false)
}

// Commit is Append followed by Wait.
func (l *Log) Commit(typ uint8, payload []byte) (uint64, error) {
	lsn, err := l.Append(typ, payload)
	if err != nil {
		return 0, err
	}
	return lsn, l.Wait(lsn)
}

// LastLSN returns the lsn of the last appended record (0 if none). It may not
// be durable yet.
func (l *Log) LastLSN() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.nextLSN == 0 {
		return 0
	}
	return l.mu.nextLSN - 1
}

// Size returns the total bytes of the live segments, including records
// appended but not yet written.
func (l *Log) Size() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.liveBytes
}

// Stats returns the I/O counters.
func (l *Log) Stats() Stats {
	return Stats{Syncs: l.syncs.Load(), Writes: l.writes.Load(), Bytes: l.bytes.Load()}
}

// usableLocked returns the error that stops a write path call, if any.
func (l *Log) usableLocked() error {
	switch {
	case l.mu.err != nil:
		return l.mu.err
	case l.mu.closed:
		return ErrClosed
	case !l.mu.replayed:
		return ErrNotReplayed
	}
	return nil
}

// coveredLocked reports whether lsn is already durable enough.
func (l *Log) coveredLocked(lsn uint64, wantSync bool) bool {
	if wantSync || l.opts.Sync == SyncAlways {
		return lsn <= l.mu.synced
	}
	return lsn <= l.mu.written
}

// leadLocked waits until no flush is in progress and makes the caller the
// leader. It returns with mu held; on error the caller is not the leader.
func (l *Log) leadLocked() error {
	for l.mu.flushing {
		l.cond.Wait()
	}
	if l.mu.err != nil {
		return l.mu.err
	}
	l.mu.flushing = true
	return nil
}

// flush returns once lsn is covered (see coveredLocked), leading flushes
// as needed.
func (l *Log) flush(lsn uint64, wantSync bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.mu.err != nil {
			return l.mu.err
		}
		if !l.mu.replayed {
			return ErrNotReplayed
		}
		if lsn >= l.mu.nextLSN {
			return fmt.Errorf("wal: wait for lsn %d, but the last appended lsn is %d", lsn, l.mu.nextLSN-1)
		}
		if l.coveredLocked(lsn, wantSync) {
			return nil
		}
		if l.mu.fileClosed {
			return ErrClosed
		}
		if l.mu.flushing {
			l.cond.Wait()
			continue
		}
		l.mu.flushing = true
		l.leadFlushLocked(wantSync || l.opts.Sync == SyncAlways)
	}
}

// leadFlushLocked is the leader's flush: it takes the pending batches,
// writes them (and syncs if doSync) without the lock, and publishes the
// result. It is called and returns with mu held and mu.flushing set; it
// clears mu.flushing.
func (l *Log) leadFlushLocked(doSync bool) {
	batches := l.mu.pending
	l.mu.pending, l.mu.pendingBytes = nil, 0
	last := l.mu.nextLSN - 1
	l.mu.Unlock()

	err := l.writeBatches(batches)
	if err == nil && doSync {
		err = l.syncActive()
	}

	l.mu.Lock()
	l.finishFlushLocked(batches, last, doSync, err)
}

// finishFlushLocked publishes a leader's result and ends its flush.
func (l *Log) finishFlushLocked(batches []batch, last uint64, synced bool, err error) {
	l.mu.flushing = false
	defer l.cond.Broadcast()
	if err != nil {
		l.failLocked(err)
		return
	}
	l.mu.written = last
	if synced {
		l.mu.synced = last
	}
	// Keep one buffer and the slice for reuse, unless oversized.
	if len(batches) > 0 && l.mu.spare == nil {
		if b := batches[len(batches)-1].buf; cap(b) <= maxSpareBuffer {
			l.mu.spare = b[:0]
		}
	}
	if cap(batches) > 0 && cap(batches) <= 16 && l.mu.spareBatches == nil {
		clear(batches) // drop references to the buffers
		l.mu.spareBatches = batches[:0]
	}
}

// failLocked records a fatal error and reports it to OnFatal (once,
// asynchronously with respect to mu so OnFatal may call back into the Log).
func (l *Log) failLocked(err error) {
	if l.mu.err == nil {
		l.mu.err = err
	}
	l.fatalOnce.Do(func() {
		l.mu.Unlock()
		defer l.mu.Lock()
		l.logger.Error("wal: fatal I/O error; the log refuses further writes", "dir", l.opts.Dir, "err", err)
		if l.opts.OnFatal != nil {
			l.opts.OnFatal(err)
			return
		}
		panic(fmt.Sprintf("wal: fatal I/O error: %v", err))
	})
}

// writeBatches writes batches to the active segment, rolling to new
// segments where they ask to. Only the leader calls it.
func (l *Log) writeBatches(batches []batch) error {
	for i := range batches {
		b := &batches[i]
		if b.newSegment {
			if err := l.roll(b.first); err != nil {
				return err
			}
		}
		if len(b.buf) == 0 {
			continue
		}
		if _, err := l.active.f.Write(b.buf); err != nil {
			return fmt.Errorf("wal: write segment %q: %w", l.active.f.Name(), err)
		}
		l.active.size += int64(len(b.buf))
		l.writes.Add(1)
		l.bytes.Add(uint64(len(b.buf)))
	}
	return nil
}

// syncActive fdatasyncs the active segment.
func (l *Log) syncActive() error {
	start := time.Now()
	if err := fdatasync(l.active.f); err != nil {
		return fmt.Errorf("wal: sync segment %q: %w", l.active.f.Name(), err)
	}
	if l.opts.OnSync != nil {
		l.opts.OnSync(time.Since(start))
	}
	l.syncs.Add(1)
	return nil
}

// roll syncs and closes the active segment and creates the segment whose
// first record will have lsn first. The old segment is synced in every mode,
// so that only the active segment can ever hold unsynced data.
func (l *Log) roll(first uint64) error {
	if l.active.f != nil {
		if err := l.syncActive(); err != nil {
			return err
		}
		if err := l.active.f.Close(); err != nil {
			return fmt.Errorf("wal: close segment %q: %w", l.active.f.Name(), err)
		}
		l.active.f = nil
	}
	f, err := createSegment(l.opts.Dir, first)
	if err != nil {
		return err
	}
	l.mu.Lock()
	if n := len(l.mu.segments); n > 0 {
		l.mu.segments[n-1].size = l.active.size
	}
	l.mu.segments = append(l.mu.segments, segmentInfo{first: first, size: segmentHeaderSize})
	l.mu.Unlock()
	l.active.f, l.active.first, l.active.size = f, first, segmentHeaderSize
	return nil
}

// Cut closes the current segment and starts a new one, and returns the
// first lsn of the new segment: every record below it is written and synced
// in the older segments. If the current segment holds no record, Cut keeps it
// and returns its first lsn.
func (l *Log) Cut() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usableLocked(); err != nil {
		return 0, err
	}
	if err := l.leadLocked(); err != nil {
		return 0, err
	}
	cut := l.mu.nextLSN
	if l.mu.segFirst == cut {
		// The logical current segment is empty, so it exists and has no
		// pending data: nothing to do.
		l.mu.flushing = false
		l.cond.Broadcast()
		return cut, nil
	}
	batches := l.mu.pending
	l.mu.pending, l.mu.pendingBytes = nil, 0
	l.mu.segFirst = cut
	l.mu.segBytes = segmentHeaderSize
	l.mu.liveBytes += segmentHeaderSize
	l.mu.Unlock()

	err := l.writeBatches(batches)
	if err == nil {
		err = l.roll(cut) // syncs the old segment
	}

	l.mu.Lock()
	l.finishFlushLocked(batches, cut-1, true, err)
	if err != nil {
		return 0, err
	}
	return cut, nil
}

// Retire removes every segment whose records all have lsn < before. The
// active segment is never removed.
func (l *Log) Retire(before uint64) error {
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	segs := l.mu.segments
	n := 0
	// Segment i holds lsns [segs[i].first, segs[i+1].first).
	for n < len(segs)-1 && segs[n+1].first <= before {
		n++
	}
	victims := slices.Clone(segs[:n])
	l.mu.segments = slices.Clone(segs[n:])
	for _, s := range victims {
		l.mu.liveBytes -= s.size
	}
	l.mu.Unlock()

	if len(victims) == 0 {
		return nil
	}
	var errs []error
	for _, s := range victims {
		p := filepath.Join(l.opts.Dir, segmentName(s.first))
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("wal: remove segment %q: %w", p, err))
		}
	}
	if err := syncDir(l.opts.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close writes and syncs every pending record (in every mode), stops the
// background goroutine and closes the active segment. Appends after Close
// return ErrClosed. Close is idempotent.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.mu.closed {
		l.mu.Unlock()
		return nil
	}
	l.mu.closed = true
	replayed := l.mu.replayed
	l.mu.Unlock()

	close(l.stop)
	l.wg.Wait()

	var errs []error
	l.mu.Lock()
	if replayed {
		if err := l.leadLocked(); err != nil {
			errs = append(errs, err)
		} else {
			l.leadFlushLocked(true)
			if l.mu.err != nil {
				errs = append(errs, l.mu.err)
			}
		}
		for l.mu.flushing {
			l.cond.Wait()
		}
	}
	// From here no flush can start, so the file is ours.
	l.mu.fileClosed = true
	l.mu.Unlock()
	if l.active.f != nil {
		if err := l.active.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("wal: close segment %q: %w", l.active.f.Name(), err))
		}
		l.active.f = nil
	}
	return errors.Join(errs...)
}
