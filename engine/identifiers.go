package engine

import (
	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// The identifier vocabulary of the engine's API is the index's: the names
// below are aliases, so values pass between the layers without conversion,
// and callers of the engine need not import index (the engine alone reaches
// the user table, through the read methods below and the user operations of
// users.go).

// UserID is a workspace's dense user number (index.UserID).
type UserID = index.UserID

// NoUser is the UserID of an identifier no user holds.
const NoUser = index.NoUser

// Kind is the kind of a user identifier (index.Kind).
type Kind = index.Kind

// The identifier kinds.
const (
	KindExternal = index.KindExternal // external_id
	KindAlias    = index.KindAlias    // alias: key bytes are AliasKey(name, label)
	KindDevice   = index.KindDevice   // device_id
)

// AliasKey appends the key of the alias (name, label) to dst: the form in
// which aliases are resolved, staged and reported (index.AliasKey).
func AliasKey(dst []byte, name, label []byte) []byte { return index.AliasKey(dst, name, label) }

// SplitAlias returns the name and label of an alias key made by AliasKey;
// both share key's memory.
func SplitAlias(key []byte) (name, label []byte) { return index.SplitAlias(key) }

// SyncMode says when WAL records are forced to stable storage (wal.SyncMode).
type SyncMode = wal.SyncMode

// The durability modes of Options.Sync.
const (
	SyncAlways   = wal.SyncAlways
	SyncInterval = wal.SyncInterval
	SyncOff      = wal.SyncOff
)

// ParseSyncMode parses a durability mode: "always", "interval" or "off".
func ParseSyncMode(s string) (SyncMode, error) { return wal.ParseSyncMode(s) }

// Identifiers calls fn with each identifier of user id: external id first,
// then aliases (as AliasKey), then device ids. key is valid only during fn
// and must not be modified or kept; fn must not call into the workspace
// (see index.Users.Identifiers).
func (w *Workspace) Identifiers(id UserID, fn func(kind Kind, key []byte)) {
	w.users.Identifiers(id, fn)
}

// UserCount returns the number of live users.
func (w *Workspace) UserCount() int { return w.users.Len() }

// Live returns the set of live users as published now.
func (w *Workspace) Live() Set { return Set{bm: w.users.Live()} }

// Set is a user set at one version: a published cohort, the live users, or
// a segment's result. It is read-only and safe for concurrent readers; the
// zero Set is empty. Holding one pins that version's memory, so do not keep
// it beyond a request.
type Set struct {
	bm *roaring.Bitmap
	d  *index.Dense     // bm's dense view, if it has one
	f  *index.KeyFilter // the filter of its members' external ids, if it has one
}

// Set returns the cohort's published members.
func (c *Cohort) Set() Set { return Set{bm: c.Members()} }

// LookupSet returns the published members of c, a cohort of w, for n
// lookups that are about to be made, with what the lookups asked of this
// version have earned: its dense view (index/dense.go), which answers
// Contains with one load instead of a roaring probe, and the filter of its
// members' external ids (index/keyfilter.go), with which ResolveIn skips
// most users who are not members.
func (w *Workspace) LookupSet(c *Cohort, n int) Set {
	bm := c.Members()
	return Set{bm: bm, d: c.members.Dense(bm, n), f: c.members.KeyFilter(bm, w.users, index.KindExternal, n)}
}

// ResolveIn is ResolveMany for users that will only be tested for
// membership in s, a set LookupSet returned: a key that no member of s holds
// may come back as index.NoUser without being looked up (s's key filter
// proves it), so use the ids for nothing else.
func (w *Workspace) ResolveIn(s Set, kind index.Kind, keys [][]byte, dst []index.UserID) []index.UserID {
	return w.users.ResolveManyIn(s.f, kind, keys, dst)
}

// Contains reports whether id is in s.
func (s Set) Contains(id UserID) bool {
	if s.d != nil {
		return s.d.Contains(uint32(id)) // NoUser is past every view
	}
	return s.bm != nil && id != NoUser && s.bm.Contains(uint32(id))
}

// Len returns the number of users in s.
func (s Set) Len() uint64 {
	if s.bm == nil {
		return 0
	}
	return s.bm.GetCardinality()
}

// Each calls fn with the users of s in ascending order until fn returns
// false.
func (s Set) Each(fn func(id UserID) bool) {
	if s.bm == nil {
		return
	}
	it := s.bm.ManyIterator()
	var ids [1024]uint32
	for {
		n := it.NextMany(ids[:])
		if n == 0 {
			return
		}
		for _, id := range ids[:n] {
			if !fn(UserID(id)) {
				return
			}
		}
	}
}

// IntersectionLen returns the number of users in every one of sets (0 for
// none), without changing them.
func IntersectionLen(sets ...Set) uint64 {
	switch len(sets) {
	case 0:
		return 0
	case 1:
		return sets[0].Len()
	case 2:
		if sets[0].bm == nil || sets[1].bm == nil {
			return 0
		}
		return sets[0].bm.AndCardinality(sets[1].bm)
	}
	bms := make([]*roaring.Bitmap, len(sets))
	for i, s := range sets {
		if s.bm == nil {
			return 0
		}
		bms[i] = s.bm
	}
	// FastAnd returns a new bitmap; the inputs stay as they are.
	return roaring.FastAnd(bms...).GetCardinality()
}
