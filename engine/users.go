package engine

import (
	"bytes"
	"fmt"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/index"
)

// UserBatch stages user records of a POST /v1/users body. Add copies the
// bytes, so the decoder may reuse its buffers.
type UserBatch struct {
	buf  []byte
	recs []userRec
}

type span struct{ off, n int }

type userRec struct {
	ext, dev span // n == -1: absent
	aliases  []span
}

func (b *UserBatch) put(v []byte) span {
	if v == nil {
		return span{n: -1}
	}
	s := span{off: len(b.buf), n: len(v)}
	b.buf = append(b.buf, v...)
	return s
}

func (b *UserBatch) get(s span) []byte {
	if s.n < 0 {
		return nil
	}
	return b.buf[s.off : s.off+s.n]
}

// Add stages one record. externalID and deviceID are nil when absent;
// aliases are alias keys (index.AliasKey).
func (b *UserBatch) Add(externalID, deviceID []byte, aliases [][]byte) {
	r := userRec{ext: b.put(externalID), dev: b.put(deviceID)}
	for _, a := range aliases {
		r.aliases = append(r.aliases, b.put(a))
	}
	b.recs = append(b.recs, r)
}

// validate refuses keys the index cannot hold (empty, or longer than
// index.MaxKeyLen), before anything is applied. The server's decoders
// already enforce the API's tighter rule; the engine does not rely on it.
func (b *UserBatch) validate() error {
	ok := func(s span) bool { return s.n < 0 || (s.n > 0 && s.n <= index.MaxKeyLen) }
	for i := range b.recs {
		r := &b.recs[i]
		if !ok(r.ext) || !ok(r.dev) {
			return invalidf("user record %d: identifiers must be 1 to %d bytes", i, index.MaxKeyLen)
		}
		for _, a := range r.aliases {
			if a.n < 0 || !ok(a) {
				return invalidf("user record %d: aliases must be 1 to %d bytes", i, index.MaxKeyLen)
			}
		}
	}
	return nil
}

// reserve returns the check, run in the writer section before anything
// changes, that the workspace's identity tables have room for every user
// and key the batch could add (moves of a merged user's device ids reuse
// the room they free).
func (b *UserBatch) reserve(w *Workspace) func() error {
	return func() error {
		keys := 0
		for i := range b.recs {
			r := &b.recs[i]
			keys += len(r.aliases)
			if r.ext.n >= 0 {
				keys++
			}
			if r.dev.n >= 0 {
				keys++
			}
		}
		if err := w.users.Reserve(len(b.recs), keys, len(b.buf)); err != nil {
			return fmt.Errorf("%w: workspace %s: %v", ErrCapacity, w.id, err)
		}
		return nil
	}
}

// Len is the number of staged records.
func (b *UserBatch) Len() int { return len(b.recs) }

// UpsertResult counts what a user upsert did, one outcome per record.
type UpsertResult struct {
	Created    int
	Identified int
	Merged     int
	Updated    int
	Unchanged  int
}

// userOps applies user operations to the index and encodes them into
// recUsers records, and collects the membership work they imply.
//
// # Order and failure
//
// Unlike every other write, user operations change the index first and
// are logged after (each operation depends on the state the previous one
// left, so the record is the trace of what was done). Two rules keep
// memory and log in step:
//   - records are cut every userRecordSplit bytes (between operations), so
//     no request can build a record the log refuses as too large, however
//     large its body; replay applies each record and its membership work
//     in turn, as the live path did;
//   - a record that cannot be appended once its operations are applied is
//     fatal (Engine.fatal): the process stops and recovers from the log,
//     rather than acknowledging or keeping state the log lacks.
type userOps struct {
	w       *Workspace
	enc     *codec.Encoder
	merges  [][2]uint32 // (from, into)
	deleted []uint32
	ops     int        // operations in the record being built
	cache   *userCache // prefilled lookups (usercache.go); nil: none
}

// userRecordSplit is the record size past which userOps cuts a record. The
// record is built in the workspace's encoder, which keeps its capacity, and
// copied into the WAL's pending buffer: both are Go heap, so records are
// kept small (512 KiB is still thousands of users per record).
const userRecordSplit = 512 << 10

// begin starts a record.
func (o *userOps) begin() {
	o.enc.Reset()
	o.enc.Str(o.w.id)
	o.merges, o.deleted, o.ops = o.merges[:0], o.deleted[:0], 0
}

// op is called before each operation is applied and encoded: it cuts the
// record when it is full.
func (o *userOps) op() {
	if o.enc.Len() >= userRecordSplit {
		o.flush()
	}
	o.ops++
}

// flush logs the record built so far (if it holds any operation), applies
// its membership work and publishes, and starts the next record.
func (o *userOps) flush() {
	if o.ops > 0 {
		w := o.w
		lsn, err := w.e.appendRecord(recUsers, o.enc.Bytes())
		if err != nil {
			w.e.fatal(fmt.Errorf("workspace %s: user operations applied but not logged: %w", w.id, err))
			return
		}
		w.noteLSNLocked(lsn)
		w.finishUserOpsLocked(o.merges, o.deleted)
		// Imports staged before this record see it as a user change.
		w.ulog.commitLocked()
	}
	o.w.shrinkScratch()
	o.begin()
}

func (o *userOps) create() index.UserID {
	o.op()
	id := o.w.users.Create()
	o.enc.U8(opCreate)
	o.enc.Uvarint(uint64(id))
	return id
}

func (o *userOps) attach(id index.UserID, kind index.Kind, key []byte) {
	o.op()
	o.w.ulog.noteAttach(o.w.users, id, kind, key)
	if err := o.w.users.Attach(id, kind, key); err != nil {
		// Every check Attach makes was made before (the key is free, the
		// user live, the key valid), except capacity: the workspace's key
		// arena is full. Earlier operations of this request are applied
		// but not logged.
		o.w.e.fatal(fmt.Errorf("workspace %s: attach %v to user %d: %w", o.w.id, kind, id, err))
		return
	}
	o.enc.U8(opAttach)
	o.enc.Uvarint(uint64(id))
	o.enc.U8(uint8(kind))
	o.enc.Blob(key)
}

func (o *userOps) detach(kind index.Kind, key []byte) {
	o.op()
	holder, _ := o.w.users.Detach(kind, key)
	o.w.ulog.noteDetach(holder, kind, key)
	o.enc.U8(opDetach)
	o.enc.U8(uint8(kind))
	o.enc.Blob(key)
}

// move gives key to id, taking it from its current holder (if any).
func (o *userOps) move(id index.UserID, kind index.Kind, key []byte) bool {
	cur := o.resolve(kind, key)
	if cur == id {
		return false
	}
	if cur != index.NoUser {
		o.detach(kind, key)
	}
	o.attach(id, kind, key)
	return true
}

// merge moves every device id of the anonymous user from to into, then
// records that from's memberships are OR-ed into into and from deleted.
func (o *userOps) merge(from, into index.UserID) {
	var devs [][]byte
	o.w.users.Identifiers(from, func(kind index.Kind, key []byte) {
		if kind == index.KindDevice {
			devs = append(devs, bytes.Clone(key))
		}
	})
	for _, d := range devs {
		o.detach(index.KindDevice, d)
		o.attach(into, index.KindDevice, d)
	}
	o.op()
	o.w.users.Delete(from)
	o.w.ulog.noteUser(from)
	o.enc.U8(opMerge)
	o.enc.Uvarint(uint64(from))
	o.enc.Uvarint(uint64(into))
	o.merges = append(o.merges, [2]uint32{uint32(from), uint32(into)})
}

func (o *userOps) delete(id index.UserID) {
	o.op()
	o.w.users.Delete(id)
	o.w.ulog.noteUser(id)
	o.enc.U8(opDelete)
	o.enc.Uvarint(uint64(id))
	o.deleted = append(o.deleted, uint32(id))
}

// runUserOps runs fn, which applies user operations through ops, as one
// writer section (see userOps for the order of mutation and logging). A
// panic inside, after operations were applied, is fatal too: the
// workspace lock is released on the way out, and memory would be ahead of
// the log.
func (w *Workspace) runUserOps(reserve func() error, fn func(ops *userOps)) error {
	w.usersMu.Lock()
	defer w.usersMu.Unlock()
	return w.write(func() error {
		if reserve != nil {
			if err := reserve(); err != nil {
				return err
			}
		}
		ops := userOps{w: w, enc: &w.enc, cache: new(userCache)}
		ops.begin()
		defer func() {
			if v := recover(); v != nil {
				w.e.fatal(fmt.Errorf("BUG: workspace %s: panic during user operations: %v", w.id, v))
				panic(v)
			}
		}()
		fn(&ops)
		ops.flush()
		return nil
	})
}

// finishLocked applies the membership side of merges and deletes to every
// cohort and publishes the new states. Shared by the live path and replay.
func (w *Workspace) finishUserOpsLocked(merges [][2]uint32, deleted []uint32) {
	if len(merges) == 0 && len(deleted) == 0 {
		w.users.Publish()
		return
	}
	gone := roaring.New()
	gone.AddMany(deleted)
	for _, m := range merges {
		gone.Add(m[0])
	}
	for _, c := range w.Cohorts() {
		c.members.MergeAndRemove(merges, gone)
	}
	w.users.Publish()
}

// UpsertUsers applies user records in order (docs/API.md §4 "Users"): creates
// users, attaches and moves identifiers, identifies anonymous users and
// merges an anonymous user into an existing identified one (memberships
// OR-ed, the anonymous user removed).
//
// Identity lookups see each user as soon as it is created; cohort members
// and the live-users set are published per record (userRecordSplit bytes
// of operations, so once for all but the largest bodies).
func (w *Workspace) UpsertUsers(b *UserBatch) (UpsertResult, error) {
	if err := b.validate(); err != nil {
		return UpsertResult{}, err
	}
	if w.e.repl != nil {
		return w.proposeUsers(b)
	}
	return w.upsertUsers(b)
}

func (w *Workspace) upsertUsers(b *UserBatch) (UpsertResult, error) {
	var res UpsertResult
	if err := b.validate(); err != nil {
		return res, err
	}
	err := w.runUserOps(b.reserve(w), func(ops *userOps) {
		for i := range b.recs {
			ops.prefillRecords(b, i)
			switch w.upsertOne(ops, b, &b.recs[i]) {
			case outCreated:
				res.Created++
			case outIdentified:
				res.Identified++
			case outMerged:
				res.Merged++
			case outUpdated:
				res.Updated++
			default:
				res.Unchanged++
			}
		}
	})
	if err != nil {
		return UpsertResult{}, err
	}
	return res, nil
}

type upsertOutcome int

const (
	outUnchanged upsertOutcome = iota
	outUpdated
	outCreated
	outIdentified
	outMerged
)

func (w *Workspace) upsertOne(o *userOps, b *UserBatch, r *userRec) upsertOutcome {
	u := w.users
	ext, dev := b.get(r.ext), b.get(r.dev)
	aliases := make([][]byte, len(r.aliases))
	for i, s := range r.aliases {
		aliases[i] = b.get(s)
	}
	if ext == nil && len(aliases) == 0 {
		if dev == nil {
			return outUnchanged
		}
		if o.resolve(index.KindDevice, dev) != index.NoUser {
			return outUnchanged
		}
		o.attach(o.create(), index.KindDevice, dev)
		return outCreated
	}

	// The identified user this record names: by external id, else by the
	// first alias someone holds.
	target := index.NoUser
	if ext != nil {
		target = o.resolve(index.KindExternal, ext)
	} else {
		for _, a := range aliases {
			if t := o.resolve(index.KindAlias, a); t != index.NoUser {
				target = t
				break
			}
		}
	}
	devUser := index.NoUser
	if dev != nil {
		devUser = o.resolve(index.KindDevice, dev)
	}

	out := outUnchanged
	switch {
	case target == index.NoUser && devUser != index.NoUser && u.Anonymous(devUser):
		// The anonymous device user is identified: it keeps its cohorts.
		target = devUser
		out = outIdentified
	case target == index.NoUser:
		target = o.create()
		out = outCreated
	case devUser != index.NoUser && devUser != target && u.Anonymous(devUser):
		o.merge(devUser, target)
		out = outMerged
	}
	changed := false
	if ext != nil && o.resolve(index.KindExternal, ext) != target {
		o.attach(target, index.KindExternal, ext)
		changed = true
	}
	for _, a := range aliases {
		if o.move(target, index.KindAlias, a) {
			changed = true
		}
	}
	if dev != nil && o.move(target, index.KindDevice, dev) {
		changed = true
	}
	if out == outUnchanged && changed {
		out = outUpdated
	}
	return out
}

// DeleteResult counts a user deletion.
type DeleteResult struct {
	Deleted   int
	Unmatched int
}

// IdentifierSet groups identifiers by kind (aliases as index.AliasKey).
type IdentifierSet struct {
	ExternalIDs [][]byte
	DeviceIDs   [][]byte
	Aliases     [][]byte
}

// DeleteUsers removes the users named (a device id names whoever holds it)
// with every membership they had, and frees their identifiers.
func (w *Workspace) DeleteUsers(set IdentifierSet) (DeleteResult, error) {
	if w.e.repl != nil {
		return w.proposeDeleteUsers(set)
	}
	return w.deleteUsers(set)
}

func (w *Workspace) deleteUsers(set IdentifierSet) (DeleteResult, error) {
	var res DeleteResult
	err := w.runUserOps(nil, func(ops *userOps) {
		for _, g := range []struct {
			kind index.Kind
			keys [][]byte
		}{{index.KindExternal, set.ExternalIDs}, {index.KindDevice, set.DeviceIDs}, {index.KindAlias, set.Aliases}} {
			for j, k := range g.keys {
				ops.prefillKeys(g.kind, g.keys, j)
				id := ops.resolve(g.kind, k)
				if id == index.NoUser {
					res.Unmatched++
					continue
				}
				ops.delete(id)
				res.Deleted++
			}
		}
	})
	if err != nil {
		return DeleteResult{}, err
	}
	return res, nil
}

// replayUsers re-executes a recUsers record.
func (w *Workspace) replayUsers(d *codec.Decoder) error {
	var merges [][2]uint32
	var deleted []uint32
	for d.Err() == nil && d.Len() > 0 {
		switch op := d.U8(); op {
		case opCreate:
			want := index.UserID(d.U32())
			if d.Err() != nil {
				break
			}
			if got := w.users.Create(); got != want {
				d.FailWith(invalidf("replay: created user %d, record says %d", got, want))
			}
		case opAttach:
			id := index.UserID(d.U32())
			kind := index.Kind(d.U8())
			key := d.Blob()
			if d.Err() == nil {
				if err := w.users.Attach(id, kind, key); err != nil {
					d.FailWith(err)
				}
			}
		case opDetach:
			kind := index.Kind(d.U8())
			key := d.Blob()
			if d.Err() == nil {
				w.users.Detach(kind, key)
			}
		case opMerge:
			from, into := d.U32(), d.U32()
			if d.Err() == nil {
				w.users.Delete(index.UserID(from))
				merges = append(merges, [2]uint32{from, into})
			}
		case opDelete:
			id := d.U32()
			if d.Err() == nil {
				w.users.Delete(index.UserID(id))
				deleted = append(deleted, id)
			}
		default:
			d.FailWith(invalidf("replay: unknown user op %d", op))
		}
	}
	w.finishUserOpsLocked(merges, deleted)
	return d.Err()
}

// ---- lookups ----

// Alias is an (alias_name, alias_label) pair.
type Alias struct{ Name, Label string }

// UserInfo is a user's identifiers as the API shows them.
type UserInfo struct {
	ExternalID string // "" if none
	Aliases    []Alias
	DeviceIDs  []string
	Anonymous  bool
}

// Resolve finds the user holding an identifier (any user: the
// anonymous-only rule is for import), or index.NoUser.
func (w *Workspace) Resolve(kind index.Kind, key []byte) index.UserID {
	return w.users.Resolve(kind, key)
}

// UserInfo returns the identifiers of a user.
func (w *Workspace) UserInfo(id index.UserID) UserInfo {
	info := UserInfo{Anonymous: w.users.Anonymous(id)}
	w.users.Identifiers(id, func(kind index.Kind, key []byte) {
		switch kind {
		case index.KindExternal:
			info.ExternalID = string(key)
		case index.KindAlias:
			n, l := index.SplitAlias(key)
			info.Aliases = append(info.Aliases, Alias{Name: string(n), Label: string(l)})
		case index.KindDevice:
			info.DeviceIDs = append(info.DeviceIDs, string(key))
		}
	})
	return info
}

// UserCohorts lists the cohorts the user is a member of.
func (w *Workspace) UserCohorts(id index.UserID) []CohortInfo {
	var out []CohortInfo
	for _, c := range w.Cohorts() {
		if c.Members().Contains(uint32(id)) {
			m := c.meta.Load()
			out = append(out, CohortInfo{Partner: c.partner, CohortID: c.id, Name: m.name, CreatedAt: m.createdAt, UpdatedAt: m.updatedAt})
		}
	}
	return out
}

// ResolveMany resolves identifiers of one kind (any user holding them) and
// appends one id per key to dst, index.NoUser for unknown keys.
func (w *Workspace) ResolveMany(kind index.Kind, keys [][]byte, dst []index.UserID) []index.UserID {
	return w.users.ResolveMany(kind, keys, dst)
}
