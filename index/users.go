package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/RoaringBitmap/roaring/v2"
)

// UserID is a dense user id, given in arrival order starting at 0.
type UserID uint32

// NoUser is the UserID that names no user: the answer for an unknown key.
const NoUser UserID = ^UserID(0)

// Kind is the kind of an identifier.
type Kind uint8

// The kinds of identifiers. Kind values are stored in two bits of an arena entry.
const (
	KindExternal Kind = 1 // external_id
	KindAlias    Kind = 2 // alias: key bytes are AliasKey(name, label)
	KindDevice   Kind = 3 // device_id
)

// String returns the kind's name as the API spells it.
func (k Kind) String() string {
	switch k {
	case KindExternal:
		return "external_id"
	case KindAlias:
		return "alias"
	case KindDevice:
		return "device_id"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

func (k Kind) valid() bool { return k >= KindExternal && k <= KindDevice }

// AliasKey appends the alias key bytes for (name, label) to dst: name, a NUL, label.
// NUL is forbidden in identifiers, so the key is unambiguous and name and label are
// never swapped.
func AliasKey(dst []byte, name, label []byte) []byte {
	dst = append(dst, name...)
	dst = append(dst, 0)
	return append(dst, label...)
}

// SplitAlias splits an alias key made by AliasKey into name and label, which alias key.
// A key without a NUL is returned whole as the name, with a nil label.
func SplitAlias(key []byte) (name, label []byte) {
	i := bytes.IndexByte(key, 0)
	if i < 0 {
		return key, nil
	}
	return key[:i:i], key[i+1:]
}

// Errors returned by Users' mutating methods, wrapped with context.
var (
	ErrKeyHeld = errors.New("index: key already held by a user")
	ErrNoUser  = errors.New("index: no such live user")
	ErrBadKey  = errors.New("index: invalid key")
	ErrIDTaken = errors.New("index: user id already handed out")
)

// Options configures a Users table.
type Options struct {
	// Hash hashes key bytes; nil means seeded XXH3. Tests inject a weak hash to force
	// collisions: correctness must not depend on it.
	Hash func(key []byte) uint64
	// Seed seeds the hash; 0 draws one at random. Snapshots keep it.
	Seed uint64
	// Capacity is the number of keys to size the identity table for up front; 0 starts
	// small. Growth past it is automatic.
	Capacity int
	// MaxArenaBytes caps the key arena below its 8 GiB (tests use it to reach ErrFull);
	// 0 means no cap beyond 8 GiB.
	MaxArenaBytes int
	// DenseBudget bounds the live set's dense views (dense.go); nil builds none.
	DenseBudget *DenseBudget
}

const (
	flagDeleted    = 1 << 0 // deleted, or an id skipped by CreateAt: never live again
	flagIdentified = 1 << 1 // holds an external id or an alias
	flagOver       = 1 << 2 // holds two keys or more: refs[id] heads a list in the pool
	flagsKnown     = flagDeleted | flagIdentified | flagOver

	userMinCap = 1024 // ids of the first user table of a workspace
)

// overNode is one key of a user that holds two or more, in a singly linked list in
// the pool (index + 1; 0 ends the list) kept in attach order.
type overNode struct {
	ref  keyRef
	next uint32
}

// store is every array a reader may look at. Its fields change only under mu's write
// lock; its regions are owned by the Users and released by the writer (region.go).
type store struct {
	tabR    region
	buckets []bucket

	arenaR region
	arena  []byte // all of arenaR; entries lie below Users.used

	refsR region
	refs  []keyRef // per user: its one key, or with flagOver its pool list's head
	flgR  region
	flags []uint8 // per user; len(flags) == len(refs) is the user table's capacity

	poolR region
	pool  []overNode // len is the pool's capacity; Users.poolLen are in use
}

// release frees every region of s.
func (s *store) release() {
	s.tabR.release()
	s.arenaR.release()
	s.refsR.release()
	s.flgR.release()
	s.poolR.release()
	*s = store{}
}

// Users is the identity table plus the user table of one workspace.
//
// # What it holds
//
// Every identifier (external id, alias, device id) maps to a dense UserID through a flat
// open-addressing table (see idmap.go) whose slots point into a key arena (see
// arena.go); each arena entry records its user, and each user records its keys (one
// ref in the user table; a user with two or more has a list in the overflow pool), so
// lookups go both ways. A user also has two flags: deleted and identified (anonymous
// is live and not identified). Memory is about 40 bytes a user with one 19-byte
// external id. The arrays live in regions outside the Go heap, on huge pages
// (region.go); Close releases them.
//
// # Concurrency
//
// Mutating methods (Create, CreateMany, CreateAt, Attach, Detach, Delete, Publish,
// Reserve, Close) must be called by one goroutine at a time (the engine holds a
// per-workspace writer mutex). Resolve, ResolveMany, Identifiers, Anonymous, Deleted,
// Live, Len, NextID and Memory may run concurrently with them and with each other.
//
// Readers touch the arrays only while holding mu's read lock, for at most
// resolveLockSpan keys, and keep no slice into them after unlocking (Identifiers
// copies the keys out). The writer reads the arrays without locking, since no one else
// writes them, and changes them under the write lock in short sections (one key or one
// user). Growth of any array (table, arena, user table, pool) and compaction build the
// replacement off to the side while readers keep using the old arrays, swap it in
// under the write lock, and release the old region after unlocking: acquiring the
// write lock waited for every reader that could hold the old slices, and every later
// reader finds the new ones, so nothing can read a released region. Readers therefore
// never wait for a rehash or a copy, only for the swap, as before regions existed.
//
// Resolve, Identifiers, Anonymous and Deleted see each write as soon as its method
// returns. Live does not: it returns the bitmap of the last Publish (see Publish).
type Users struct {
	hash func([]byte) uint64 // nil: seeded xxh3
	seed uint64

	mu struct {
		sync.RWMutex
		st store
	}

	// Writer-only state.
	live, tombs, maxUsed int             // table slots holding a key, tombstones, and the limit
	used                 int             // arena bytes in use (entries and free entries)
	freeBytes            int             // bytes of free entries
	free                 map[int]keyRef  // entry size -> head of its free list
	maxArena             int             // arena byte limit
	poolLen              int             // pool nodes handed out (live or on the free list)
	freeNode             uint32          // head of the free pool list (index + 1)
	closed               bool            // Close was called: new regions go to the heap
	compactions          int             // arena compactions so far
	master               *roaring.Bitmap // live users, copy-on-write; published by Publish

	keyEpoch   [4]atomic.Uint64 // by kind: bumped when a user a key filter may cover gains a key of it (keyfilter.go)
	filterNext atomic.Uint32    // NextID when the latest key filter build started
	pub        atomic.Pointer[roaring.Bitmap]
	liveDense  denseCache    // pub's dense view (dense.go)
	stats      atomic.Value  // Memory: the writer-only counts as of the last Publish
	next       atomic.Uint32 // next id to hand out
	count      atomic.Int64  // live users
}

// NewUsers returns an empty Users table.
func NewUsers(opts Options) *Users {
	u := newUsers(opts)
	if opts.Capacity > 0 {
		nb := bucketsFor(opts.Capacity)
		u.mu.st.tabR, u.mu.st.buckets = u.newBuckets(nb)
		u.maxUsed = maxUsedFor(nb)
	}
	u.Publish()
	return u
}

func newUsers(opts Options) *Users {
	u := &Users{hash: opts.Hash, seed: opts.Seed, master: roaring.New(), free: make(map[int]keyRef)}
	u.liveDense.budget = opts.DenseBudget
	for u.seed == 0 {
		u.seed = rand.Uint64()
	}
	u.maxArena = arenaMaxBytes
	if opts.MaxArenaBytes > 0 {
		u.maxArena = min(opts.MaxArenaBytes, arenaMaxBytes)
	}
	u.master.SetCopyOnWrite(true)
	u.used = arenaStart
	return u
}

// Seed returns the seed of the table hash.
func (u *Users) Seed() uint64 { return u.seed }

// Close releases the memory of the tables. Afterwards the Users is empty for readers;
// a writer that still mutates it gets heap memory that the GC reclaims. Writer only.
func (u *Users) Close() {
	u.mu.Lock()
	old := u.mu.st
	u.mu.st = store{}
	u.closed = true
	u.mu.Unlock()
	old.release()
	u.live, u.tombs, u.maxUsed = 0, 0, 0
	u.used, u.freeBytes, u.poolLen, u.freeNode = arenaStart, 0, 0, 0
	clear(u.free)
}

// newRegion allocates a region for this Users: on the heap after Close.
func (u *Users) newRegion(n int) region {
	if u.closed {
		return region{b: make([]byte, max(n, 64))}
	}
	return newRegion(n)
}

// swap installs st under the write lock and releases what it replaced. Writer only.
func (u *Users) swap(st store, which func(old *store, st *store) []region) {
	u.mu.Lock()
	old := u.mu.st
	u.mu.st = st
	u.mu.Unlock()
	for _, r := range which(&old, &st) {
		r.release()
	}
}

// ResolveMany appends to dst one UserID per key (NoUser if unknown), in order, and
// returns it. It allocates only when dst lacks capacity. Keys are not retained.
func (u *Users) ResolveMany(kind Kind, keys [][]byte, dst []UserID) []UserID {
	start := len(dst)
	dst = slices.Grow(dst, len(keys))[:start+len(keys)]
	out := dst[start:]
	for off := 0; off < len(keys); off += resolveLockSpan {
		end := min(off+resolveLockSpan, len(keys))
		u.mu.RLock()
		u.resolveManyLocked(kind, keys[off:end], out[off:end])
		u.mu.RUnlock()
	}
	return dst
}

// Resolve returns the user holding (kind, key), or NoUser.
func (u *Users) Resolve(kind Kind, key []byte) UserID {
	h := u.hashKey(kind, key)
	u.mu.RLock()
	_, _, _, id, _ := find(u.mu.st.buckets, u.mu.st.arena, h, kind, key)
	u.mu.RUnlock()
	return id
}

// Create adds a live user with no identifiers (anonymous until an external id or alias
// is attached) and returns its id. Ids are handed out in arrival order and never reused.
// Writer only; Live shows the user after the next Publish. It panics when ids are used
// up (Reserve tells beforehand).
func (u *Users) Create() UserID {
	id := u.NextID()
	u.extendTo(id + 1)
	u.master.Add(uint32(id))
	u.count.Add(1)
	return id
}

// CreateMany adds n live users with consecutive ids and returns the first. Writer only.
func (u *Users) CreateMany(n int) (first UserID) {
	first = u.NextID()
	if n <= 0 {
		return first
	}
	u.extendTo(first + UserID(n))
	u.master.AddRange(uint64(first), uint64(first)+uint64(n))
	u.count.Add(int64(n))
	return first
}

// CreateAt adds the live user id, which must not be below NextID; ids skipped on the way
// count as deleted. Recovery uses it to replay a log that names ids. Writer only.
func (u *Users) CreateAt(id UserID) error {
	next := u.NextID()
	if id < next || id == NoUser {
		return fmt.Errorf("create user %d (next id %d): %w", id, next, ErrIDTaken)
	}
	u.extendTo(id + 1)
	if id > next {
		u.mu.Lock()
		for s := next; s < id; s++ {
			u.mu.st.flags[s] = flagDeleted
		}
		u.mu.Unlock()
	}
	u.master.Add(uint32(id))
	u.count.Add(1)
	return nil
}

// extendTo makes room in the user table for ids below end and advances NextID to end.
// The table grows by doubling into new regions built beside the old ones.
func (u *Users) extendTo(end UserID) {
	if end == NoUser || end < u.NextID() {
		panic("index: user ids exhausted")
	}
	if int(end) > len(u.mu.st.refs) {
		n := max(2*len(u.mu.st.refs), int(end), userMinCap)
		n = min(n, int(NoUser))
		st := u.mu.st
		st.refsR = u.newRegion(n * 4)
		st.refs = view[keyRef](st.refsR, n)
		st.flgR = u.newRegion(n)
		st.flags = view[uint8](st.flgR, n)
		copy(st.refs, u.mu.st.refs)
		copy(st.flags, u.mu.st.flags)
		u.swap(st, func(old, _ *store) []region { return []region{old.refsR, old.flgR} })
	}
	u.next.Store(uint32(end))
}

// NextID returns the id the next Create will return.
func (u *Users) NextID() UserID { return UserID(u.next.Load()) }

// Len returns the number of live users.
func (u *Users) Len() int { return int(u.count.Load()) }

// Publish makes Live return the current set of live users. Mutating methods do not
// publish by themselves, so that a batch (say a million Creates) pays for one clone:
// the writer calls Publish once at the end of each batch. Writer only.
//
// The master bitmap is copy-on-write, so the clone shares its containers and later
// writes to the master copy only the containers they touch; a published bitmap is never
// written again.
func (u *Users) Publish() {
	pub := u.master.Clone()
	u.pub.Store(pub)
	u.liveDense.reset(pub)
	u.stats.Store(Memory{Keys: u.live, ArenaBytes: int64(u.used), ArenaFree: int64(u.freeBytes)})
}

// Live returns the live user ids as of the last Publish. The bitmap is shared and
// immutable: callers must never modify it (clone it first).
func (u *Users) Live() *roaring.Bitmap { return u.pub.Load() }

// LiveDense returns the dense view of live, a version Live returned, or nil when it
// has none; n is how many lookups the caller is about to make in it (dense.go).
func (u *Users) LiveDense(live *roaring.Bitmap, n int) *Dense { return u.liveDense.view(live, n) }

// LiveDenseBytes returns the size of the published live set's dense view, or 0.
func (u *Users) LiveDenseBytes() int64 { return u.liveDense.bytes() }

// flagsLocked returns id's flags and whether id was handed out (and the table, after
// Close, still has it). The caller holds the read lock or is the writer.
func (u *Users) flagsLocked(id UserID) (uint8, bool) {
	if uint32(id) >= u.next.Load() || int(id) >= len(u.mu.st.flags) {
		return 0, false
	}
	return u.mu.st.flags[id], true
}

// Deleted reports whether id was handed out and then deleted (or skipped by CreateAt).
func (u *Users) Deleted(id UserID) bool {
	u.mu.RLock()
	f, ok := u.flagsLocked(id)
	u.mu.RUnlock()
	return ok && f&flagDeleted != 0
}

// Anonymous reports whether id is live and holds no external id and no alias.
func (u *Users) Anonymous(id UserID) bool {
	u.mu.RLock()
	f, ok := u.flagsLocked(id)
	u.mu.RUnlock()
	return ok && f&(flagDeleted|flagIdentified) == 0
}

// isLive reports whether id is a live user. Writer only (reads without the lock).
func (u *Users) isLive(id UserID) bool {
	f, ok := u.flagsLocked(id)
	return ok && f&flagDeleted == 0
}

// Reserve makes sure that the next attaches of at most keys keys holding keyBytes key
// bytes in all, and the creation of users new users, cannot fail for lack of room: it
// may compact the arena now. It returns an error wrapping ErrFull, and changes nothing
// the readers can see, if they would not fit. Writer only.
//
// Attach checks the same by itself and fails without a trace, but a caller that
// applies a batch of changes as one record checks the whole batch first.
func (u *Users) Reserve(users, keys, keyBytes int) error {
	if users < 0 || keys < 0 || keyBytes < 0 {
		return fmt.Errorf("reserve %d users, %d keys of %d bytes: %w", users, keys, keyBytes, ErrBadKey)
	}
	if uint64(u.NextID())+uint64(users) >= uint64(NoUser) {
		return fmt.Errorf("reserve %d users (next id %d): %w", users, u.NextID(), ErrFull)
	}
	need := keyBytes + 8*keys // entrySize(n) <= n+8
	if u.used+need <= u.maxArena {
		return nil
	}
	if u.used-u.freeBytes+need <= u.maxArena {
		u.compact(need)
		return nil
	}
	return fmt.Errorf("reserve %d keys of %d bytes (arena %d of %d bytes live): %w", keys, keyBytes, u.used-u.freeBytes, u.maxArena, ErrFull)
}

// Attach gives key of the given kind to the live user id. It fails if any user holds the
// key already, if id is not live, if the key is empty or longer than MaxKeyLen, or with
// ErrFull if the arena is full; a failed Attach changes nothing. Writer only.
func (u *Users) Attach(id UserID, kind Kind, key []byte) error {
	if !kind.valid() {
		return fmt.Errorf("attach key to user %d: kind %v: %w", id, kind, ErrBadKey)
	}
	if len(key) == 0 || len(key) > MaxKeyLen {
		return fmt.Errorf("attach %v of %d bytes to user %d: %w", kind, len(key), id, ErrBadKey)
	}
	if !u.isLive(id) {
		return fmt.Errorf("attach %v to user %d: %w", kind, id, ErrNoUser)
	}
	h := u.hashKey(kind, key)
	if _, _, _, holder, ok := find(u.mu.st.buckets, u.mu.st.arena, h, kind, key); ok {
		return fmt.Errorf("attach %v to user %d: held by user %d: %w", kind, id, holder, ErrKeyHeld)
	}
	// Room first (each step may swap in bigger arrays, which readers never notice),
	// so that nothing below can fail. The table first: a rebuild walks the arena,
	// which must not hold an entry allocated and not yet written.
	u.reserveSlot()
	size := entrySize(len(key))
	off, err := u.allocEntry(size)
	if err != nil {
		return fmt.Errorf("attach %v to user %d: %w", kind, id, err)
	}
	u.reserveNodes(2)

	u.mu.Lock()
	defer u.mu.Unlock()
	st := &u.mu.st
	putEntry(st.arena, off, id, kind, key)
	ref := keyRef(off / arenaUnit)
	bi, si := freeSlot(st.buckets, h)
	bk := &st.buckets[bi]
	if bk.ref[si] == refTomb {
		u.tombs--
	}
	bk.tag[si] = tagOf(h)
	bk.ref[si] = ref
	u.live++
	u.addRefLocked(id, ref)
	if uint32(id) < u.filterNext.Load() {
		// A user some key filter's set may hold: a filter of this
		// kind lacks the key (keyfilter.go).
		u.keyEpoch[kind&3].Add(1)
	}
	if kind != KindDevice {
		st.flags[id] |= flagIdentified
	}
	return nil
}

// allocEntry returns the arena offset of size free bytes for a new entry: a free entry
// of that size, else the end of the arena, grown (or compacted) first if need be. It
// changes nothing readers can see. Writer only.
func (u *Users) allocEntry(size int) (int, error) {
	if ref := u.free[size]; ref != 0 {
		a := u.mu.st.arena
		off := int(ref) * arenaUnit
		if next := keyRef(binary.LittleEndian.Uint32(a[off:])); next != 0 {
			u.free[size] = next
		} else {
			delete(u.free, size)
		}
		u.freeBytes -= size
		return off, nil
	}
	if u.used+size > len(u.mu.st.arena) {
		switch {
		case u.freeBytes >= max(u.used-u.freeBytes, compactMinBytes):
			// More garbage than live entries: compact rather than grow.
			u.compact(size)
		case u.used+size > u.maxArena && u.used-u.freeBytes+size <= u.maxArena:
			u.compact(size)
		case u.used+size > u.maxArena:
			return 0, fmt.Errorf("key arena holds %d of %d bytes: %w", u.used, u.maxArena, ErrFull)
		default:
			u.growArena(u.used + size)
		}
	}
	off := u.used
	u.used += size
	return off, nil
}

// growArena copies the arena into a region of at least need bytes (twice the old one
// if that is more; untouched pages of a mapping cost nothing). Writer only.
func (u *Users) growArena(need int) {
	n := min(max(need, 2*len(u.mu.st.arena), arenaMinBytes), u.maxArena)
	st := u.mu.st
	st.arenaR = u.newRegion(n)
	st.arena = st.arenaR.b
	copy(st.arena, u.mu.st.arena[:min(u.used, len(u.mu.st.arena))])
	u.swap(st, func(old, _ *store) []region { return []region{old.arenaR} })
}

// freeEntryLocked marks the entry at ref free and pushes it on its free list. The
// write lock is held and nothing refers to the entry any more.
func (u *Users) freeEntryLocked(ref keyRef) {
	a := u.mu.st.arena
	off := int(ref) * arenaUnit
	_, _, _, size, ok := parseEntry(a, uint64(off))
	if !ok {
		panic(fmt.Sprintf("BUG: index: free of a bad entry at ref %d", ref))
	}
	a[off+4] &^= 3 << 6
	binary.LittleEndian.PutUint32(a[off:], uint32(u.free[size]))
	u.free[size] = ref
	u.freeBytes += size
}

// reserveSlot grows (or just cleans) the table if one more used slot would pass the load
// limit. The new table is built from the arena without the lock while readers use the
// old one, then swapped in. Writer only.
func (u *Users) reserveSlot() {
	if u.live+u.tombs+1 <= u.maxUsed {
		return
	}
	nb := bucketsFor(u.live + 1)
	st := u.mu.st
	st.tabR, st.buckets = u.rebuildTable(st.arena, u.used, nb)
	u.swap(st, func(old, _ *store) []region { return []region{old.tabR} })
	u.maxUsed = maxUsedFor(nb)
	u.tombs = 0
}

// reserveNodes makes sure the pool has n nodes to hand out without growing. Writer only.
func (u *Users) reserveNodes(n int) {
	avail := len(u.mu.st.pool) - u.poolLen
	for f := u.freeNode; f != 0 && avail < n; f = u.mu.st.pool[f-1].next {
		avail++
	}
	if avail >= n {
		return
	}
	c := max(2*len(u.mu.st.pool), u.poolLen+n, 512)
	st := u.mu.st
	st.poolR = u.newRegion(c * 8)
	st.pool = view[overNode](st.poolR, c)
	copy(st.pool, u.mu.st.pool[:u.poolLen])
	u.swap(st, func(old, _ *store) []region { return []region{old.poolR} })
}

// Detach frees (kind, key), leaving a tombstone in the table, and returns the user that
// held it. Writer only.
func (u *Users) Detach(kind Kind, key []byte) (UserID, bool) {
	if !kind.valid() {
		return NoUser, false
	}
	h := u.hashKey(kind, key)
	st := &u.mu.st
	bi, si, ref, id, ok := find(st.buckets, st.arena, h, kind, key)
	if !ok {
		return NoUser, false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	st.buckets[bi].ref[si] = refTomb
	st.buckets[bi].tag[si] = 0
	u.live--
	u.tombs++
	u.removeRefLocked(id, ref)
	u.freeEntryLocked(ref)
	if kind != KindDevice {
		u.refreshIdentifiedLocked(id)
	}
	return id, true
}

// Delete detaches every key of id, marks it deleted and removes it from the live set.
// It reports whether id was live. Deleted ids are never reused. Writer only.
func (u *Users) Delete(id UserID) bool {
	if !u.isLive(id) {
		return false
	}
	u.mu.Lock()
	st := &u.mu.st
	u.eachRef(id, func(ref keyRef) {
		_, kind, key := decodeEntry(st.arena, ref)
		h := u.hashKey(kind, key)
		bi, si, ok := findRef(st.buckets, h, ref)
		if !ok {
			panic(fmt.Sprintf("BUG: index: user %d lists key ref %d that is not in the table", id, ref))
		}
		st.buckets[bi].ref[si] = refTomb
		st.buckets[bi].tag[si] = 0
		u.live--
		u.tombs++
		u.freeEntryLocked(ref)
	})
	if st.flags[id]&flagOver != 0 {
		for n := uint32(st.refs[id]); n != 0; {
			next := st.pool[n-1].next
			u.freeNodeLocked(n)
			n = next
		}
	}
	st.refs[id] = refEmpty
	st.flags[id] = flagDeleted
	u.mu.Unlock()
	u.master.Remove(uint32(id))
	u.count.Add(-1)
	return true
}

// eachRef calls fn with every key ref of id in attach order. The caller holds the lock
// or is the writer. A list is followed for at most poolLen nodes, so a corrupt one
// (from a damaged snapshot) cannot loop forever.
func (u *Users) eachRef(id UserID, fn func(keyRef)) {
	st := &u.mu.st
	f, ok := u.flagsLocked(id)
	if !ok {
		return
	}
	if f&flagOver == 0 {
		if r := st.refs[id]; r != refEmpty {
			fn(r)
		}
		return
	}
	n := uint32(st.refs[id])
	for range len(st.pool) {
		if n == 0 || int(n) > len(st.pool) {
			return
		}
		fn(st.pool[n-1].ref)
		n = st.pool[n-1].next
	}
}

// addRefLocked appends ref to id's keys. The write lock is held and the pool has two
// nodes to spare (reserveNodes).
func (u *Users) addRefLocked(id UserID, ref keyRef) {
	st := &u.mu.st
	if st.flags[id]&flagOver == 0 {
		if st.refs[id] == refEmpty {
			st.refs[id] = ref
			return
		}
		first := u.allocNodeLocked(st.refs[id])
		st.pool[first-1].next = u.allocNodeLocked(ref)
		st.refs[id] = keyRef(first)
		st.flags[id] |= flagOver
		return
	}
	last := uint32(st.refs[id])
	for st.pool[last-1].next != 0 {
		last = st.pool[last-1].next
	}
	st.pool[last-1].next = u.allocNodeLocked(ref)
}

// removeRefLocked removes ref from id's keys, keeping the others in attach order; a
// list left with one key goes back inline. The write lock is held.
func (u *Users) removeRefLocked(id UserID, ref keyRef) {
	st := &u.mu.st
	if st.flags[id]&flagOver == 0 {
		if st.refs[id] != ref {
			panic(fmt.Sprintf("BUG: index: key ref %d resolves to user %d, which does not list it", ref, id))
		}
		st.refs[id] = refEmpty
		return
	}
	prev := uint32(0)
	for n := uint32(st.refs[id]); n != 0; prev, n = n, st.pool[n-1].next {
		if st.pool[n-1].ref != ref {
			continue
		}
		next := st.pool[n-1].next
		if prev == 0 {
			st.refs[id] = keyRef(next)
		} else {
			st.pool[prev-1].next = next
		}
		u.freeNodeLocked(n)
		if head := uint32(st.refs[id]); st.pool[head-1].next == 0 {
			st.refs[id] = st.pool[head-1].ref
			st.flags[id] &^= flagOver
			u.freeNodeLocked(head)
		}
		return
	}
	panic(fmt.Sprintf("BUG: index: key ref %d resolves to user %d, which does not list it", ref, id))
}

func (u *Users) allocNodeLocked(ref keyRef) uint32 {
	st := &u.mu.st
	if n := u.freeNode; n != 0 {
		u.freeNode = st.pool[n-1].next
		st.pool[n-1] = overNode{ref: ref}
		return n
	}
	if u.poolLen == len(st.pool) {
		panic("BUG: index: overflow pool used past its reservation")
	}
	st.pool[u.poolLen] = overNode{ref: ref}
	u.poolLen++
	return uint32(u.poolLen)
}

func (u *Users) freeNodeLocked(n uint32) {
	u.mu.st.pool[n-1] = overNode{ref: refEmpty, next: u.freeNode}
	u.freeNode = n
}

// refreshIdentifiedLocked recomputes id's identified flag from its keys. The write lock
// is held.
func (u *Users) refreshIdentifiedLocked(id UserID) {
	ident := false
	u.eachRef(id, func(ref keyRef) {
		if _, kind, _ := decodeEntry(u.mu.st.arena, ref); kind != KindDevice {
			ident = true
		}
	})
	if ident {
		u.mu.st.flags[id] |= flagIdentified
	} else {
		u.mu.st.flags[id] &^= flagIdentified
	}
}

// Identifiers calls fn with every key id holds: external ids first, then aliases, then
// device ids, in attach order within a kind. key is valid only during fn and must not be
// modified or kept. fn runs under the read lock, so it must not call methods of u (a
// read lock taken twice deadlocks once a writer waits): copy what you need out.
func (u *Users) Identifiers(id UserID, fn func(kind Kind, key []byte)) {
	var stack [8]keyRef
	refs := stack[:0]
	u.mu.RLock()
	defer u.mu.RUnlock()
	u.eachRef(id, func(ref keyRef) { refs = append(refs, ref) })
	a := u.mu.st.arena
	for _, want := range [...]Kind{KindExternal, KindAlias, KindDevice} {
		for _, ref := range refs {
			if _, kind, key := decodeEntry(a, ref); kind == want {
				fn(kind, key)
			}
		}
	}
}

// Memory counts the bytes a Users holds, by structure. Used counts what the data
// takes; Reserved what is allocated for it (mapped regions reserve ahead, but their
// untouched pages cost no RSS).
type Memory struct {
	Users      int   // live users
	Keys       int   // identifiers held
	TableBytes int64 // identity table buckets
	ArenaBytes int64 // key arena in use, free entries included
	ArenaFree  int64 // of ArenaBytes, free entries awaiting reuse
	UserTable  int64 // per-user refs and flags, and the overflow lists
	LiveBitmap int64 // the published live-users bitmap
	Reserved   int64 // bytes of every region
	OffHeap    int64 // of Reserved, bytes mapped outside the Go heap
}

// Memory returns the bytes held, by structure, as of the last Publish for the
// arena's and the keys' counts.
func (u *Users) Memory() Memory {
	m := u.stats.Load().(Memory)
	u.mu.RLock()
	st := &u.mu.st
	next := min(int(u.next.Load()), len(st.refs))
	m.TableBytes = int64(len(st.buckets)) * bucketBytes
	m.UserTable = int64(next)*5 + int64(len(st.pool))*8
	m.Reserved, m.OffHeap = 0, 0
	for _, r := range []*region{&st.tabR, &st.arenaR, &st.refsR, &st.flgR, &st.poolR} {
		m.Reserved += int64(len(r.b))
		m.OffHeap += int64(r.mapped())
	}
	u.mu.RUnlock()
	m.Users = u.Len()
	m.LiveBitmap = int64(u.Live().GetSizeInBytes())
	return m
}

// MemoryBytes returns the approximate bytes held: table, arena, user table, overflow
// lists and the live bitmap.
func (u *Users) MemoryBytes() int {
	m := u.Memory()
	return int(m.TableBytes + m.ArenaBytes + m.UserTable + m.LiveBitmap)
}

// Check verifies that the identity table, the arena, the user table and the live bitmap
// agree: every key in the table resolves to the user whose entry it is and that user
// lists it; every key a user lists is in the table; flags match the keys; free entries
// add up; the master live bitmap holds exactly the non-deleted users; and the counts
// add up. Writer only (it must not run concurrently with mutations). It returns all
// problems found, joined; it never panics, whatever the tables hold.
func (u *Users) Check() error {
	var errs []error
	fail := func(format string, args ...any) {
		if len(errs) < 20 {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	st := &u.mu.st
	a := st.arena
	live, tombs := 0, 0
	inTable := make(map[keyRef]bool)
	for bi := range st.buckets {
		bk := &st.buckets[bi]
		for s := range bucketSlots {
			r := bk.ref[s]
			if r <= refTomb && bk.tag[s] != 0 {
				fail("check: free slot %d/%d has tag %#x", bi, s, bk.tag[s])
			}
			switch r {
			case refEmpty:
				continue
			case refTomb:
				tombs++
				continue
			}
			live++
			if inTable[r] {
				fail("check: key ref %d in two slots", r)
			}
			inTable[r] = true
			id, kind, key := decodeEntry(a, r)
			if kind == 0 {
				fail("check: slot %d/%d holds ref %d, which is no live entry", bi, s, r)
				continue
			}
			h := u.hashKey(kind, key)
			if tagOf(h) != bk.tag[s] {
				fail("check: slot %d/%d tag %#x, key hashes to tag %#x", bi, s, bk.tag[s], tagOf(h))
			}
			if _, _, got, gotID, ok := find(st.buckets, a, h, kind, key); !ok || got != r || gotID != id {
				fail("check: %v %q resolves to ref %d user %d (ok %v), want ref %d user %d", kind, key, got, gotID, ok, r, id)
			}
			if !u.isLive(id) {
				fail("check: %v %q held by user %d, which is not live", kind, key, id)
			}
		}
	}
	if live != u.live || tombs != u.tombs {
		fail("check: table counts live %d tombs %d, found %d and %d", u.live, u.tombs, live, tombs)
	}
	if live+tombs > u.maxUsed && len(st.buckets) > 0 {
		fail("check: %d used slots over the limit %d", live+tombs, u.maxUsed)
	}

	// The arena: entries end to end up to used; live ones are exactly the table's.
	entries, free := 0, 0
	for off := arenaStart; off < u.used; {
		_, kind, _, size, ok := parseEntry(a[:min(u.used, len(a))], uint64(off))
		if !ok {
			fail("check: arena entry at %d does not parse", off)
			break
		}
		if kind == 0 {
			free += size
		} else {
			entries++
			if !inTable[keyRef(off/arenaUnit)] {
				fail("check: arena entry at %d is live but not in the table", off)
			}
		}
		off += size
	}
	if entries != live || free != u.freeBytes {
		fail("check: arena holds %d live entries and %d free bytes, want %d and %d", entries, free, live, u.freeBytes)
	}
	listedFree := 0
	for size, ref := range u.free {
		for n := 0; ref != 0 && n <= u.used; n++ {
			_, kind, _, esize, ok := parseEntry(a, uint64(ref)*arenaUnit)
			if !ok || kind != 0 || esize != size {
				fail("check: free list %d holds ref %d (kind %d, size %d)", size, ref, kind, esize)
				break
			}
			listedFree += size
			ref = entryRefAt(a, ref)
		}
	}
	if listedFree != u.freeBytes {
		fail("check: free lists hold %d bytes, want %d", listedFree, u.freeBytes)
	}

	listed, nLive := 0, 0
	next := u.NextID()
	if int(next) > len(st.flags) {
		fail("check: next id %d past the user table (%d)", next, len(st.flags))
		return errors.Join(errs...)
	}
	for id := UserID(0); id < next; id++ {
		fl := st.flags[id]
		if fl&^flagsKnown != 0 {
			fail("check: user %d has unknown flags %#x", id, fl)
		}
		deleted := fl&flagDeleted != 0
		if deleted == u.master.Contains(uint32(id)) {
			fail("check: user %d deleted=%v but live bitmap says %v", id, deleted, u.master.Contains(uint32(id)))
		}
		if !deleted {
			nLive++
		}
		nkeys, ident := 0, false
		u.eachRef(id, func(r keyRef) {
			listed++
			nkeys++
			if deleted {
				fail("check: deleted user %d lists key ref %d", id, r)
			}
			if !inTable[r] {
				fail("check: user %d lists key ref %d, which is not in the table", id, r)
				return
			}
			eid, kind, key := decodeEntry(a, r)
			if eid != id {
				fail("check: user %d lists %v %q, whose entry names user %d", id, kind, key, eid)
			}
			if kind != KindDevice {
				ident = true
			}
		})
		if fl&flagOver != 0 && nkeys < 2 {
			fail("check: user %d has a key list of %d keys", id, nkeys)
		}
		if ident != (fl&flagIdentified != 0) {
			fail("check: user %d identified flag %v, keys say %v", id, fl&flagIdentified != 0, ident)
		}
	}
	if listed != live {
		fail("check: users list %d keys, table holds %d", listed, live)
	}
	if nLive != u.Len() || uint64(nLive) != u.master.GetCardinality() {
		fail("check: %d live users, Len %d, bitmap %d", nLive, u.Len(), u.master.GetCardinality())
	}
	return errors.Join(errs...)
}

// entryRefAt reads the id word of the entry at ref as a ref: a free entry's link.
func entryRefAt(a []byte, ref keyRef) keyRef { return keyRef(entryID(a, ref)) }
