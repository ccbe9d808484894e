package engine

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// v1Writer is the version 1 snapshot writer as cohortd shipped it before
// version 2, kept to build old data dirs for the upgrade test: fields through
// one running CRC-32C appended at the end.
type v1Writer struct {
	w   *bufio.Writer
	crc interface {
		io.Writer
		Sum32() uint32
	}
	buf []byte
	err error
}

// crcWriter is a running codec.Checksum of what is written to it.
type crcWriter struct{ sum uint32 }

func (c *crcWriter) Write(p []byte) (int, error) {
	c.sum = codec.UpdateChecksum(c.sum, p)
	return len(p), nil
}

func (c *crcWriter) Sum32() uint32 { return c.sum }

func newV1Writer(f io.Writer) *v1Writer {
	c := new(crcWriter)
	sw := &v1Writer{crc: c, w: bufio.NewWriter(io.MultiWriter(f, c))}
	sw.write([]byte(snapMagic))
	sw.uvarint(snapVersionV1)
	return sw
}

func (s *v1Writer) write(p []byte) {
	if s.err == nil {
		_, s.err = s.w.Write(p)
	}
}
func (s *v1Writer) uvarint(v uint64) { s.buf = binary.AppendUvarint(s.buf[:0], v); s.write(s.buf) }
func (s *v1Writer) varint(v int64)   { s.buf = binary.AppendVarint(s.buf[:0], v); s.write(s.buf) }
func (s *v1Writer) str(v string)     { s.uvarint(uint64(len(v))); s.write([]byte(v)) }
func (s *v1Writer) bitmap(bm *roaring.Bitmap) {
	s.uvarint(bm.GetSerializedSizeInBytes())
	if s.err == nil {
		_, s.err = bm.WriteTo(s.w)
	}
}
func (s *v1Writer) finish() error {
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

// snapshotV1 does what a snapshot did with the version 1 writer: cut the
// WAL, write snapshot-<lsn>.snap, retire what it covers.
func snapshotV1(t *testing.T, e *Engine) string {
	t.Helper()
	e.snapMu.Lock()
	defer e.snapMu.Unlock()
	if _, err := e.wal.Cut(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	sw := newV1Writer(&buf)
	e.mu.Lock()
	engineLSN := e.wal.LastLSN()
	sw.uvarint(engineLSN)
	var parts []*partner
	for _, p := range e.mu.partners {
		parts = append(parts, p)
	}
	e.mu.Unlock()
	sort.Slice(parts, func(i, j int) bool { return parts[i].slug < parts[j].slug })
	sw.uvarint(uint64(len(parts)))
	for _, p := range parts {
		sw.str(p.slug)
		sw.write(p.digest.Load()[:])
	}
	wss := e.Workspaces()
	sw.uvarint(uint64(len(wss)))
	minLSN := engineLSN
	for _, w := range wss {
		minLSN = min(minLSN, writeWorkspaceV1(sw, w))
	}
	if err := sw.finish(); err != nil {
		t.Fatal(err)
	}
	name := snapName(minLSN)
	if err := os.WriteFile(filepath.Join(e.opts.Dir, name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	snaps, _ := listSnapshots(e.opts.Dir)
	for _, s := range snaps {
		if s.lsn < minLSN {
			os.Remove(filepath.Join(e.opts.Dir, s.name))
		}
	}
	if err := e.wal.Retire(minLSN + 1); err != nil {
		t.Fatal(err)
	}
	return name
}

func writeWorkspaceV1(sw *v1Writer, w *Workspace) uint64 {
	w.usersMu.Lock()
	defer w.usersMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	lsn := w.e.wal.LastLSN()
	sw.str(w.id)
	sw.write(w.keyDigest[:])
	sw.uvarint(lsn)
	keys := make([]*importKey, 0)
	w.keys.RLock()
	for _, k := range w.keys.byID {
		keys = append(keys, k)
	}
	w.keys.RUnlock()
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
	w.usage.Lock()
	usage := maps.Clone(w.usage.m)
	w.usage.Unlock()
	sw.uvarint(uint64(len(usage)))
	for p, days := range usage {
		sw.str(p)
		sw.uvarint(uint64(len(days)))
		for d, n := range days {
			sw.varint(int64(d))
			sw.uvarint(n)
		}
	}
	next := w.users.NextID()
	sw.uvarint(uint64(next))
	for id := index.UserID(0); id < next; id++ {
		if w.users.Deleted(id) {
			sw.uvarint(0)
			sw.uvarint(1)
			continue
		}
		var ukeys []byte
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
	cohorts := w.Cohorts()
	sw.uvarint(uint64(len(cohorts)))
	for _, c := range cohorts {
		m := c.meta.Load()
		sw.str(c.partner)
		sw.str(c.id)
		sw.str(m.name)
		sw.varint(m.createdAt.UnixNano())
		sw.varint(m.updatedAt.UnixNano())
		sw.bitmap(c.Members())
	}
	done := w.captureDoneLocked()
	sw.uvarint(uint64(len(done)))
	for _, d := range done {
		sw.str(d.key.partner)
		sw.str(d.key.cohort)
		sw.str(d.key.id)
		sw.varint(d.at)
	}
	ss := w.captureSessionsLocked()
	sw.uvarint(uint64(len(ss)))
	for _, s := range ss {
		sw.str(s.key.partner)
		sw.str(s.key.cohort)
		sw.str(s.key.id)
		sw.uvarint(uint64(s.total))
		sw.uvarint(s.seq)
		sw.varint(s.lastPage)
		sw.bitmap(s.pages)
		sw.bitmap(s.members)
	}
	return lsn
}

// snapVersionOf returns the version of the snapshot file at path.
func snapVersionOf(t *testing.T, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := binary.Uvarint(b[len(snapMagic):])
	return v
}

// TestUpgradeFromV1 builds a data dir as the previous release left it — a
// version 1 snapshot, a WAL tail after it, then kill -9 — and opens it with
// this code: every piece of state is intact, and the next snapshot is written
// as version 2, which loads to the same state again.
func TestUpgradeFromV1(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff}
	var v1name string
	e, err := runModel(11, 3000, opts, func(i int, e *Engine) error {
		if i == 1500 {
			v1name = snapshotV1(t, e)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSnapshotFile(filepath.Join(dir, v1name)); err != nil {
		t.Fatalf("check of the version 1 snapshot: %v", err)
	}
	want := dumpState(e)
	crash(e) // kill -9: the WAL tail after the v1 snapshot is all there is
	if v := snapVersionOf(t, filepath.Join(dir, v1name)); v != 1 {
		t.Fatalf("old snapshot is version %d", v)
	}
	e2, err := Open(opts)
	if err != nil {
		t.Fatalf("open a version 1 data dir: %v", err)
	}
	// Version 1 predates sync histories: they are not part of what an
	// upgrade keeps (a data dir of that era has none).
	upgraded := dumpState(e2)
	if got := withoutSyncs(upgraded); got != withoutSyncs(want) {
		t.Fatalf("state after upgrade differs: %s", firstDiff(withoutSyncs(want), got))
	}
	if err := e2.Check(); err != nil {
		t.Fatal(err)
	}
	if err := e2.Snapshot(); err != nil {
		t.Fatal(err)
	}
	snaps, _ := listSnapshots(dir)
	newest := filepath.Join(dir, snaps[0].name)
	if v := snapVersionOf(t, newest); v != snapVersion {
		t.Fatalf("next snapshot is version %d, want %d", v, snapVersion)
	}
	if err := checkSnapshotFile(newest); err != nil {
		t.Fatal(err)
	}
	if err := e2.Close(); err != nil {
		t.Fatal(err)
	}
	e3, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e3.Close()
	if got := dumpState(e3); got != upgraded {
		t.Fatalf("state after the version 2 snapshot differs: %s", firstDiff(upgraded, got))
	}
	if err := e3.Check(); err != nil {
		t.Fatal(err)
	}
}

// snapSection is a section of a version 2 file as laid out on disk.
type snapSection struct {
	kind          uint32
	start, at, to int // header offset, payload start, payload end
}

// sectionsOf walks the section headers of a version 2 snapshot.
func sectionsOf(t testing.TB, b []byte) []snapSection {
	t.Helper()
	off := len(snapMagic) + 1
	var out []snapSection
	for off < len(b) {
		kind := binary.LittleEndian.Uint32(b[off:])
		pad := int(binary.LittleEndian.Uint32(b[off+4:]))
		n := int(binary.LittleEndian.Uint64(b[off+8:]))
		at := off + secHeaderSize + pad
		out = append(out, snapSection{kind, off, at, at + n})
		off = at + n
	}
	return out
}

// writeV2 returns a version 2 snapshot of a model run.
func writeV2(t testing.TB, ops int) (dir string, data []byte, name string) {
	dir = t.TempDir()
	e, err := runModel(7, ops, Options{Dir: dir, Sync: wal.SyncOff}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	snaps, _ := listSnapshots(dir)
	name = snaps[0].name
	data, err = os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return dir, data, name
}

// TestSnapshotV2SectionCorruption damages every section of a version 2 file
// in turn — header, payload, padding — and checks that both start-up and
// checkSnapshotFile refuse it with the file's name and an offset inside the
// damaged section; arrays are page aligned; the undamaged file passes.
func TestSnapshotV2SectionCorruption(t *testing.T) {
	dir, orig, name := writeV2(t, 2000)
	p := filepath.Join(dir, name)
	if err := checkSnapshotFile(p); err != nil {
		t.Fatal(err)
	}
	secs := sectionsOf(t, orig)
	kinds := map[uint32]bool{}
	for _, s := range secs {
		kinds[s.kind] = true
		if s.kind > secArray && s.kind <= secArray+index.NumArrays && s.at%rawAlign != 0 {
			t.Errorf("array section %d payload at %d, not page aligned", s.kind, s.at)
		}
	}
	for _, k := range []uint32{secEngine, secWorkspace, secUsers, secCohort, secEnd, secArray + 1, secArray + 2, secArray + 3, secArray + 4, secArray + 5} {
		if !kinds[k] {
			t.Fatalf("no section of kind %d in %v", k, secs)
		}
	}
	opts := Options{Dir: dir, Sync: wal.SyncOff}
	try := func(what string, off int, lo, hi int) {
		t.Helper()
		bad := bytes.Clone(orig)
		bad[off] ^= 0x21
		if err := os.WriteFile(p, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		err := checkSnapshotFile(p)
		var ce *codec.CorruptError
		if !errors.As(err, &ce) {
			t.Fatalf("%s (byte %d): want *codec.CorruptError, got %v", what, off, err)
		}
		if ce.File != name || ce.Offset < int64(lo) || ce.Offset > int64(hi) {
			t.Fatalf("%s (byte %d): error at %s offset %d, want %s within [%d, %d]: %v", what, off, ce.File, ce.Offset, name, lo, hi, err)
		}
		// Start-up never loads it: it sets the file aside and rebuilds the
		// state from the WAL, which here holds the whole history.
		e, err := Open(opts)
		if err != nil {
			t.Fatalf("%s (byte %d): start-up did not fall back: %v", what, off, err)
		}
		crash(e)
		if err := os.Rename(p+".corrupt", p); err != nil {
			t.Fatalf("%s (byte %d): damaged snapshot not set aside: %v", what, off, err)
		}
	}
	for _, s := range secs {
		try("header of section "+itoa(s.kind), s.start+9, s.start, s.start)
		if s.to > s.at {
			try("payload of section "+itoa(s.kind), (s.at+s.to)/2, s.start, s.to)
		}
		if s.at > s.start+secHeaderSize {
			try("padding of section "+itoa(s.kind), s.at-1, s.start, s.at)
		}
	}
	// Cut at a section boundary: the end section is missing.
	if err := os.WriteFile(p, orig[:secs[len(secs)-1].start], 0o644); err != nil {
		t.Fatal(err)
	}
	var ce *codec.CorruptError
	if err := checkSnapshotFile(p); !errors.As(err, &ce) {
		t.Fatalf("truncated file: %v", err)
	}
}

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// fixSectionCRCs recomputes every section's checksums, so that a fuzzed
// payload reaches the decoders behind them.
func fixSectionCRCs(b []byte) {
	off := len(snapMagic) + 1
	for off+secHeaderSize <= len(b) {
		pad := int(binary.LittleEndian.Uint32(b[off+4:]))
		n := binary.LittleEndian.Uint64(b[off+8:])
		at := off + secHeaderSize + pad
		if pad >= rawAlign || n > uint64(len(b)) || at+int(n) > len(b) {
			return
		}
		binary.LittleEndian.PutUint32(b[off+16:], codec.Checksum(b[at:at+int(n)]))
		binary.LittleEndian.PutUint32(b[off+20:], codec.Checksum(b[off:off+20]))
		off = at + int(n)
	}
}

// FuzzSnapshotSections mutates a valid version 2 snapshot and then fixes its
// checksums, so that the section decoders (engine fields, users header, raw
// arrays, cohorts) see damaged content with valid CRCs: loading and checking
// must refuse it with an error or accept it, never panic; what loads must not
// panic Check either.
func FuzzSnapshotSections(f *testing.F) {
	_, valid, _ := writeV2(f, 100)
	f.Add(valid, uint32(100), byte(1))
	f.Add(valid, uint32(len(valid)/2), byte(0x80))
	f.Fuzz(func(t *testing.T, data []byte, at uint32, x byte) {
		if len(data) < len(snapMagic)+1 {
			return
		}
		data = bytes.Clone(data)
		data[int(at)%len(data)] ^= x
		fixSectionCRCs(data)
		e, _ := Open(Options{})
		defer e.Close()
		if err := e.readSnapshot(bytes.NewReader(data), int64(len(data)), "fuzz.snap"); err == nil {
			_ = e.Check()
		}
		_ = checkSnapshot(bytes.NewReader(data), int64(len(data)), "fuzz.snap")
	})
}

// withoutSyncs drops the sync-history lines of a dumpState.
func withoutSyncs(dump string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(dump, "\n") {
		if !strings.HasPrefix(l, "  sync ") {
			b.WriteString(l)
		}
	}
	return b.String()
}
