package index

import (
	"encoding/binary"
	"errors"
)

// The key arena holds the bytes of every identifier ever attached, append-only.
//
// # Entry layout
//
// An entry starts at an even offset and reads
//
//	id   uint32 little-endian  the user that holds (or held) the key
//	hdr  uint8                 kind<<6 | n, where n = key length if 1..63, else 0
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
// bytes per workspace. The arena is cut into 1 MiB chunks that are allocated with their
// full capacity and never move, so growth never copies key bytes and a key slice taken
// under the read lock stays valid (entries are never rewritten). An entry never straddles
// two chunks. Refs 0 and 1 are reserved for empty and tombstone table slots: the first
// four bytes of chunk 0 are never used.
//
// Detached keys stay in the arena as garbage; compaction (rewriting live entries into a
// new arena during a snapshot) is left for later.

// keyRef is an entry's byte offset in the arena divided by arenaUnit.
type keyRef uint32

const (
	refEmpty keyRef = 0 // a table slot that was never used since the last rehash
	refTomb  keyRef = 1 // a table slot whose key was detached

	arenaChunkShift = 20
	arenaChunkSize  = 1 << arenaChunkShift
	arenaUnit       = 2
	arenaMaxChunks  = (1 << 32) * arenaUnit / arenaChunkSize

	// MaxKeyLen is the longest key the arena stores. Identifiers are at most 512 bytes;
	// an alias key is name + NUL + label, so it may reach 1,025 bytes.
	MaxKeyLen = 1<<16 - 1
)

// errArenaFull is returned when a workspace would need more than 8 GiB of key bytes.
var errArenaFull = errors.New("index: key arena full (8 GiB)")

// arena is the append-only store of key entries. The writer appends; readers decode
// entries at refs they found in the table. Callers provide the locking (see Users).
type arena struct {
	// chunks are made full length and never resliced, so a reader may keep a copy of
	// this slice and read entries through it after dropping the lock: nothing it can
	// reach is ever written again.
	chunks [][]byte
	tail   int // bytes used in the last chunk
}

// entrySize returns the bytes an entry for a key of length n takes, padding included.
func entrySize(n int) int {
	s := 4 + 1 + n
	if n > 63 {
		s += 2
	}
	return (s + arenaUnit - 1) &^ (arenaUnit - 1)
}

// appendEntry stores (id, kind, key) and returns its ref. The caller holds the write lock.
func (a *arena) appendEntry(id UserID, kind Kind, key []byte) (keyRef, error) {
	need := entrySize(len(key))
	if len(a.chunks) == 0 {
		a.chunks = append(a.chunks, newArenaChunk())
		a.tail = 4 // offsets 0..3 would encode refs 0 and 1
	}
	if a.tail+need > arenaChunkSize {
		if len(a.chunks) >= arenaMaxChunks {
			return 0, errArenaFull
		}
		a.chunks = append(a.chunks, newArenaChunk())
		a.tail = 0
	}
	last := len(a.chunks) - 1
	off := a.tail
	c := a.chunks[last][off : off+need]
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
	a.tail += need
	return keyRef((last<<arenaChunkShift + off) / arenaUnit), nil
}

// newArenaChunk allocates a chunk. (Huge pages were tried for chunks of 4 MiB and
// made no measurable difference, unlike for the table.)
func newArenaChunk() []byte {
	return make([]byte, arenaChunkSize)
}

// entry decodes the entry at ref. The returned key aliases the arena.
func (a *arena) entry(ref keyRef) (id UserID, kind Kind, key []byte) {
	return decodeEntry(a.chunks, ref)
}

// decodeEntry decodes the entry at ref in chunks (a snapshot of arena.chunks taken
// under the read lock).
func decodeEntry(chunks [][]byte, ref keyRef) (id UserID, kind Kind, key []byte) {
	off := uint64(ref) * arenaUnit
	c := chunks[off>>arenaChunkShift]
	p := int(off & (arenaChunkSize - 1))
	id = UserID(binary.LittleEndian.Uint32(c[p:]))
	hdr := c[p+4]
	kind = Kind(hdr >> 6)
	n := int(hdr & 63)
	p += 5
	if n == 0 {
		n = int(binary.LittleEndian.Uint16(c[p:]))
		p += 2
	}
	return id, kind, c[p : p+n : p+n]
}

// entryID reads only the id of the entry at ref: the cheap first touch of an entry.
func entryID(chunks [][]byte, ref keyRef) UserID {
	off := uint64(ref) * arenaUnit
	c := chunks[off>>arenaChunkShift]
	return UserID(binary.LittleEndian.Uint32(c[off&(arenaChunkSize-1):]))
}

// sizeBytes returns the bytes the arena holds (allocated capacity).
func (a *arena) sizeBytes() int {
	return len(a.chunks) * arenaChunkSize
}
