package index

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestEntryHolds: the one-byte header check gives decodeEntry's answer for
// every entry of an arena of short, long and odd keys, asked with its own
// key and kind, another kind, a key one byte shorter or longer, another
// key of the same length, and on arenas cut short.
func TestEntryHolds(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	var a []byte
	type ent struct {
		ref  keyRef
		kind Kind
		key  []byte
	}
	var ents []ent
	for i := range 500 {
		n := 1 + r.IntN(80)
		if i%7 == 0 {
			n = 63 + r.IntN(3) // the edge of the short header
		}
		key := make([]byte, n)
		for j := range key {
			key[j] = byte('a' + r.IntN(3))
		}
		kind := Kind(1 + r.IntN(3))
		off := len(a)
		a = append(a, make([]byte, entrySize(n))...)
		putEntry(a, off, UserID(i+1), kind, key)
		ents = append(ents, ent{keyRef(off / arenaUnit), kind, key})
	}
	ref := func(a []byte, e keyRef, kind Kind, key []byte) (UserID, bool) {
		id, k, ek := decodeEntry(a, e)
		if k == 0 || k != kind || !bytes.Equal(ek, key) {
			return NoUser, false
		}
		return id, true
	}
	for _, cut := range []int{len(a), len(a) - 1, len(a) / 2, 3} {
		arena := a[:cut]
		for i, e := range ents {
			other := ents[(i+1)%len(ents)].key
			same := bytes.Clone(e.key)
			same[len(same)-1] ^= 1
			for _, q := range []struct {
				kind Kind
				key  []byte
			}{
				{e.kind, e.key}, {e.kind%3 + 1, e.key}, {0, e.key},
				{e.kind, e.key[:len(e.key)-1]}, {e.kind, append(bytes.Clone(e.key), 'a')},
				{e.kind, other}, {e.kind, same}, {e.kind, nil},
			} {
				gotID, got := entryHolds(arena, e.ref, q.kind, q.key)
				wantID, want := ref(arena, e.ref, q.kind, q.key)
				if got != want || (got && gotID != wantID) {
					t.Fatalf("cut %d, entry %d (kind %d, %d bytes), asked kind %d, %d bytes: %v %d, decodeEntry says %v %d",
						cut, i, e.kind, len(e.key), q.kind, len(q.key), got, gotID, want, wantID)
				}
			}
		}
	}
}

// TestMatchGroup compares matchGroup (assembly on amd64) with
// matchGroupGeneric on random buckets: full and not, a key's tag in any slot,
// twice, or nowhere, tombstones and empty slots.
func TestMatchGroup(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	b := make([]bucket, 97)
	for i := range b {
		for s := range bucketSlots {
			switch r.IntN(6) {
			case 0:
				b[i].tag[s], b[i].ref[s] = 0, refEmpty
			case 1:
				b[i].tag[s], b[i].ref[s] = 0, refTomb
			default:
				b[i].tag[s], b[i].ref[s] = uint32(r.IntN(8))<<1|1, keyRef(2+r.IntN(1000))
			}
		}
	}
	for round := range 200 {
		n := r.IntN(resolveGroup + 1)
		home, tags := make([]int32, n), make([]uint32, n)
		for j := range n {
			home[j], tags[j] = int32(r.IntN(len(b))), uint32(r.IntN(9))<<1|1
		}
		refs, pend := make([]keyRef, n), make([]uint8, n)
		wantRefs, wantPend := make([]keyRef, n), make([]uint8, n)
		np := matchGroup(b, home, tags, refs, pend, make([][]byte, n), nil)
		wantNP := matchGroupGeneric(b, home, tags, wantRefs, wantPend)
		if np != wantNP || !slices.Equal(refs, wantRefs) || !slices.Equal(pend[:np], wantPend[:wantNP]) {
			t.Fatalf("round %d: refs %v pend %v, generic %v %v", round, refs, pend[:np], wantRefs, wantPend[:wantNP])
		}
	}
}

// TestSameBytes checks sameBytes against bytes.Equal for every length up to 70,
// with the two keys equal and differing in each single byte.
func TestSameBytes(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for n := range 71 {
		x := make([]byte, n)
		for i := range x {
			x[i] = byte(r.Uint32())
		}
		y := bytes.Clone(x)
		if !sameBytes(x, y) {
			t.Fatalf("%d bytes: equal keys differ", n)
		}
		for i := range n {
			y[i] ^= 1 << r.IntN(8)
			if sameBytes(x, y) || sameBytes(y, x) {
				t.Fatalf("%d bytes: keys differing at byte %d are the same", n, i)
			}
			y[i] = x[i]
		}
		if n > 0 && sameBytes(x, y[:n-1]) {
			t.Fatalf("%d bytes: a shorter key is the same", n)
		}
	}
}
