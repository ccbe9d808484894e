package engine

import (
	"slices"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/index"
)

// ApplyResult reports what a change batch did (docs/API.md §2 rule 6).
type ApplyResult struct {
	Matched            int
	Unmatched          int
	Unknown            int // unmatched: no user holds the identifier
	DeviceIdentified   int // unmatched: a device id held by an identified user
	Added              int
	Removed            int
	DroppedBeforeFloor int
	DataPoints         int
}

// ChangeSet stages a batch of membership changes for one cohort while the
// request body streams in: identifiers are resolved as they arrive and only
// the compact resolved ids are kept. Nothing is applied until
// Workspace.ApplyChanges, so a body that fails half-way changes nothing.
//
// A ChangeSet is used by one goroutine and must not be reused after apply.
type ChangeSet struct {
	w *Workspace
	// ops holds uid<<32 | seq<<1 | remove. Sorting them groups the changes
	// of each user in arrival order, so the last one wins (rule 4).
	ops []uint64
	ids []index.UserID
	res ApplyResult
	src SyncSource // the sync source of the batch (syncs.go)
	// cmd, in log mode, keeps the identifiers as sent instead of resolving
	// them (commands.go): the apply resolves them at the record's place.
	cmd *changeCmd
}

// NewChangeSet starts a change batch.
func (w *Workspace) NewChangeSet() *ChangeSet {
	cs := &ChangeSet{w: w}
	if w.e.repl != nil {
		cs.cmd = newChangeCmd(w.e)
	}
	return cs
}

// AddMany resolves identifiers of one kind and stages them as adds (or
// removes). Keys are not retained. Device ids match anonymous users only
// (rule 3); unknown identifiers are counted, never created (rule 1).
func (cs *ChangeSet) AddMany(kind index.Kind, keys [][]byte, remove bool) {
	if len(keys) == 0 {
		return
	}
	if cs.cmd != nil {
		cs.cmd.add(kind, keys, remove)
		return
	}
	cs.ids = cs.w.users.ResolveMany(kind, keys, cs.ids[:0])
	ids := cs.ids
	if kind == index.KindDevice {
		var identified int
		ids, identified = anonymousOnly(cs.w.users, ids)
		cs.res.DeviceIdentified += identified
	}
	cs.AddIDs(ids, remove)
}

// anonymousOnly applies rule 3 to resolved device ids: it drops the ids of
// identified users from ids (in place, order kept; unknown ones stay, to be
// counted as such) and returns the shorter slice and how many it dropped.
func anonymousOnly(users *index.Users, ids []index.UserID) ([]index.UserID, int) {
	kept := ids[:0]
	for _, id := range ids {
		if id == index.NoUser || users.Anonymous(id) {
			kept = append(kept, id)
		}
	}
	return kept, len(ids) - len(kept)
}

// Drop counts n identifiers dropped by the retention floor (rule 8).
func (cs *ChangeSet) Drop(n int) { cs.res.DroppedBeforeFloor += n }

// Len is the number of matched changes staged so far.
func (cs *ChangeSet) Len() int { return len(cs.ops) }

// finalSets returns the sorted users whose last change is an add and those
// whose last change is a remove.
func (cs *ChangeSet) finalSets() (adds, removes []uint32) {
	if !slices.IsSorted(cs.ops) {
		slices.Sort(cs.ops)
	}
	for i, op := range cs.ops {
		uid := uint32(op >> 32)
		if i+1 < len(cs.ops) && uint32(cs.ops[i+1]>>32) == uid {
			continue // a later change of the same user wins
		}
		if op&1 == 1 {
			removes = append(removes, uid)
		} else {
			adds = append(adds, uid)
		}
	}
	return adds, removes
}

// ApplyChanges applies a staged batch to cohort (partner, id), creating the
// cohort (name = id) when unknown, all or nothing. Data points are the
// effective changes only, so a retried batch is free (rule 7).
func (w *Workspace) ApplyChanges(partnerSlug, cohortID string, cs *ChangeSet) (ApplyResult, error) {
	if cs.cmd != nil {
		return w.proposeChanges(partnerSlug, cohortID, cs)
	}
	res := cs.res
	res.Unmatched = res.Unknown + res.DeviceIdentified
	adds, removes := cs.finalSets()
	addBM := roaring.New()
	addBM.AddMany(adds)
	remBM := roaring.New()
	remBM.AddMany(removes)

	var effAdd, effRem *roaring.Bitmap
	err := w.write(func() error {
		c, _, err := w.ensureCohortLocked(partnerSlug, cohortID)
		if err != nil {
			return err
		}
		// A user deleted between resolve and apply is not added back.
		addBM.And(w.users.Live())
		effAdd, effRem = c.members.Diff(addBM, remBM)
		if _, err = w.commitMembersLocked(c, effAdd, effRem); err != nil {
			return err
		}
		res.Added = int(effAdd.GetCardinality())
		res.Removed = int(effRem.GetCardinality())
		res.DataPoints = res.Added + res.Removed
		_, err = w.recordSyncLocked(c, changeEvent(cs.src, &res, w.e.writeTime().UTC()))
		return err
	})
	if err != nil {
		return ApplyResult{}, err
	}
	w.e.countApply(&res)
	return res, nil
}

// commitMembersLocked logs and applies an effective membership change. No
// record is written when nothing changes.
func (w *Workspace) commitMembersLocked(c *Cohort, effAdd, effRem *roaring.Bitmap) (uint64, error) {
	if effAdd.IsEmpty() && effRem.IsEmpty() {
		return 0, nil
	}
	now := w.e.writeTime().UTC()
	w.enc.reset()
	w.enc.str(w.id)
	w.enc.str(c.partner)
	w.enc.str(c.id)
	w.enc.varint(now.UnixNano())
	w.enc.bitmap(effAdd)
	w.enc.bitmap(effRem)
	return w.commitLocked(recMembers, func(uint64) { w.applyMembers(c, effAdd, effRem, now) })
}

// applyMembers applies an effective change (live path and replay alike).
func (w *Workspace) applyMembers(c *Cohort, effAdd, effRem *roaring.Bitmap, now time.Time) {
	c.members.Apply(effAdd, effRem)
	m := *c.meta.Load()
	m.updatedAt = now
	c.meta.Store(&m)
	w.addUsage(c.partner, dayNumber(now), effAdd.GetCardinality()+effRem.GetCardinality())
}

func (e *Engine) countApply(res *ApplyResult) {
	e.Stats.IdentifiersReceived.Add(uint64(res.Matched + res.Unmatched + res.DroppedBeforeFloor))
	e.Stats.IdentifiersMatched.Add(uint64(res.Matched))
	e.Stats.IdentifiersUnknown.Add(uint64(res.Unknown))
	e.Stats.IdentifiedDevice.Add(uint64(res.DeviceIdentified))
	e.Stats.DroppedBeforeFloor.Add(uint64(res.DroppedBeforeFloor))
	e.Stats.DataPoints.Add(uint64(res.DataPoints))
}

// ReplaceResult reports a snapshot sync (PUT …/members).
type ReplaceResult struct {
	Added      int
	Removed    int
	Unchanged  int
	Unmatched  int
	DataPoints int
}

// MemberSet stages the full membership of a snapshot sync as resolved ids.
type MemberSet struct {
	w          *Workspace
	ids        []uint32
	scratch    []index.UserID
	unmatched  int
	identified int        // of unmatched: device ids of identified users
	cmd        *changeCmd // log mode: identifiers as sent (see ChangeSet)
}

// NewMemberSet starts a snapshot sync.
func (w *Workspace) NewMemberSet() *MemberSet {
	ms := &MemberSet{w: w}
	if w.e.repl != nil {
		ms.cmd = newChangeCmd(w.e)
	}
	return ms
}

// AddMany resolves identifiers of one kind into the set under the matching
// rules of §2 (device ids: anonymous users only). Keys are not retained.
func (ms *MemberSet) AddMany(kind index.Kind, keys [][]byte) {
	if ms.cmd != nil {
		ms.cmd.add(kind, keys, false)
		return
	}
	ms.scratch = ms.w.users.ResolveMany(kind, keys, ms.scratch[:0])
	ids := ms.scratch
	if kind == index.KindDevice {
		var identified int
		ids, identified = anonymousOnly(ms.w.users, ids)
		ms.unmatched += identified
		ms.identified += identified
	}
	ms.AddIDs(ids)
}

// Bitmap returns the staged members as a bitmap (for webhook staging).
func (ms *MemberSet) Bitmap() *roaring.Bitmap {
	slices.Sort(ms.ids)
	bm := roaring.New()
	bm.AddMany(ms.ids)
	return bm
}

// Unmatched is the number of identifiers that matched nobody.
func (ms *MemberSet) Unmatched() int { return ms.unmatched }

// ReplaceMembers makes the cohort exactly the staged set, atomically,
// creating it when unknown. The diff both ways is the report and the data
// points.
func (w *Workspace) ReplaceMembers(partnerSlug, cohortID string, ms *MemberSet) (ReplaceResult, error) {
	if ms.cmd != nil {
		return w.proposeReplace(partnerSlug, cohortID, ms)
	}
	res, err := w.replaceBitmap(partnerSlug, cohortID, ms.Bitmap(), ms)
	res.Unmatched = ms.unmatched
	return res, err
}

// replaceBitmap replaces a cohort's members with target, the set staged
// in ms (nil when the caller built target itself).
func (w *Workspace) replaceBitmap(partnerSlug, cohortID string, target *roaring.Bitmap, ms *MemberSet) (ReplaceResult, error) {
	var res ReplaceResult
	err := w.write(func() error {
		c, _, err := w.ensureCohortLocked(partnerSlug, cohortID)
		if err != nil {
			return err
		}
		n := int(target.GetCardinality())
		if res, _, err = w.replaceLocked(c, target); err != nil {
			return err
		}
		_, err = w.recordSyncLocked(c, replaceEvent(ms, n, &res, w.e.writeTime().UTC()))
		return err
	})
	if err != nil {
		return ReplaceResult{}, err
	}
	return res, nil
}

// replaceLocked makes c's members exactly target (restricted to live
// users; target is consumed), logging the diff both ways as one record.
// Snapshot syncs and webhook commits share it.
func (w *Workspace) replaceLocked(c *Cohort, target *roaring.Bitmap) (ReplaceResult, uint64, error) {
	target.And(w.users.Live())
	effAdd, effRem := c.members.DiffTo(target)
	lsn, err := w.commitMembersLocked(c, effAdd, effRem)
	if err != nil {
		return ReplaceResult{}, 0, err
	}
	var res ReplaceResult
	res.Added = int(effAdd.GetCardinality())
	res.Removed = int(effRem.GetCardinality())
	res.Unchanged = int(target.GetCardinality()) - res.Added
	res.DataPoints = res.Added + res.Removed
	w.e.Stats.DataPoints.Add(uint64(res.DataPoints))
	return res, lsn, nil
}

// AddIDs stages users the caller resolved itself (the Mixpanel webhook
// resolves an external id and falls back to an alias). index.NoUser entries
// are counted as unknown identifiers.
func (cs *ChangeSet) AddIDs(ids []index.UserID, remove bool) {
	if cs.cmd != nil {
		panic("BUG: engine: dense ids cannot go to the replicated log; stage identifiers (AddMany, AddCandidates)")
	}
	var rm uint64
	if remove {
		rm = 1
	}
	for _, id := range ids {
		if id == index.NoUser {
			cs.res.Unknown++
			continue
		}
		seq := uint64(len(cs.ops)) & (1<<31 - 1)
		cs.ops = append(cs.ops, uint64(id)<<32|seq<<1|rm)
		cs.res.Matched++
	}
}

// AddIDs adds users the caller resolved itself; index.NoUser entries are
// counted as unmatched.
func (ms *MemberSet) AddIDs(ids []index.UserID) {
	if ms.cmd != nil {
		panic("BUG: engine: dense ids cannot go to the replicated log; stage identifiers (AddMany, AddCandidates)")
	}
	for _, id := range ids {
		if id == index.NoUser {
			ms.unmatched++
			continue
		}
		ms.ids = append(ms.ids, uint32(id))
	}
}

// Len is the number of users staged so far (duplicates included).
func (ms *MemberSet) Len() int { return len(ms.ids) }
