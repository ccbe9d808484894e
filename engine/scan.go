package engine

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/cohortd/cohortd/index"
)

// Scan cursors are the numeric cursors of the Redis protocol's SSCAN
// (docs/API.md §6): clients parse them as unsigned 64-bit integers, so the
// opaque base64 cursors of member pages do not fit. Dense ids never leave the
// process, so a cursor is the next user id to visit, tagged with the
// workspace and encrypted as one 64-bit block: a four-round Feistel network
// whose round function is the cursor AES key (a pseudorandom permutation of
// 64-bit values). 0 means "start" and "done", so the permutation is walked
// around it: no valid cursor is 0.

const scanRounds = 4

// feistel encrypts (or with decrypt, decrypts) x.
func (c cursorCodec) feistel(x uint64, decrypt bool) uint64 {
	l, r := uint32(x>>32), uint32(x)
	var in, out [16]byte
	round := func(i int, v uint32) uint32 {
		in[0] = byte(i)
		binary.LittleEndian.PutUint32(in[1:5], v)
		c.block.Encrypt(out[:], in[:])
		return binary.LittleEndian.Uint32(out[:4])
	}
	if !decrypt {
		for i := range scanRounds {
			l, r = r, l^round(i, r)
		}
	} else {
		for i := scanRounds - 1; i >= 0; i-- {
			l, r = r^round(i, l), l
		}
	}
	return uint64(l)<<32 | uint64(r)
}

// scanTag binds a cursor to its workspace; it is never 0, so a plaintext
// cursor is never 0 either.
func scanTag(ws string) uint32 {
	h := sha256.Sum256([]byte("cohortd scan v1\x00" + ws))
	return binary.LittleEndian.Uint32(h[:4]) | 1
}

func (c cursorCodec) encodeScan(ws string, next uint32) uint64 {
	y := c.feistel(uint64(scanTag(ws))<<32|uint64(next), false)
	if y == 0 {
		// Cycle walking: 0 is not a plaintext, so its image is free.
		y = c.feistel(0, false)
	}
	return y
}

func (c cursorCodec) decodeScan(ws string, y uint64) (uint32, bool) {
	x := c.feistel(y, true)
	if x == 0 {
		x = c.feistel(0, true)
	}
	if uint32(x>>32) != scanTag(ws) {
		return 0, false
	}
	return uint32(x), true
}

// ScanExternalIDs is one step of an SSCAN-style iteration over cohort c's
// members (c nil: an unknown cohort, which has none). cursor is 0 to start,
// else a value this method returned for the same workspace (another is
// refused with an *InvalidError). It visits at most count members in
// ascending dense-id order and calls fn with the external id of each that
// has one (members without one are skipped; key is valid only during fn).
// It returns the cursor of the next step, 0 when the iteration is done.
//
// Like Redis's SSCAN, a member present from the first step to the last is
// reported exactly once; one added or removed meanwhile may or may not be.
func (w *Workspace) ScanExternalIDs(c *Cohort, cursor uint64, count int, fn func(externalID []byte)) (uint64, error) {
	start := uint32(0)
	if cursor != 0 {
		next, ok := w.e.cursor.decodeScan(w.id, cursor)
		if !ok {
			return 0, invalidf("invalid cursor")
		}
		start = next
	}
	if c == nil || count <= 0 {
		return 0, nil
	}
	it := c.Members().Iterator()
	it.AdvanceIfNeeded(start)
	emit := func(kind index.Kind, key []byte) {
		if kind == index.KindExternal {
			fn(key)
		}
	}
	for range count {
		if !it.HasNext() {
			return 0, nil
		}
		w.users.Identifiers(index.UserID(it.Next()), emit)
	}
	if !it.HasNext() {
		return 0, nil
	}
	return w.e.cursor.encodeScan(w.id, it.PeekNext()), nil
}
