package index

import (
	"bytes"
	"errors"
	"fmt"
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
	// Hash hashes key bytes; nil means xxhash64. Tests inject a weak hash to force
	// collisions: correctness must not depend on it.
	Hash func(key []byte) uint64
	// Capacity is the number of keys to size the identity table for up front (for
	// example when loading a snapshot); 0 starts small. Growth past it is automatic.
	Capacity int
}

const (
	userChunkShift = 15
	userChunkSize  = 1 << userChunkShift

	flagDeleted    = 1 << 0 // deleted, or an id skipped by CreateAt: never live again
	flagIdentified = 1 << 1 // holds an external id or an alias
)

// userChunk is a block of the user table. Chunks never move, so the table grows without
// copying; a chunk holds no pointers.
type userChunk struct {
	ref   [userChunkSize]keyRef // first key still held in attach order, or refEmpty
	flags [userChunkSize]uint8
}

// overNode is one extra key of a user that holds more than one, in a singly linked list
// (pool index + 1; 0 ends the list) kept in attach order.
type overNode struct {
	ref  keyRef
	next uint32
}

// Users is the identity table plus the user table of one workspace.
//
// # What it holds
//
// Every identifier (external id, alias, device id) maps to a dense UserID through a flat
// open-addressing table (see idmap.go) whose slots point into an append-only key arena
// (see arena.go); each arena entry records its user, and each user records its keys (one
// inline ref; a rare second or later key goes to an overflow list), so lookups go both
// ways. A user also has two flags: deleted and identified (anonymous is live and not
// identified). Memory is about 44-48 bytes a user with one 19-byte external id.
//
// # Concurrency
//
// Mutating methods (Create, CreateMany, CreateAt, Attach, Detach, Delete, Publish) must be
// called by one goroutine at a time (the engine holds a per-workspace writer mutex).
// Resolve, ResolveMany, Identifiers, Anonymous, Deleted, Live, Len, NextID and MemoryBytes
// may run concurrently with them and with each other.
//
// The writer changes shared state under mu's write lock, in short critical sections (one
// key or one user); readers hold the read lock for at most resolveLockSpan keys. The writer
// reads shared state without locking, since no one else writes it. Table growth builds the
// bigger table off to the side while readers keep using the old one, then swaps it in
// under the lock, so readers never wait for a rehash (the writer's own call does).
//
// Resolve, Identifiers, Anonymous and Deleted see each write as soon as its method
// returns. Live does not: it returns the bitmap of the last Publish (see Publish).
type Users struct {
	hash func([]byte) uint64 // nil: xxhash

	mu struct {
		sync.RWMutex
		tab   table
		arena arena
		users []*userChunk
		over  map[UserID]uint32 // user -> head of its overflow list (pool index + 1)
		pool  []overNode
	}

	// Writer-only state.
	freeNode uint32          // head of the free overNode list (pool index + 1)
	master   *roaring.Bitmap // live users, copy-on-write; published by Publish

	live  atomic.Pointer[roaring.Bitmap]
	next  atomic.Uint32 // next id to hand out
	count atomic.Int64  // live users
}

// NewUsers returns an empty Users table.
func NewUsers(opts Options) *Users {
	u := &Users{hash: opts.Hash, master: roaring.New()}
	u.master.SetCopyOnWrite(true)
	u.mu.over = make(map[UserID]uint32)
	if opts.Capacity > 0 {
		u.mu.tab.setBuckets(newBuckets(bucketsFor(opts.Capacity)))
	}
	u.Publish()
	return u
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
	_, _, _, id, _ := find(u.mu.tab.buckets, u.mu.arena.chunks, h, kind, key)
	u.mu.RUnlock()
	return id
}

// Create adds a live user with no identifiers (anonymous until an external id or alias
// is attached) and returns its id. Ids are handed out in arrival order and never reused.
// Writer only; Live shows the user after the next Publish.
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
			c := u.mu.users[s>>userChunkShift]
			c.flags[s&(userChunkSize-1)] = flagDeleted
		}
		u.mu.Unlock()
	}
	u.master.Add(uint32(id))
	u.count.Add(1)
	return nil
}

// extendTo makes room in the user table for ids below end and advances NextID to end.
func (u *Users) extendTo(end UserID) {
	if end == NoUser || end < u.NextID() {
		panic("index: user ids exhausted")
	}
	need := int((uint64(end) + userChunkSize - 1) >> userChunkShift)
	if need > len(u.mu.users) {
		u.mu.Lock()
		for len(u.mu.users) < need {
			u.mu.users = append(u.mu.users, new(userChunk))
		}
		u.mu.Unlock()
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
	u.live.Store(u.master.Clone())
}

// Live returns the live user ids as of the last Publish. The bitmap is shared and
// immutable: callers must never modify it (clone it first).
func (u *Users) Live() *roaring.Bitmap { return u.live.Load() }

// userLocked returns the chunk and index of id, or nil if id was never handed out.
// The caller holds the read lock or is the writer.
func (u *Users) userLocked(id UserID) (*userChunk, int) {
	if uint32(id) >= u.next.Load() {
		return nil, 0
	}
	c := int(id >> userChunkShift)
	if c >= len(u.mu.users) {
		return nil, 0
	}
	return u.mu.users[c], int(id & (userChunkSize - 1))
}

// Deleted reports whether id was handed out and then deleted (or skipped by CreateAt).
func (u *Users) Deleted(id UserID) bool {
	u.mu.RLock()
	defer u.mu.RUnlock()
	c, i := u.userLocked(id)
	return c != nil && c.flags[i]&flagDeleted != 0
}

// Anonymous reports whether id is live and holds no external id and no alias.
func (u *Users) Anonymous(id UserID) bool {
	u.mu.RLock()
	defer u.mu.RUnlock()
	c, i := u.userLocked(id)
	return c != nil && c.flags[i]&(flagDeleted|flagIdentified) == 0
}

// isLive reports whether id is a live user. Writer only (reads without the lock).
func (u *Users) isLive(id UserID) bool {
	c, i := u.userLocked(id)
	return c != nil && c.flags[i]&flagDeleted == 0
}

// Attach gives key of the given kind to the live user id. It fails if any user holds the
// key already, if id is not live, or if the key is empty or longer than MaxKeyLen.
// Writer only.
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
	if _, _, _, holder, ok := find(u.mu.tab.buckets, u.mu.arena.chunks, h, kind, key); ok {
		return fmt.Errorf("attach %v to user %d: held by user %d: %w", kind, id, holder, ErrKeyHeld)
	}
	u.reserveSlot()

	u.mu.Lock()
	defer u.mu.Unlock()
	ref, err := u.mu.arena.appendEntry(id, kind, key)
	if err != nil {
		return fmt.Errorf("attach %v to user %d: %w", kind, id, err)
	}
	t := &u.mu.tab
	bi, si := freeSlot(t.buckets, h)
	bk := &t.buckets[bi]
	if bk.ref[si] == refTomb {
		t.tombs--
	}
	bk.hash[si] = h
	bk.ref[si] = ref
	t.live++
	u.addRefLocked(id, ref)
	if kind != KindDevice {
		c, i := u.userLocked(id)
		c.flags[i] |= flagIdentified
	}
	return nil
}

// reserveSlot grows (or just cleans) the table if one more used slot would pass the load
// limit. The new table is built without the lock while readers use the old one, then
// swapped in. Writer only.
func (u *Users) reserveSlot() {
	t := &u.mu.tab
	if t.live+t.tombs+1 <= t.maxUsed {
		return
	}
	nb := newBuckets(bucketsFor(t.live + 1))
	for i := range t.buckets {
		bk := &t.buckets[i]
		for s := range bucketSlots {
			if bk.ref[s] > refTomb {
				insertFresh(nb, bk.hash[s], bk.ref[s])
			}
		}
	}
	u.mu.Lock()
	t.setBuckets(nb)
	t.tombs = 0
	u.mu.Unlock()
}

// Detach frees (kind, key), leaving a tombstone in the table, and returns the user that
// held it. Writer only.
func (u *Users) Detach(kind Kind, key []byte) (UserID, bool) {
	if !kind.valid() {
		return NoUser, false
	}
	h := u.hashKey(kind, key)
	t := &u.mu.tab
	bi, si, ref, id, ok := find(t.buckets, u.mu.arena.chunks, h, kind, key)
	if !ok {
		return NoUser, false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	t.buckets[bi].ref[si] = refTomb
	t.buckets[bi].hash[si] = 0
	t.live--
	t.tombs++
	u.removeRefLocked(id, ref)
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
	t := &u.mu.tab
	u.eachRef(id, func(ref keyRef) {
		_, kind, key := u.mu.arena.entry(ref)
		h := u.hashKey(kind, key)
		bi, si, ok := findRef(t.buckets, h, ref)
		if !ok {
			panic(fmt.Sprintf("BUG: index: user %d lists key ref %d that is not in the table", id, ref))
		}
		t.buckets[bi].ref[si] = refTomb
		t.buckets[bi].hash[si] = 0
		t.live--
		t.tombs++
	})
	c, i := u.userLocked(id)
	c.ref[i] = refEmpty
	if head, ok := u.mu.over[id]; ok {
		for n := head; n != 0; {
			next := u.mu.pool[n-1].next
			u.freeNodeLocked(n)
			n = next
		}
		delete(u.mu.over, id)
	}
	c.flags[i] = flagDeleted
	u.mu.Unlock()
	u.master.Remove(uint32(id))
	u.count.Add(-1)
	return true
}

// eachRef calls fn with every key ref of id in attach order. The caller holds the lock
// or is the writer.
func (u *Users) eachRef(id UserID, fn func(keyRef)) {
	c, i := u.userLocked(id)
	if c == nil || c.ref[i] == refEmpty {
		return
	}
	fn(c.ref[i])
	if head, ok := u.mu.over[id]; ok {
		for n := head; n != 0; n = u.mu.pool[n-1].next {
			fn(u.mu.pool[n-1].ref)
		}
	}
}

// addRefLocked appends ref to id's keys. The write lock is held.
func (u *Users) addRefLocked(id UserID, ref keyRef) {
	c, i := u.userLocked(id)
	if c.ref[i] == refEmpty {
		c.ref[i] = ref
		return
	}
	n := u.allocNodeLocked(ref)
	head, ok := u.mu.over[id]
	if !ok {
		u.mu.over[id] = n
		return
	}
	last := head
	for u.mu.pool[last-1].next != 0 {
		last = u.mu.pool[last-1].next
	}
	u.mu.pool[last-1].next = n
}

// removeRefLocked removes ref from id's keys, keeping the others in attach order. The
// write lock is held.
func (u *Users) removeRefLocked(id UserID, ref keyRef) {
	c, i := u.userLocked(id)
	head, hasOver := u.mu.over[id]
	if c.ref[i] == ref {
		if !hasOver {
			c.ref[i] = refEmpty
			return
		}
		c.ref[i] = u.mu.pool[head-1].ref
		next := u.mu.pool[head-1].next
		u.freeNodeLocked(head)
		if next == 0 {
			delete(u.mu.over, id)
		} else {
			u.mu.over[id] = next
		}
		return
	}
	prev := uint32(0)
	for n := head; hasOver && n != 0; prev, n = n, u.mu.pool[n-1].next {
		if u.mu.pool[n-1].ref != ref {
			continue
		}
		next := u.mu.pool[n-1].next
		switch {
		case prev != 0:
			u.mu.pool[prev-1].next = next
		case next != 0:
			u.mu.over[id] = next
		default:
			delete(u.mu.over, id)
		}
		u.freeNodeLocked(n)
		return
	}
	panic(fmt.Sprintf("BUG: index: key ref %d resolves to user %d, which does not list it", ref, id))
}

func (u *Users) allocNodeLocked(ref keyRef) uint32 {
	if n := u.freeNode; n != 0 {
		u.freeNode = u.mu.pool[n-1].next
		u.mu.pool[n-1] = overNode{ref: ref}
		return n
	}
	u.mu.pool = append(u.mu.pool, overNode{ref: ref})
	return uint32(len(u.mu.pool))
}

func (u *Users) freeNodeLocked(n uint32) {
	u.mu.pool[n-1] = overNode{ref: refEmpty, next: u.freeNode}
	u.freeNode = n
}

// refreshIdentifiedLocked recomputes id's identified flag from its keys. The write lock
// is held.
func (u *Users) refreshIdentifiedLocked(id UserID) {
	ident := false
	u.eachRef(id, func(ref keyRef) {
		if _, kind, _ := u.mu.arena.entry(ref); kind != KindDevice {
			ident = true
		}
	})
	c, i := u.userLocked(id)
	if ident {
		c.flags[i] |= flagIdentified
	} else {
		c.flags[i] &^= flagIdentified
	}
}

// Identifiers calls fn with every key id holds: external ids first, then aliases, then
// device ids, in attach order within a kind. key is valid only during fn and must not be
// modified. fn runs without any lock held, so it may call other methods.
func (u *Users) Identifiers(id UserID, fn func(kind Kind, key []byte)) {
	var stack [8]keyRef
	refs := stack[:0]
	u.mu.RLock()
	u.eachRef(id, func(ref keyRef) { refs = append(refs, ref) })
	chunks := u.mu.arena.chunks
	u.mu.RUnlock()
	// Entries are never rewritten and chunks never move, so reading them after the
	// unlock is safe.
	for _, want := range [...]Kind{KindExternal, KindAlias, KindDevice} {
		for _, ref := range refs {
			if _, kind, key := decodeEntry(chunks, ref); kind == want {
				fn(kind, key)
			}
		}
	}
}

// MemoryBytes returns the approximate bytes held: table, arena, user table, overflow
// lists and the live bitmap.
func (u *Users) MemoryBytes() int {
	u.mu.RLock()
	n := len(u.mu.tab.buckets)*64 +
		u.mu.arena.sizeBytes() +
		len(u.mu.users)*(userChunkSize*5+8) +
		cap(u.mu.pool)*8 +
		len(u.mu.over)*12 // swiss map of uint32 pairs at 7/8 load, roughly
	u.mu.RUnlock()
	return n + int(u.Live().GetSizeInBytes())
}

// Check verifies that the identity table, the arena, the user table and the live bitmap
// agree: every key in the table resolves to the user whose entry it is and that user
// lists it; every key a user lists is in the table; flags match the keys; the master
// live bitmap holds exactly the non-deleted users; and the counts add up. Writer only
// (it must not run concurrently with mutations). It returns all problems found, joined.
func (u *Users) Check() error {
	var errs []error
	fail := func(format string, args ...any) {
		if len(errs) < 20 {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	t := &u.mu.tab
	chunks := u.mu.arena.chunks
	live, tombs := 0, 0
	inTable := make(map[keyRef]bool)
	for bi := range t.buckets {
		bk := &t.buckets[bi]
		for s := range bucketSlots {
			r := bk.ref[s]
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
			id, kind, key := decodeEntry(chunks, r)
			if h := u.hashKey(kind, key); h != bk.hash[s] {
				fail("check: slot %d/%d hash %#x, key hashes to %#x", bi, s, bk.hash[s], h)
			}
			if _, _, got, gotID, ok := find(t.buckets, chunks, bk.hash[s], kind, key); !ok || got != r || gotID != id {
				fail("check: %v %q resolves to ref %d user %d (ok %v), want ref %d user %d", kind, key, got, gotID, ok, r, id)
			}
			if !u.isLive(id) {
				fail("check: %v %q held by user %d, which is not live", kind, key, id)
			}
		}
	}
	if live != t.live || tombs != t.tombs {
		fail("check: table counts live %d tombs %d, found %d and %d", t.live, t.tombs, live, tombs)
	}
	if live+tombs > t.maxUsed && len(t.buckets) > 0 {
		fail("check: %d used slots over the limit %d", live+tombs, t.maxUsed)
	}

	listed, nLive := 0, 0
	overUsers := 0
	next := u.NextID()
	for id := UserID(0); id < next; id++ {
		c, i := u.userLocked(id)
		if c == nil {
			fail("check: user %d has no user table chunk", id)
			break
		}
		fl := c.flags[i]
		deleted := fl&flagDeleted != 0
		if deleted == u.master.Contains(uint32(id)) {
			fail("check: user %d deleted=%v but live bitmap says %v", id, deleted, u.master.Contains(uint32(id)))
		}
		if !deleted {
			nLive++
		}
		if _, ok := u.mu.over[id]; ok {
			overUsers++
			if c.ref[i] == refEmpty {
				fail("check: user %d has overflow keys but no inline key", id)
			}
		}
		ident := false
		u.eachRef(id, func(r keyRef) {
			listed++
			if deleted {
				fail("check: deleted user %d lists key ref %d", id, r)
			}
			if !inTable[r] {
				fail("check: user %d lists key ref %d, which is not in the table", id, r)
				return
			}
			eid, kind, key := decodeEntry(chunks, r)
			if eid != id {
				fail("check: user %d lists %v %q, whose entry names user %d", id, kind, key, eid)
			}
			if kind != KindDevice {
				ident = true
			}
		})
		if ident != (fl&flagIdentified != 0) {
			fail("check: user %d identified flag %v, keys say %v", id, fl&flagIdentified != 0, ident)
		}
	}
	if listed != live {
		fail("check: users list %d keys, table holds %d", listed, live)
	}
	if overUsers != len(u.mu.over) {
		fail("check: overflow map has %d users, %d of them below NextID", len(u.mu.over), overUsers)
	}
	if nLive != u.Len() || uint64(nLive) != u.master.GetCardinality() {
		fail("check: %d live users, Len %d, bitmap %d", nLive, u.Len(), u.master.GetCardinality())
	}
	return errors.Join(errs...)
}
