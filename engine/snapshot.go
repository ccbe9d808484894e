package engine

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cohortd/cohortd/engine/codec"
)

// Snapshot files hold the whole state: engine-level records (partners,
// workspaces) and, per workspace, keys, usage, users with their
// identifiers, cohorts with their members in roaring portable format and
// webhook sessions. Each scope (the engine, each workspace) is captured
// under its own writer lock together with the WAL position it covers, so
// replay skips exactly the records already inside. The layout is drawn in
// docs/FORMATS.md.
const (
	snapMagic   = "COHORTD-SNAPSHOT"
	snapVersion = 2 // version 1 is still read (snapshot_v1.go)
	snapPrefix  = "snapshot-"
	snapSuffix  = ".snap"
)

// Snapshot writes a snapshot now and retires the WAL segments it covers.
func (e *Engine) Snapshot() error {
	if e.closed.Load() {
		return ErrClosed
	}
	_, err := e.takeSnapshot(false)
	return err
}

func snapName(lsn uint64) string { return fmt.Sprintf("%s%020d%s", snapPrefix, lsn, snapSuffix) }

// writeSnapshotFile writes a snapshot and returns what it wrote. final is
// set by Close (appends are already refused). Callers go through
// takeSnapshot (admin.go), which counts failures.
func (e *Engine) writeSnapshotFile(final bool) (SnapshotInfo, error) {
	if !e.snapshots() {
		return SnapshotInfo{}, nil
	}
	e.snapMu.Lock()
	defer e.snapMu.Unlock()
	start := time.Now()
	if e.wal != nil {
		if _, err := e.wal.Cut(); err != nil {
			return SnapshotInfo{}, fmt.Errorf("engine: snapshot: cut wal: %w", err)
		}
	}

	tmp, err := os.CreateTemp(e.opts.Dir, "snapshot-*.tmp")
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	sw := newSnapWriter(tmp)
	minLSN, err := e.writeSnapshot(sw)
	if err == nil {
		err = sw.finish()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: write %s: %w", tmp.Name(), err)
	}
	// Read the file back before it replaces anything: a snapshot that
	// cannot be read is worse than none.
	if err := checkSnapshotFile(tmp.Name()); err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: written file does not read back: %w", err)
	}
	final_ := filepath.Join(e.opts.Dir, snapName(minLSN))
	if err := os.Rename(tmp.Name(), final_); err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: %w", err)
	}
	if err := syncDir(e.opts.Dir); err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: %w", err)
	}
	// Keep the previous snapshot and the WAL since it, so that recovery can
	// fall back to them if this one is ever damaged on disk; older ones go.
	if err := e.retireBefore(minLSN); err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: %w", err)
	}
	e.Stats.Snapshots.Add(1)
	e.log.Info("snapshot written", "file", snapName(minLSN), "bytes", sw.n, "duration", time.Since(start).String(), "final", final)
	info := SnapshotInfo{File: snapName(minLSN), Bytes: sw.n, LSN: minLSN, At: time.Now()}
	e.lastSnap.Store(&info)
	return info, nil
}

// retireBefore removes the snapshots older than the one before newest and
// the WAL segments that only that one no longer needs.
func (e *Engine) retireBefore(newest uint64) error {
	snaps, err := listSnapshots(e.opts.Dir)
	if err != nil {
		return err
	}
	var keep uint64 // the LSN of the previous snapshot, 0 if none
	for _, s := range snaps {
		if s.lsn < newest {
			keep = s.lsn
			break
		}
	}
	if keep == 0 || e.wal == nil {
		return e.removeBefore(snaps, keep)
	}
	if err := e.removeBefore(snaps, keep); err != nil {
		return err
	}
	if err := e.wal.Retire(keep + 1); err != nil {
		return fmt.Errorf("retire wal: %w", err)
	}
	return nil
}

// removeBefore removes the snapshots older than keep (none when keep is 0).
func (e *Engine) removeBefore(snaps []snapFile, keep uint64) error {
	if keep == 0 {
		return nil
	}
	for _, s := range snaps {
		if s.lsn < keep {
			if err := os.Remove(filepath.Join(e.opts.Dir, s.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// snapshots reports whether the engine writes snapshots: with a data
// directory, on a single node or in log mode.
func (e *Engine) snapshots() bool {
	return e.wal != nil || (e.repl != nil && e.opts.Dir != "")
}

// logBytes is how much the log grew since the start: the WAL's size, or
// in log mode the bytes of the records applied.
func (e *Engine) logBytes() int64 {
	if e.repl != nil {
		return e.repl.bytesApplied.Load()
	}
	return e.wal.Size()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

type snapFile struct {
	name string
	lsn  uint64
}

// listSnapshots returns the snapshot files of dir, newest first.
func listSnapshots(dir string) ([]snapFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []snapFile
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, snapPrefix) || !strings.HasSuffix(n, snapSuffix) {
			continue
		}
		lsn, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, snapPrefix), snapSuffix), 10, 64)
		if err != nil {
			continue
		}
		out = append(out, snapFile{name: n, lsn: lsn})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].lsn > out[j].lsn })
	return out, nil
}

// snapWriter writes a version 2 snapshot: the file header, then sections
// (snapshot_v2.go). Fields (Uvarint, Str, Bitmap, …) are appended to the
// open section by the embedded codec.Encoder, and the section is written
// with its length and CRC when it ends; raw writes a whole array as a
// section of its own.
type snapWriter struct {
	codec.Encoder // payload of the open section
	w             *bufio.Writer
	n             int64  // bytes written to the file
	kind          uint32 // kind of the open section, 0 if none
	nsec          uint64 // sections written
	err           error
}

func newSnapWriter(f io.Writer) *snapWriter {
	sw := &snapWriter{w: bufio.NewWriterSize(f, 1<<20)}
	sw.fileWrite([]byte(snapMagic))
	sw.fileWrite(binary.AppendUvarint(nil, snapVersion))
	return sw
}

// fileWrite writes p to the file.
func (s *snapWriter) fileWrite(p []byte) {
	if s.err != nil {
		return
	}
	n, err := s.w.Write(p)
	s.n += int64(n)
	s.err = err
}

// snapReader reads the framing of a snapshot file (header, section
// headers, raw arrays), checking bounds; the fields of a section are read
// by a codec.Decoder over its payload (fields, snapshot_v2.go).
type snapReader struct {
	size int64 // bytes in the file (bounds allocation hints)
	r    *bufio.Reader
	name string
	off  int64
	err  error
	buf  []byte
}

func (s *snapReader) fail(reason string) {
	if s.err == nil {
		s.err = &codec.CorruptError{File: s.name, Offset: s.off, Reason: reason}
	}
}

func (s *snapReader) ReadByte() (byte, error) {
	b, err := s.r.ReadByte()
	if err != nil {
		return 0, err
	}
	s.off++
	return b, nil
}

// full reads n bytes into a reused buffer (valid until the next call).
func (s *snapReader) full(n uint64) []byte {
	if s.err != nil {
		return nil
	}
	if n > 1<<31 {
		s.fail(fmt.Sprintf("length %d too large", n))
		return nil
	}
	// Grow the buffer as bytes arrive rather than trusting the length: a
	// corrupt length must not allocate gigabytes before failing.
	b := s.buf[:0]
	for uint64(len(b)) < n {
		chunk := min(n-uint64(len(b)), 1<<20)
		if uint64(cap(b)-len(b)) < chunk {
			b = append(b[:cap(b)], make([]byte, max(chunk, uint64(cap(b))))...)[:len(b)]
		}
		m, err := io.ReadFull(s.r, b[len(b):len(b)+int(chunk)])
		b = b[:len(b)+m]
		if err != nil {
			s.fail("truncated")
			return nil
		}
	}
	s.buf = b
	s.off += int64(n)
	return b
}

// newSnapReader reads the magic and the version of a snapshot file of size
// bytes and returns a reader positioned after them.
func newSnapReader(f io.Reader, size int64, name string) (*snapReader, uint64, error) {
	s := &snapReader{size: size, r: bufio.NewReaderSize(f, 1<<20), name: name}
	if string(s.full(uint64(len(snapMagic)))) != snapMagic {
		s.err = nil
		s.fail("bad magic")
		return nil, 0, s.err
	}
	v, err := binary.ReadUvarint(s)
	if err != nil {
		s.fail("truncated varint")
		return nil, 0, s.err
	}
	if v != snapVersionV1 && v != snapVersion {
		s.fail(fmt.Sprintf("unsupported version %d", v))
		return nil, 0, s.err
	}
	return s, v, nil
}

// loadSnapshot reads a snapshot file into the (empty) engine. The CRC is
// checked at the end; a mismatch or a malformed field refuses the file.
func (e *Engine) loadSnapshot(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("engine: open snapshot: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("engine: stat snapshot: %w", err)
	}
	return e.readSnapshot(f, fi.Size(), filepath.Base(path))
}

// readSnapshot reads a snapshot of any supported version into the (empty)
// engine; a malformed or damaged file is refused with a *codec.CorruptError
// naming the file and the byte offset.
func (e *Engine) readSnapshot(f io.Reader, size int64, name string) error {
	s, v, err := newSnapReader(f, size, name)
	if err != nil {
		return err
	}
	if v == snapVersionV1 {
		return e.readSnapshotV1(s)
	}
	return e.readSnapshotV2(s, false)
}

// expireSessions drops idle webhook sessions in every workspace that has
// any.
func (e *Engine) expireSessions() {
	for _, w := range e.Workspaces() {
		if w.OpenSessions() == 0 {
			continue
		}
		if err := w.ExpireSessions(); err != nil && !errors.Is(err, ErrClosed) {
			e.log.Error("expire webhook sessions", "workspace", w.id, "err", err)
		}
	}
}

// RunSnapshots takes a snapshot whenever Options.SnapshotEvery has passed
// or the WAL has grown past Options.SnapshotWALBytes since the last one,
// and drops idle webhook sessions of every workspace every quarter of the
// session TTL (at most a minute apart), so that abandoned sessions expire
// without traffic, until ctx ends. The caller runs it in its own
// goroutine; the engine starts none by itself.
func (e *Engine) RunSnapshots(ctx context.Context) {
	// A quarter second keeps the WAL-size trigger responsive under heavy
	// import; the check itself is two atomic loads.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	expiryEvery := min(e.opts.WebhookSessionTTL/4, time.Minute)
	last := time.Now()
	lastExpiry := last
	var base int64
	if e.snapshots() {
		base = e.logBytes()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if e.closed.Load() {
			continue
		}
		if time.Since(lastExpiry) >= expiryEvery {
			e.expireSessions()
			lastExpiry = time.Now()
		}
		if !e.snapshots() {
			continue
		}
		due := e.opts.SnapshotEvery > 0 && time.Since(last) >= e.opts.SnapshotEvery
		due = due || (e.opts.SnapshotWALBytes > 0 && e.logBytes()-base >= e.opts.SnapshotWALBytes)
		if !due {
			continue
		}
		if err := e.Snapshot(); err != nil && !errors.Is(err, ErrClosed) {
			e.log.Error("snapshot failed", "err", err)
		}
		last = time.Now()
		base = e.logBytes()
	}
}
