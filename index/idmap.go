package index

import (
	"bytes"
	"math/bits"

	"github.com/zeebo/xxh3"
)

// The identity table maps (kind, key) to a keyRef in the arena, whose entry names the user.
//
// # Layout
//
// Open addressing over 64-byte buckets of five slots: five 64-bit hashes, five 32-bit
// refs and four bytes of padding, so a bucket is exactly one cache line (regions are
// page-aligned) and the table holds no pointers. It lives in one region (region.go),
// on huge pages, replaced whole on growth. A slot costs
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
// hash = XXH3-64(key, seed XOR kindSalt[kind]), where seed is drawn at random for each
// Users (Options.Seed) and kept in snapshots so that a table loads as it was written.
// The seed is what keeps an attacker from choosing identifiers that all land in one
// bucket: with a fixed hash, ids whose hashes share their top bits share a home bucket,
// linear probing turns that into quadratic work under the writer lock, and such ids are
// cheap to find offline (30k of them made an upsert 150× slower). The salt keeps the
// same bytes under different kinds apart. Correctness never depends on the hash:
// every hash match is confirmed against the arena (kind and bytes), and probing goes on
// after a mismatch, so a 64-bit collision can never resolve to the wrong user.
// (xxh3 rather than the seeded xxhash64 Digest: measured here, 9 against 50 ns for a
// 19-byte key, as fast as unseeded xxhash64.)
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

// bucketBytes is the size of a bucket: one cache line.
const bucketBytes = 64

// bucketsFor returns the bucket count for a table that will hold n keys after a rehash.
func bucketsFor(n int) int {
	nb := int(float64(n)/rehashLoad/bucketSlots) + 1
	return max(nb, minBuckets)
}

// newBuckets allocates an empty table of n buckets in a region of its own.
func newBuckets(n int) (region, []bucket) {
	r := newRegion(n * bucketBytes)
	return r, view[bucket](r, n)
}

// maxUsedFor returns how many slots of a table of nb buckets may be used.
func maxUsedFor(nb int) int { return nb * bucketSlots * maxLoadNum / maxLoadDen }

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
func find(b []bucket, arena []byte, h uint64, kind Kind, key []byte) (bi, si int, ref keyRef, id UserID, ok bool) {
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
			eid, ekind, ekey := decodeEntry(arena, r)
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
		return xxh3.HashSeed(key, u.seed^kindSalt[kind&3])
	}
	return u.hash(key) ^ kindSalt[kind&3]
}

// resolveGroup is how many keys ResolveMany has in flight: enough independent cache
// misses to keep a core's miss buffers busy, few enough to stay in registers and L1.
const resolveGroup = 64

// resolveLockSpan is how many keys ResolveMany resolves per read-lock hold, so that a
// writer never waits behind a huge batch.
const resolveLockSpan = 512

// resolveManyLocked resolves keys (at most resolveLockSpan of them) into out, which has
// the same length. The read lock is held.
//
// Fast path, in passes over a group of keys so that no iteration waits on another's
// cache miss and each loop that issues misses is tiny (so the CPU's reorder window holds
// many of them at once, and no mispredicted branch flushes them): (1) hash every key;
// (2) load the first word of every home bucket, bringing the lines in; (3) find the
// first slot whose hash matches, without branches; (4) load the id word of every
// candidate's arena entry, bringing those lines in; (5) compare kind and bytes.
//
// Slow path: a key not in its home bucket is probed on in pass 3, and a key whose first
// hash match is not its own (a 64-bit collision, or a weak test hash) goes through find,
// which probes on with confirmation.
func (u *Users) resolveManyLocked(kind Kind, keys [][]byte, out []UserID) {
	b := u.mu.st.buckets
	arena := u.mu.st.arena
	if len(b) == 0 {
		for j := range out {
			out[j] = NoUser
		}
		return
	}
	nb := len(b)
	var (
		hs   [resolveGroup]uint64
		home [resolveGroup]int32
		refs [resolveGroup]keyRef
		ids  [resolveGroup]UserID
		pend [resolveGroup]uint8
	)
	for base := 0; base < len(keys); base += resolveGroup {
		g := keys[base:min(base+resolveGroup, len(keys))]
		o := out[base : base+len(g)]
		hg := hs[:len(g)]
		for j, k := range g {
			hg[j] = u.hashKey(kind, k)
		}
		var touch uint64
		for j, h := range hg {
			i := homeBucket(h, nb)
			home[j] = int32(i)
			touch ^= b[i].hash[0]
		}
		np := 0
		for j, h := range hg {
			bk := &b[home[j]]
			r := refEmpty
			if m := matchMask(bk, h); m != 0 {
				r = bk.ref[bits.TrailingZeros8(m)]
			}
			refs[j] = r
			if r == refEmpty && !hasEmpty(bk) {
				pend[np] = uint8(j) // displaced to a later bucket
				np++
			}
		}
		// About one key in eight sits past its home bucket at our load: touch the next
		// buckets of all of them first, so their misses overlap too.
		for _, j := range pend[:np] {
			i := int(home[j]) + 1
			if i == nb {
				i = 0
			}
			touch ^= b[i].hash[0]
		}
		keep(touch)
		for _, j := range pend[:np] {
			refs[j] = probeHash(b, int(home[j]), hg[j])
		}
		for j := range hg {
			if r := refs[j]; r > refTomb {
				ids[j] = entryID(arena, r)
			}
		}
		for j, k := range g {
			r := refs[j]
			if r <= refTomb {
				o[j] = NoUser
				continue
			}
			_, ekind, ekey := decodeEntry(arena, r)
			if ekind == kind && bytes.Equal(ekey, k) {
				o[j] = ids[j]
				continue
			}
			_, _, _, id, _ := find(b, arena, hs[j], kind, k)
			o[j] = id
		}
	}
}

// keep consumes the words that the touch passes of resolveManyLocked load.
// Those loads exist only to start cache misses early, many at a time; the
// compiler deletes loads whose values go nowhere (a dead stack array is
// enough for that: measured, the touch pass compiled to bounds checks
// alone), so the values must reach a call it cannot see through.
//
//go:noinline
func keep(uint64) {}

// matchMask returns a bit per live slot of bk whose hash is h, with arithmetic rather
// than branches (the compiler does not turn the comparisons into conditional moves).
// Free slots never match, whatever their stale hash.
func matchMask(bk *bucket, h uint64) uint8 {
	m := eq64(bk.hash[0], h) | eq64(bk.hash[1], h)<<1 | eq64(bk.hash[2], h)<<2 |
		eq64(bk.hash[3], h)<<3 | eq64(bk.hash[4], h)<<4
	l := isLive(bk.ref[0]) | isLive(bk.ref[1])<<1 | isLive(bk.ref[2])<<2 |
		isLive(bk.ref[3])<<3 | isLive(bk.ref[4])<<4
	return m & l
}

// isLive returns 1 if r names an arena entry (not refEmpty or refTomb), else 0.
func isLive(r keyRef) uint8 {
	return uint8((uint64(r) + (1<<32 - 2)) >> 32)
}

// hasEmpty reports whether bk has a never-used slot, which ends a probe sequence.
func hasEmpty(bk *bucket) bool {
	return min(bk.ref[0], bk.ref[1], bk.ref[2], bk.ref[3], bk.ref[4]) == refEmpty
}

// eq64 returns 1 if a == b, else 0, without a branch.
func eq64(a, b uint64) uint8 {
	v := a ^ b
	return uint8((v|-v)>>63) ^ 1
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
