package engine

import (
	"errors"
	"slices"
	"sync/atomic"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/cespare/xxhash/v2"

	"github.com/cohortd/cohortd/index"
)

// Imports resolve identifiers while their body streams in, outside the
// writer lock; user changes (upserts, merges, deletes) run under it. A user
// change that lands between an import's resolution and its apply can make
// the import's answer one no serial order gives: an anonymous user merged
// away in between would be "matched 1, added 0". So every stager remembers
// the user-table version it started at, and its apply (under the writer
// lock) checks the user changes committed since: if one of them touched a
// user the batch staged, or attached or detached a key the batch found no
// user for, the batch is stale and ErrUsersChanged is returned, with
// nothing applied. Otherwise every identifier still resolves to what it did
// (a change touching none of them cannot re-map them), and the batch is
// what a serial order gives with the import at its apply.
//
// What callers do with ErrUsersChanged: a request whose body is in memory
// (partner endpoints, the webhook) stages it again (Workspace.HoldUsers for
// the last try, which keeps user changes out); a streamed /v1 body cannot
// be read again and answers 503 with Retry-After.

// ErrUsersChanged is returned by an apply whose staged identifiers were
// re-mapped by a user change committed since they were resolved. Nothing
// was applied; stage the batch again.
var ErrUsersChanged = errors.New("engine: users changed while the batch was being resolved")

// Bounds of the user-change log: entries older than these are dropped, and
// a stager older than the oldest entry is treated as stale. A long bulk
// import must outlive the user changes that run beside it, so the count is
// generous; the keys bound the memory.
const (
	maxUserLogEntries = 4096
	maxUserLogKeys    = 1 << 21 // 16 MiB of key hashes
)

// maxNoteScratch bounds the scratch kept for the next user change: one
// huge upsert must not pin its key hashes.
const maxNoteScratch = 1 << 16

// usersLog records what recent user changes touched, for the stagers in
// flight. ver and stagers are read without locks; everything else is under
// Workspace.mu.
//
// Entries are kept only while a stager may need them: a user change
// committed while no stager is leased trims the log to nothing. Seeding
// users with no import beside it (the common case at start-up and in
// nightly user syncs) would otherwise hold up to maxUserLogKeys hashes,
// 16 MiB, for nobody: 17 B a user at 1M users.
type usersLog struct {
	ver     atomic.Uint64 // user changes committed that touched something
	stagers atomic.Int64  // leased staleGuards (lease, release)

	// The change being applied now.
	curUsers []uint32
	curKeys  []uint64

	entries []userLogEntry // oldest first, ver consecutive
	keys    int            // key hashes held by entries
	bytes   atomic.Int64   // what entries hold (sizeLocked; Engine.Memory)
}

// userLogEntry is one committed user change: the users whose keys or
// identified state changed (or who were deleted or merged away), and the
// hashes of the keys attached or detached.
type userLogEntry struct {
	ver   uint64
	users *roaring.Bitmap
	keys  []uint64 // sorted
}

// kindMix separates equal bytes of different kinds in keyHash.
var kindMix = [4]uint64{0, 0x9e3779b97f4a7c15, 0xc2b2ae3d27d4eb4f, 0x165667b19e3779f9}

// keyHash is the engine's own hash of an identifier for the user-change
// log (the identity table's hash is the index's business). A collision
// only makes a batch look stale.
func keyHash(kind index.Kind, key []byte) uint64 { return xxhash.Sum64(key) ^ kindMix[kind&3] }

// noteUser records that user id was deleted, merged away or lost a key.
func (l *usersLog) noteUser(id index.UserID) {
	if id != index.NoUser {
		l.curUsers = append(l.curUsers, uint32(id))
	}
}

// noteAttach records that key is being given to id: the key now resolves,
// and an anonymous user who holds device ids is identified by it (its
// device ids stop matching).
func (l *usersLog) noteAttach(users *index.Users, id index.UserID, kind index.Kind, key []byte) {
	l.curKeys = append(l.curKeys, keyHash(kind, key))
	if kind != index.KindDevice && users.Anonymous(id) {
		hasDevice := false
		users.Identifiers(id, func(k index.Kind, _ []byte) { hasDevice = hasDevice || k == index.KindDevice })
		if hasDevice {
			l.noteUser(id)
		}
	}
}

// noteDetach records that holder lost key.
func (l *usersLog) noteDetach(holder index.UserID, kind index.Kind, key []byte) {
	l.curKeys = append(l.curKeys, keyHash(kind, key))
	l.noteUser(holder)
}

// commitLocked ends a user change: if it touched anything, the version
// moves on and, while a stager is leased, an entry remembers what. The
// caller holds Workspace.mu.
//
// A stager leases before it reads ver (lease), so one that read the
// version before this change is counted here and its entry kept. One that
// leases while this runs may read the old version after the log was
// trimmed: staleLocked then finds the entry missing and calls the batch
// stale, a retry and never a wrong answer.
func (l *usersLog) commitLocked() {
	if len(l.curUsers) == 0 && len(l.curKeys) == 0 {
		return
	}
	ver := l.ver.Load() + 1
	if l.stagers.Load() == 0 {
		l.entries, l.keys = nil, 0
	} else {
		e := userLogEntry{ver: ver, users: roaring.New(), keys: slices.Clone(l.curKeys)}
		slices.Sort(l.curUsers)
		e.users.AddMany(l.curUsers)
		slices.Sort(e.keys)
		l.entries = append(l.entries, e)
		l.keys += len(e.keys)
		for len(l.entries) > maxUserLogEntries || (l.keys > maxUserLogKeys && len(l.entries) > 1) {
			l.keys -= len(l.entries[0].keys)
			l.entries[0] = userLogEntry{}
			l.entries = l.entries[1:]
		}
	}
	l.curUsers, l.curKeys = l.curUsers[:0], l.curKeys[:0]
	if cap(l.curUsers) > maxNoteScratch {
		l.curUsers = nil
	}
	if cap(l.curKeys) > maxNoteScratch {
		l.curKeys = nil
	}
	l.bytes.Store(l.sizeLocked())
	l.ver.Store(ver)
}

// sizeLocked is the memory the log's entries hold: key hashes and user
// bitmaps (the scratch of the next change, at most maxNoteScratch values,
// is not counted).
func (l *usersLog) sizeLocked() int64 {
	n := 0
	for i := range l.entries {
		n += 8*cap(l.entries[i].keys) + int(l.entries[i].users.GetSizeInBytes())
	}
	return int64(n)
}

// lease starts g: it counts as a stager in flight until release, and takes
// the version it will be checked against.
func (l *usersLog) lease(g *staleGuard) {
	if !g.leased {
		l.stagers.Add(1)
		g.leased = true
	}
	g.ver = l.ver.Load()
}

// release ends g's lease (once; later calls do nothing). The batch's
// staleness must have been checked already.
func (l *usersLog) release(g *staleGuard) {
	if g.leased {
		g.leased = false
		l.stagers.Add(-1)
	}
}

// staleGuard is what a stager keeps to detect that it went stale: the
// version it started at and what it could not match.
type staleGuard struct {
	ver     uint64
	unknown []uint64 // keyHash of identifiers that matched nobody
	held    []uint32 // identified users whose device ids were sent (unmatched)
	opaque  bool     // unmatched ids were staged without their keys (AddIDs)
	leased  bool     // counted in usersLog.stagers
}

// staleLocked reports whether a user change committed since g began
// re-mapped an identifier the batch resolved: it touched a user of staged
// or of g.held, or attached or detached a key hash of g.unknown. The caller
// holds Workspace.mu.
func (l *usersLog) staleLocked(g *staleGuard, staged ...*roaring.Bitmap) bool {
	if l.ver.Load() == g.ver {
		return false // fast path: no user change since
	}
	if len(l.entries) == 0 || l.entries[0].ver > g.ver+1 {
		return true // what happened since was forgotten: assume the worst
	}
	slices.Sort(g.unknown)
	// Versions are consecutive: the first entry after g.ver is at a known
	// position.
	for i := int(g.ver + 1 - l.entries[0].ver); i < len(l.entries); i++ {
		e := &l.entries[i]
		for _, bm := range staged {
			if bm != nil && e.users.Intersects(bm) {
				return true
			}
		}
		for _, id := range g.held {
			if e.users.Contains(id) {
				return true
			}
		}
		if len(e.keys) > 0 && (g.opaque || intersectsSorted(e.keys, g.unknown)) {
			return true
		}
	}
	return false
}

// intersectsSorted reports whether two sorted slices share a value.
func intersectsSorted(a, b []uint64) bool {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] == b[j]:
			return true
		case a[i] < b[j]:
			i++
		default:
			j++
		}
	}
	return false
}

// HoldUsers keeps user changes (upserts, deletes) of w out until release is
// called, so that a batch staged and applied meanwhile cannot go stale. It is
// the last resort of a caller that got ErrUsersChanged more than once; the
// hold waits for a running user change or snapshot copy of the user table.
func (w *Workspace) HoldUsers() (release func()) {
	w.usersMu.Lock()
	return w.usersMu.Unlock
}
