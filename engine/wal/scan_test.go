package wal

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine/codec"
)

// dirBytes reads every file of dir, to check that Scan changed nothing.
func dirBytes(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func scanAll(t *testing.T, dir string, from uint64) ([]rec, ScanReport, error) {
	t.Helper()
	var got []rec
	rep, err := Scan(dir, from, func(typ uint8, lsn uint64, p []byte) error {
		got = append(got, rec{typ, lsn, bytes.Clone(p)})
		return nil
	})
	return got, rep, err
}

func TestScan(t *testing.T) {
	src := t.TempDir()
	var syncs int
	opts := Options{Dir: src, Sync: SyncAlways, SegmentSize: 4 << 10, OnSync: func(d time.Duration) {
		if d < 0 {
			t.Errorf("negative sync duration %v", d)
		}
		syncs++
	}}
	_, l, err := replayAll(t, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := writeRecords(t, l, rand.New(rand.NewPCG(9, 9)), 60)
	mustClose(t, l)
	if syncs == 0 {
		t.Fatal("OnSync was never called under SyncAlways")
	}
	segs := segmentFiles(t, src)
	if len(segs) < 3 {
		t.Fatalf("want several segments, got %d", len(segs))
	}

	t.Run("clean", func(t *testing.T) {
		before := dirBytes(t, src)
		got, rep, err := scanAll(t, src, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkRecords(t, got, want)
		if rep.Records != len(want) || rep.Segments != len(segs) || rep.FirstLSN != 1 || rep.NextLSN != uint64(len(want))+1 || rep.Torn != nil {
			t.Fatalf("report %+v", rep)
		}
		var size int64
		for _, s := range segs {
			size += s.size
		}
		if rep.Bytes != size {
			t.Fatalf("Bytes = %d, want %d", rep.Bytes, size)
		}
		got, rep, err = scanAll(t, src, 30)
		if err != nil || rep.Records < len(want)-29 || rep.Records >= len(want) || rep.Segments != len(segs) || rep.FirstLSN != 1 {
			t.Fatalf("from 30: %+v, %v (the segments below 30 are skipped, as Replay skips them)", rep, err)
		}
		checkRecords(t, got, want[29:])
		if after := dirBytes(t, src); !equalDirs(before, after) {
			t.Fatal("Scan changed the directory")
		}
	})

	t.Run("torn tail is reported, not trimmed", func(t *testing.T) {
		dir := copyDir(t, src)
		last := filepath.Join(dir, segmentName(segs[len(segs)-1].first))
		offs := recordOffsets(t, last)
		cut := offs[len(offs)-1] - 3
		if err := os.Truncate(last, int64(cut)); err != nil {
			t.Fatal(err)
		}
		before := dirBytes(t, dir)
		got, rep, err := scanAll(t, dir, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkRecords(t, got, want[:len(want)-1])
		if rep.Torn == nil || rep.Torn.Offset != int64(offs[len(offs)-2]) {
			t.Fatalf("torn = %+v, want offset %d", rep.Torn, offs[len(offs)-2])
		}
		if after := dirBytes(t, dir); !equalDirs(before, after) {
			t.Fatal("Scan trimmed the torn tail")
		}
	})

	t.Run("corruption in an older segment", func(t *testing.T) {
		dir := copyDir(t, src)
		p := filepath.Join(dir, segmentName(segs[0].first))
		b, _ := os.ReadFile(p)
		b[segmentHeaderSize+20] ^= 0xff
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, err := scanAll(t, dir, 1)
		var ce *codec.CorruptError
		if !errors.As(err, &ce) || ce.File != segmentName(segs[0].first) {
			t.Fatalf("want *codec.CorruptError in the first segment, got %v", err)
		}
	})

	t.Run("corruption below from is skipped, as by Replay", func(t *testing.T) {
		dir := copyDir(t, src)
		p := filepath.Join(dir, segmentName(segs[0].first))
		b, _ := os.ReadFile(p)
		b[segmentHeaderSize+20] ^= 0xff
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		from := segs[1].first
		got, _, err := scanAll(t, dir, from)
		if err != nil {
			t.Fatalf("from %d: %v", from, err)
		}
		checkRecords(t, got, want[from-1:])
		// Replay agrees: it starts from the same lsn on the same damage.
		rgot, l, err := replayAll(t, Options{Dir: dir, SegmentSize: 4 << 10}, from)
		if err != nil {
			t.Fatalf("Replay from %d: %v", from, err)
		}
		mustClose(t, l)
		checkRecords(t, rgot, want[from-1:])
	})

	t.Run("missing segment", func(t *testing.T) {
		dir := copyDir(t, src)
		if err := os.Remove(filepath.Join(dir, segmentName(segs[1].first))); err != nil {
			t.Fatal(err)
		}
		_, _, err := scanAll(t, dir, 1)
		var ce *codec.CorruptError
		if !errors.As(err, &ce) {
			t.Fatalf("want *codec.CorruptError for a gap, got %v", err)
		}
	})

	t.Run("empty dir", func(t *testing.T) {
		_, rep, err := scanAll(t, t.TempDir(), 1)
		if err != nil || rep.Segments != 0 || rep.Records != 0 {
			t.Fatalf("%+v, %v", rep, err)
		}
	})
}

func equalDirs(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
