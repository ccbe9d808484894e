package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/RoaringBitmap/roaring/v2"
)

// An image is a Users as its raw arrays plus a header of counts: what a snapshot
// writes (engine/snapshot_v2.go) and what recovery reads straight back into new
// regions, instead of inserting key by key. The arrays are the in-memory layout,
// little endian: the table's 64-byte lines, the arena's bytes up to its end, the
// refs (uint32) and flags (uint8) of every user id, and the overflow pool's nodes
// (ref uint32, next uint32). The seed of the hash is in the header, so the table is
// valid as it is. Free lists are rebuilt from the arena's free entries and the live
// bitmap from the flags, so neither is stored.
//
// # Table versions
//
// The table array is versioned by its first 64-byte line, so that the layout of the
// buckets can change without a new snapshot version:
//
//   - Version 2 (written now): a header line, tableMagic then zeros then the version
//     (uint32) in the line's last four bytes, followed by the buckets of eight slots
//     (idmap.go). The header's Buckets counts the lines, the header line included.
//   - Version 1 (read only): no header line; every line is a bucket of five slots
//     (5 × hash uint64, 5 × ref uint32, 4 bytes of padding, always zero). Its refs
//     are checked like version 2's and the table is rebuilt from the arena on load
//     (the next snapshot writes version 2).
//
// The last four bytes tell them apart: zero in a version 1 bucket (its padding),
// the version in a header line.

// tableMagic starts the header line of a table array of version 2 or later.
const tableMagic = "cohortd-idtable\x00"

// tableVersion is the version of the table layout this code writes.
const tableVersion = 2

// v1Slots is the number of slots of a version 1 bucket.
const v1Slots = 5

// putTableHeader writes the header line of a table array into line (64 bytes).
func putTableHeader(line []byte) {
	clear(line[:bucketBytes])
	copy(line, tableMagic)
	binary.LittleEndian.PutUint32(line[bucketBytes-4:], tableVersion)
}

// tableVersionOf returns the version of a table array whose first line is line, or
// 0 if it is none that this code reads.
func tableVersionOf(line []byte) int {
	switch v := binary.LittleEndian.Uint32(line[bucketBytes-4:]); v {
	case 0:
		return 1
	case tableVersion:
		var want [bucketBytes]byte
		putTableHeader(want[:])
		if bytes.Equal(line[:bucketBytes], want[:]) {
			return tableVersion
		}
	}
	return 0
}

// Array names one raw array of an image.
type Array uint8

// The arrays of an image, in the order snapshots write them.
const (
	ArrayTable Array = iota + 1 // identity table buckets
	ArrayArena                  // key arena
	ArrayRefs                   // user table: one keyRef (or pool head) per user
	ArrayFlags                  // user table: one flag byte per user
	ArrayPool                   // overflow lists
)

// NumArrays is the number of arrays in an image.
const NumArrays = 5

// String names the array.
func (a Array) String() string {
	switch a {
	case ArrayTable:
		return "table"
	case ArrayArena:
		return "arena"
	case ArrayRefs:
		return "refs"
	case ArrayFlags:
		return "flags"
	case ArrayPool:
		return "pool"
	}
	return fmt.Sprintf("Array(%d)", uint8(a))
}

// ImageHeader is the scalar state that goes with an image's arrays.
type ImageHeader struct {
	Seed      uint64
	Next      uint64 // NextID
	Users     uint64 // live users
	Buckets   uint64 // 64-byte lines of the table array: its buckets, and in version 2 its header line
	Live      uint64 // table slots holding a key
	Tombs     uint64 // table slots holding a tombstone
	ArenaUsed uint64 // arena bytes, the 4 reserved ones included
	FreeBytes uint64 // of those, in free entries
	PoolLen   uint64 // pool nodes handed out
	FreeNode  uint64 // head of the pool's free list (index + 1), 0 if none
}

// ErrImage is wrapped by errors about an image that breaks its own bounds.
var ErrImage = errors.New("index: invalid image")

func imagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrImage, fmt.Sprintf(format, args...))
}

// Size returns the byte length of array a in an image with header h.
func (h *ImageHeader) Size(a Array) uint64 {
	switch a {
	case ArrayTable:
		return h.Buckets * bucketBytes
	case ArrayArena:
		return h.ArenaUsed
	case ArrayRefs:
		return h.Next * 4
	case ArrayFlags:
		return h.Next
	case ArrayPool:
		return h.PoolLen * 8
	}
	return 0
}

// Validate checks the header's own bounds.
func (h *ImageHeader) Validate() error {
	switch {
	case !littleEndian:
		return imagef("images are little endian; this machine is not")
	case h.Seed == 0:
		return imagef("zero hash seed")
	case h.Next >= uint64(NoUser) || h.Users > h.Next:
		return imagef("%d live users of %d ids", h.Users, h.Next)
	case h.Buckets > 1<<40 || h.Live+h.Tombs > h.Buckets*bucketSlots:
		return imagef("%d live and %d tombstone slots in %d buckets", h.Live, h.Tombs, h.Buckets)
	case h.Buckets == 0 && h.Live > 0:
		return imagef("keys without a table")
	case h.ArenaUsed < arenaStart || h.ArenaUsed > arenaMaxBytes || h.ArenaUsed%arenaUnit != 0:
		return imagef("arena of %d bytes", h.ArenaUsed)
	case h.FreeBytes > h.ArenaUsed-arenaStart:
		return imagef("%d free bytes in an arena of %d", h.FreeBytes, h.ArenaUsed)
	case h.PoolLen >= 1<<32-1 || h.FreeNode > h.PoolLen:
		return imagef("pool of %d nodes, free list at %d", h.PoolLen, h.FreeNode)
	}
	return nil
}

var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// Image returns u's header and its arrays, indexed by Array-1. The arrays alias u's
// memory: they are valid until the next mutation, and no mutation may run while the
// caller reads them (the engine holds the workspace's user lock). Writer only.
func (u *Users) Image() (ImageHeader, [NumArrays][]byte) {
	st := &u.mu.st
	next := int(u.NextID())
	h := ImageHeader{
		Seed: u.seed, Next: uint64(next), Users: uint64(u.Len()),
		Live: uint64(u.live), Tombs: uint64(u.tombs),
		ArenaUsed: uint64(u.used), FreeBytes: uint64(u.freeBytes),
		PoolLen: uint64(u.poolLen), FreeNode: uint64(u.freeNode),
	}
	var arrays [NumArrays][]byte
	if nb := len(st.buckets); nb > 0 {
		h.Buckets = uint64(nb + 1)
		arrays[ArrayTable-1] = st.tabR.b[:(nb+1)*bucketBytes]
	}
	if len(st.arena) >= u.used {
		arrays[ArrayArena-1] = st.arena[:u.used]
	} else {
		arrays[ArrayArena-1] = make([]byte, u.used) // never appended to: the reserved bytes
	}
	arrays[ArrayRefs-1] = bytesOf(st.refs[:next])
	arrays[ArrayFlags-1] = st.flags[:next]
	arrays[ArrayPool-1] = bytesOf(st.pool[:u.poolLen])
	return h, arrays
}

// LoadUsers builds a Users from an image: it allocates each array's region, calls
// fill to copy exactly len(dst) bytes of array a into dst (arrays in Array order),
// checks every bound (as ArrayCheck does), and rebuilds the free lists and the live
// bitmap. fill hands each part of dst to got as soon as it is in place, in order and
// covering dst exactly: the parts are checked on another goroutine while fill reads
// on (checking was as costly as reading a snapshot from the page cache), and an
// array whose parts fall short of dst is refused. opts.Seed is ignored: the image's seed hashed its table. An image that breaks
// its bounds is refused with an error wrapping ErrImage; one that keeps them but
// whose parts disagree (which only a forged checksum can produce) answers wrongly but
// never reads out of bounds, and Check reports it.
func LoadUsers(h ImageHeader, opts Options, fill func(a Array, dst []byte, got func(part []byte)) error) (*Users, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	opts.Seed = h.Seed
	u := newUsers(opts)
	st := &u.mu.st
	ok := false
	defer func() {
		if !ok {
			st.release()
		}
	}()
	nb, next := int(h.Buckets), int(h.Next)
	st.tabR = newRegion(nb * bucketBytes) // the lines as written; see tableVersion below
	st.arenaR = newRegion(int(h.ArenaUsed))
	st.arena = st.arenaR.b
	ucap := max(next, userMinCap)
	st.refsR = newRegion(ucap * 4)
	st.refs = view[keyRef](st.refsR, ucap)
	st.flgR = newRegion(ucap)
	st.flags = view[uint8](st.flgR, ucap)
	pcap := max(int(h.PoolLen), 512)
	st.poolR = newRegion(pcap * 8)
	st.pool = view[overNode](st.poolR, pcap)
	dsts := [NumArrays][]byte{
		st.tabR.b[:nb*bucketBytes], st.arena[:h.ArenaUsed], bytesOf(st.refs[:next]), st.flags[:next], bytesOf(st.pool[:h.PoolLen]),
	}
	tableVer := 0
	for i, dst := range dsts {
		a := Array(i + 1)
		c := NewArrayCheck(h, a)
		if a == ArrayArena {
			// Writes only into parts already read: the free entry being checked.
			c.onFree = func(off, size int) {
				binary.LittleEndian.PutUint32(st.arena[off:], uint32(u.free[size]))
				u.free[size] = keyRef(off / arenaUnit)
			}
		}
		parts := make(chan []byte, 4)
		checked := make(chan error, 1)
		go func() {
			for p := range parts {
				c.Write(p)
			}
			checked <- c.Close()
		}()
		err := fill(a, dst, func(part []byte) { parts <- part })
		close(parts)
		cerr := <-checked
		if err != nil {
			return nil, fmt.Errorf("load users %v: %w", a, err)
		}
		if cerr != nil {
			return nil, fmt.Errorf("load users: %w", cerr)
		}
		if a == ArrayTable {
			tableVer = c.tableVer
		}
	}
	if h.FreeNode != 0 && st.pool[h.FreeNode-1].ref != refEmpty {
		return nil, imagef("pool free list starts at a used node")
	}
	u.live, u.tombs = int(h.Live), int(h.Tombs)
	u.used, u.freeBytes = int(h.ArenaUsed), int(h.FreeBytes)
	switch {
	case nb == 0:
		st.tabR.release()
	case tableVer == tableVersion:
		st.buckets = view[bucket](region{b: st.tabR.b[bucketBytes:]}, nb-1)
	default: // version 1: five-slot buckets, rebuilt from the arena (checked above)
		v1 := st.tabR
		st.tabR, st.buckets = u.rebuildTable(st.arena, u.used, bucketsFor(u.live))
		v1.release()
		u.tombs = 0
	}
	u.maxUsed = maxUsedFor(len(st.buckets))
	u.poolLen, u.freeNode = int(h.PoolLen), uint32(h.FreeNode)
	u.next.Store(uint32(next))
	u.count.Store(int64(h.Users))
	u.master = liveFromFlags(st.flags[:next])
	u.master.SetCopyOnWrite(true)
	u.Publish()
	ok = true
	return u, nil
}

// liveFromFlags returns the bitmap of the ids whose flags are not deleted, added a run
// at a time (users are mostly live, so runs are long).
func liveFromFlags(flags []uint8) *roaring.Bitmap {
	bm := roaring.New()
	for i := 0; i < len(flags); {
		if flags[i]&flagDeleted != 0 {
			i++
			continue
		}
		j := i + 1
		for j < len(flags) && flags[j]&flagDeleted == 0 {
			j++
		}
		bm.AddRange(uint64(i), uint64(j))
		i = j
	}
	bm.RunOptimize()
	return bm
}

// ArrayCheck checks the bounds of one array of an image as its bytes stream past, so
// that a snapshot can be verified without loading it: table refs inside the arena and
// counts equal to the header's; arena entries well formed, end to end, held by ids
// below Next, their free bytes and live count equal to the header's; refs and pool
// links inside the arena or the pool; flags known and their live users counted.
// Write never fails; Close reports the first problem, with its byte offset.
type ArrayCheck struct {
	h      ImageHeader
	a      Array
	off    uint64 // bytes written so far
	pend   []byte // an element or arena entry cut by a Write boundary
	live   uint64
	tombs  uint64
	free   uint64
	err    error
	onFree func(off, size int) // LoadUsers: rebuild free lists

	tableVer int // the table's version, once its first line is seen

}

// NewArrayCheck returns a checker for array a of an image with header h (which must
// have passed Validate).
func NewArrayCheck(h ImageHeader, a Array) *ArrayCheck {
	return &ArrayCheck{h: h, a: a}
}

func (c *ArrayCheck) failf(at uint64, format string, args ...any) {
	if c.err == nil {
		c.err = imagef("%v at byte %d: %s", c.a, at, fmt.Sprintf(format, args...))
	}
}

// elemSize returns the fixed element size of the array, 0 for the arena.
func (c *ArrayCheck) elemSize() int {
	switch c.a {
	case ArrayTable:
		return bucketBytes
	case ArrayRefs, ArrayPool:
		return 4
	case ArrayFlags:
		return 1
	}
	return 0
}

// Write checks the next bytes of the array. It always returns len(p), nil.
func (c *ArrayCheck) Write(p []byte) (int, error) {
	n := len(p)
	if c.err != nil {
		return n, nil
	}
	if c.off+uint64(len(p)) > c.h.Size(c.a) {
		c.failf(c.off, "array longer than its %d bytes", c.h.Size(c.a))
		return n, nil
	}
	if c.a == ArrayArena {
		c.arena(p)
		return n, nil
	}
	es := c.elemSize()
	if len(c.pend) > 0 {
		k := min(es-len(c.pend), len(p))
		c.pend = append(c.pend, p[:k]...)
		p = p[k:]
		if len(c.pend) == es {
			c.elems(c.pend, c.off-uint64(len(c.pend)-k))
			c.off += uint64(k)
			c.pend = c.pend[:0]
		} else {
			c.off += uint64(k)
			return n, nil
		}
	}
	whole := len(p) / es * es
	c.elems(p[:whole], c.off)
	c.off += uint64(whole)
	c.pend = append(c.pend, p[whole:]...)
	c.off += uint64(len(p) - whole)
	return n, nil
}

// elems checks whole elements starting at byte at of the array.
func (c *ArrayCheck) elems(p []byte, at uint64) {
	units := c.h.ArenaUsed / arenaUnit
	switch c.a {
	case ArrayTable:
		for i := 0; i+bucketBytes <= len(p); i += bucketBytes {
			line := p[i : i+bucketBytes]
			if at+uint64(i) == 0 {
				if c.tableVer = tableVersionOf(line); c.tableVer == 0 {
					c.failf(0, "table of unknown version %d", binary.LittleEndian.Uint32(line[bucketBytes-4:]))
					return
				}
				if c.tableVer == tableVersion {
					continue // the header line
				}
			}
			slots, refAt := bucketSlots, 4*bucketSlots
			if c.tableVer == 1 {
				slots, refAt = v1Slots, 8*v1Slots
			}
			for s := range slots {
				r := uint64(binary.LittleEndian.Uint32(line[refAt+4*s:]))
				free := r <= uint64(refTomb)
				switch {
				case c.tableVer == tableVersion && free != (binary.LittleEndian.Uint32(line[4*s:]) == 0):
					c.failf(at+uint64(i), "slot %d: ref %d with tag %#x", s, r, binary.LittleEndian.Uint32(line[4*s:]))
					return
				case r == uint64(refEmpty):
				case r == uint64(refTomb):
					c.tombs++
				case r*arenaUnit < arenaStart || r >= units:
					c.failf(at+uint64(i), "slot %d refers outside the arena (ref %d)", s, r)
					return
				default:
					c.live++
				}
			}
		}
	case ArrayRefs:
		for i := 0; i+4 <= len(p); i += 4 {
			if r := uint64(binary.LittleEndian.Uint32(p[i:])); r >= max(units, c.h.PoolLen+1) {
				c.failf(at+uint64(i), "user %d refers to %d, past the arena and the pool", (at+uint64(i))/4, r)
				return
			}
		}
	case ArrayFlags:
		for i, f := range p {
			if f&^flagsKnown != 0 {
				c.failf(at+uint64(i), "user %d has unknown flags %#x", at+uint64(i), f)
				return
			}
			if f&flagDeleted == 0 {
				c.live++
			}
		}
	case ArrayPool:
		// Elements of 4 bytes alternate: ref, next.
		for i := 0; i+4 <= len(p); i += 4 {
			v := uint64(binary.LittleEndian.Uint32(p[i:]))
			if (at+uint64(i))%8 == 0 {
				if v != uint64(refEmpty) && (v*arenaUnit < arenaStart || v >= units) {
					c.failf(at+uint64(i), "node refers outside the arena (ref %d)", v)
					return
				}
			} else if v > c.h.PoolLen {
				c.failf(at+uint64(i), "node links past the pool (%d)", v)
				return
			}
		}
	}
}

// maxEntryBytes bounds an arena entry: header, the longest key, padding.
const maxEntryBytes = 7 + MaxKeyLen + 1

// arena walks the entries in p, keeping an entry cut at the end for the next Write.
// The cut entry is finished with a bounded head of the next p, never by copying p
// whole: LoadUsers writes parts of megabytes.
func (c *ArrayCheck) arena(p []byte) {
	base := c.off - uint64(len(c.pend)) // array offset of the first byte not yet walked
	c.off += uint64(len(p))
	if np := len(c.pend); np > 0 {
		buf := append(c.pend, p[:min(len(p), arenaStart+maxEntryBytes)]...)
		i := c.walkArena(buf, base)
		if c.err != nil {
			return
		}
		if i < np { // p ended before the cut entry did
			c.pend = append([]byte(nil), buf[i:]...)
			return
		}
		p = p[i-np:]
		base += uint64(i)
		c.pend = nil
	}
	i := c.walkArena(p, base)
	if c.err == nil {
		c.pend = append([]byte(nil), p[i:]...)
	}
}

// walkArena checks the whole entries of buf, which starts at array offset base, and
// returns where the first entry cut by the end of buf starts (len(buf) if none is).
func (c *ArrayCheck) walkArena(buf []byte, base uint64) int {
	i := 0
	if base == 0 {
		if len(buf) < arenaStart {
			return 0
		}
		i = arenaStart
	}
	for i < len(buf) {
		id, kind, _, size, ok := parseEntry(buf, uint64(i))
		if ok && i+size > len(buf) {
			break // the padding byte is past the Write boundary
		}
		if !ok {
			if len(buf)-i >= maxEntryBytes {
				c.failf(base+uint64(i), "malformed entry")
				return i
			}
			break // cut by the Write boundary (or malformed: Close tells)
		}
		if kind == 0 {
			c.free += uint64(size)
			if c.onFree != nil {
				c.onFree(int(base)+i, size)
			}
		} else {
			c.live++
			if uint64(id) >= c.h.Next {
				c.failf(base+uint64(i), "entry held by user %d of %d", id, c.h.Next)
				return i
			}
		}
		i += size
	}
	return i
}

// Close reports the first problem found, and any count that disagrees with the header.
func (c *ArrayCheck) Close() error {
	if c.err != nil {
		return c.err
	}
	if c.off != c.h.Size(c.a) {
		c.failf(c.off, "array of %d bytes, want %d", c.off, c.h.Size(c.a))
	}
	if len(c.pend) > 0 {
		c.failf(c.off-uint64(len(c.pend)), "array ends inside an element or entry")
	}
	switch c.a {
	case ArrayTable:
		if c.live != c.h.Live || c.tombs != c.h.Tombs {
			c.failf(c.off, "%d live and %d tombstone slots, header says %d and %d", c.live, c.tombs, c.h.Live, c.h.Tombs)
		}
	case ArrayArena:
		if c.live != c.h.Live || c.free != c.h.FreeBytes {
			c.failf(c.off, "%d live entries and %d free bytes, header says %d and %d", c.live, c.free, c.h.Live, c.h.FreeBytes)
		}
	case ArrayFlags:
		if c.live != c.h.Users {
			c.failf(c.off, "%d live users, header says %d", c.live, c.h.Users)
		}
	}
	return c.err
}
