package index

import (
	"bytes"
	"fmt"
	"math/bits"
	"unsafe"

	"github.com/zeebo/xxh3"
)

// The identity table maps (kind, key) to a keyRef in the arena, whose entry names the user.
//
// # Layout
//
// Open addressing over 64-byte buckets of eight slots: eight 32-bit tags, then eight
// 32-bit refs, so a bucket is exactly one cache line (regions are page-aligned and the
// buckets start one line into theirs, after the table's header line; see image.go)
// and the table holds no pointers. It lives in one region (region.go), on huge pages,
// replaced whole on growth. A slot costs 8 bytes. The home bucket of a hash is
// fastrange(hash, buckets): the high half of hash*len(buckets), which depends on the
// hash's high bits, so any table size works and growth need not double. The tag is
// the hash's low 32 bits with bit 0 set, so that it is never 0, the tag of a free slot:
// a free slot never matches, and a lookup compares tags alone.
//
// Probing is linear by bucket. A lookup may stop at the first bucket that has an empty
// slot: empties are only created by a rebuild, so a key inserted after that bucket was
// last full sits in it or earlier. Detaching a key leaves a tombstone (refTomb) that
// inserts reuse; a rebuild drops them.
//
// The table keeps no full hashes, so a rebuild (growth, or loading a snapshot whose
// table has the older five-slot layout) walks the arena, whose entries are end to end,
// and hashes every live key again: sequential reads of the arena plus one hash per key.
//
// # Hash
//
// hash = XXH3-64(key, seed XOR kindSalt[kind]), where seed is drawn at random for each
// Users (Options.Seed) and kept in snapshots so that a table loads as it was written.
// The seed is what keeps an attacker from choosing identifiers that all land in one
// bucket: with a fixed hash, ids whose hashes share their top bits share a home bucket,
// linear probing turns that into quadratic work under the writer lock, and such ids are
// cheap to find offline (30k of them made an upsert 150× slower). The salt keeps the
// same bytes under different kinds apart. Correctness never depends on the hash nor on
// the tag: every tag match is confirmed against the arena (kind and bytes), and probing
// goes on after a mismatch, so neither a 31-bit tag collision nor a 64-bit hash
// collision can ever resolve to the wrong user. A false tag match costs one arena line;
// with eight slots it happens on about one lookup in 2^28.
// (xxh3 rather than the seeded xxhash64 Digest: measured here, 9 against 50 ns for a
// 19-byte key, as fast as unseeded xxhash64.)
//
// # Load
//
// The table grows when used slots (live + tombstones) would pass 90% and is rebuilt at
// 70% of live keys, so it sits between 70% and 90% full: 9-11.5 bytes a key.

const (
	bucketSlots = 8
	maxLoadNum  = 9 // grow above 9/10 used
	maxLoadDen  = 10
	rehashLoad  = 0.70 // fill after a rebuild
	minBuckets  = 8
)

// bucket is one cache line of the identity table. A free slot (refEmpty or refTomb)
// has tag 0.
type bucket struct {
	tag [bucketSlots]uint32
	ref [bucketSlots]keyRef
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

// tagOf returns the slot tag of hash h: its low half, never 0.
func tagOf(h uint64) uint32 { return uint32(h) | 1 }

// bucketBytes is the size of a bucket: one cache line.
const bucketBytes = 64

// bucketsFor returns the bucket count for a table that will hold n keys after a rebuild.
func bucketsFor(n int) int {
	nb := int(float64(n)/rehashLoad/bucketSlots) + 1
	return max(nb, minBuckets)
}

// newBuckets allocates an empty table of n buckets in a region of its own, after the
// table's header line (image.go), so that a snapshot writes the region as it is.
func (u *Users) newBuckets(n int) (region, []bucket) {
	r := u.newRegion((n + 1) * bucketBytes)
	putTableHeader(r.b[:bucketBytes])
	return r, view[bucket](region{b: r.b[bucketBytes:]}, n)
}

// maxUsedFor returns how many slots of a table of nb buckets may be used.
func maxUsedFor(nb int) int { return nb * bucketSlots * maxLoadNum / maxLoadDen }

// rebuildTable returns a new table of nb buckets holding every live key of the arena
// (its first used bytes), hashed again. Writer only, without the lock: it reads only
// the arena, which no one else writes.
func (u *Users) rebuildTable(arena []byte, used, nb int) (region, []bucket) {
	r, b := u.newBuckets(nb)
	if len(arena) < used {
		return r, b // no arena yet: no keys
	}
	a := arena[:used]
	for off := arenaStart; off < used; {
		_, kind, key, size, ok := parseEntry(a, uint64(off))
		if !ok {
			panic(fmt.Sprintf("BUG: index: arena entry at %d does not parse", off))
		}
		if kind != 0 {
			insertFresh(b, u.hashKey(kind, key), keyRef(off/arenaUnit))
		}
		off += size
	}
	return r, b
}

// insertFresh puts (h, ref) in the first free slot of its probe sequence in b, a table
// being built (no tombstones, key known absent).
func insertFresh(b []bucket, h uint64, ref keyRef) {
	i := homeBucket(h, len(b))
	for {
		bk := &b[i]
		for s := range bucketSlots {
			if bk.ref[s] == refEmpty {
				bk.tag[s] = tagOf(h)
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
	tag := tagOf(h)
	i := homeBucket(h, len(b))
	for range len(b) {
		bk := &b[i]
		for m := matchMask(bk, tag); m != 0; m &= m - 1 {
			s := bits.TrailingZeros8(m)
			r := bk.ref[s]
			eid, ekind, ekey := decodeEntry(arena, r)
			if ekind == kind && bytes.Equal(ekey, key) {
				return i, s, r, eid, true
			}
		}
		if hasEmpty(bk) {
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

// hashKeys sets hs[j] to hashKey(kind, keys[j]) for every key, with hashKey's
// branch taken once rather than once a key.
func (u *Users) hashKeys(kind Kind, keys [][]byte, hs []uint64) {
	hs = hs[:len(keys)]
	if u.hash != nil {
		for j, k := range keys {
			hs[j] = u.hashKey(kind, k)
		}
		return
	}
	seed := u.seed ^ kindSalt[kind&3]
	for j, k := range keys {
		hs[j] = xxh3.HashSeed(k, seed)
	}
}

// resolveGroup is how many keys ResolveMany has in flight: enough independent cache
// misses to keep a core's miss buffers busy, few enough to stay in registers and L1.
// Measured with BenchmarkResolveMany at 1M and 10M users (cpu-ns/id): see the commit
// that set it.
const resolveGroup = 64

// resolveLockSpan is how many keys ResolveMany resolves per read-lock hold, so that a
// writer never waits behind a huge batch.
const resolveLockSpan = 512

// resolveManyLocked resolves keys (at most resolveLockSpan of them) into out, which has
// the same length. The read lock is held.
//
// Fast path, in passes over a group of keys so that no iteration waits on another's
// cache miss: (1) hash every key; (2) prefetch every home bucket; (3) find the first
// slot whose tag matches (matchGroup: SSE2 assembly on amd64) and, as soon as it is
// found, prefetch the candidate's arena entry: its first line and the line of its
// last key byte (a 24-byte entry straddles two lines about one time in three);
// (4) compare kind and bytes. Prefetches rather
// than loads: a load that misses holds its place in the reorder window until the line
// arrives, so a loop of loads stops issuing after a few dozen; a prefetch retires at
// once (measured: 15% less CPU a key than touching loads).
//
// Slow path: a key not in its home bucket is probed on in pass 3, and a key whose first
// tag match is not its own (a tag collision, or a weak test hash) goes through find,
// which probes on with confirmation.
func (u *Users) resolveManyLocked(kind Kind, keys [][]byte, out []UserID) {
	u.resolveHashedLocked(kind, keys, nil, out)
}

// resolveHashedLocked is resolveManyLocked for keys whose hashes the caller may
// have computed already: hashes is nil, or holds hashKey(kind, keys[j]) at j.
func (u *Users) resolveHashedLocked(kind Kind, keys [][]byte, hashes []uint64, out []UserID) {
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
		tags [resolveGroup]uint32
		refs [resolveGroup]keyRef
		pend [resolveGroup]uint8
	)
	for base := 0; base < len(keys); base += resolveGroup {
		g := keys[base:min(base+resolveGroup, len(keys))]
		o := out[base : base+len(g)]
		hg := hs[:len(g)]
		if hashes != nil {
			copy(hg, hashes[base:])
		} else {
			u.hashKeys(kind, g, hg)
		}
		for j, h := range hg {
			i := homeBucket(h, nb)
			home[j], tags[j] = int32(i), tagOf(h)
			prefetch(unsafe.Pointer(&b[i]))
		}
		np := matchGroup(b, home[:len(g)], tags[:len(g)], refs[:len(g)], pend[:len(g)], g, arena)
		// A few keys sit past their home bucket at our load: prefetch the next buckets
		// of all of them first, so their misses overlap too.
		for _, j := range pend[:np] {
			i := int(home[j]) + 1
			if i == nb {
				i = 0
			}
			prefetch(unsafe.Pointer(&b[i]))
		}
		for _, j := range pend[:np] {
			refs[j] = probeTag(b, int(home[j]), tagOf(hg[j]))
			prefetchEntry(arena, refs[j], len(g[j]))
		}
		for j, k := range g {
			r := refs[j]
			if r <= refTomb {
				o[j] = NoUser
				continue
			}
			if eid, ok := entryHolds(arena, r, kind, k); ok {
				o[j] = eid
				continue
			}
			_, _, _, id, _ := find(b, arena, hs[j], kind, k)
			o[j] = id
		}
	}
}

// prefetchEntry prefetches the arena entry at ref of a key of n bytes, if there is
// one: its first word, and its last key byte (a 24-byte entry straddles two lines
// about one time in three, and that second miss must overlap too).
func prefetchEntry(arena []byte, r keyRef, n int) {
	if r > refTomb {
		if e := int(r)*arenaUnit + 4 + n; e < len(arena) {
			prefetch(unsafe.Pointer(&arena[int(r)*arenaUnit]))
			prefetch(unsafe.Pointer(&arena[e]))
		}
	}
}

// matchGroupGeneric sets refs[j] to the ref of the first slot of bucket b[home[j]]
// whose tag is tags[j], or refEmpty, and lists in pend the keys with no match whose
// bucket is full (displaced to a later bucket: probeTag goes on). It returns how many
// it listed. matchGroup is this, in assembly on amd64.
func matchGroupGeneric(b []bucket, home []int32, tags []uint32, refs []keyRef, pend []uint8) int {
	np := 0
	for j, i := range home {
		bk := &b[i]
		r := refEmpty
		if m := matchMask(bk, tags[j]); m != 0 {
			r = bk.ref[bits.TrailingZeros8(m)]
		}
		refs[j] = r
		if r == refEmpty && !hasEmpty(bk) {
			pend[np] = uint8(j)
			np++
		}
	}
	return np
}

const (
	lanes32Low  = 0x7fffffff7fffffff
	lanes32High = 0x8000000080000000
)

// matchMask returns a bit per slot of bk whose tag is tag (never 0, so free slots,
// whose tag is 0, never match), with arithmetic rather than branches: the tags are
// compared two at a time in 64-bit words (a lane is zero after the XOR exactly when
// its tags are equal; adding 0x7fffffff to its low 31 bits carries into bit 31
// unless they are all zero). Written out word by word: the loop it replaces kept
// the four words in one dependency chain and cost 11 ns a call against 7
// (a micro-benchmark of both on the same buckets).
func matchMask(bk *bucket, tag uint32) uint8 {
	var _ [8 - bucketSlots]struct{} // written for 8 slots (fewer do not compile)
	t := uint64(tag) | uint64(tag)<<32
	x0 := (uint64(bk.tag[0]) | uint64(bk.tag[1])<<32) ^ t
	x1 := (uint64(bk.tag[2]) | uint64(bk.tag[3])<<32) ^ t
	x2 := (uint64(bk.tag[4]) | uint64(bk.tag[5])<<32) ^ t
	x3 := (uint64(bk.tag[6]) | uint64(bk.tag[7])<<32) ^ t
	z0 := ^((x0&lanes32Low + lanes32Low) | x0) & lanes32High // bit 31 of each equal lane
	z1 := ^((x1&lanes32Low + lanes32Low) | x1) & lanes32High
	z2 := ^((x2&lanes32Low + lanes32Low) | x2) & lanes32High
	z3 := ^((x3&lanes32Low + lanes32Low) | x3) & lanes32High
	return uint8((z0>>31)&1 | (z0>>62)&2 | (z1>>29)&4 | (z1>>60)&8 |
		(z2>>27)&16 | (z2>>58)&32 | (z3>>25)&64 | (z3>>56)&128)
}

// hasEmpty reports whether bk has a never-used slot, which ends a probe sequence.
func hasEmpty(bk *bucket) bool {
	r := &bk.ref
	return min(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) == refEmpty
}

// probeTag returns the ref of the first slot whose tag is tag on the probe sequence
// starting at bucket i, or refEmpty.
func probeTag(b []bucket, i int, tag uint32) keyRef {
	for range len(b) {
		bk := &b[i]
		if m := matchMask(bk, tag); m != 0 {
			return bk.ref[bits.TrailingZeros8(m)]
		}
		if hasEmpty(bk) {
			return refEmpty
		}
		if i++; i == len(b) {
			i = 0
		}
	}
	return refEmpty
}
