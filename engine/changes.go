package engine

import (
	"sync"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/index"
)

// ApplyResult reports what a change batch did (docs/API.md §2 rule 6).
type ApplyResult struct {
	Matched            int // identifiers that matched a user, as sent (a user named twice counts twice)
	Unmatched          int // identifiers that matched nobody: Unknown + DeviceIdentified
	Unknown            int // unmatched: no user holds the identifier
	DeviceIdentified   int // unmatched: a device id held by an identified user
	Added              int // users who became members
	Removed            int // users who stopped being members
	DroppedBeforeFloor int // identifiers of changes stamped before the retention floor (neither matched nor unmatched)
	DataPoints         int // the effective changes metered (Added + Removed)
}

// ChangeSet stages a batch of membership changes for one cohort while the
// request body streams in: identifiers are queued as they arrive and
// resolved stageChunk at a time across change objects and lines (stage.go),
// and only the compact resolved ids are kept. Nothing is applied until
// Workspace.ApplyChanges, so a body that fails half-way changes nothing.
//
// A ChangeSet is used by one goroutine and must not be reused after apply.
type ChangeSet struct {
	w *Workspace
	// ops holds one entry per identifier in arrival order: uid<<32 |
	// seq<<1 | remove once resolved (seq is its position), dropOp when it
	// matched nobody. A stable sort on uid groups the changes of each user
	// in arrival order, so the last one wins (rule 4; lastwins.go).
	ops     []uint64
	scratch []uint64
	adds    []uint32 // finalSets' results, kept for reuse
	removes []uint32
	q       keyQueue
	guard   staleGuard
	res     ApplyResult
	src     SyncSource // the sync source of the batch (syncs.go)
	// cmd, in log mode, keeps the identifiers as sent instead of resolving
	// them (commands.go): the apply resolves them at the record's place.
	cmd *changeCmd
}

// changeSets pools ChangeSets: a partner request stages 1,000 identifiers,
// and growing fresh buffers for each was a tenth of its cost. ApplyChanges
// puts its ChangeSet back.
var changeSets sync.Pool

// maxPooledOps bounds the buffers of a pooled ChangeSet: one huge bulk
// body must not pin its memory.
const maxPooledOps = 1 << 20

// dropOp marks a change whose identifier matched nobody (uid NoUser).
const dropOp = ^uint64(0)

// seqMask bounds the arrival position kept in an op (the sort does not
// need it: it only keeps ops readable and distinct).
const seqMask = 1<<31 - 1

// NewChangeSet starts a change batch. Hand it to ApplyChanges, or to
// Discard when the batch is given up: until then the workspace keeps what
// user changes touch, in case the batch went stale (userlog.go).
func (w *Workspace) NewChangeSet() *ChangeSet {
	cs, _ := changeSets.Get().(*ChangeSet)
	if cs == nil {
		cs = new(ChangeSet)
	}
	cs.w = w
	w.ulog.lease(&cs.guard)
	if w.e.repl != nil {
		cs.cmd = newChangeCmd(w.e)
	}
	return cs
}

// Discard gives up a batch that will not be applied. cs must not be used
// afterwards.
func (cs *ChangeSet) Discard() { cs.recycle() }

// recycle empties cs and puts it back in the pool.
func (cs *ChangeSet) recycle() {
	cs.w.ulog.release(&cs.guard)
	if cap(cs.ops) > maxPooledOps || cap(cs.scratch) > maxPooledOps {
		return
	}
	cs.q.reset()
	*cs = ChangeSet{ops: cs.ops[:0], scratch: cs.scratch[:0], adds: cs.adds[:0], removes: cs.removes[:0], q: cs.q,
		guard: staleGuard{unknown: cs.guard.unknown[:0], held: cs.guard.held[:0]}}
	changeSets.Put(cs)
}

// AddMany stages identifiers of one kind as adds (or removes), after those
// staged before. Keys are copied, not retained. Device ids match anonymous
// users only (rule 3); unknown identifiers are counted, never created
// (rule 1).
func (cs *ChangeSet) AddMany(kind index.Kind, keys [][]byte, remove bool) {
	if cs.cmd != nil {
		cs.cmd.add(kind, keys, remove)
		return
	}
	var rm uint64
	if remove {
		rm = 1
	}
	for _, k := range keys {
		slot := len(cs.ops)
		cs.ops = append(cs.ops, rm)
		if cs.q.push(kind, k, uint32(slot)) {
			cs.flush()
		}
	}
}

// flush resolves the queued identifiers into their ops.
func (cs *ChangeSet) flush() {
	users := cs.w.users
	cs.q.resolve(users, nil, func(kind index.Kind, tags []uint32, ids []index.UserID, keys [][]byte) {
		for i, tag := range tags {
			id := ids[i]
			switch {
			case id == index.NoUser:
				cs.res.Unknown++
				cs.guard.unknown = append(cs.guard.unknown, keyHash(kind, keys[i]))
				cs.ops[tag] = dropOp
			case kind == index.KindDevice && !users.Anonymous(id):
				cs.res.DeviceIdentified++
				cs.guard.held = append(cs.guard.held, uint32(id))
				cs.ops[tag] = dropOp
			default:
				cs.res.Matched++
				cs.ops[tag] = uint64(id)<<32 | uint64(tag&seqMask)<<1 | cs.ops[tag]&1
			}
		}
	})
}

// Drop counts n identifiers dropped by the retention floor (rule 8).
func (cs *ChangeSet) Drop(n int) { cs.res.DroppedBeforeFloor += n }

// Len is the number of changes staged so far, matched or not.
func (cs *ChangeSet) Len() int { return len(cs.ops) }

// finalSets returns the sorted users whose last change is an add and those
// whose last change is a remove.
func (cs *ChangeSet) finalSets() (adds, removes []uint32) {
	cs.flush()
	ops := cs.ops[:0]
	var maxUID uint32
	for _, op := range cs.ops {
		if op != dropOp {
			ops = append(ops, op)
			maxUID = max(maxUID, uint32(op>>32))
		}
	}
	ops, cs.scratch = sortOps(ops, cs.scratch, maxUID)
	cs.ops = ops
	adds, removes = cs.adds[:0], cs.removes[:0]
	for i, op := range ops {
		uid := uint32(op >> 32)
		if i+1 < len(ops) && uint32(ops[i+1]>>32) == uid {
			continue // a later change of the same user wins
		}
		if op&1 == 1 {
			removes = append(removes, uid)
		} else {
			adds = append(adds, uid)
		}
	}
	cs.adds, cs.removes = adds, removes
	return adds, removes
}

// ApplyChanges applies a staged batch to cohort (partner, id), creating the
// cohort (name = id) when unknown, all or nothing. Data points are the
// effective changes only, so a retried batch is free (rule 7). cs is
// recycled: it must not be used afterwards.
func (w *Workspace) ApplyChanges(partnerSlug, cohortID string, cs *ChangeSet) (ApplyResult, error) {
	if cs.cmd != nil {
		defer cs.recycle()
		return w.proposeChanges(partnerSlug, cohortID, cs)
	}
	adds, removes := cs.finalSets()
	res := cs.res
	res.Unmatched = res.Unknown + res.DeviceIdentified
	addBM := roaring.New()
	addBM.AddMany(adds)
	remBM := roaring.New()
	remBM.AddMany(removes)
	src := cs.src
	defer cs.recycle()

	var effAdd, effRem *roaring.Bitmap
	err := w.write(func() error {
		if w.ulog.staleLocked(&cs.guard, addBM, remBM) {
			return ErrUsersChanged
		}
		c, _, err := w.ensureCohortLocked(partnerSlug, cohortID)
		if err != nil {
			return err
		}
		// Staged users are live (else the batch would be stale); a deleted
		// one must never be added back, whatever the checks above believe.
		addBM.And(w.users.Live())
		effAdd, effRem = c.members.Diff(addBM, remBM)
		if _, err = w.commitMembersLocked(c, effAdd, effRem); err != nil {
			return err
		}
		res.Added = int(effAdd.GetCardinality())
		res.Removed = int(effRem.GetCardinality())
		res.DataPoints = res.Added + res.Removed
		_, err = w.recordSyncLocked(c, changeEvent(src, &res, w.e.writeTime().UTC()))
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
	w.enc.Reset()
	w.enc.Str(w.id)
	w.enc.Str(c.partner)
	w.enc.Str(c.id)
	w.enc.Varint(now.UnixNano())
	w.enc.Bitmap(effAdd)
	w.enc.Bitmap(effRem)
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
	Added      int // users who became members
	Removed    int // members not in the new set, removed
	Unchanged  int // members before and after
	Unmatched  int // identifiers that matched nobody (device ids of identified users included)
	DataPoints int // the effective changes metered (Added + Removed)
}

// MemberSet stages the full membership of a snapshot sync as resolved ids,
// queued and resolved stageChunk at a time as ChangeSet does.
type MemberSet struct {
	w          *Workspace
	ids        []uint32
	scratch    []uint32
	q          keyQueue
	guard      staleGuard
	unmatched  int
	identified int        // of unmatched: device ids of identified users
	cmd        *changeCmd // log mode: identifiers as sent (see ChangeSet)
}

// NewMemberSet starts a snapshot sync. Hand it to ReplaceMembers or
// StagePage, or to Discard when the sync is given up (see NewChangeSet).
func (w *Workspace) NewMemberSet() *MemberSet {
	ms := &MemberSet{w: w}
	w.ulog.lease(&ms.guard)
	if w.e.repl != nil {
		ms.cmd = newChangeCmd(w.e)
	}
	return ms
}

// Discard gives up a sync that will not be applied; ReplaceMembers and
// StagePage call it. Calls after the first do nothing.
func (ms *MemberSet) Discard() { ms.w.ulog.release(&ms.guard) }

// AddMany stages identifiers of one kind under the matching rules of §2
// (device ids: anonymous users only). Keys are copied, not retained.
func (ms *MemberSet) AddMany(kind index.Kind, keys [][]byte) {
	if ms.cmd != nil {
		ms.cmd.add(kind, keys, false)
		return
	}
	for _, k := range keys {
		if ms.q.push(kind, k, 0) {
			ms.flush()
		}
	}
}

func (ms *MemberSet) flush() {
	users := ms.w.users
	ms.q.resolve(users, nil, func(kind index.Kind, _ []uint32, ids []index.UserID, keys [][]byte) {
		for i, id := range ids {
			switch {
			case id == index.NoUser:
				ms.unmatched++
				ms.guard.unknown = append(ms.guard.unknown, keyHash(kind, keys[i]))
			case kind == index.KindDevice && !users.Anonymous(id):
				ms.unmatched++
				ms.identified++
				ms.guard.held = append(ms.guard.held, uint32(id))
			default:
				ms.ids = append(ms.ids, uint32(id))
			}
		}
	})
}

// Bitmap returns the staged members as a bitmap (for webhook staging).
func (ms *MemberSet) Bitmap() *roaring.Bitmap {
	ms.flush()
	ms.ids, ms.scratch = sortIDs(ms.ids, ms.scratch)
	bm := roaring.New()
	bm.AddMany(ms.ids)
	return bm
}

// Unmatched is the number of identifiers that matched nobody.
func (ms *MemberSet) Unmatched() int {
	ms.flush()
	return ms.unmatched
}

// ReplaceMembers makes the cohort exactly the staged set, atomically,
// creating it when unknown. The diff both ways is the report and the data
// points.
func (w *Workspace) ReplaceMembers(partnerSlug, cohortID string, ms *MemberSet) (ReplaceResult, error) {
	defer ms.Discard()
	if ms.cmd != nil {
		return w.proposeReplace(partnerSlug, cohortID, ms)
	}
	target := ms.Bitmap()
	res, err := w.replaceBitmap(partnerSlug, cohortID, target, ms)
	res.Unmatched = ms.unmatched
	return res, err
}

// replaceBitmap replaces a cohort's members with target, the set staged
// in ms (nil when the caller built target itself); with ms, it first
// checks that the staged set did not go stale (ErrUsersChanged).
func (w *Workspace) replaceBitmap(partnerSlug, cohortID string, target *roaring.Bitmap, ms *MemberSet) (ReplaceResult, error) {
	var res ReplaceResult
	err := w.write(func() error {
		if ms != nil && w.ulog.staleLocked(&ms.guard, target) {
			return ErrUsersChanged
		}
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
//
// Resolve them after NewChangeSet: the batch's staleness check covers user
// changes from then on, and an unknown one counts as stale on any key
// attached since, having no key to compare.
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
			cs.guard.opaque = true
			cs.ops = append(cs.ops, dropOp)
			continue
		}
		seq := uint64(len(cs.ops)) & seqMask
		cs.ops = append(cs.ops, uint64(id)<<32|seq<<1|rm)
		cs.res.Matched++
	}
}

// AddIDs adds users the caller resolved itself (after NewMemberSet, as for
// ChangeSet.AddIDs); index.NoUser entries are counted as unmatched.
func (ms *MemberSet) AddIDs(ids []index.UserID) {
	if ms.cmd != nil {
		panic("BUG: engine: dense ids cannot go to the replicated log; stage identifiers (AddMany, AddCandidates)")
	}
	for _, id := range ids {
		if id == index.NoUser {
			ms.unmatched++
			ms.guard.opaque = true
			continue
		}
		ms.ids = append(ms.ids, uint32(id))
	}
}

// Len is the number of identifiers staged so far (duplicates and unmatched
// included).
func (ms *MemberSet) Len() int { return len(ms.ids) + ms.unmatched + ms.q.n }

// Matched is the number of identifiers staged that matched a user
// (duplicates included).
func (ms *MemberSet) Matched() int {
	ms.flush()
	return len(ms.ids)
}
