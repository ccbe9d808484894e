package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohortd/cohortd/engine/kafkalog"
)

// Replication on a Kafka-protocol log (docs/API.md §7, docs/DESIGN.md "the
// log is the database").
//
// # Write path
//
// With Options.Log set, a public write method does not change anything
// itself: it validates what needs no state, encodes what the request asked
// as a command record (commands.go) and produces it to the log, keyed by
// the workspace id ("" for engine-level changes: partners, admin
// idempotency replies). RunLog, the one apply goroutine, consumes every
// partition and applies each record in log order through the same code the
// single-node path runs, with the record's log timestamp as the clock, so
// every node computes the same effects, the same dense ids and the same
// reply. The node that produced a record finds it by its origin (a random
// id of this process and a sequence number, both in the record) and hands
// the result of its apply to the waiting request.
//
// # Positions
//
// applied[p] is the offset after the last record of partition p this node
// applied (Kafka's "next offset"). Each scope — the engine and each
// workspace — remembers the last record it applied as lsn = offset + 1 in
// its own partition (the field the WAL uses for LSNs in local mode), set in
// the same critical section as the change, so a snapshot captures state and
// position together, and recovery skips what a scope already holds.
//
// # Concurrency
//
// Only the apply goroutine changes state in log mode; applyMu is held while
// it applies one record, so the digest sees the whole state at one set of
// positions. Requests wait on tick, a channel closed after every record.

// Errors of log mode.
var (
	// ErrUnavailable is returned by a write when the log cannot be
	// reached, or the record was not acknowledged or not applied in time:
	// the write was not acknowledged, but it may still be applied later
	// (a produce that timed out can land), everywhere alike. A retry with
	// the same Idempotency-Key is safe.
	ErrUnavailable = errors.New("engine: the log is unavailable")
	// ErrRecordTooLarge is returned by a write whose command record would
	// not fit in one record of the log (-kafka-max-record).
	ErrRecordTooLarge = errors.New("engine: request too large for one record of the log")
	// ErrPositionTimeout is returned by WaitPosition when the position was
	// not applied in time.
	ErrPositionTimeout = errors.New("engine: position not applied in time")
)

// Position is a record's place in the log.
type Position = kafkalog.Position

// defaultApplyTimeout bounds the wait for a committed record to be applied
// by the node that produced it.
const defaultApplyTimeout = 30 * time.Second

// replicator is the log-mode state of an Engine.
type replicator struct {
	log     *kafkalog.Log
	nodeID  string
	maxRec  int
	timeout time.Duration
	origin  [8]byte // identifies this process's records
	seq     atomic.Uint64

	parts   int32
	applied []atomic.Int64 // per partition: offset after the last applied record
	ends    []atomic.Int64 // per partition: the newest end offset seen
	resume  []int64        // where RunLog starts (set by recovery)
	// startEnd is the end offsets seen at start: ready once applied.
	startEnd  []int64
	readyOnce sync.Once
	readyCh   chan struct{}

	// applyMu is held by the apply goroutine while it applies a record;
	// stopped (under applyMu) is set by Close: no record is applied after.
	applyMu sync.Mutex
	stopped bool
	// at is the log time (unix ms) of the record being applied; curLSN its
	// offset + 1. Both are read only by the apply goroutine's write paths.
	at     atomic.Int64
	curLSN uint64

	mu struct {
		sync.Mutex
		waiters map[uint64]chan cmdResult
		tick    chan struct{}
		closed  bool
	}
	done chan struct{} // closed by Close: waiters give up

	keyParts      sync.Map // scope → partition (int32), learned from applied records
	lastAppliedAt atomic.Int64
	bytesApplied  atomic.Int64
	records       atomic.Int64 // records applied since start
}

// cmdResult is what applying a command returned: the reply's value (a
// result struct, or nil) and a deterministic error.
type cmdResult struct {
	v   any
	err error
}

func newReplicator(o Options) *replicator {
	r := &replicator{log: o.Log, nodeID: o.NodeID, maxRec: o.Log.MaxRecordBytes(), timeout: o.ApplyTimeout,
		parts: o.Log.Partitions(), readyCh: make(chan struct{}), done: make(chan struct{})}
	if r.timeout <= 0 {
		r.timeout = defaultApplyTimeout
	}
	if _, err := rand.Read(r.origin[:]); err != nil {
		panic("BUG: crypto/rand failed: " + err.Error())
	}
	r.applied = make([]atomic.Int64, r.parts)
	r.ends = make([]atomic.Int64, r.parts)
	r.resume = make([]int64, r.parts)
	r.mu.waiters = make(map[uint64]chan cmdResult)
	r.mu.tick = make(chan struct{})
	return r
}

// Replicated reports whether the engine is a node of a group (-log kafka).
func (e *Engine) Replicated() bool { return e.repl != nil }

// writeTime is the time a state change is stamped with: the clock on a
// single node, the record's log timestamp while a record is applied.
func (e *Engine) writeTime() time.Time {
	if e.repl != nil {
		return time.UnixMilli(e.repl.at.Load()).UTC()
	}
	return e.now()
}

// propose produces a command record and waits until this node has applied
// it, returning the result of that apply. body is the command's fields;
// scope the workspace id ("" for the engine) and gen the generation of the
// workspace the request saw (0: whatever workspace holds the id).
func (e *Engine) propose(typ uint8, scope string, gen uint64, body []byte) (any, error) {
	r := e.repl
	if e.closed.Load() {
		return nil, ErrClosed
	}
	seq := r.seq.Add(1)
	var enc recordEncoder
	enc.b = make([]byte, 0, 1+len(r.origin)+2*binaryMax+len(scope)+len(body))
	enc.u8(typ)
	enc.b = append(enc.b, r.origin[:]...)
	enc.uvarint(seq)
	enc.str(scope)
	enc.uvarint(gen)
	enc.b = append(enc.b, body...)
	if len(enc.b) > r.maxRec {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrRecordTooLarge, len(enc.b), r.maxRec)
	}
	ch := make(chan cmdResult, 1)
	r.mu.Lock()
	if r.mu.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	r.mu.waiters[seq] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.mu.waiters, seq)
		r.mu.Unlock()
	}()
	// The key must not be nil: a nil key is spread over partitions.
	key := append(make([]byte, 0, len(scope)), scope...)
	pos, err := r.log.Produce(context.Background(), key, enc.b)
	if err != nil {
		if errors.Is(err, kafkalog.ErrTooLarge) {
			return nil, fmt.Errorf("%w: %v", ErrRecordTooLarge, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	t := time.NewTimer(r.timeout)
	defer t.Stop()
	select {
	case res := <-ch:
		return res.v, res.err
	case <-t.C:
		return nil, fmt.Errorf("%w: record %s is committed but was not applied here within %s", ErrUnavailable, pos, r.timeout)
	case <-r.done:
		return nil, ErrClosed
	}
}

// binaryMax is the longest uvarint.
const binaryMax = 10

// RunLog consumes every partition of the log from where recovery left off
// and applies the records in order, until ctx ends (it returns ctx.Err())
// or the log fails for good: records this node needs were deleted by
// retention (an error wrapping kafkalog.ErrGone: start the node again from
// a peer with -bootstrap-from), or a record could not be applied (the
// process must stop: Options.OnFatal was called). The caller runs it once,
// in its own goroutine, after Open; the engine is Ready once it has caught
// up with the end offsets seen at start.
func (e *Engine) RunLog(ctx context.Context) error {
	r := e.repl
	if r == nil {
		return errors.New("engine: RunLog needs Options.Log")
	}
	from := make([]int64, r.parts)
	for p := range from {
		from[p] = r.applied[p].Load()
	}
	err := r.log.Consume(ctx, from, e.applyLogRecord)
	if errors.Is(err, kafkalog.ErrGone) {
		return fmt.Errorf("engine: %w; this node cannot catch up from the log: start it with an empty data directory and -bootstrap-from a peer", err)
	}
	return err
}

// applyLogRecord applies one consumed record (RunLog's callback).
func (e *Engine) applyLogRecord(rec kafkalog.Record) (err error) {
	r := e.repl
	p := rec.Partition
	if p < 0 || p >= r.parts {
		return fmt.Errorf("engine: record of partition %d, the topic has %d", p, r.parts)
	}
	if rec.Offset < r.applied[p].Load() {
		return nil // delivered twice
	}
	r.applyMu.Lock()
	if r.stopped {
		r.applyMu.Unlock()
		return ErrClosed
	}
	locked := true
	defer func() {
		if v := recover(); v != nil {
			if locked {
				r.applyMu.Unlock()
			}
			err = fmt.Errorf("BUG: applying record %s: %v", rec.Position, v)
			e.fatal(err)
		}
	}()
	r.at.Store(rec.Time.UnixMilli())
	r.curLSN = uint64(rec.Offset) + 1
	h, res, decoded := e.applyCommand(rec)
	r.applied[p].Store(rec.Offset + 1)
	if end := max(rec.Offset+1, rec.HighWatermark); r.ends[p].Load() < end {
		r.ends[p].Store(end)
	}
	r.applyMu.Unlock()
	locked = false

	if decoded {
		r.keyParts.Store(h.scope, p)
	}
	r.lastAppliedAt.Store(time.Now().UnixNano())
	r.bytesApplied.Add(int64(len(rec.Value)))
	r.records.Add(1)
	r.mu.Lock()
	if decoded && h.origin == r.origin {
		if ch := r.mu.waiters[h.seq]; ch != nil {
			ch <- res
		}
	}
	close(r.mu.tick)
	r.mu.tick = make(chan struct{})
	r.mu.Unlock()
	e.checkCaughtUp()
	return nil
}

// checkCaughtUp marks the engine ready once every partition is applied up
// to the end offsets seen at start.
func (e *Engine) checkCaughtUp() {
	r := e.repl
	select {
	case <-r.readyCh:
		return
	default:
	}
	for p := range r.parts {
		if r.applied[p].Load() < r.startEnd[p] {
			return
		}
	}
	r.readyOnce.Do(func() {
		e.readyAt = time.Now()
		e.ready.Store(true)
		close(r.readyCh)
		e.log.Info("caught up with the log", "records", r.records.Load(), "duration", time.Since(e.openedAt).String())
	})
}

// CaughtUp returns a channel closed once the engine is ready: at once on a
// single node, in log mode once RunLog has applied the log up to the end
// offsets seen at start.
func (e *Engine) CaughtUp() <-chan struct{} {
	if e.repl == nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return e.repl.readyCh
}

// WaitPosition waits until this node has applied the record at pos (at
// most until ctx ends: then ErrPositionTimeout). On a single node it
// returns at once.
func (e *Engine) WaitPosition(ctx context.Context, pos Position) error {
	r := e.repl
	if r == nil {
		return nil
	}
	if pos.Partition < 0 || pos.Partition >= r.parts {
		return invalidf("position %s: the log has %d partitions", pos, r.parts)
	}
	for {
		r.mu.Lock()
		tick := r.mu.tick
		r.mu.Unlock()
		if r.applied[pos.Partition].Load() > pos.Offset {
			return nil
		}
		select {
		case <-tick:
		case <-ctx.Done():
			return fmt.Errorf("%w: %s (applied up to offset %d)", ErrPositionTimeout, pos, r.applied[pos.Partition].Load()-1)
		case <-r.done:
			return ErrClosed
		}
	}
}

// ScopePosition returns the position of the last record this node applied
// in the partition of scope (a workspace id, "" for the engine), for the
// X-Cohortd-Position of a write reply: a node that has applied it has
// applied the write. ok is false on a single node, or before any record of
// the scope was seen.
func (e *Engine) ScopePosition(scope string) (pos Position, ok bool) {
	r := e.repl
	if r == nil {
		return Position{}, false
	}
	v, ok := r.keyParts.Load(scope)
	if !ok {
		return Position{}, false
	}
	p := v.(int32)
	return Position{Partition: p, Offset: r.applied[p].Load() - 1}, true
}

// CatchUp waits until this node has applied every record the log held, when
// CatchUp was called, in the partition of scope (every partition when the
// scope was never seen). Idempotency-Key lookups call it, so that a retry
// sent to another node finds the first reply. On a single node it returns
// at once.
func (e *Engine) CatchUp(ctx context.Context, scope string) error {
	r := e.repl
	if r == nil {
		return nil
	}
	ends, err := r.log.EndOffsets(ctx)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	r.noteEnds(ends)
	parts := []int32{}
	if v, ok := r.keyParts.Load(scope); ok {
		parts = append(parts, v.(int32))
	} else {
		for p := range r.parts {
			parts = append(parts, p)
		}
	}
	for _, p := range parts {
		if ends[p] == 0 {
			continue
		}
		if err := e.WaitPosition(ctx, Position{Partition: p, Offset: ends[p] - 1}); err != nil {
			return err
		}
	}
	return nil
}

func (r *replicator) noteEnds(ends []int64) {
	for p, o := range ends {
		if p < len(r.ends) && r.ends[p].Load() < o {
			r.ends[p].Store(o)
		}
	}
}

// PartitionStatus is one partition's position on this node.
type PartitionStatus struct {
	Applied int64 // the offset after the last record applied (0: none)
	End     int64 // the newest end offset seen
}

// ReplicationStatus describes this node's place in its group.
type ReplicationStatus struct {
	Replicated    bool              // log mode (-log kafka)
	NodeID        string            // this node's name in the group
	Partitions    []PartitionStatus // indexed by partition; empty on a single node
	LagRecords    int64             // records of the log not yet applied here, over every partition
	LastAppliedAt time.Time         // zero before the first record
	Ready         bool              // Engine.Ready: recovered and, in log mode, caught up with the log
	// RecordsApplied counts the records applied since the process started.
	RecordsApplied int64
}

// Replication returns this node's positions. The end offsets are asked
// from the log (bounded by ctx); when it cannot be reached, the newest ones
// seen are reported.
func (e *Engine) Replication(ctx context.Context) ReplicationStatus {
	if r := e.repl; r != nil {
		if ends, err := r.log.EndOffsets(ctx); err == nil {
			r.noteEnds(ends)
		}
	}
	return e.ReplicationCached()
}

// ReplicationCached is Replication without asking the log: the end offsets
// are the newest seen (fetches report them), which is cheap enough for
// every metrics scrape.
func (e *Engine) ReplicationCached() ReplicationStatus {
	st := ReplicationStatus{NodeID: e.opts.NodeID, Ready: e.Ready()}
	r := e.repl
	if r == nil {
		return st
	}
	st.Replicated = true
	st.RecordsApplied = r.records.Load()
	st.Partitions = r.positions()
	for _, p := range st.Partitions {
		st.LagRecords += max(0, p.End-p.Applied)
	}
	if ns := r.lastAppliedAt.Load(); ns != 0 {
		st.LastAppliedAt = time.Unix(0, ns).UTC()
	}
	return st
}

func (r *replicator) positions() []PartitionStatus {
	out := make([]PartitionStatus, r.parts)
	for p := range out {
		out[p] = PartitionStatus{Applied: r.applied[p].Load(), End: max(r.ends[p].Load(), r.applied[p].Load())}
	}
	return out
}

// closeLog closes a log-mode engine: no record is applied from now on
// (one being applied finishes first, so the final snapshot never holds an
// offset whose record it lacks), waiting writes fail with ErrClosed, the
// final snapshot is written and the identity tables are released.
func (e *Engine) closeLog() error {
	r := e.repl
	r.applyMu.Lock()
	r.stopped = true
	r.applyMu.Unlock()
	if e.closed.Swap(true) {
		return nil
	}
	r.close()
	defer e.releaseUsers()
	if e.opts.Dir == "" {
		return nil
	}
	var errs []error
	if err := e.snapshotLocked(true); err != nil {
		errs = append(errs, fmt.Errorf("final snapshot: %w", err))
	}
	errs = append(errs, e.unlock())
	return errors.Join(errs...)
}

// close fails every waiting write with ErrClosed.
func (r *replicator) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.closed {
		return
	}
	r.mu.closed = true
	close(r.done)
}

// ---- recovery in log mode ----

// openLog prepares a log-mode engine: with a data directory it loads the
// newest snapshot (its offsets are where RunLog starts); without one the
// log must hold its whole history. It reads the end offsets RunLog must
// reach before the engine is ready.
func (e *Engine) openLog() error {
	r := e.repl
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if e.opts.Dir != "" {
		if err := e.recoverLogDir(); err != nil {
			return err
		}
	} else {
		e.cursor = newCursorCodec(e.cursorSecret(nil))
	}
	starts, err := r.log.StartOffsets(ctx)
	if err != nil {
		return errors.Join(fmt.Errorf("engine: %w", err), e.unlock())
	}
	for p := range r.parts {
		if r.resume[p] < starts[p] {
			return errors.Join(fmt.Errorf("engine: %w: partition %d starts at offset %d but this node needs it from offset %d: start the node with an empty data directory and -bootstrap-from a peer",
				kafkalog.ErrGone, p, starts[p], r.resume[p]), e.unlock())
		}
		r.applied[p].Store(r.resume[p])
	}
	ends, err := r.log.EndOffsets(ctx)
	if err != nil {
		return errors.Join(fmt.Errorf("engine: %w", err), e.unlock())
	}
	r.noteEnds(ends)
	r.startEnd = ends
	e.checkCaughtUp()
	return nil
}

// cursorSecret is the key of member-page cursors: Options.CursorSecret in
// log mode (every node of a group must hand out cursors the others read),
// else fallback (a data directory's cursor.key), else random.
func (e *Engine) cursorSecret(fallback []byte) []byte {
	switch {
	case len(e.opts.CursorSecret) > 0:
		return e.opts.CursorSecret
	case fallback != nil:
		return fallback
	}
	return randomBytes(32)
}

// recoverLogDir locks the data directory and loads its newest snapshot
// that reads back whole (older ones are tried after a damaged one).
func (e *Engine) recoverLogDir() error {
	if err := os.MkdirAll(e.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("engine: data dir: %w", err)
	}
	lock, err := lockDir(e.opts.Dir)
	if err != nil {
		return err
	}
	e.lock = lock
	if err := e.prepareDir(); err != nil {
		return errors.Join(err, e.unlock())
	}
	var fallback []byte
	if len(e.opts.CursorSecret) == 0 {
		if fallback, err = loadOrCreateCursorSecret(e.opts.Dir); err != nil {
			return errors.Join(err, e.unlock())
		}
	}
	e.cursor = newCursorCodec(e.cursorSecret(fallback))
	if _, err := os.Stat(filepath.Join(e.opts.Dir, "wal")); err == nil {
		return errors.Join(fmt.Errorf("engine: %s holds a WAL: it is the data directory of a single node (-log local); a node of a group (-log kafka) starts from an empty directory or a group snapshot", e.opts.Dir), e.unlock())
	}
	snaps, err := listSnapshots(e.opts.Dir)
	if err != nil {
		return errors.Join(fmt.Errorf("engine: list snapshots: %w", err), e.unlock())
	}
	var failed []error
	for _, sn := range snaps {
		p := filepath.Join(e.opts.Dir, sn.name)
		t := time.Now()
		err := e.loadSnapshot(p)
		if err == nil && e.loadedRepl == nil {
			err = fmt.Errorf("snapshot %s was written by a single node (-log local): a node of a group cannot start from it", sn.name)
			e.resetState()
			return errors.Join(fmt.Errorf("engine: %w", err), e.unlock())
		}
		if err == nil && len(e.loadedRepl.offsets) != int(e.repl.parts) {
			err = fmt.Errorf("snapshot %s covers %d partitions, the topic has %d: a topic's partition count must never change", sn.name, len(e.loadedRepl.offsets), e.repl.parts)
			e.resetState()
			return errors.Join(fmt.Errorf("engine: %w", err), e.unlock())
		}
		if err == nil {
			copy(e.repl.resume, e.loadedRepl.offsets)
			e.noteLoadedSnapshot(p, sn.lsn)
			if len(failed) > 0 {
				e.log.Error("recovered from an older snapshot after newer ones failed", "file", sn.name, "failed", errors.Join(failed...).Error())
			}
			e.log.Info("snapshot loaded", "file", sn.name, "duration", time.Since(t).String(), "offsets", fmt.Sprint(e.repl.resume))
			return nil
		}
		e.log.Error("SNAPSHOT UNREADABLE: falling back to the previous snapshot", "file", sn.name, "err", err)
		failed = append(failed, err)
		e.resetState()
		if rerr := os.Rename(p, p+".corrupt"); rerr != nil {
			e.log.Error("cannot set the unreadable snapshot aside", "file", sn.name, "err", rerr)
		}
	}
	// No snapshot: the log's start (checked by openLog) must be offset 0.
	return nil
}

// replLoaded is the replication section of a loaded snapshot.
type replLoaded struct {
	offsets []int64
}

// secRepl is the snapshot section of a log-mode node: where each partition
// resumes, and the partners' generations (docs/FORMATS.md).
const secRepl uint32 = 7

// writeRepl writes the replication section: the resume offset of every
// partition (captured before any scope) and the partners' generations.
func writeRepl(sw *snapWriter, offsets []int64, parts []*partner) {
	sw.begin(secRepl)
	sw.uvarint(uint64(len(offsets)))
	for _, o := range offsets {
		sw.varint(o)
	}
	sw.uvarint(uint64(len(parts)))
	for _, p := range parts {
		sw.str(p.slug)
		sw.uvarint(p.gen)
	}
	sw.end()
}

// readRepl reads a replication section (nothing is kept with check).
func (e *Engine) readRepl(f *snapReader, check bool) {
	n := f.uvarint()
	if n > 1<<20 {
		f.fail(fmt.Sprintf("replication section with %d partitions", n))
		return
	}
	offsets := make([]int64, 0, n)
	for i := uint64(0); i < n && f.err == nil; i++ {
		o := f.varint()
		if o < 0 {
			f.fail(fmt.Sprintf("partition %d resumes at offset %d", i, o))
		}
		offsets = append(offsets, o)
	}
	np := f.uvarint()
	for i := uint64(0); i < np && f.err == nil; i++ {
		slug, gen := f.str(), f.uvarint()
		if f.err != nil || check {
			continue
		}
		p := e.mu.partners[slug]
		if p == nil {
			f.fail(fmt.Sprintf("generation of unknown partner %q", slug))
			return
		}
		p.gen = gen
	}
	if f.err == nil && !check {
		e.loadedRepl = &replLoaded{offsets: offsets}
	}
}

// writeWorkspaceRepl appends what a log-mode workspace needs beyond the
// single-node section: its generation, the sequence number its next
// webhook session gets (the apply computes it, so a restored node must
// continue where the others are) and, per import key, its partner's
// generation.
func writeWorkspaceRepl(sw *snapWriter, gen, nextSeq uint64, keys []*importKey) {
	sw.uvarint(gen)
	sw.uvarint(nextSeq)
	sw.uvarint(uint64(len(keys)))
	for _, k := range keys {
		sw.str(k.partner)
		sw.str(k.id)
		sw.uvarint(k.partnerGen)
	}
}

// readWorkspaceRepl reads what writeWorkspaceRepl appended, when present.
func (w *Workspace) readWorkspaceRepl(s *snapReader) {
	if !s.more() {
		return
	}
	w.gen = s.uvarint()
	w.sessions.nextSeq = max(w.sessions.nextSeq, s.uvarint())
	n := s.uvarint()
	for i := uint64(0); i < n && s.err == nil; i++ {
		p, kid, gen := s.str(), s.str(), s.uvarint()
		if s.err != nil {
			return
		}
		w.keys.RLock()
		k := w.keys.byID[p+"/"+kid]
		w.keys.RUnlock()
		if k == nil {
			s.fail(fmt.Sprintf("generation of unknown key %s/%s", p, kid))
			return
		}
		k.partnerGen = gen
	}
}

// more reports whether a field section has bytes left.
func (s *snapReader) more() bool {
	if s.err != nil {
		return false
	}
	_, err := s.r.Peek(1)
	return err == nil
}

// resumeOffsets are the offsets a snapshot taken now resumes from: every
// record below them is applied.
func (r *replicator) resumeOffsets() []int64 {
	out := make([]int64, r.parts)
	for p := range out {
		out[p] = r.applied[p].Load()
	}
	return out
}

// logSnapshotName is the number in a log-mode snapshot's name: the records
// applied in every partition, so that a newer snapshot sorts after.
func logSnapshotName(offsets []int64) uint64 {
	var n uint64
	for _, o := range offsets {
		n += uint64(o)
	}
	return n
}

// NewestSnapshot opens the newest snapshot file of the data directory for
// reading (GET /v1/admin/snapshot streams it; -bootstrap-from reads it). It
// takes one first when there is none. The caller closes the file; it stays
// readable even if a newer snapshot retires it meanwhile.
func (e *Engine) NewestSnapshot() (*os.File, SnapshotInfo, error) {
	if e.opts.Dir == "" {
		return nil, SnapshotInfo{}, ErrNoDataDir
	}
	for attempt := 0; attempt < 3; attempt++ {
		snaps, err := listSnapshots(e.opts.Dir)
		if err != nil {
			return nil, SnapshotInfo{}, fmt.Errorf("engine: list snapshots: %w", err)
		}
		if len(snaps) == 0 {
			if _, err := e.SnapshotNow(); err != nil {
				return nil, SnapshotInfo{}, err
			}
			continue
		}
		f, err := os.Open(filepath.Join(e.opts.Dir, snaps[0].name))
		if errors.Is(err, os.ErrNotExist) {
			continue // retired between the listing and the open
		}
		if err != nil {
			return nil, SnapshotInfo{}, fmt.Errorf("engine: open snapshot: %w", err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, SnapshotInfo{}, fmt.Errorf("engine: stat snapshot: %w", err)
		}
		return f, SnapshotInfo{File: snaps[0].name, Bytes: fi.Size(), LSN: snaps[0].lsn, At: fi.ModTime()}, nil
	}
	return nil, SnapshotInfo{}, errors.New("engine: snapshots are being replaced too fast to pick one")
}

// HasSnapshot reports whether dir holds a snapshot file (-bootstrap-from
// runs only for a data directory without one).
func HasSnapshot(dir string) (bool, error) {
	snaps, err := listSnapshots(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return len(snaps) > 0, err
}

// InstallSnapshot writes a snapshot read from src (a peer's, for
// -bootstrap-from) into dir as name (a snapshot file name; another name is
// refused), after checking every checksum of it: a truncated or damaged
// download is refused and leaves nothing behind.
func InstallSnapshot(dir, name string, src io.Reader) error {
	if sn := listName(name); sn == nil {
		return fmt.Errorf("engine: %q is not a snapshot file name", name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("engine: data dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, snapPrefix+"*.tmp")
	if err != nil {
		return fmt.Errorf("engine: install snapshot: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return fmt.Errorf("engine: install snapshot: %w", err)
	}
	if err := errors.Join(tmp.Sync(), tmp.Close()); err != nil {
		return fmt.Errorf("engine: install snapshot: %w", err)
	}
	if err := checkSnapshotFile(tmp.Name()); err != nil {
		return fmt.Errorf("engine: install snapshot: the snapshot received does not read back: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("engine: install snapshot: %w", err)
	}
	return syncDir(dir)
}

// listName parses a snapshot file name (nil if it is not one).
func listName(name string) *snapFile {
	if filepath.Base(name) != name {
		return nil
	}
	var lsn uint64
	if _, err := fmt.Sscanf(name, snapPrefix+"%020d"+snapSuffix, &lsn); err != nil || snapName(lsn) != name {
		return nil
	}
	return &snapFile{name: name, lsn: lsn}
}
