package engine

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

func TestScanCursorRoundTrip(t *testing.T) {
	c := newCursorCodec([]byte("secret"))
	for _, id := range []uint32{0, 1, 2, 1 << 20, ^uint32(0) - 1, ^uint32(0)} {
		y := c.encodeScan("ws", id)
		if y == 0 {
			t.Fatalf("encodeScan(%d) = 0", id)
		}
		got, ok := c.decodeScan("ws", y)
		if !ok || got != id {
			t.Fatalf("decodeScan(encodeScan(%d)) = %d, %v", id, got, ok)
		}
		if _, ok := c.decodeScan("other", y); ok {
			t.Fatalf("cursor of ws accepted by another workspace")
		}
	}
	// Cycle walking around 0: whatever encrypts to 0 gets the image of 0.
	x := c.feistel(0, true)
	if got := c.feistel(x, false); got != 0 {
		t.Fatalf("feistel is not a permutation: %x → %x", x, got)
	}
	for y := uint64(1); y < 2000; y++ {
		if _, ok := c.decodeScan("ws", y); ok {
			t.Fatalf("small cursor %d accepted", y)
		}
	}
}

func TestScanExternalIDs(t *testing.T) {
	_, w := fixture(t)
	var b UserBatch
	for i := range 1000 {
		b.Add(fmt.Appendf(nil, "s%04d", i), nil, nil)
	}
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
	var ch []change
	for i := 0; i < 1000; i += 3 {
		ch = append(ch, ext(fmt.Sprintf("s%04d", i)))
	}
	ch = append(ch, dev("d-anon"), alias("email", "a@x"), ext("e1"))
	apply(t, w, "c", ch...)
	var want []string
	for i := 0; i < 1000; i += 3 {
		want = append(want, fmt.Sprintf("s%04d", i))
	}
	want = append(want, "e1") // the anonymous and alias-only members have none
	slices.Sort(want)

	c := w.Cohort("p", "c")
	for _, count := range []int{1, 7, 100, 5000} {
		var got []string
		cursor, steps := uint64(0), 0
		for {
			next, err := w.ScanExternalIDs(c, cursor, count, func(k []byte) { got = append(got, string(k)) })
			if err != nil {
				t.Fatal(err)
			}
			steps++
			if next == 0 {
				break
			}
			cursor = next
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("count %d: scanned %d ids, want %d", count, len(got), len(want))
		}
		if min := (c.Members().GetCardinality() + uint64(count) - 1) / uint64(count); uint64(steps) < min {
			t.Fatalf("count %d: %d steps, at least %d expected", count, steps, min)
		}
	}
	if next, err := w.ScanExternalIDs(nil, 0, 10, func([]byte) { t.Fatal("unknown cohort has members") }); err != nil || next != 0 {
		t.Fatalf("unknown cohort: %d, %v", next, err)
	}
	var inv *InvalidError
	if _, err := w.ScanExternalIDs(c, 12345, 10, func([]byte) {}); !errors.As(err, &inv) || inv.Message != "invalid cursor" {
		t.Fatalf("bad cursor: %v", err)
	}
}

func TestWorkspaceByKeyDigest(t *testing.T) {
	e, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.CreateWorkspace("a")
	if err != nil {
		t.Fatal(err)
	}
	d := SecretDigest([]byte(key))
	if w := e.WorkspaceByKeyDigest(d); w == nil || w.ID() != "a" || w != e.WorkspaceByAPIKey([]byte(key)) {
		t.Fatalf("WorkspaceByKeyDigest = %v", w)
	}
	if w := e.WorkspaceByKeyDigest(SecretDigest([]byte(key + "x"))); w != nil {
		t.Fatalf("wrong digest found %s", w.ID())
	}
	// What rotation and deletion do to the index: the digest no longer resolves.
	e.keys.Lock()
	delete(e.keys.api, d)
	e.keys.Unlock()
	if w := e.WorkspaceByKeyDigest(d); w != nil {
		t.Fatalf("dropped key still resolves to %s", w.ID())
	}
}
