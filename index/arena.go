package index

import (
	"encoding/binary"
	"errors"
)

// The key arena holds the bytes of every identifier attached, in one region.
//
// # Entry layout
//
// An entry starts at an even offset and reads
//
//	id   uint32 little-endian  the user that holds the key; on a free entry, the next free entry's ref
//	hdr  uint8                 kind<<6 | n, where n = key length if 1..63, else 0; kind 0 marks a free entry
//	len  uint16 little-endian  key length; present only when hdr's n is 0
//	key  [len]byte
//	pad  0 or 1 byte           so that the next entry starts at an even offset
//
// The id sits next to the key bytes so that a lookup confirms the key and learns the
// user with one cache miss on the arena (the table slot holds a keyRef, not an id).
//
// # References
//
// A keyRef is the entry's offset divided by two, so 32 bits address 8 GiB of key
// bytes per workspace. Refs 0 and 1 are reserved for empty and tombstone table slots:
// the first four bytes of the arena are never used. The arena grows by copying into a
// region twice as large (refs are offsets, so they stay valid), built while readers
// go on with the old one.
//
// # Reuse
//
// A detached key's entry is marked free (kind 0, length kept, so a walk of the arena
// can step over it) and pushed on a free list of its entry size; an attach of a key
// with the same entry size takes it back. Identifiers of one workload mostly share a
// few sizes (19-byte external ids, 36-byte device ids), so churn reuses its own space.
// When the arena would have to grow while free entries take more than the live ones,
// it is compacted instead (see compact.go), which bounds it at about twice the live
// bytes whatever the sizes churned.
//
// Readers reach an entry only through a table slot or a user's key list, under the
// read lock; an entry is freed and reused only under the write lock after every path
// to it is gone, so no reader can see it change.

// keyRef is an entry's byte offset in the arena divided by arenaUnit.
type keyRef uint32

const (
	refEmpty keyRef = 0 // a table slot that was never used since the last rehash
	refTomb  keyRef = 1 // a table slot whose key was detached

	arenaUnit     = 2
	arenaStart    = 4                     // offsets 0..3 would encode refs 0 and 1
	arenaMaxBytes = (1 << 32) * arenaUnit // what 32-bit refs address
	arenaMinBytes = 64 << 10              // the first region of a small workspace

	// MaxKeyLen is the longest key the arena stores. Identifiers are at most 512 bytes;
	// an alias key is name + NUL + label, so it may reach 1,025 bytes.
	MaxKeyLen = 1<<16 - 1
)

// ErrFull is returned (wrapped) when a workspace's key arena or user ids are used up:
// more than 8 GiB of live key bytes (Options.MaxArenaBytes in tests), or 2^32-1 users.
var ErrFull = errors.New("index: identity tables full")

// entrySize returns the bytes an entry for a key of length n takes, padding included.
func entrySize(n int) int {
	s := 4 + 1 + n
	if n > 63 {
		s += 2
	}
	return (s + arenaUnit - 1) &^ (arenaUnit - 1)
}

// putEntry writes the entry (id, kind, key) at byte offset off of a.
func putEntry(a []byte, off int, id UserID, kind Kind, key []byte) {
	c := a[off : off+entrySize(len(key))]
	binary.LittleEndian.PutUint32(c, uint32(id))
	p := 5
	if n := len(key); n <= 63 {
		c[4] = byte(kind)<<6 | byte(n)
	} else {
		c[4] = byte(kind) << 6
		binary.LittleEndian.PutUint16(c[5:], uint16(n))
		p = 7
	}
	copy(c[p:], key)
}

// parseEntry decodes the entry at byte offset off of a, which may be any value:
// ok is false if the entry does not fit in a. Everything read from a snapshot goes
// through here, so a corrupt ref can answer wrongly but never read out of bounds.
func parseEntry(a []byte, off uint64) (id UserID, kind Kind, key []byte, size int, ok bool) {
	if off+5 > uint64(len(a)) {
		return NoUser, 0, nil, 0, false
	}
	id = UserID(binary.LittleEndian.Uint32(a[off:]))
	hdr := a[off+4]
	kind = Kind(hdr >> 6)
	n := uint64(hdr & 63)
	p := off + 5
	if n == 0 {
		if p+2 > uint64(len(a)) {
			return NoUser, 0, nil, 0, false
		}
		n = uint64(binary.LittleEndian.Uint16(a[p:]))
		p += 2
		if n <= 63 {
			return NoUser, 0, nil, 0, false // not how a short key is written
		}
	}
	if p+n > uint64(len(a)) {
		return NoUser, 0, nil, 0, false
	}
	return id, kind, a[p : p+n : p+n], entrySize(int(n)), true
}

// decodeEntry decodes the live entry at ref; kind is 0 (which never matches a
// lookup) for a free or out-of-bounds entry. The key aliases the arena.
func decodeEntry(a []byte, ref keyRef) (id UserID, kind Kind, key []byte) {
	id, kind, key, _, ok := parseEntry(a, uint64(ref)*arenaUnit)
	if !ok || kind == 0 {
		return NoUser, 0, nil
	}
	return id, kind, key
}

// entryHolds reports whether the entry at ref holds key of kind, and its id
// when it does. It is decodeEntry and the comparison in one: a key of 1 to
// 63 bytes (every standard identifier) is checked with the one header byte
// that encodes its kind and length, then its bytes; anything else goes
// through decodeEntry.
func entryHolds(a []byte, ref keyRef, kind Kind, key []byte) (UserID, bool) {
	off, n := int(ref)*arenaUnit, len(key)
	if n == 0 || n > 63 || kind == 0 || off+5+n > len(a) {
		id, k, ek := decodeEntry(a, ref)
		return id, k == kind && k != 0 && string(ek) == string(key)
	}
	if a[off+4] != byte(kind)<<6|byte(n) || !sameBytes(a[off+5:off+5+n], key) {
		return NoUser, false
	}
	return UserID(binary.LittleEndian.Uint32(a[off:])), true
}

// sameBytes reports whether x and y, of the same length, hold the same bytes. Keys of
// 8 bytes or more are compared a word at a time, the last word overlapping the one
// before it, all inline: string(x) == string(y) calls memequal, whose call and
// dispatch cost more than the three words of a 19-byte external id.
func sameBytes(x, y []byte) bool {
	n := len(x)
	if n < 8 || len(y) != n {
		return string(x) == string(y)
	}
	d := binary.LittleEndian.Uint64(x[n-8:]) ^ binary.LittleEndian.Uint64(y[n-8:])
	for i := 0; i+8 < n; i += 8 {
		d |= binary.LittleEndian.Uint64(x[i:]) ^ binary.LittleEndian.Uint64(y[i:])
	}
	return d == 0
}

// entryID reads only the id of the entry at ref: the cheap first touch of an entry.
func entryID(a []byte, ref keyRef) UserID {
	off := uint64(ref) * arenaUnit
	if off+4 > uint64(len(a)) {
		return NoUser
	}
	return UserID(binary.LittleEndian.Uint32(a[off:]))
}
