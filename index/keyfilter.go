package index

import (
	"slices"
	"unsafe"

	"github.com/RoaringBitmap/roaring/v2"
)

// Key filters: the identifiers of a published set's members, as a Bloom
// filter of their identity-table hashes, so that a lookup of many users
// against one cohort (SMISMEMBER, pipelined SISMEMBER) can answer most
// non-members without resolving them.
//
// Resolving a key costs two dependent cache misses in tables the size of
// the whole workspace (a bucket, then the arena entry that confirms it):
// ~60–80 ns a key at 1M users on this project's test machines. Most users
// asked about a cohort are not in it (a tenth of them, for a cohort at 10%
// density), and a filter of the members' hashes, a few bytes a member and
// small enough to stay in cache, proves that with one line. A key the
// filter may hold is resolved as before, so answers stay exact: a filter
// has no false negatives, and its false positives (about 1 in 400 at 16
// bits a member) only cost the normal path.
//
// A filter belongs to one published version of a set, as a dense view does
// (dense.go): it is earned by the lookups asked of that version
// (keyAskPerMember a member, since building reads every member's keys),
// dropped when the next version is published, and counted against the same
// DenseBudget. It also depends on which keys the members hold. A member
// can gain a key after the build (an anonymous user identified later), so
// Users keeps an epoch per kind that Attach bumps when the user existed
// before the latest build started, and a filter built at another epoch of
// its kind is never used (a device id given to a known user leaves filters
// of external ids alone).
// Users created since cannot be members of a version published before the
// build, so attaching their keys (every upsert of a new user) bumps
// nothing. Keys a member loses, and users deleted since, only leave stale
// bits: false positives, which resolving settles.
//
// Why not github.com/bits-and-blooms/bloom: it hashes the key bytes again
// (murmur3) and probes k bits spread over the whole filter, k cache lines
// when it outgrows the cache. Here the table hash is already computed for
// the lookup, and a blocked layout (each key's bits in one 64-byte block, one
// bit in each of its eight words, as Parquet's split-block filters do with
// 32-bit words) costs one line per key.

// KeyFilter is the Bloom filter of one kind of key held by the members of
// one published set. It is immutable.
type KeyFilter struct {
	blocks []filterBlock
	users  *Users
	kind   Kind
	epoch  uint64 // users.keyEpoch[kind] when the build started
	keys   int    // keys added
}

// filterBlock is one cache line of a KeyFilter.
type filterBlock [8]uint64

const (
	// keyFilterFewKeys: up to this many keys ResolveManyIn looks them up
	// one by one (a single contains over HTTP).
	keyFilterFewKeys = 4
	// keyFilterBits is the filter's size a member: 16 bits, eight of them
	// set a key, give a false-positive rate of ~0.25%.
	keyFilterBits = 16
	// keyAskPerMember: a filter is built once its version has been asked
	// about this many users a member. Building reads every member's keys
	// (about as costly as resolving them) and saves most of a resolve for
	// each non-member asked, so two lookups a member pay it back.
	keyAskPerMember = 2
)

// filterSalt spreads a hash's low 32 bits over the eight words of a block:
// the odd multipliers of Parquet's split-block Bloom filter.
var filterSalt = [8]uint32{
	0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d,
	0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31,
}

// blockOf returns the block of hash h: fastrange of its high half, so that
// it is independent of the low half, which picks the bits.
func (f *KeyFilter) blockOf(h uint64) *filterBlock {
	return &f.blocks[(h>>32)*uint64(len(f.blocks))>>32]
}

func (f *KeyFilter) add(h uint64) {
	b, lo := f.blockOf(h), uint32(h)
	for i, s := range filterSalt {
		b[i] |= 1 << ((lo * s) >> 26)
	}
}

// mayHold reports whether a key of hash h may be one of the filter's: false
// is certain, true is not.
//
// Without branches: the eight tests of a key the filter holds (every member
// asked about) would each be a branch taken, and which of them fails for a
// key it does not hold is random, so an early exit mispredicts.
func (f *KeyFilter) mayHold(h uint64) bool {
	b, lo := f.blockOf(h), uint32(h)
	var miss uint64
	for i, s := range filterSalt {
		miss |= ^b[i] & (1 << ((lo * s) >> 26))
	}
	return miss == 0
}

// Bytes returns the filter's size.
func (f *KeyFilter) Bytes() int64 { return int64(len(f.blocks)) * 64 }

// usable reports whether f may settle lookups of kind in u now.
func (f *KeyFilter) usable(u *Users, kind Kind) bool {
	return f != nil && f.users == u && f.kind == kind && f.epoch == u.keyEpoch[kind&3].Load()
}

// keyFilterBytes returns the size of the filter of a set of n members.
func keyFilterBytes(n uint64) int64 {
	blocks := (n*keyFilterBits + 511) / 512
	return int64(max(blocks, 1)) * 64
}

// buildKeyFilter returns the filter of the keys of kind held by the members
// of set, or nil when the budget has no room for it.
func (u *Users) buildKeyFilter(b *DenseBudget, set *roaring.Bitmap, kind Kind, members uint64) *KeyFilter {
	size := keyFilterBytes(members)
	if !b.take(size) {
		return nil
	}
	// The epoch first, then the first id that no set published before
	// this build can hold: an Attach to a user below it from now on bumps
	// the epoch, so one that lands while the build runs makes the filter
	// stale at once, and one that landed before is seen by the reads below
	// (Attach writes the key and reads filterNext under the write lock).
	epoch := u.keyEpoch[kind&3].Load()
	for {
		cur, next := u.filterNext.Load(), u.next.Load()
		if next <= cur || u.filterNext.CompareAndSwap(cur, next) {
			break
		}
	}
	f := &KeyFilter{blocks: make([]filterBlock, size/64), users: u, kind: kind, epoch: epoch}
	track(b, f, size)
	it := set.ManyIterator()
	var ids [256]uint32
	for {
		n := it.NextMany(ids[:])
		if n == 0 {
			return f
		}
		// One read lock a chunk, so that a writer never waits long.
		u.mu.RLock()
		a := u.mu.st.arena
		for _, id := range ids[:n] {
			u.eachRef(UserID(id), func(ref keyRef) {
				if _, k, key := decodeEntry(a, ref); k == kind {
					f.add(u.hashKey(kind, key))
					f.keys++
				}
			})
		}
		u.mu.RUnlock()
	}
}

// ResolveManyIn is ResolveMany for keys whose users will only be tested for
// membership in the set f was built for: a key f proves is held by none of
// its members comes back as NoUser without being looked up. With a nil
// filter, or one that no longer describes u (see KeyFilter), it is
// ResolveMany.
func (u *Users) ResolveManyIn(f *KeyFilter, kind Kind, keys [][]byte, dst []UserID) []UserID {
	if !f.usable(u, kind) {
		return u.ResolveMany(kind, keys, dst)
	}
	start := len(dst)
	dst = slices.Grow(dst, len(keys))[:start+len(keys)]
	out := dst[start:]
	if len(keys) <= keyFilterFewKeys {
		// A single contains: no batch to overlap, and no scratch to clear.
		for j, k := range keys {
			h := u.hashKey(kind, k)
			if !f.mayHold(h) {
				out[j] = NoUser
				continue
			}
			u.mu.RLock()
			_, _, _, out[j], _ = find(u.mu.st.buckets, u.mu.st.arena, h, kind, k)
			u.mu.RUnlock()
		}
		return dst
	}
	// A group at a time, as resolveManyLocked goes: the scratch is
	// small enough to clear on every call.
	var (
		hs   [resolveGroup]uint64
		pos  [resolveGroup]uint8
		sk   [resolveGroup][]byte
		sh   [resolveGroup]uint64
		sout [resolveGroup]UserID
	)
	for off := 0; off < len(keys); off += resolveGroup {
		g := keys[off:min(off+resolveGroup, len(keys))]
		o := out[off : off+len(g)]
		// Hash and prefetch every key's block first, so that the
		// filter's misses overlap. Even a small filter misses: between
		// commands the rest of the server's work evicts it from L2.
		u.hashKeys(kind, g, hs[:])
		for _, h := range hs[:len(g)] {
			prefetch(unsafe.Pointer(f.blockOf(h)))
		}
		n := 0
		for j := range g {
			if f.mayHold(hs[j]) {
				pos[n], sk[n], sh[n] = uint8(j), g[j], hs[j]
				n++
			} else {
				o[j] = NoUser
			}
		}
		if n == 0 {
			continue
		}
		u.mu.RLock()
		u.resolveHashedLocked(kind, sk[:n], sh[:n], sout[:n])
		u.mu.RUnlock()
		for i, j := range pos[:n] {
			o[j] = sout[i]
		}
	}
	clear(sk[:]) // keep no reference to the caller's keys
	return dst
}
