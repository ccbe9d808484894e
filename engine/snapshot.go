package engine

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/index"
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
	snapVersion = 1
	snapPrefix  = "snapshot-"
	snapSuffix  = ".snap"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SnapshotCorruptError reports a snapshot that fails its checks; start-up
// refuses to continue.
type SnapshotCorruptError struct {
	File   string
	Offset int64
	Reason string
}

func (e *SnapshotCorruptError) Error() string {
	return fmt.Sprintf("engine: corrupt snapshot %s at offset %d: %s", e.File, e.Offset, e.Reason)
}

// Snapshot writes a snapshot now and retires the WAL segments it covers.
func (e *Engine) Snapshot() error {
	if e.closed.Load() {
		return ErrClosed
	}
	return e.snapshotLocked(false)
}

func snapName(lsn uint64) string { return fmt.Sprintf("%s%020d%s", snapPrefix, lsn, snapSuffix) }

// writeSnapshotFile writes a snapshot and returns what it wrote. final is
// set by Close (appends are already refused). Callers go through
// snapshotLocked or snapshotInfo (admin.go), which count failures.
func (e *Engine) writeSnapshotFile(final bool) (SnapshotInfo, error) {
	if e.wal == nil {
		return SnapshotInfo{}, nil
	}
	e.snapMu.Lock()
	defer e.snapMu.Unlock()
	start := time.Now()
	if _, err := e.wal.Cut(); err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: cut wal: %w", err)
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
	final_ := filepath.Join(e.opts.Dir, snapName(minLSN))
	if err := os.Rename(tmp.Name(), final_); err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: %w", err)
	}
	if err := syncDir(e.opts.Dir); err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: %w", err)
	}
	// Older snapshots and the WAL below the snapshot are no longer needed.
	snaps, _ := listSnapshots(e.opts.Dir)
	for _, s := range snaps {
		if s.lsn < minLSN {
			os.Remove(filepath.Join(e.opts.Dir, s.name))
		}
	}
	if err := e.wal.Retire(minLSN + 1); err != nil {
		return SnapshotInfo{}, fmt.Errorf("engine: snapshot: retire wal: %w", err)
	}
	e.Stats.Snapshots.Add(1)
	e.log.Info("snapshot written", "file", snapName(minLSN), "bytes", sw.n, "duration", time.Since(start).String(), "final", final)
	info := SnapshotInfo{File: snapName(minLSN), Bytes: sw.n, LSN: minLSN, At: time.Now()}
	e.lastSnap.Store(&info)
	return info, nil
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

// snapWriter writes length-prefixed fields through a running CRC32C.
type snapWriter struct {
	w   *bufio.Writer
	crc hash.Hash32
	n   int64
	buf []byte
	err error
}

func newSnapWriter(f io.Writer) *snapWriter {
	sw := &snapWriter{crc: crc32.New(castagnoli)}
	sw.w = bufio.NewWriterSize(io.MultiWriter(f, sw.crc), 1<<20)
	sw.write([]byte(snapMagic))
	sw.uvarint(snapVersion)
	return sw
}

func (s *snapWriter) write(p []byte) {
	if s.err != nil {
		return
	}
	n, err := s.w.Write(p)
	s.n += int64(n)
	s.err = err
}

func (s *snapWriter) uvarint(v uint64) {
	s.buf = binary.AppendUvarint(s.buf[:0], v)
	s.write(s.buf)
}

func (s *snapWriter) varint(v int64) {
	s.buf = binary.AppendVarint(s.buf[:0], v)
	s.write(s.buf)
}

func (s *snapWriter) str(v string) {
	s.uvarint(uint64(len(v)))
	if s.err == nil {
		n, err := s.w.WriteString(v)
		s.n += int64(n)
		s.err = err
	}
}

func (s *snapWriter) bitmap(bm *roaring.Bitmap) {
	s.uvarint(bm.GetSerializedSizeInBytes())
	if s.err == nil {
		n, err := bm.WriteTo(s.w)
		s.n += n
		s.err = err
	}
}

// finish appends the CRC32C of everything written so far.
func (s *snapWriter) finish() error {
	if s.err != nil {
		return s.err
	}
	if err := s.w.Flush(); err != nil {
		return err
	}
	var tail [4]byte
	binary.LittleEndian.PutUint32(tail[:], s.crc.Sum32())
	s.write(tail[:])
	if s.err != nil {
		return s.err
	}
	return s.w.Flush()
}

// writeSnapshot captures each scope under its lock and returns the lowest
// WAL position any scope covers: every record at or below it is inside.
func (e *Engine) writeSnapshot(sw *snapWriter) (uint64, error) {
	e.mu.Lock()
	engineLSN := e.wal.LastLSN()
	sw.uvarint(engineLSN)
	parts := make([]*partner, 0, len(e.mu.partners))
	for _, p := range e.mu.partners {
		parts = append(parts, p)
	}
	wss := make([]*Workspace, 0, len(e.mu.workspaces))
	for _, w := range e.mu.workspaces {
		wss = append(wss, w)
	}
	e.mu.Unlock()
	sort.Slice(parts, func(i, j int) bool { return parts[i].slug < parts[j].slug })
	sort.Slice(wss, func(i, j int) bool { return wss[i].id < wss[j].id })
	sw.uvarint(uint64(len(parts)))
	for _, p := range parts {
		sw.str(p.slug)
		sw.write(p.digest.Load()[:])
	}
	sw.uvarint(uint64(len(wss)))
	minLSN := engineLSN
	for _, w := range wss {
		lsn := w.writeSnapshot(sw)
		minLSN = min(minLSN, lsn)
	}
	writeAdminSection(sw, parts, wss)
	return minLSN, sw.err
}

// writeSnapshot writes one workspace. Its state is captured at one WAL
// position: under the writer lock only the cheap parts are copied (the LSN,
// keys, usage, cohort metadata and the immutable published bitmaps, open
// webhook sessions); the user table is then serialized under usersMu
// alone, which holds user upserts and deletes — the only changes to the
// table — at that position while imports carry on (they change cohorts,
// whose state was already captured). Imports wait for a pointer copy per
// cohort, not for the user table.
func (w *Workspace) writeSnapshot(sw *snapWriter) uint64 {
	w.usersMu.Lock()
	w.mu.Lock()
	lsn := w.e.wal.LastLSN()
	keyDigest := w.keyDigest // a rotation changes it under mu
	type cohortCap struct {
		c  *Cohort
		m  *cohortMeta
		bm *roaring.Bitmap
	}
	cohorts := w.Cohorts()
	caps := make([]cohortCap, len(cohorts))
	for i, c := range cohorts {
		caps[i] = cohortCap{c, c.meta.Load(), c.Members()}
	}
	sessions := w.captureSessionsLocked()
	done := w.captureDoneLocked()
	w.keys.RLock()
	keys := make([]*importKey, 0, len(w.keys.byID))
	for _, k := range w.keys.byID {
		keys = append(keys, k)
	}
	w.keys.RUnlock()
	type usageCap struct {
		partner string
		days    map[int32]uint64
	}
	w.usage.Lock()
	usage := make([]usageCap, 0, len(w.usage.m))
	for p, days := range w.usage.m {
		usage = append(usage, usageCap{p, maps.Clone(days)})
	}
	w.usage.Unlock()
	w.mu.Unlock()

	sw.str(w.id)
	sw.write(keyDigest[:])
	sw.uvarint(lsn)
	sort.Slice(keys, func(i, j int) bool { return keys[i].partner+"/"+keys[i].id < keys[j].partner+"/"+keys[j].id })
	sw.uvarint(uint64(len(keys)))
	for _, k := range keys {
		sw.str(k.partner)
		sw.str(k.id)
		sw.write(k.digest[:])
		sw.varint(k.createdAt.Unix())
		sw.varint(k.lastUsed.Load())
		if k.revoked.Load() {
			sw.uvarint(1)
		} else {
			sw.uvarint(0)
		}
	}
	sort.Slice(usage, func(i, j int) bool { return usage[i].partner < usage[j].partner })
	sw.uvarint(uint64(len(usage)))
	for _, u := range usage {
		sw.str(u.partner)
		sw.uvarint(uint64(len(u.days)))
		for d, n := range u.days {
			sw.varint(int64(d))
			sw.uvarint(n)
		}
	}
	// users: every dense id in order, so that ids survive a restart.
	next := w.users.NextID()
	sw.uvarint(uint64(next))
	var ukeys []byte
	for id := index.UserID(0); id < next; id++ {
		if w.users.Deleted(id) {
			sw.uvarint(0) // no keys
			sw.uvarint(1) // deleted
			continue
		}
		ukeys = ukeys[:0]
		nk := 0
		w.users.Identifiers(id, func(kind index.Kind, key []byte) {
			ukeys = append(ukeys, byte(kind))
			ukeys = binary.AppendUvarint(ukeys, uint64(len(key)))
			ukeys = append(ukeys, key...)
			nk++
		})
		sw.uvarint(uint64(nk))
		sw.uvarint(0)
		sw.write(ukeys)
	}
	w.usersMu.Unlock()

	sw.uvarint(uint64(len(caps)))
	for _, c := range caps {
		sw.str(c.c.partner)
		sw.str(c.c.id)
		sw.str(c.m.name)
		sw.varint(c.m.createdAt.UnixNano())
		sw.varint(c.m.updatedAt.UnixNano())
		sw.bitmap(c.bm)
	}
	writeSessions(sw, sessions, done)
	return lsn
}

// snapReader reads a snapshot written by snapWriter, checking bounds.
type snapReader struct {
	size int64 // bytes in the file (bounds allocation hints)
	r    *bufio.Reader
	crc  hash.Hash32
	name string
	off  int64
	err  error
	buf  []byte
}

func (s *snapReader) fail(reason string) {
	if s.err == nil {
		s.err = &SnapshotCorruptError{File: s.name, Offset: s.off, Reason: reason}
	}
}

func (s *snapReader) ReadByte() (byte, error) {
	b, err := s.r.ReadByte()
	if err != nil {
		return 0, err
	}
	s.crc.Write([]byte{b})
	s.off++
	return b, nil
}

func (s *snapReader) uvarint() uint64 {
	if s.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(s)
	if err != nil {
		s.fail("truncated varint")
	}
	return v
}

func (s *snapReader) varint() int64 {
	if s.err != nil {
		return 0
	}
	v, err := binary.ReadVarint(s)
	if err != nil {
		s.fail("truncated varint")
	}
	return v
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
	s.crc.Write(b)
	s.off += int64(n)
	return b
}

func (s *snapReader) bytes() []byte {
	n := s.uvarint()
	if n > maxRecordString {
		s.fail(fmt.Sprintf("string length %d too large", n))
		return nil
	}
	return s.full(n)
}

func (s *snapReader) str() string { return string(s.bytes()) }

func (s *snapReader) digest() (d [32]byte) {
	copy(d[:], s.full(32))
	return d
}

func (s *snapReader) bitmap() *roaring.Bitmap {
	n := s.uvarint()
	raw := s.full(n)
	if s.err != nil {
		return nil
	}
	bm := roaring.New()
	if _, err := bm.ReadFrom(newByteReader(raw)); err != nil {
		s.fail("bitmap: " + err.Error())
		return nil
	}
	if err := bm.Validate(); err != nil {
		s.fail("bitmap invalid: " + err.Error())
		return nil
	}
	return bm
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

func (e *Engine) readSnapshot(f io.Reader, size int64, name string) error {
	s := &snapReader{size: size, r: bufio.NewReaderSize(f, 1<<20), crc: crc32.New(castagnoli), name: name}
	if string(s.full(uint64(len(snapMagic)))) != snapMagic {
		s.err = nil
		s.fail("bad magic")
		return s.err
	}
	if v := s.uvarint(); v != snapVersion && s.err == nil {
		s.fail(fmt.Sprintf("unsupported version %d", v))
	}
	e.mu.lsn = s.uvarint()
	np := s.uvarint()
	for i := uint64(0); i < np && s.err == nil; i++ {
		slug := s.str()
		d := s.digest()
		e.mu.partners[slug] = newPartner(slug, d, time.Time{})
	}
	nw := s.uvarint()
	for i := uint64(0); i < nw && s.err == nil; i++ {
		e.readWorkspace(s)
	}
	e.readAdminSection(s)
	if s.err != nil {
		return s.err
	}
	want := s.crc.Sum32()
	var tail [4]byte
	if _, err := io.ReadFull(s.r, tail[:]); err != nil {
		s.fail("missing checksum")
		return s.err
	}
	if binary.LittleEndian.Uint32(tail[:]) != want {
		s.fail("checksum mismatch")
		return s.err
	}
	if _, err := s.r.ReadByte(); err != io.EOF {
		s.off += 4
		s.fail("trailing bytes after checksum")
		return s.err
	}
	return nil
}

func (e *Engine) readWorkspace(s *snapReader) {
	id := s.str()
	d := s.digest()
	if s.err != nil {
		return
	}
	if !ValidWorkspaceID(id) {
		s.fail(fmt.Sprintf("invalid workspace id %q", id))
		return
	}
	w := e.applyWorkspaceLocked(id, d, time.Time{}, 0)
	w.lsn = s.uvarint()
	nk := s.uvarint()
	for i := uint64(0); i < nk && s.err == nil; i++ {
		p, kid := s.str(), s.str()
		kd := s.digest()
		created := time.Unix(s.varint(), 0).UTC()
		lastUsed := s.varint()
		revoked := s.uvarint() == 1
		w.applyImportKey(p, kid, kd, created, revoked, lastUsed)
	}
	np := s.uvarint()
	for i := uint64(0); i < np && s.err == nil; i++ {
		p := s.str()
		nd := s.uvarint()
		for j := uint64(0); j < nd && s.err == nil; j++ {
			day := int32(s.varint())
			w.addUsage(p, day, s.uvarint())
		}
	}
	next := s.uvarint()
	if next > uint64(index.NoUser) {
		s.fail("user count too large")
		return
	}
	// Size the identity table once for every user instead of growing it
	// through a dozen rehashes (most users hold one key). Every user takes
	// at least two bytes of the file, so a corrupt count cannot reserve
	// more than the file could describe.
	w.users = index.NewUsers(index.Options{Capacity: int(min(next, uint64(s.size/2)))})
	for id := uint64(0); id < next && s.err == nil; id++ {
		nkeys := s.uvarint()
		deleted := s.uvarint() == 1
		uid := w.users.Create()
		if uint64(uid) != id {
			s.fail(fmt.Sprintf("user id %d restored as %d", id, uid))
			return
		}
		for k := uint64(0); k < nkeys && s.err == nil; k++ {
			kind, err := s.ReadByte()
			if err != nil {
				s.fail("truncated user key")
				return
			}
			key := s.bytes()
			if s.err != nil {
				return
			}
			if err := w.users.Attach(uid, index.Kind(kind), key); err != nil {
				s.fail(fmt.Sprintf("user %d: %v", id, err))
				return
			}
		}
		if deleted {
			w.users.Delete(uid)
		}
	}
	w.users.Publish()
	nc := s.uvarint()
	for i := uint64(0); i < nc && s.err == nil; i++ {
		p, cid, name := s.str(), s.str(), s.str()
		created := time.Unix(0, s.varint()).UTC()
		updated := time.Unix(0, s.varint()).UTC()
		bm := s.bitmap()
		if s.err != nil {
			return
		}
		c := w.applyCohortUpsert(p, cid, name, created, updated)
		c.members.Reset(bm)
	}
	w.readSessions(s)
}

// RunSnapshots takes a snapshot whenever Options.SnapshotEvery has passed
// or the WAL has grown past Options.SnapshotWALBytes since the last one,
// until ctx ends. The caller runs it in its own goroutine; the engine
// starts none by itself.
func (e *Engine) RunSnapshots(ctx context.Context) {
	if e.wal == nil || (e.opts.SnapshotEvery <= 0 && e.opts.SnapshotWALBytes <= 0) {
		return
	}
	// A quarter second keeps the WAL-size trigger responsive under heavy
	// import; the check itself is two atomic loads.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	last := time.Now()
	base := e.wal.Size()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		due := e.opts.SnapshotEvery > 0 && time.Since(last) >= e.opts.SnapshotEvery
		due = due || (e.opts.SnapshotWALBytes > 0 && e.wal.Size()-base >= e.opts.SnapshotWALBytes)
		if !due || e.closed.Load() {
			continue
		}
		if err := e.Snapshot(); err != nil && !errors.Is(err, ErrClosed) {
			e.log.Error("snapshot failed", "err", err)
		}
		last = time.Now()
		base = e.wal.Size()
	}
}
