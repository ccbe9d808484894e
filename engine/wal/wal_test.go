package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cohortd/cohortd/engine/codec"
)

type rec struct {
	typ     uint8
	lsn     uint64
	payload []byte
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openLog(t testing.TB, opts Options) *Log {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.OnFatal == nil {
		opts.OnFatal = func(err error) { t.Errorf("unexpected OnFatal: %v", err) }
	}
	l, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// replayAll opens dir, replays from, and returns the records and the log.
func replayAll(t testing.TB, opts Options, from uint64) ([]rec, *Log, error) {
	t.Helper()
	l := openLog(t, opts)
	var got []rec
	err := l.Replay(from, func(typ uint8, lsn uint64, p []byte) error {
		got = append(got, rec{typ, lsn, bytes.Clone(p)})
		return nil
	})
	return got, l, err
}

func mustClose(t testing.TB, l *Log) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func makePayload(r *rand.Rand, lsn uint64) []byte {
	n := r.IntN(300)
	if r.IntN(20) == 0 {
		n = 2000 + r.IntN(3000)
	}
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(lsn) + byte(i)
	}
	return p
}

func checkRecords(t testing.TB, got, want []rec) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].typ != want[i].typ || got[i].lsn != want[i].lsn || !bytes.Equal(got[i].payload, want[i].payload) {
			t.Fatalf("record %d: got (type %d, lsn %d, %d bytes), want (type %d, lsn %d, %d bytes)",
				i, got[i].typ, got[i].lsn, len(got[i].payload), want[i].typ, want[i].lsn, len(want[i].payload))
		}
	}
}

// writeRecords appends n records to a fresh or existing log and returns them.
func writeRecords(t testing.TB, l *Log, r *rand.Rand, n int) []rec {
	t.Helper()
	var out []rec
	for range n {
		typ := uint8(r.IntN(4) + 1)
		p := makePayload(r, l.LastLSN()+1)
		lsn, err := l.Append(typ, p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rec{typ, lsn, p})
	}
	if err := l.Wait(l.LastLSN()); err != nil {
		t.Fatal(err)
	}
	return out
}

func segmentFiles(t testing.TB, dir string) []segmentInfo {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

func TestParseSyncMode(t *testing.T) {
	for _, m := range []SyncMode{SyncAlways, SyncInterval, SyncOff} {
		got, err := ParseSyncMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseSyncMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseSyncMode("sometimes"); err == nil {
		t.Error("ParseSyncMode accepted a bad mode")
	}
}

func TestSegmentName(t *testing.T) {
	if got := segmentName(1); got != "00000000000000000001.wal" {
		t.Fatalf("segmentName(1) = %q", got)
	}
	for _, v := range []uint64{1, 42, 1 << 40, ^uint64(0)} {
		got, ok := parseSegmentName(segmentName(v))
		if !ok || got != v {
			t.Errorf("parseSegmentName(segmentName(%d)) = %d, %v", v, got, ok)
		}
	}
	for _, bad := range []string{"1.wal", "00000000000000000000.wal", "0000000000000000000a.wal", "00000000000000000001.tmp"} {
		if _, ok := parseSegmentName(bad); ok {
			t.Errorf("parseSegmentName(%q) accepted", bad)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncOff} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, Sync: mode, SegmentSize: 4 << 10}
			r := rand.New(rand.NewPCG(1, uint64(mode)))

			got, l, err := replayAll(t, opts, 1)
			if err != nil || len(got) != 0 {
				t.Fatalf("fresh replay: %d records, %v", len(got), err)
			}
			want := writeRecords(t, l, r, 300)
			if want[0].lsn != 1 {
				t.Fatalf("first lsn %d, want 1", want[0].lsn)
			}
			size := l.Size()
			mustClose(t, l)
			segs := segmentFiles(t, dir)
			if len(segs) < 4 {
				t.Fatalf("got %d segments, want several", len(segs))
			}
			var onDisk int64
			for _, s := range segs {
				onDisk += s.size
			}
			if onDisk != size {
				t.Fatalf("Size() = %d, files hold %d bytes", size, onDisk)
			}

			got, l, err = replayAll(t, opts, 1)
			if err != nil {
				t.Fatal(err)
			}
			checkRecords(t, got, want)
			if l.Size() != size {
				t.Fatalf("Size() after reopen = %d, want %d", l.Size(), size)
			}
			// Appends continue the sequence.
			more := writeRecords(t, l, r, 50)
			if more[0].lsn != 301 {
				t.Fatalf("lsn after reopen %d, want 301", more[0].lsn)
			}
			want = append(want, more...)
			mustClose(t, l)

			for _, from := range []uint64{1, 2, 150, 299, 350, 351} {
				got, l, err := replayAll(t, opts, from)
				if err != nil {
					t.Fatalf("from %d: %v", from, err)
				}
				checkRecords(t, got, want[from-1:])
				if l.LastLSN() != 350 {
					t.Fatalf("from %d: LastLSN() = %d, want 350", from, l.LastLSN())
				}
				mustClose(t, l)
			}
			if _, _, err := replayAll(t, opts, 352); err == nil {
				t.Fatal("replay from past the end succeeded")
			}
		})
	}
}

func TestAppendBeforeReplay(t *testing.T) {
	l := openLog(t, Options{Dir: t.TempDir()})
	if _, err := l.Append(1, nil); !errors.Is(err, ErrNotReplayed) {
		t.Fatalf("Append before Replay: %v", err)
	}
	if err := l.Replay(1, func(uint8, uint64, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := l.Replay(1, func(uint8, uint64, []byte) error { return nil }); err == nil {
		t.Fatal("second Replay succeeded")
	}
	if err := l.Wait(5); err == nil {
		t.Fatal("Wait for an unassigned lsn succeeded")
	}
	mustClose(t, l)
	if _, err := l.Append(1, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestReplayCallbackError(t *testing.T) {
	dir := t.TempDir()
	_, l, _ := replayAll(t, Options{Dir: dir}, 1)
	writeRecords(t, l, rand.New(rand.NewPCG(2, 2)), 5)
	mustClose(t, l)
	boom := errors.New("boom")
	l = openLog(t, Options{Dir: dir})
	err := l.Replay(1, func(_ uint8, lsn uint64, _ []byte) error {
		if lsn == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Replay = %v, want boom", err)
	}
	mustClose(t, l)
}

func TestGroupCommit(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: SyncAlways, SegmentSize: 256 << 10}
	_, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	const writers = 8
	perWriter := 200
	if testing.Short() {
		perWriter = 100
	}
	var mu sync.Mutex
	committed := map[uint64][]byte{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				p := []byte(fmt.Sprintf("writer %d record %d", w, i))
				lsn, err := l.Commit(uint8(w), p)
				if err != nil {
					t.Error(err)
					return
				}
				// Durable on return: synced must cover lsn.
				l.mu.Lock()
				synced := l.mu.synced
				l.mu.Unlock()
				if synced < lsn {
					t.Errorf("Commit returned lsn %d with synced %d", lsn, synced)
				}
				mu.Lock()
				committed[lsn] = p
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	st := l.Stats()
	mustClose(t, l)
	commits := uint64(writers * perWriter)
	t.Logf("%d commits, %d syncs, %d writes, %d bytes", commits, st.Syncs, st.Writes, st.Bytes)
	if st.Syncs >= commits {
		t.Errorf("%d syncs for %d commits: no group commit", st.Syncs, commits)
	}
	got, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	mustClose(t, l)
	if len(got) != len(committed) {
		t.Fatalf("replayed %d records, committed %d", len(got), len(committed))
	}
	for _, r := range got {
		if !bytes.Equal(committed[r.lsn], r.payload) {
			t.Fatalf("lsn %d: got %q, want %q", r.lsn, r.payload, committed[r.lsn])
		}
	}
}

// TestConcurrentModes runs appenders, waiters, Cut and Retire together, for
// the race detector.
func TestConcurrentModes(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncOff} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, Sync: mode, SegmentSize: 8 << 10, SyncInterval: 1e6}
			_, l, err := replayAll(t, opts, 1)
			if err != nil {
				t.Fatal(err)
			}
			perWriter := 300
			if testing.Short() {
				perWriter = 100
			}
			total := uint64(4 * perWriter)
			var wg sync.WaitGroup
			var stop atomic.Bool
			for w := range 4 {
				wg.Go(func() {
					for i := range perWriter {
						if _, err := l.Commit(uint8(w), bytes.Repeat([]byte{byte(i)}, i)); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			var lastCut atomic.Uint64
			wg.Go(func() {
				for !stop.Load() {
					cut, err := l.Cut()
					if err != nil {
						t.Error(err)
						return
					}
					if err := l.Retire(cut); err != nil {
						t.Error(err)
						return
					}
					lastCut.Store(cut)
					_ = l.Size()
				}
			})
			for range 100 {
				_ = l.Stats()
				_ = l.LastLSN()
			}
			for l.LastLSN() < total && !t.Failed() {
				_ = l.Size()
			}
			stop.Store(true)
			wg.Wait()
			mustClose(t, l)
			from := max(lastCut.Load(), 1) // no cut yet: replay starts at LSN 1
			got, l, err := replayAll(t, opts, from)
			if err != nil {
				t.Fatal(err)
			}
			mustClose(t, l)
			if n := uint64(len(got)); n != total-from+1 {
				t.Fatalf("replay from %d: %d records, want %d", from, n, total-from+1)
			}
		})
	}
}

func TestSyncIntervalSyncs(t *testing.T) {
	dir := t.TempDir()
	_, l, err := replayAll(t, Options{Dir: dir, Sync: SyncInterval, SyncInterval: 1e6}, 1)
	if err != nil {
		t.Fatal(err)
	}
	lsn, err := l.Commit(1, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		l.mu.Lock()
		synced := l.mu.synced
		l.mu.Unlock()
		if synced >= lsn {
			break
		}
		// The background goroutine syncs every millisecond.
		runtime.Gosched()
	}
	mustClose(t, l)
}

func TestCutRetire(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentSize: 1 << 20}
	r := rand.New(rand.NewPCG(3, 3))
	_, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	if cut, err := l.Cut(); err != nil || cut != 1 {
		t.Fatalf("Cut on an empty log = %d, %v; want 1", cut, err)
	}
	all := writeRecords(t, l, r, 10)
	cut1, err := l.Cut()
	if err != nil || cut1 != 11 {
		t.Fatalf("Cut = %d, %v; want 11", cut1, err)
	}
	if again, err := l.Cut(); err != nil || again != 11 {
		t.Fatalf("second Cut = %d, %v; want 11", again, err)
	}
	all = append(all, writeRecords(t, l, r, 10)...)
	// Records appended but not waited for are covered by Cut too.
	for range 5 {
		p := makePayload(r, l.LastLSN()+1)
		lsn, err := l.Append(7, p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, rec{7, lsn, p})
	}
	cut2, err := l.Cut()
	if err != nil || cut2 != 26 {
		t.Fatalf("Cut = %d, %v; want 26", cut2, err)
	}
	all = append(all, writeRecords(t, l, r, 10)...)
	if n := len(segmentFiles(t, dir)); n != 3 {
		t.Fatalf("%d segments, want 3", n)
	}
	before := l.Size()
	if err := l.Retire(cut1); err != nil {
		t.Fatal(err)
	}
	segs := segmentFiles(t, dir)
	if len(segs) != 2 || segs[0].first != cut1 {
		t.Fatalf("after Retire(%d): segments %+v", cut1, segs)
	}
	if l.Size() >= before {
		t.Fatalf("Size did not shrink: %d -> %d", before, l.Size())
	}
	// Retire never removes the active segment.
	if err := l.Retire(1 << 40); err != nil {
		t.Fatal(err)
	}
	segs = segmentFiles(t, dir)
	if len(segs) != 1 || segs[0].first != cut2 {
		t.Fatalf("after Retire(max): segments %+v", segs)
	}
	var onDisk int64
	for _, s := range segs {
		onDisk += s.size
	}
	if l.Size() != onDisk {
		t.Fatalf("Size() = %d, files hold %d", l.Size(), onDisk)
	}
	mustClose(t, l)

	got, l, err := replayAll(t, opts, cut2)
	if err != nil {
		t.Fatal(err)
	}
	checkRecords(t, got, all[cut2-1:])
	mustClose(t, l)
	if _, _, err := replayAll(t, opts, cut1); err == nil {
		t.Fatal("replay from a retired lsn succeeded")
	}
}

func TestReplayEmptyDirStartsAtFrom(t *testing.T) {
	dir := t.TempDir()
	_, l, err := replayAll(t, Options{Dir: dir}, 500)
	if err != nil {
		t.Fatal(err)
	}
	if lsn, err := l.Commit(1, []byte("a")); err != nil || lsn != 500 {
		t.Fatalf("Commit = %d, %v; want 500", lsn, err)
	}
	mustClose(t, l)
	got, l, err := replayAll(t, Options{Dir: dir}, 500)
	if err != nil || len(got) != 1 || got[0].lsn != 500 {
		t.Fatalf("replay: %+v, %v", got, err)
	}
	mustClose(t, l)
}

func copyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// recordOffsets returns the byte offsets of the records in a segment file.
func recordOffsets(t testing.TB, p string) []int {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int
	off := segmentHeaderSize
	for off < len(data) {
		_, n, st := decodeRecord(data[off:])
		if st != decodeOK {
			t.Fatalf("%s: %v at %d", p, st, off)
		}
		offs = append(offs, off)
		off += n
	}
	return append(offs, off)
}

func TestTornTail(t *testing.T) {
	src := t.TempDir()
	opts := Options{Dir: src, Sync: SyncOff, SegmentSize: 4 << 10}
	r := rand.New(rand.NewPCG(4, 4))
	_, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := writeRecords(t, l, r, 40)
	// Make the last record sizeable and with non-zero bytes everywhere.
	big := bytes.Repeat([]byte("torn!"), 60)
	lsn, err := l.Commit(3, big)
	if err != nil {
		t.Fatal(err)
	}
	mustClose(t, l)
	segs := segmentFiles(t, src)
	if len(segs) < 2 {
		t.Fatalf("want several segments, got %d", len(segs))
	}
	lastName := segmentName(segs[len(segs)-1].first)
	offs := recordOffsets(t, filepath.Join(src, lastName))
	start, end := offs[len(offs)-2], offs[len(offs)-1]

	for cut := start; cut < end; cut++ {
		dir := copyDir(t, src)
		p := filepath.Join(dir, lastName)
		if err := os.Truncate(p, int64(cut)); err != nil {
			t.Fatal(err)
		}
		o := opts
		o.Dir = dir
		got, l, err := replayAll(t, o, 1)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		checkRecords(t, got, want)
		if fi, err := os.Stat(p); err != nil || fi.Size() != int64(start) {
			t.Fatalf("cut at %d: file not trimmed to %d: %v, %v", cut, start, fi.Size(), err)
		}
		n, err := l.Commit(5, []byte("after"))
		if err != nil || n != lsn {
			t.Fatalf("cut at %d: Commit = %d, %v; want lsn %d", cut, n, err, lsn)
		}
		mustClose(t, l)
		got, l, err = replayAll(t, o, 1)
		if err != nil {
			t.Fatalf("cut at %d: second replay: %v", cut, err)
		}
		checkRecords(t, got, append(want[:len(want):len(want)], rec{5, lsn, []byte("after")}))
		mustClose(t, l)
		if testing.Short() && cut > start+40 && cut < end-40 {
			cut += 7 // sample the middle of the payload in -short mode
		}
	}
}

func TestTornTailVariants(t *testing.T) {
	src := t.TempDir()
	opts := Options{Dir: src}
	_, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := writeRecords(t, l, rand.New(rand.NewPCG(5, 5)), 5)
	mustClose(t, l)
	p0 := filepath.Join(src, segmentName(1))
	offs := recordOffsets(t, p0)
	lastStart, end := offs[len(offs)-2], offs[len(offs)-1]

	tests := []struct {
		name   string
		mutate func(b []byte) []byte
		want   int // records replayed
	}{
		{"trailing zeros", func(b []byte) []byte { return append(b, make([]byte, 100)...) }, 5},
		{"trailing zeros short", func(b []byte) []byte { return append(b, 0, 0, 0) }, 5},
		{"bad checksum at EOF", func(b []byte) []byte { b[end-1] ^= 0xff; return b }, 4},
		{"bad checksum then zeros", func(b []byte) []byte { b[end-1] ^= 0xff; return append(b, make([]byte, 64)...) }, 4},
		{"zeroed last record", func(b []byte) []byte { clear(b[lastStart:]); return b }, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := copyDir(t, src)
			p := filepath.Join(dir, segmentName(1))
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, tt.mutate(b), 0o644); err != nil {
				t.Fatal(err)
			}
			got, l, err := replayAll(t, Options{Dir: dir}, 1)
			if err != nil {
				t.Fatal(err)
			}
			checkRecords(t, got, want[:tt.want])
			mustClose(t, l)
		})
	}

	t.Run("torn segment header", func(t *testing.T) {
		dir := copyDir(t, src)
		// A crash right after creating the next segment.
		if err := os.WriteFile(filepath.Join(dir, segmentName(6)), []byte("CDW"), 0o644); err != nil {
			t.Fatal(err)
		}
		got, l, err := replayAll(t, Options{Dir: dir}, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkRecords(t, got, want)
		if lsn, err := l.Commit(1, nil); err != nil || lsn != 6 {
			t.Fatalf("Commit = %d, %v", lsn, err)
		}
		mustClose(t, l)
	})
	t.Run("empty segment file", func(t *testing.T) {
		dir := copyDir(t, src)
		if err := os.WriteFile(filepath.Join(dir, segmentName(6)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		got, l, err := replayAll(t, Options{Dir: dir}, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkRecords(t, got, want)
		mustClose(t, l)
	})
}

func TestCorruption(t *testing.T) {
	src := t.TempDir()
	opts := Options{Dir: src, SegmentSize: 8 << 10}
	_, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	writeRecords(t, l, rand.New(rand.NewPCG(6, 6)), 150)
	mustClose(t, l)
	segs := segmentFiles(t, src)
	if len(segs) < 3 {
		t.Fatalf("want 3+ segments, got %d", len(segs))
	}

	check := func(t *testing.T, dir, file string, off int) {
		t.Helper()
		_, l, err := replayAll(t, Options{Dir: dir}, 1)
		defer l.Close()
		var ce *codec.CorruptError
		if !errors.As(err, &ce) {
			t.Fatalf("Replay = %v, want *codec.CorruptError", err)
		}
		if ce.File != file || ce.Offset != int64(off) {
			t.Fatalf("CorruptError %q: want file %s offset %d", ce, file, off)
		}
		if _, err := l.Append(1, nil); err == nil {
			t.Fatal("Append after a failed Replay succeeded")
		}
	}
	flip := func(t *testing.T, dir, name string, off int) {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[off] ^= 0x10
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	older := segmentName(segs[1].first)
	olderOffs := recordOffsets(t, filepath.Join(src, older))
	last := segmentName(segs[len(segs)-1].first)
	lastOffs := recordOffsets(t, filepath.Join(src, last))
	if len(lastOffs) < 4 {
		t.Fatalf("last segment has %d records, want 3+", len(lastOffs)-1)
	}

	t.Run("older segment every byte of a record", func(t *testing.T) {
		// The last record of an older segment: it ends at EOF, but only the
		// last segment may have a torn tail.
		i := len(olderOffs) - 2
		dir := copyDir(t, src)
		for off := olderOffs[i]; off < olderOffs[i+1]; off++ {
			flip(t, dir, older, off)
			check(t, dir, older, olderOffs[i])
			flip(t, dir, older, off) // restore
			if testing.Short() && off > olderOffs[i]+20 {
				off += 5
			}
		}
	})
	t.Run("older segment truncated", func(t *testing.T) {
		dir := copyDir(t, src)
		if err := os.Truncate(filepath.Join(dir, older), int64(olderOffs[1]+3)); err != nil {
			t.Fatal(err)
		}
		check(t, dir, older, olderOffs[1])
	})
	t.Run("last segment middle", func(t *testing.T) {
		i := len(lastOffs) / 2
		dir := copyDir(t, src)
		flip(t, dir, last, lastOffs[i]+recordHeaderSize) // payload or crc byte
		check(t, dir, last, lastOffs[i])
	})
	t.Run("last segment huge length", func(t *testing.T) {
		dir := copyDir(t, src)
		p := filepath.Join(dir, last)
		b, _ := os.ReadFile(p)
		b[lastOffs[1]+3] = 0xff
		os.WriteFile(p, b, 0o644)
		check(t, dir, last, lastOffs[1])
	})
	t.Run("bad magic", func(t *testing.T) {
		dir := copyDir(t, src)
		flip(t, dir, older, 0)
		check(t, dir, older, 0)
	})
	t.Run("missing segment", func(t *testing.T) {
		dir := copyDir(t, src)
		os.Remove(filepath.Join(dir, older))
		_, l, err := replayAll(t, Options{Dir: dir}, 1)
		defer l.Close()
		var ce *codec.CorruptError
		if !errors.As(err, &ce) || ce.File != segmentName(segs[2].first) {
			t.Fatalf("Replay = %v, want *codec.CorruptError for the segment after the gap", err)
		}
	})
	t.Run("message", func(t *testing.T) {
		e := &codec.CorruptError{File: segmentName(1), Offset: 123, Reason: "checksum mismatch"}
		if got, want := e.Error(), "corrupt 00000000000000000001.wal at offset 123: checksum mismatch"; got != want {
			t.Fatalf("Error() = %q, want %q", got, want)
		}
	})
}

func TestOnFatal(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncOff} {
		t.Run(mode.String(), func(t *testing.T) {
			var fatal atomic.Pointer[error]
			opts := Options{Dir: t.TempDir(), Sync: mode, OnFatal: func(err error) { fatal.Store(&err) }}
			_, l, err := replayAll(t, opts, 1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.Commit(1, []byte("ok")); err != nil {
				t.Fatal(err)
			}
			// Simulate an I/O error: close the file under the Log.
			l.active.f.Close()
			if _, err := l.Commit(1, []byte("fails")); err == nil {
				t.Fatal("Commit on a broken file succeeded")
			}
			if fatal.Load() == nil {
				t.Fatal("OnFatal not called")
			}
			if _, err := l.Append(1, []byte("later")); err == nil {
				t.Fatal("Append after a fatal error succeeded")
			}
			if _, err := l.Cut(); err == nil {
				t.Fatal("Cut after a fatal error succeeded")
			}
			if err := l.Close(); err == nil {
				t.Fatal("Close after a fatal error returned nil")
			}
		})
	}
	t.Run("nil OnFatal panics", func(t *testing.T) {
		l, err := Open(Options{Dir: t.TempDir(), Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Replay(1, func(uint8, uint64, []byte) error { return nil }); err != nil {
			t.Fatal(err)
		}
		l.active.f.Close()
		defer func() {
			if recover() == nil {
				t.Fatal("no panic")
			}
		}()
		l.Commit(1, nil)
	})
}

func TestAppendTooLarge(t *testing.T) {
	_, l, err := replayAll(t, Options{Dir: t.TempDir()}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer mustClose(t, l)
	if testing.Short() {
		t.Skip("allocates MaxRecordSize")
	}
	if _, err := l.Append(1, make([]byte, MaxRecordSize+1)); !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("Append = %v, want ErrRecordTooLarge", err)
	}
}

func TestLargeRecordsAndAppendFlush(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: SyncOff, SegmentSize: 1 << 20}
	_, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	var want []rec
	for i := range 12 {
		p := bytes.Repeat([]byte{byte(i)}, (i+1)*300<<10) // up to 3.6 MiB, bigger than a segment
		lsn, err := l.Append(uint8(i), p)                 // no Wait: Append flushes past 4 MiB
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, rec{uint8(i), lsn, p})
	}
	if l.Stats().Writes == 0 {
		t.Fatal("Append never wrote its pending buffer")
	}
	mustClose(t, l)
	got, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkRecords(t, got, want)
	mustClose(t, l)
}
