package index

import "fmt"

// compactMinBytes is the least garbage worth a compaction: below it the arena grows.
const compactMinBytes = 1 << 20

// compact rewrites the arena with only the live entries, in user id order (so a user's
// keys sit together), leaving room for extra more bytes, and rebuilds what refers to
// entries: the table (hashes recomputed from the keys) and the users' refs and lists.
// Like growth, it builds the new arrays beside the old ones, which readers go on using,
// and swaps them in under the write lock. Free lists are empty afterwards. Its cost is
// linear in the live keys and it runs only when free entries outweigh live ones (or the
// arena is at its limit), so it is paid for by at least as many bytes of detaches.
// Writer only.
func (u *Users) compact(extra int) {
	old := &u.mu.st
	next := int(u.NextID())
	liveBytes := u.used - u.freeBytes
	st := *old // the flags region is shared: compaction changes no flag
	n := min(max(liveBytes+extra+liveBytes/4, arenaMinBytes), u.maxArena)
	st.arenaR = u.newRegion(n)
	st.arena = st.arenaR.b
	nb := bucketsFor(u.live + 1)
	st.tabR, st.buckets = u.newBuckets(nb)
	st.refsR = u.newRegion(len(old.refs) * 4)
	st.refs = view[keyRef](st.refsR, len(old.refs))
	nodes := u.poolLen
	for f := u.freeNode; f != 0; f = old.pool[f-1].next {
		nodes--
	}
	st.poolR = u.newRegion(max(nodes+2, 512) * 8)
	st.pool = view[overNode](st.poolR, max(nodes+2, 512))

	used, poolLen := arenaStart, 0
	move := func(ref keyRef) keyRef {
		_, kind, key, size, ok := parseEntry(old.arena, uint64(ref)*arenaUnit)
		if !ok || kind == 0 {
			panic(fmt.Sprintf("BUG: index: compaction found a bad entry at ref %d", ref))
		}
		off := int(ref) * arenaUnit
		copy(st.arena[used:used+size], old.arena[off:off+size])
		nr := keyRef(used / arenaUnit)
		used += size
		insertFresh(st.buckets, u.hashKey(kind, key), nr)
		return nr
	}
	for id := range next {
		f := old.flags[id]
		switch {
		case f&flagDeleted != 0 || old.refs[id] == refEmpty:
		case f&flagOver == 0:
			st.refs[id] = move(old.refs[id])
		default:
			prev := uint32(0)
			for n := uint32(old.refs[id]); n != 0; n = old.pool[n-1].next {
				st.pool[poolLen] = overNode{ref: move(old.pool[n-1].ref)}
				poolLen++
				if prev == 0 {
					st.refs[id] = keyRef(poolLen)
				} else {
					st.pool[prev-1].next = uint32(poolLen)
				}
				prev = uint32(poolLen)
			}
		}
	}
	u.swap(st, func(old, _ *store) []region { return []region{old.arenaR, old.tabR, old.refsR, old.poolR} })
	u.used, u.freeBytes, u.poolLen, u.freeNode = used, 0, poolLen, 0
	clear(u.free)
	u.tombs, u.maxUsed = 0, maxUsedFor(nb)
	u.compactions++
}
