package index

import (
	"bytes"
	"math/rand/v2"
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
