package index

import (
	"bytes"
	"math/bits"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

// The identity table maps (kind, key) to a keyRef in the arena, whose entry names the user.
//
// # Layout
//
// Open addressing over 64-byte buckets of five slots: five 64-bit hashes, five 32-bit
// refs and four bytes of padding, so a bucket is exactly one cache line (large slices
// are page-aligned) and the table holds no pointers (the GC never scans it). A slot costs
// 12.8 bytes. The home bucket of a hash is fastrange(hash, buckets): the high half of
// hash*len(buckets), so any table size works and growth need not double.
//
// Probing is linear by bucket. A lookup may stop at the first bucket that has an empty
// slot: empties are only created by a rehash, so a key inserted after that bucket was
// last full sits in it or earlier. Detaching a key leaves a tombstone (refTomb) that
// inserts reuse; a rehash drops them.
//
// # Hash
//
// hash = Options.Hash(key) XOR kindSalt[kind] (xxhash64 by default). The salt keeps the
// same bytes under different kinds apart without hashing a tag byte; correctness never
// depends on it, because every hash match is confirmed against the arena (kind and
// bytes), and probing continues on a mismatch, so a 64-bit collision can never resolve
// to the wrong user.
//
// # Load
//
// The table grows when used slots (live + tombstones) would pass 90% and is rebuilt at
// 70% of live keys, so it sits between 70% and 90% full: 14-18 bytes a key.

const (
	bucketSlots = 5
	maxLoadNum  = 9 // grow above 9/10 used
	maxLoadDen  = 10
	rehashLoad  = 0.70 // fill after a rehash
	minBuckets  = 8
)

// bucket is one cache line of the identity table.
type bucket struct {
	hash [bucketSlots]uint64
	ref  [bucketSlots]keyRef
	_    uint32
}

// kindSalt is XORed into a key's hash so that equal bytes of different kinds land apart.
var kindSalt = [4]uint64{
	0,
	0x9e3779b97f4a7c15,
	0xc2b2ae3d27d4eb4f,
	0x165667b19e3779f9,
}

// homeBucket maps h onto [0, n) by multiply-shift (Lemire's fastrange).
func homeBucket(h uint64, n int) int {
	hi, _ := bits.Mul64(h, uint64(n))
	return int(hi)
}

// table is the bucket array with its counts. The writer replaces buckets wholesale on
// growth; see Users for who may read and write what.
type table struct {
	buckets []bucket
	live    int // slots holding a key
	tombs   int // slots holding refTomb
	maxUsed int // grow when live+tombs would exceed this
}

// bucketsFor returns the bucket count for a table that will hold n keys after a rehash.
func bucketsFor(n int) int {
	nb := int(float64(n)/rehashLoad/bucketSlots) + 1
	return max(nb, minBuckets)
}

// newBuckets allocates an empty table of n buckets, on huge pages where possible.
func newBuckets(n int) []bucket {
	b := make([]bucket, n)
	adviseHugePages(unsafe.Pointer(unsafe.SliceData(b)), n*int(unsafe.Sizeof(bucket{})))
	return b
}

func (t *table) setBuckets(b []bucket) {
	t.buckets = b
	t.maxUsed = len(b) * bucketSlots * maxLoadNum / maxLoadDen
}

// insertFresh puts (h, ref) in the first free slot of its probe sequence in b, a table
// being built (no tombstones, key known absent).
func insertFresh(b []bucket, h uint64, ref keyRef) {
	i := homeBucket(h, len(b))
	for {
		bk := &b[i]
		for s := range bucketSlots {
			if bk.ref[s] == refEmpty {
				bk.hash[s] = h
				bk.ref[s] = ref
				return
			}
		}
		if i++; i == len(b) {
			i = 0
		}
	}
}

// find returns the bucket and slot holding (kind, key) with hash h, confirmed against
// the arena, or ok=false. It is the slow, always-correct path; ResolveMany has the fast one.
func find(b []bucket, chunks [][]byte, h uint64, kind Kind, key []byte) (bi, si int, ref keyRef, id UserID, ok bool) {
	if len(b) == 0 {
		return 0, 0, 0, NoUser, false
	}
	i := homeBucket(h, len(b))
	for range len(b) {
		bk := &b[i]
		sawEmpty := false
		for s := range bucketSlots {
			r := bk.ref[s]
			if r == refEmpty {
				sawEmpty = true
				continue
			}
			if r == refTomb || bk.hash[s] != h {
				continue
			}
			eid, ekind, ekey := decodeEntry(chunks, r)
			if ekind == kind && bytes.Equal(ekey, key) {
				return i, s, r, eid, true
			}
		}
		if sawEmpty {
			break
		}
		if i++; i == len(b) {
			i = 0
		}
	}
	return 0, 0, 0, NoUser, false
}

// findRef returns the bucket and slot holding ref, whose hash is h.
func findRef(b []bucket, h uint64, ref keyRef) (bi, si int, ok bool) {
	i := homeBucket(h, len(b))
	for range len(b) {
		bk := &b[i]
		sawEmpty := false
		for s := range bucketSlots {
			switch bk.ref[s] {
			case ref:
				return i, s, true
			case refEmpty:
				sawEmpty = true
			}
		}
		if sawEmpty {
			break
		}
		if i++; i == len(b) {
			i = 0
		}
	}
	return 0, 0, false
}

// freeSlot returns the first empty or tombstone slot on h's probe sequence. The table
// must have one (the caller grows it first).
func freeSlot(b []bucket, h uint64) (bi, si int) {
	i := homeBucket(h, len(b))
	for range len(b) {
		bk := &b[i]
		for s := range bucketSlots {
			if bk.ref[s] <= refTomb {
				return i, s
			}
		}
		if i++; i == len(b) {
			i = 0
		}
	}
	panic("BUG: index: identity table has no free slot")
}

// hashKey returns the table hash of (kind, key).
func (u *Users) hashKey(kind Kind, key []byte) uint64 {
	if u.hash == nil {
		return xxhash.Sum64(key) ^ kindSalt[kind&3]
	}
	return u.hash(key) ^ kindSalt[kind&3]
}

// resolveGroup is how many keys ResolveMany has in flight: enough independent cache
// misses to keep a core's miss buffers busy, few enough to stay in registers and L1.
const resolveGroup = 32

// resolveLockSpan is how many keys ResolveMany resolves per read-lock hold, so that a
// writer never waits behind a huge batch.
const resolveLockSpan = 512

// resolveManyLocked resolves keys (at most resolveLockSpan of them) into out, which has
// the same length. The read lock is held.
//
// Fast path, in three passes over a group so that no iteration waits on the previous
// one's cache miss: (1) hash every key and load the first word of its home bucket,
// bringing the line in; (2) find the first slot whose hash matches and load the id from
// its arena entry, bringing that line in; (3) compare kind and bytes. Slow path: a key
// whose first hash match is not its own (a 64-bit collision, or a weak test hash) goes
// through find, which probes on with confirmation.
func (u *Users) resolveManyLocked(kind Kind, keys [][]byte, out []UserID) {
	b := u.mu.tab.buckets
	chunks := u.mu.arena.chunks
	if len(b) == 0 {
		for j := range out {
			out[j] = NoUser
		}
		return
	}
	nb := len(b)
	var (
		hs    [resolveGroup]uint64
		home  [resolveGroup]int32
		first [resolveGroup]uint64
		refs  [resolveGroup]keyRef
		ids   [resolveGroup]UserID
	)
	for base := 0; base < len(keys); base += resolveGroup {
		g := keys[base:min(base+resolveGroup, len(keys))]
		o := out[base : base+len(g)]
		// Pass 1: hashes and home buckets; each load is independent of the others.
		for j, k := range g {
			h := u.hashKey(kind, k)
			hs[j] = h
			i := homeBucket(h, nb)
			home[j] = int32(i)
			first[j] = b[i].hash[0]
		}
		// Pass 2: first hash match, and the id word of its arena entry. The match
		// within the home bucket is computed without branches (conditional moves),
		// since which slot holds a key is random and would mispredict.
		for j := range g {
			h := hs[j]
			i := int(home[j])
			r := refEmpty
			if m := matchMask(&b[i], h); m != 0 {
				r = b[i].ref[bits.TrailingZeros8(m)]
			}
			if r <= refTomb {
				r = probeHash(b, i, h) // in a later bucket, absent, or h matched a free slot
			}
			refs[j] = r
			if r > refTomb {
				ids[j] = entryID(chunks, r)
			}
			first[j] = 0
		}
		// Pass 3: confirm against the arena.
		for j, k := range g {
			r := refs[j]
			if r <= refTomb {
				o[j] = NoUser
				continue
			}
			_, ekind, ekey := decodeEntry(chunks, r)
			if ekind == kind && bytes.Equal(ekey, k) {
				o[j] = ids[j]
				continue
			}
			_, _, _, id, _ := find(b, chunks, hs[j], kind, k)
			o[j] = id
		}
	}
}

// matchMask returns a bit per slot of bk whose hash is h.
func matchMask(bk *bucket, h uint64) uint8 {
	var m0, m1, m2, m3, m4 uint8
	if bk.hash[0] == h {
		m0 = 1
	}
	if bk.hash[1] == h {
		m1 = 2
	}
	if bk.hash[2] == h {
		m2 = 4
	}
	if bk.hash[3] == h {
		m3 = 8
	}
	if bk.hash[4] == h {
		m4 = 16
	}
	return m0 | m1 | m2 | m3 | m4
}

// probeHash returns the ref of the first live slot whose hash is h on the probe sequence
// starting at bucket i, or refEmpty.
func probeHash(b []bucket, i int, h uint64) keyRef {
	for range len(b) {
		bk := &b[i]
		sawEmpty := false
		for s := range bucketSlots {
			r := bk.ref[s]
			if r > refTomb && bk.hash[s] == h {
				return r
			}
			if r == refEmpty {
				sawEmpty = true
			}
		}
		if sawEmpty {
			return refEmpty
		}
		if i++; i == len(b) {
			i = 0
		}
	}
	return refEmpty
}
