package engine

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/engine/kafkalog"
	"github.com/cohortd/cohortd/index"
)

// Command records (types 40–49) are what the replicated log carries
// (replication.go): what a request asked, with identifiers as sent (never
// dense ids, which only the apply can know), secrets as digests generated
// by the node that took the request, and no time: the apply uses the
// record's log timestamp. Applying one runs the single-node code of the
// same write, so every node computes the same effects and the same reply.
// The byte layouts are drawn in docs/FORMATS.md.
//
// On the log a record's value is its type byte followed by its payload,
// encoded like WAL payloads (record.go); Kafka's batch framing supplies
// the length, the position and a CRC-32C. Every command payload starts
// with the same header:
//
//	origin [8]byte  random id of the producing process
//	seq    uvarint  its sequence number there (origin+seq find the waiter)
//	scope  str      workspace id; "" for engine-level commands
//	gen    uvarint  the workspace generation the request saw (0: any)
const (
	cmdAdmin          uint8 = 40 // op | fields: workspace, partner and key lifecycle
	cmdUsers          uint8 = 41 // op | a user upsert batch, or identifiers to delete
	cmdCohort         uint8 = 42 // op | cohort upsert (partner, id, name, created_at) or delete
	cmdChanges        uint8 = 43 // a change batch: identifier groups in order, dropped count
	cmdReplace        uint8 = 44 // a snapshot replace (PUT …/members): identifier groups
	cmdWebhookPage    uint8 = 45 // a staged Mixpanel snapshot page and its candidates
	cmdIdempotency    uint8 = 46 // the reply to a write with an Idempotency-Key
	cmdExpireSessions uint8 = 47 // drop idle webhook sessions, as of the record's time

	cmdFirst       = cmdAdmin
	cmdLast  uint8 = 49
)

// Operations of a cmdAdmin record.
const (
	admWorkspaceCreate uint8 = 1 // api key digest
	admWorkspaceDelete uint8 = 2 // force u8
	admWorkspaceKey    uint8 = 3 // new api key digest
	admPartnerCreate   uint8 = 4 // slug, partner_api_key digest
	admPartnerDelete   uint8 = 5 // slug
	admPartnerKey      uint8 = 6 // slug, new digest
	admImportKey       uint8 = 7 // partner, partner generation, key id, digest
	admRevokeKey       uint8 = 8 // partner, key id
)

// Operations of cmdUsers and cmdCohort records.
const (
	cmdOpUpsert uint8 = 1
	cmdOpDelete uint8 = 2
)

// groupCandidates is the kind byte of a group of webhook candidates in
// change and replace commands; other groups carry an index.Kind.
const groupCandidates uint8 = 0xff

// cmdHeader is the common start of a command payload.
type cmdHeader struct {
	origin [8]byte
	seq    uint64
	scope  string
	gen    uint64
}

// errAlreadyApplied is the result of a record a snapshot already holds
// (only met while catching up, where nobody waits for it).
var errAlreadyApplied = errors.New("engine: record already applied")

// applyCommand decodes and applies one record of the log. ok is false for
// a record whose header does not decode (logged and skipped, alike on every
// node).
func (e *Engine) applyCommand(rec kafkalog.Record) (h cmdHeader, res cmdResult, ok bool) {
	if len(rec.Value) < 1+len(h.origin) {
		e.log.Warn("skipping a malformed record of the log", "position", rec.Position.String(), "bytes", len(rec.Value))
		return h, res, false
	}
	typ := rec.Value[0]
	copy(h.origin[:], rec.Value[1:])
	d := codec.NewDecoder(rec.Value[1+len(h.origin):])
	h.seq = d.Uvarint()
	h.scope = d.Str()
	h.gen = d.Uvarint()
	if d.Err() != nil {
		e.log.Warn("skipping a malformed record of the log", "position", rec.Position.String(), "err", d.Err())
		return h, res, false
	}
	lsn := uint64(rec.Offset) + 1
	res = e.dispatchCommand(typ, h, d, lsn)
	if d.Err() != nil {
		// Every node meets the same bytes and skips them alike.
		e.log.Warn("skipping a malformed record of the log", "position", rec.Position.String(), "type", typ, "err", d.Err())
	}
	return h, res, true
}

// engineScoped reports whether a command changes engine-level state (the
// engine's own scope and lsn) rather than a workspace's.
func engineScoped(typ uint8, op uint8, scope string) bool {
	switch typ {
	case cmdAdmin:
		return op == admPartnerCreate || op == admPartnerDelete || op == admPartnerKey
	case cmdIdempotency:
		return scope == ""
	}
	return false
}

func (e *Engine) dispatchCommand(typ uint8, h cmdHeader, d *codec.Decoder, lsn uint64) cmdResult {
	if typ < cmdFirst || typ > cmdLast {
		return cmdResult{err: invalidf("unknown command record type %d", typ)}
	}
	var op uint8
	if typ == cmdAdmin || typ == cmdUsers || typ == cmdCohort {
		op = d.U8()
	}
	if engineScoped(typ, op, h.scope) {
		if lsn <= e.mu.lsn {
			return cmdResult{err: errAlreadyApplied}
		}
		if typ == cmdAdmin {
			return e.applyPartnerCmd(op, d, lsn)
		}
		return e.applyAdminIdempotency(d, lsn)
	}
	w := e.Workspace(h.scope)
	if w != nil {
		w.mu.Lock()
		covered := lsn <= w.lsn
		w.mu.Unlock()
		if covered {
			return cmdResult{err: errAlreadyApplied}
		}
	}
	if typ == cmdAdmin && op == admWorkspaceCreate {
		return e.applyWorkspaceCreate(h.scope, d, lsn)
	}
	if w == nil || (h.gen != 0 && w.gen != h.gen) {
		return cmdResult{err: fmt.Errorf("%w: workspace %q", ErrNotFound, h.scope)}
	}
	switch typ {
	case cmdAdmin:
		return w.applyWorkspaceAdmin(op, d, lsn)
	case cmdUsers:
		return w.applyUsersCmd(op, d)
	case cmdCohort:
		return w.applyCohortCmd(op, d)
	case cmdChanges:
		return w.applyChangesCmd(d)
	case cmdReplace:
		return w.applyReplaceCmd(d)
	case cmdWebhookPage:
		return w.applyWebhookPageCmd(d)
	case cmdIdempotency:
		key, r, err := decodeIdemCmd(d)
		if err != nil {
			return cmdResult{err: err}
		}
		r.At = w.e.writeTime()
		return cmdResult{err: w.write(func() error { w.applyIdempotency(key, r); return nil })}
	case cmdExpireSessions:
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		return cmdResult{err: w.expireSessions()}
	}
	return cmdResult{err: invalidf("unknown command record type %d", typ)}
}

// ---- admin ----

// proposeAdmin produces a cmdAdmin record of op with fields.
func (e *Engine) proposeAdmin(scope string, gen uint64, op uint8, fields func(enc *codec.Encoder)) (any, error) {
	var enc codec.Encoder
	enc.U8(op)
	if fields != nil {
		fields(&enc)
	}
	return e.propose(cmdAdmin, scope, gen, enc.Bytes())
}

// workspaceSeed seeds the identity table hash of a workspace created by
// the log record at (scope's partition) lsn, so that every node builds the
// same table.
func workspaceSeed(id string, lsn uint64) uint64 {
	h := sha256.Sum256(fmt.Appendf(nil, "cohortd workspace seed\x00%s\x00%d", id, lsn))
	s := uint64(0)
	for _, b := range h[:8] {
		s = s<<8 | uint64(b)
	}
	return s | 1
}

func (e *Engine) applyWorkspaceCreate(id string, d *codec.Decoder, lsn uint64) cmdResult {
	dg := d.Digest()
	if err := d.Done(); err != nil {
		return cmdResult{err: err}
	}
	if !ValidWorkspaceID(id) {
		return cmdResult{err: invalidf("workspace id must match [a-zA-Z0-9_-]{1,64}")}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.mu.workspaces[id]; ok {
		return cmdResult{err: fmt.Errorf("%w: workspace %q", ErrExists, id)}
	}
	w := e.applyWorkspaceSeeded(id, dg, e.writeTime(), 0, workspaceSeed(id, lsn))
	w.gen, w.lsn = lsn, lsn
	return cmdResult{}
}

func (w *Workspace) applyWorkspaceAdmin(op uint8, d *codec.Decoder, lsn uint64) cmdResult {
	e := w.e
	switch op {
	case admWorkspaceDelete:
		force := d.U8() == 1
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		e.mu.Lock()
		w.mu.Lock()
		if users, cohorts := w.users.Len(), w.cohortCount(); !force && (users > 0 || cohorts > 0) {
			w.lsn = lsn
			w.mu.Unlock()
			e.mu.Unlock()
			return cmdResult{err: &NotEmptyError{Workspace: w.id, Users: users, Cohorts: cohorts}}
		}
		e.applyWorkspaceDeleteLocked(w, 0)
		w.lsn = lsn
		w.mu.Unlock()
		e.mu.Unlock()
		w.releaseUsers()
		return cmdResult{}
	case admWorkspaceKey:
		dg := d.Digest()
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		return cmdResult{err: w.write(func() error { w.applyKeyRotation(dg); return nil })}
	case admImportKey:
		p, pgen, kid := d.Str(), d.Uvarint(), d.Str()
		dg := d.Digest()
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		created := e.writeTime().Truncate(time.Second)
		return cmdResult{err: w.write(func() error {
			k := w.applyImportKey(p, kid, dg, created, false, 0)
			k.partnerGen = pgen
			return nil
		})}
	case admRevokeKey:
		p, kid := d.Str(), d.Str()
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		return cmdResult{err: w.revokeImportKey(p, kid)}
	}
	return cmdResult{err: invalidf("unknown admin operation %d", op)}
}

func (e *Engine) applyPartnerCmd(op uint8, d *codec.Decoder, lsn uint64) cmdResult {
	slug := d.Str()
	var dg [32]byte
	if op != admPartnerDelete {
		dg = d.Digest()
	}
	if err := d.Done(); err != nil {
		return cmdResult{err: err}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mu.lsn = lsn
	p := e.mu.partners[slug]
	switch op {
	case admPartnerCreate:
		if p != nil {
			return cmdResult{err: fmt.Errorf("%w: partner %q", ErrExists, slug)}
		}
		if !ValidPartnerSlug(slug) {
			return cmdResult{err: invalidf("partner slug must match [a-z0-9_-]{1,64}")}
		}
		p = newPartner(slug, dg, e.writeTime())
		p.gen = lsn
		e.mu.partners[slug] = p
		return cmdResult{}
	case admPartnerDelete, admPartnerKey:
		if p == nil {
			return cmdResult{err: fmt.Errorf("%w: partner %q", ErrNotFound, slug)}
		}
		if op == admPartnerKey {
			p.digest.Store(&dg)
			return cmdResult{}
		}
		// The partner's import keys live in workspaces, on other
		// partitions: they are not touched here (their order against this
		// record differs between nodes). They stop working because their
		// partner generation no longer exists (AuthImportKey).
		delete(e.mu.partners, slug)
		p.deleted.Store(true)
		return cmdResult{}
	}
	return cmdResult{err: invalidf("unknown admin operation %d", op)}
}

// ---- idempotency ----

func encodeIdemCmd(enc *codec.Encoder, key string, r IdempotentReply) {
	enc.Str(key)
	enc.Digest(r.Sum)
	enc.Uvarint(uint64(r.Status))
	enc.Str(r.ContentType)
	enc.Blob(r.Body)
}

func decodeIdemCmd(d *codec.Decoder) (string, IdempotentReply, error) {
	var r IdempotentReply
	key := d.Str()
	r.Sum = d.Digest()
	status := d.Uvarint()
	r.ContentType = d.Str()
	r.Body = append([]byte(nil), d.Blob()...)
	if err := d.Done(); err != nil {
		return "", r, err
	}
	if status < 100 || status > 599 {
		return "", r, invalidf("idempotency command with status %d", status)
	}
	r.Status = int(status)
	return key, r, nil
}

func (e *Engine) applyAdminIdempotency(d *codec.Decoder, lsn uint64) cmdResult {
	key, r, err := decodeIdemCmd(d)
	if err != nil {
		return cmdResult{err: err}
	}
	r.At = e.writeTime()
	e.mu.Lock()
	e.applyIdempotency(key, r)
	e.mu.lsn = lsn
	e.mu.Unlock()
	return cmdResult{}
}

// ---- users ----

func (w *Workspace) proposeUsers(b *UserBatch) (UpsertResult, error) {
	var enc codec.Encoder
	enc.U8(cmdOpUpsert)
	enc.Uvarint(uint64(len(b.recs)))
	for i := range b.recs {
		r := &b.recs[i]
		enc.OptBlob(b.get(r.ext))
		enc.OptBlob(b.get(r.dev))
		enc.Uvarint(uint64(len(r.aliases)))
		for _, a := range r.aliases {
			enc.Blob(b.get(a))
		}
	}
	v, err := w.e.propose(cmdUsers, w.id, w.gen, enc.Bytes())
	if err != nil {
		return UpsertResult{}, err
	}
	return v.(UpsertResult), nil
}

func (w *Workspace) proposeDeleteUsers(set IdentifierSet) (DeleteResult, error) {
	var enc codec.Encoder
	enc.U8(cmdOpDelete)
	for _, keys := range [][][]byte{set.ExternalIDs, set.DeviceIDs, set.Aliases} {
		enc.Uvarint(uint64(len(keys)))
		for _, k := range keys {
			enc.Blob(k)
		}
	}
	v, err := w.e.propose(cmdUsers, w.id, w.gen, enc.Bytes())
	if err != nil {
		return DeleteResult{}, err
	}
	return v.(DeleteResult), nil
}

func (w *Workspace) applyUsersCmd(op uint8, d *codec.Decoder) cmdResult {
	switch op {
	case cmdOpUpsert:
		var b UserBatch
		n := d.Count()
		for i := 0; i < n && d.Err() == nil; i++ {
			ext, dev := d.OptBlob(), d.OptBlob()
			na := d.Count()
			aliases := make([][]byte, 0, na)
			for j := 0; j < na && d.Err() == nil; j++ {
				aliases = append(aliases, d.Blob())
			}
			if d.Err() == nil {
				b.Add(ext, dev, aliases)
			}
		}
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		res, err := w.upsertUsers(&b)
		return cmdResult{v: res, err: err}
	case cmdOpDelete:
		var set IdentifierSet
		for _, dst := range []*[][]byte{&set.ExternalIDs, &set.DeviceIDs, &set.Aliases} {
			n := d.Count()
			for i := 0; i < n && d.Err() == nil; i++ {
				*dst = append(*dst, d.Blob())
			}
		}
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		res, err := w.deleteUsers(set)
		return cmdResult{v: res, err: err}
	}
	return cmdResult{err: invalidf("unknown users operation %d", op)}
}

// ---- cohorts ----

func (w *Workspace) proposeCohort(op uint8, partnerSlug, id, name string, createdAt time.Time) error {
	var enc codec.Encoder
	enc.U8(op)
	enc.Str(partnerSlug)
	enc.Str(id)
	if op == cmdOpUpsert {
		enc.Str(name)
		enc.Time(createdAt)
	}
	_, err := w.e.propose(cmdCohort, w.id, w.gen, enc.Bytes())
	return err
}

func (w *Workspace) applyCohortCmd(op uint8, d *codec.Decoder) cmdResult {
	p, id := d.Str(), d.Str()
	switch op {
	case cmdOpUpsert:
		name := d.Str()
		created := d.Time()
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		return cmdResult{err: w.upsertCohort(p, id, name, created)}
	case cmdOpDelete:
		if err := d.Done(); err != nil {
			return cmdResult{err: err}
		}
		return cmdResult{err: w.deleteCohort(p, id)}
	}
	return cmdResult{err: invalidf("unknown cohort operation %d", op)}
}

// ---- change batches, replaces and webhook pages ----

// changeCmd stages the identifier groups of a change batch or a snapshot
// replace in log mode, as the request sent them: each AddMany (or
// AddCandidates) call is one group, kept in order, so that the apply
// stages exactly what a single node would have staged. Past the log's
// record limit nothing more is kept: the write fails with
// ErrRecordTooLarge once the body was read.
type changeCmd struct {
	enc    codec.Encoder
	groups int
	max    int
	over   bool
	sent   int // identifiers staged, for the error message
}

func newChangeCmd(e *Engine) *changeCmd { return &changeCmd{max: e.repl.maxRec} }

func (c *changeCmd) add(kind index.Kind, keys [][]byte, remove bool) {
	c.sent += len(keys)
	if c.over || len(keys) == 0 {
		return
	}
	c.enc.U8(uint8(kind))
	c.enc.U8(boolByte(remove))
	c.enc.Uvarint(uint64(len(keys)))
	for _, k := range keys {
		c.enc.Blob(k)
	}
	c.groups++
	c.checkSize()
}

func (c *changeCmd) addCandidates(cands *Candidates, remove bool) {
	c.sent += cands.Len()
	if c.over || cands.Len() == 0 {
		return
	}
	c.enc.U8(groupCandidates)
	c.enc.U8(boolByte(remove))
	c.enc.Uvarint(uint64(cands.Len()))
	for i := range cands.ext {
		c.enc.OptBlob(cands.buf.get(cands.ext[i]))
		c.enc.OptBlob(cands.buf.get(cands.alias[i]))
	}
	c.groups++
	c.checkSize()
}

func (c *changeCmd) checkSize() {
	if c.enc.Len() > c.max {
		c.over = true
		c.enc = codec.Encoder{}
	}
}

// err is ErrRecordTooLarge when the staged groups outgrew a record.
func (c *changeCmd) err() error {
	if !c.over {
		return nil
	}
	return fmt.Errorf("%w: %d identifiers take more than the %d bytes of one record; send them in smaller requests", ErrRecordTooLarge, c.sent, c.max)
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// groups appends the staged groups, counted, to enc.
func (c *changeCmd) appendGroups(enc *codec.Encoder) {
	enc.Uvarint(uint64(c.groups))
	enc.Raw(c.enc.Bytes())
}

// readGroups decodes the groups of a change or replace command and hands
// each to stage (keys or candidates).
func readGroups(d *codec.Decoder, stage func(kind uint8, remove bool, keys [][]byte, cands *Candidates)) {
	n := d.Count()
	var keys [][]byte
	for i := 0; i < n && d.Err() == nil; i++ {
		kind, remove := d.U8(), d.U8()
		m := d.Count()
		if d.Err() != nil {
			return
		}
		if remove > 1 || (kind != groupCandidates && (kind < uint8(index.KindExternal) || kind > uint8(index.KindDevice))) {
			d.FailWith(invalidf("change group of kind %d, remove %d", kind, remove))
			return
		}
		if kind == groupCandidates {
			var c Candidates
			for j := 0; j < m && d.Err() == nil; j++ {
				ext, alias := d.OptBlob(), d.OptBlob()
				c.Add(ext, alias)
			}
			if d.Err() == nil {
				stage(kind, remove == 1, nil, &c)
			}
			continue
		}
		keys = keys[:0]
		for j := 0; j < m && d.Err() == nil; j++ {
			keys = append(keys, d.Blob())
		}
		if d.Err() == nil {
			stage(kind, remove == 1, keys, nil)
		}
	}
}

func (w *Workspace) proposeChanges(partnerSlug, cohortID string, cs *ChangeSet) (ApplyResult, error) {
	if err := cs.cmd.err(); err != nil {
		return ApplyResult{}, err
	}
	var enc codec.Encoder
	enc.Grow(cs.cmd.enc.Len() + len(partnerSlug) + len(cohortID) + 32)
	enc.Str(partnerSlug)
	enc.Str(cohortID)
	enc.U8(uint8(cs.src))
	enc.Uvarint(uint64(cs.res.DroppedBeforeFloor))
	cs.cmd.appendGroups(&enc)
	v, err := w.e.propose(cmdChanges, w.id, w.gen, enc.Bytes())
	if err != nil {
		return ApplyResult{}, err
	}
	return v.(ApplyResult), nil
}

func (w *Workspace) applyChangesCmd(d *codec.Decoder) cmdResult {
	p, cid := d.Str(), d.Str()
	src := SyncSource(d.U8())
	dropped := d.Uvarint()
	if d.Err() == nil && (src >= numSources || dropped > 1<<40) {
		d.FailWith(invalidf("change command with source %d, %d dropped", src, dropped))
	}
	cs := w.localChangeSet()
	cs.SetSource(src)
	cs.Drop(int(dropped))
	readGroups(d, func(kind uint8, remove bool, keys [][]byte, cands *Candidates) {
		if cands != nil {
			cs.AddCandidates(cands, remove)
			return
		}
		cs.AddMany(index.Kind(kind), keys, remove)
	})
	if err := d.Done(); err != nil {
		cs.Discard()
		return cmdResult{err: err}
	}
	res, err := w.ApplyChanges(p, cid, cs)
	return cmdResult{v: res, err: err}
}

func (w *Workspace) proposeReplace(partnerSlug, cohortID string, ms *MemberSet) (ReplaceResult, error) {
	if err := ms.cmd.err(); err != nil {
		return ReplaceResult{}, err
	}
	var enc codec.Encoder
	enc.Grow(ms.cmd.enc.Len() + len(partnerSlug) + len(cohortID) + 16)
	enc.Str(partnerSlug)
	enc.Str(cohortID)
	ms.cmd.appendGroups(&enc)
	v, err := w.e.propose(cmdReplace, w.id, w.gen, enc.Bytes())
	if err != nil {
		return ReplaceResult{}, err
	}
	return v.(ReplaceResult), nil
}

// stageMembers stages decoded groups into a local MemberSet.
func stageMembers(ms *MemberSet) func(kind uint8, remove bool, keys [][]byte, cands *Candidates) {
	return func(kind uint8, remove bool, keys [][]byte, cands *Candidates) {
		if remove {
			return // never encoded for member sets
		}
		if cands != nil {
			ms.AddCandidates(cands)
			return
		}
		ms.AddMany(index.Kind(kind), keys)
	}
}

func (w *Workspace) applyReplaceCmd(d *codec.Decoder) cmdResult {
	p, cid := d.Str(), d.Str()
	ms := w.localMemberSet()
	readGroups(d, stageMembers(ms))
	if err := d.Done(); err != nil {
		ms.Discard()
		return cmdResult{err: err}
	}
	res, err := w.ReplaceMembers(p, cid, ms)
	return cmdResult{v: res, err: err}
}

func (w *Workspace) proposeWebhookPage(partnerSlug, cohortID, name, sessionID string, page, total int, ms *MemberSet) (StageResult, error) {
	if err := ms.cmd.err(); err != nil {
		return StageResult{}, err
	}
	var enc codec.Encoder
	enc.Grow(ms.cmd.enc.Len() + len(partnerSlug) + len(cohortID) + len(name) + len(sessionID) + 32)
	enc.Str(partnerSlug)
	enc.Str(cohortID)
	enc.Str(name)
	enc.Str(sessionID)
	enc.Uvarint(uint64(page))
	enc.Uvarint(uint64(total))
	ms.cmd.appendGroups(&enc)
	v, err := w.e.propose(cmdWebhookPage, w.id, w.gen, enc.Bytes())
	if err != nil {
		return StageResult{}, err
	}
	return v.(StageResult), nil
}

func (w *Workspace) applyWebhookPageCmd(d *codec.Decoder) cmdResult {
	p, cid, name, sid := d.Str(), d.Str(), d.Str(), d.Str()
	page, total := d.Uvarint(), d.Uvarint()
	if d.Err() == nil && (page > 1<<31 || total > 1<<31) {
		d.FailWith(invalidf("webhook page %d of %d", page, total))
	}
	ms := w.localMemberSet()
	readGroups(d, stageMembers(ms))
	if err := d.Done(); err != nil {
		ms.Discard()
		return cmdResult{err: err}
	}
	res, err := w.StagePage(p, cid, name, sid, int(page), int(total), ms)
	return cmdResult{v: res, err: err}
}

// localChangeSet is a change set that resolves as it stages, whatever the
// mode: what the apply of a command stages into.
func (w *Workspace) localChangeSet() *ChangeSet {
	cs := w.NewChangeSet()
	cs.cmd = nil
	return cs
}

// localMemberSet is localChangeSet for member sets.
func (w *Workspace) localMemberSet() *MemberSet {
	ms := w.NewMemberSet()
	ms.cmd = nil
	return ms
}

// ---- webhook candidates ----

// Candidates are the members of a Mixpanel webhook page, each with the
// identifiers it may match (docs/API.md §3b): its external id and,
// optionally, an alias key tried when the external id is missing or
// matches nobody. No other fallback. Add copies the bytes.
type Candidates struct {
	buf        UserBatch // only its byte store is used
	ext, alias []span
}

// Add stages one member: externalID and aliasKey (index.AliasKey) are nil
// when absent.
func (c *Candidates) Add(externalID, aliasKey []byte) {
	c.ext = append(c.ext, c.buf.put(externalID))
	c.alias = append(c.alias, c.buf.put(aliasKey))
}

// Len is the number of members staged.
func (c *Candidates) Len() int { return len(c.ext) }

// resolve resolves every member: by external id first, then, for members
// whose external id is missing or matches nobody, by the alias. One id per
// member, index.NoUser when neither matches; lookups go a batch at a time.
func (c *Candidates) resolve(w *Workspace) []index.UserID {
	ids := make([]index.UserID, len(c.ext))
	var keys [][]byte
	var pos []int
	for j, sp := range c.ext {
		ids[j] = index.NoUser
		if sp.n >= 0 {
			keys = append(keys, c.buf.get(sp))
			pos = append(pos, j)
		}
	}
	got := w.users.ResolveMany(index.KindExternal, keys, nil)
	for k, j := range pos {
		ids[j] = got[k]
	}
	keys, pos = keys[:0], pos[:0]
	for j, sp := range c.alias {
		if ids[j] == index.NoUser && sp.n >= 0 {
			keys = append(keys, c.buf.get(sp))
			pos = append(pos, j)
		}
	}
	got = w.users.ResolveMany(index.KindAlias, keys, got[:0])
	for k, j := range pos {
		ids[j] = got[k]
	}
	return ids
}

// AddCandidates stages webhook members as adds (or removes): each matches
// by its external id, else by its alias; unmatched ones are counted as
// unknown.
func (cs *ChangeSet) AddCandidates(c *Candidates, remove bool) {
	if cs.cmd != nil {
		cs.cmd.addCandidates(c, remove)
		return
	}
	cs.AddIDs(c.resolve(cs.w), remove)
}

// AddCandidates stages webhook members into the set (see
// ChangeSet.AddCandidates).
func (ms *MemberSet) AddCandidates(c *Candidates) {
	if ms.cmd != nil {
		ms.cmd.addCandidates(c, false)
		return
	}
	ms.AddIDs(c.resolve(ms.w))
}
