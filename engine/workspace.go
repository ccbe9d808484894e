package engine

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/index"
)

// Workspace is one tenant: its users, cohorts, data import keys and usage.
// Nothing in a workspace refers to another workspace.
type Workspace struct {
	e         *Engine
	id        string
	createdAt time.Time // zero for workspaces recorded before creation times were
	// keyDigest is the API key's digest. A rotation changes it with both mu
	// and Engine.keys held; read it under either.
	keyDigest [32]byte
	// deleted is set under mu when the workspace is deleted: from then on
	// commitLocked refuses every change, so no record of the workspace can
	// follow its deletion in the WAL.
	deleted bool

	// usersMu serializes changes of the user table (upserts, deletes) with
	// snapshots, which copy the table without holding mu: imports go on
	// while a snapshot writes users; only user changes wait. Taken before
	// mu, never after.
	usersMu sync.Mutex
	// mu is the writer lock: held while a change is appended to the WAL and
	// applied. Fields documented "under mu" are touched only with it held.
	mu sync.Mutex
	// lsn is the last WAL record applied to this workspace (under mu); in
	// log mode the offset + 1 of the last record of its partition applied
	// to it (replication.go).
	lsn uint64
	// gen is, in log mode, the lsn of the record that created the
	// workspace: a command produced for an earlier workspace of the same id
	// does not apply to this one. 0 on a single node.
	gen uint64
	// lastLSN is the last record the live path appended for this
	// workspace. It is stored before the record's change is applied, so
	// whoever observes the change (under mu or through a published
	// pointer) also observes an lastLSN that covers it: a reply that
	// reports "nothing to change" waits for it (see write).
	lastLSN atomic.Uint64

	users *index.Users

	cohorts struct {
		sync.RWMutex
		m map[cohortKey]*Cohort
	}

	// keys lists the workspace's data import keys for listing and
	// revocation; lookups by secret go through Engine.keys.
	keys struct {
		sync.RWMutex
		byID map[string]*importKey // "partner/keyID"
	}

	usage struct {
		sync.Mutex
		m map[string]map[int32]uint64 // partner → UTC day number → data points
	}

	sessions sessionTable // webhook snapshot sessions (under mu)

	// idem holds the replies of writes with an Idempotency-Key; written
	// under mu.
	idem idemLocked

	// ulog records what recent user changes touched, so that imports
	// resolved meanwhile can tell whether they went stale (userlog.go).
	ulog usersLog

	segs segmentCache // segments by their JSON text (lookup.go)

	// scratch buffers reused under mu.
	enc codec.Encoder
}

type cohortKey struct{ partner, id string }

func newWorkspace(e *Engine, id string, d [32]byte, seed uint64) *Workspace {
	w := &Workspace{e: e, id: id, keyDigest: d, users: index.NewUsers(index.Options{Seed: seed, DenseBudget: e.dense})}
	w.cohorts.m = make(map[cohortKey]*Cohort)
	w.keys.byID = make(map[string]*importKey)
	w.usage.m = make(map[string]map[int32]uint64)
	return w
}

// releaseUsers releases the identity tables of every workspace (Close).
func (e *Engine) releaseUsers() {
	for _, w := range e.Workspaces() {
		w.releaseUsers()
	}
}

// releaseUsers releases the workspace's identity tables once no change can be
// under way: readers still running see an empty table; a change that was
// waiting for the locks finds the engine closed or works on heap memory (see
// index.Users.Close). The engine calls it when it closes, and must when it
// drops a workspace.
func (w *Workspace) releaseUsers() {
	w.usersMu.Lock()
	w.mu.Lock()
	w.users.Close()
	w.mu.Unlock()
	w.usersMu.Unlock()
}

// ID returns the workspace id.
func (w *Workspace) ID() string { return w.id }

// commitLocked appends the record in w.enc, then runs apply. The caller
// holds w.mu (through write) and nothing is changed yet, so a failed
// append is an ordinary error.
func (w *Workspace) commitLocked(typ uint8, apply func(lsn uint64)) (uint64, error) {
	if w.deleted {
		return 0, fmt.Errorf("%w: workspace %q was deleted", ErrNotFound, w.id)
	}
	lsn, err := w.e.appendRecord(typ, w.enc.Bytes())
	w.shrinkScratch()
	if err != nil {
		return 0, err
	}
	w.noteLSNLocked(lsn)
	apply(lsn)
	return lsn, nil
}

// noteLSNLocked records that the live path appended lsn (see lastLSN).
func (w *Workspace) noteLSNLocked(lsn uint64) {
	if lsn > w.lsn {
		w.lsn = lsn
	}
	if lsn > w.lastLSN.Load() {
		w.lastLSN.Store(lsn)
	}
}

// maxScratch is the largest record encoder kept between writes: one huge
// request must not pin its record's memory for the life of the workspace.
const maxScratch = 1 << 20

func (w *Workspace) shrinkScratch() {
	if w.enc.Cap() > maxScratch {
		w.enc = codec.Encoder{}
	}
}

// write runs fn as one writer section: under w.mu (released even if fn
// panics), after checking that the engine is open. Then, outside the lock,
// it waits until the workspace's log is durable up to where fn left it, so
// concurrent writers share one fsync, and a reply that reports a no-op
// (an unchanged upsert, a retried batch) is never sent before the records
// of the state it observed are durable.
func (w *Workspace) write(fn func() error) error {
	last, err := func() (uint64, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.e.closed.Load() {
			return 0, ErrClosed
		}
		// A request that found the workspace before DeleteWorkspace took
		// the lock must not log anything after the deletion record: every
		// write of a workspace, user operations and idempotency replies
		// included, runs in this section.
		if w.deleted {
			return 0, fmt.Errorf("%w: workspace %q was deleted", ErrNotFound, w.id)
		}
		if r := w.e.repl; r != nil {
			// Log mode: only the apply goroutine writes; the record it
			// applies is covered by this section (see replication.go).
			w.lsn = max(w.lsn, r.curLSN)
		}
		if err := fn(); err != nil {
			return 0, err
		}
		return w.lastLSN.Load(), nil
	}()
	if err != nil {
		return err
	}
	return w.e.waitDurable(last)
}

// ---- data import keys ----

type importKey struct {
	ws        *Workspace
	id        string
	partner   string
	digest    [32]byte
	createdAt time.Time
	lastUsed  atomic.Int64 // unix nanoseconds, 0 = never
	revoked   atomic.Bool
	// partnerGen is the partner generation the key was issued under (log
	// mode; see partner.gen).
	partnerGen uint64
}

// KeyInfo describes a data import key without its secret.
type KeyInfo struct {
	KeyID      string    // "key_" and 16 hex digits; not the secret
	CreatedAt  time.Time // when the key was issued
	LastUsedAt time.Time // zero if never used
	Revoked    bool      // revoked, or its partner was deleted since
}

// CreateImportKey issues a data import key (client_secret) for partner and
// returns its id and secret (shown once). The partner must be registered.
func (w *Workspace) CreateImportKey(partnerSlug string) (keyID, secret string, err error) {
	w.e.mu.RLock()
	p := w.e.mu.partners[partnerSlug]
	w.e.mu.RUnlock()
	if p == nil {
		return "", "", fmt.Errorf("%w: partner %q", ErrNotFound, partnerSlug)
	}
	keyID = "key_" + fmt.Sprintf("%x", randomBytes(8))
	secret = newSecret("")
	d := SecretDigest([]byte(secret))
	if w.e.repl != nil {
		// The partner is checked here, on the node that takes the request:
		// partners live on another partition of the log, so the apply must
		// not depend on them. The key works only under this generation.
		_, err := w.e.proposeAdmin(w.id, w.gen, admImportKey, func(enc *codec.Encoder) {
			enc.Str(partnerSlug)
			enc.Uvarint(p.gen)
			enc.Str(keyID)
			enc.Digest(d)
		})
		if err != nil {
			return "", "", err
		}
		return keyID, secret, nil
	}
	now := w.e.now().UTC().Truncate(time.Second)
	err = w.write(func() error {
		if p.deleted.Load() {
			// DeletePartner ran between the lookup and the lock (it holds
			// every writer lock while it revokes the partner's keys).
			return fmt.Errorf("%w: partner %q", ErrNotFound, partnerSlug)
		}
		w.enc.Reset()
		w.enc.Str(w.id)
		w.enc.Str(partnerSlug)
		w.enc.Str(keyID)
		w.enc.Digest(d)
		w.enc.Varint(now.Unix())
		_, err := w.commitLocked(recImportKey, func(uint64) { w.applyImportKey(partnerSlug, keyID, d, now, false, 0) })
		return err
	})
	if err != nil {
		return "", "", err
	}
	return keyID, secret, nil
}

func (w *Workspace) applyImportKey(partnerSlug, keyID string, d [32]byte, created time.Time, revoked bool, lastUsed int64) *importKey {
	k := &importKey{ws: w, id: keyID, partner: partnerSlug, digest: d, createdAt: created}
	k.revoked.Store(revoked)
	k.lastUsed.Store(lastUsed)
	w.keys.Lock()
	w.keys.byID[partnerSlug+"/"+keyID] = k
	w.keys.Unlock()
	w.e.keys.Lock()
	w.e.keys.imports[d] = k
	w.e.keys.Unlock()
	return k
}

// ImportKeys lists the data import keys of partner, oldest first.
func (w *Workspace) ImportKeys(partnerSlug string) []KeyInfo {
	w.keys.RLock()
	var out []KeyInfo
	for _, k := range w.keys.byID {
		if k.partner != partnerSlug {
			continue
		}
		ki := KeyInfo{KeyID: k.id, CreatedAt: k.createdAt, Revoked: k.revoked.Load() || !w.e.keyGenLive(k)}
		if lu := k.lastUsed.Load(); lu != 0 {
			ki.LastUsedAt = time.Unix(0, lu).UTC()
		}
		out = append(out, ki)
	}
	w.keys.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].KeyID < out[j].KeyID
	})
	return out
}

// RevokeImportKey invalidates a data import key; the very next request with
// it is refused.
func (w *Workspace) RevokeImportKey(partnerSlug, keyID string) error {
	if w.e.repl != nil {
		_, err := w.e.proposeAdmin(w.id, w.gen, admRevokeKey, func(enc *codec.Encoder) { enc.Str(partnerSlug); enc.Str(keyID) })
		return err
	}
	return w.revokeImportKey(partnerSlug, keyID)
}

func (w *Workspace) revokeImportKey(partnerSlug, keyID string) error {
	return w.write(func() error {
		w.keys.RLock()
		k := w.keys.byID[partnerSlug+"/"+keyID]
		w.keys.RUnlock()
		if k == nil {
			return fmt.Errorf("%w: key %q of partner %q", ErrNotFound, keyID, partnerSlug)
		}
		w.enc.Reset()
		w.enc.Str(w.id)
		w.enc.Str(partnerSlug)
		w.enc.Str(keyID)
		_, err := w.commitLocked(recRevokeKey, func(uint64) { k.revoked.Store(true) })
		return err
	})
}

// ---- usage ----

// dayNumber is the UTC day of t as days since the Unix epoch.
func dayNumber(t time.Time) int32 { return int32(t.Unix() / 86400) }

func (w *Workspace) addUsage(partnerSlug string, day int32, n uint64) {
	if n == 0 {
		return
	}
	w.usage.Lock()
	m := w.usage.m[partnerSlug]
	if m == nil {
		m = make(map[int32]uint64)
		w.usage.m[partnerSlug] = m
	}
	m[day] += n
	w.usage.Unlock()
}

// Usage is the data points metered for a workspace.
type Usage struct {
	Total    uint64                  // data points of every partner
	Partners map[string]PartnerUsage // by partner slug
}

// PartnerUsage is one partner's data points, in total and per UTC day
// ("2006-01-02").
type PartnerUsage struct {
	Total uint64            // the partner's data points
	Days  map[string]uint64 // by UTC day, "2006-01-02"
}

// Usage returns the workspace's data points per partner and UTC day.
func (w *Workspace) Usage() Usage {
	u := Usage{Partners: make(map[string]PartnerUsage)}
	w.usage.Lock()
	defer w.usage.Unlock()
	for p, days := range w.usage.m {
		pu := PartnerUsage{Days: make(map[string]uint64, len(days))}
		for d, n := range days {
			pu.Days[time.Unix(int64(d)*86400, 0).UTC().Format("2006-01-02")] = n
			pu.Total += n
		}
		u.Partners[p] = pu
		u.Total += pu.Total
	}
	return u
}

// ---- cohorts ----

// Cohort is one (partner, cohort_id) of a workspace.
//
// Readers load the member set with Members: an immutable bitmap that must
// never be mutated or cloned (see index.Members); the writer changes it
// under Workspace.mu.
type Cohort struct {
	partner, id string
	meta        atomic.Pointer[cohortMeta]
	members     *index.Members
	syncs       syncHistory // its last syncs (syncs.go)
}

type cohortMeta struct {
	name      string
	createdAt time.Time
	updatedAt time.Time
}

func newCohort(partnerSlug, id string, budget *index.DenseBudget) *Cohort {
	return &Cohort{partner: partnerSlug, id: id, members: index.NewMembers(budget)}
}

// Members returns the published member set. Never mutate or Clone it.
func (c *Cohort) Members() *roaring.Bitmap { return c.members.Load() }

// CohortInfo describes a cohort.
type CohortInfo struct {
	Partner   string    // the partner slug
	CohortID  string    // the partner's cohort id
	Name      string    // the display name (the id until one is given)
	CreatedAt time.Time // when created (the time its first upsert gave)
	UpdatedAt time.Time // the last rename or membership change
	Size      uint64    // members now
}

// Info returns the cohort's description and current size.
func (c *Cohort) Info() CohortInfo {
	m := c.meta.Load()
	return CohortInfo{Partner: c.partner, CohortID: c.id, Name: m.name, CreatedAt: m.createdAt, UpdatedAt: m.updatedAt, Size: c.Members().GetCardinality()}
}

// Cohort returns the cohort (partner, id), or nil.
func (w *Workspace) Cohort(partnerSlug, id string) *Cohort {
	w.cohorts.RLock()
	defer w.cohorts.RUnlock()
	return w.cohorts.m[cohortKey{partnerSlug, id}]
}

// CohortCount is the number of cohorts (without listing them).
func (w *Workspace) CohortCount() int {
	w.cohorts.RLock()
	defer w.cohorts.RUnlock()
	return len(w.cohorts.m)
}

// Cohorts lists every cohort sorted by partner and id.
func (w *Workspace) Cohorts() []*Cohort {
	w.cohorts.RLock()
	out := make([]*Cohort, 0, len(w.cohorts.m))
	for _, c := range w.cohorts.m {
		out = append(out, c)
	}
	w.cohorts.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].partner != out[j].partner {
			return out[i].partner < out[j].partner
		}
		return out[i].id < out[j].id
	})
	return out
}

// UpsertCohort creates the cohort or renames it. The first createdAt is
// kept. It is cheap when nothing changes (no WAL record is written), since
// partners call it before every batch.
func (w *Workspace) UpsertCohort(partnerSlug, id, name string, createdAt time.Time) error {
	if id == "" || name == "" {
		return invalidf("cohort id and name must be non-empty")
	}
	if w.e.repl != nil {
		// Always a record in log mode: this node's state may lag the log,
		// so "nothing to change" can only be decided by the apply.
		return w.proposeCohort(cmdOpUpsert, partnerSlug, id, name, createdAt)
	}
	return w.upsertCohort(partnerSlug, id, name, createdAt)
}

func (w *Workspace) upsertCohort(partnerSlug, id, name string, createdAt time.Time) error {
	if id == "" || name == "" {
		return invalidf("cohort id and name must be non-empty")
	}
	if c := w.Cohort(partnerSlug, id); c != nil && c.meta.Load().name == name {
		// Fast path: nothing to change. The state seen may come from a
		// record not yet durable (another request's, still in group
		// commit): wait for it before acknowledging.
		return w.e.waitDurable(w.lastLSN.Load())
	}
	return w.write(func() error {
		_, err := w.upsertCohortLocked(partnerSlug, id, name, createdAt)
		return err
	})
}

// upsertCohortLocked writes and applies a cohort upsert unless nothing
// would change. It returns the record's LSN (0 if none was written).
func (w *Workspace) upsertCohortLocked(partnerSlug, id, name string, createdAt time.Time) (uint64, error) {
	now := w.e.writeTime().UTC()
	c := w.Cohort(partnerSlug, id)
	if c != nil {
		m := c.meta.Load()
		if m.name == name {
			return 0, nil
		}
		createdAt = m.createdAt
	}
	w.enc.Reset()
	w.enc.Str(w.id)
	w.enc.Str(partnerSlug)
	w.enc.Str(id)
	w.enc.Str(name)
	w.enc.Time(createdAt)
	w.enc.Time(now)
	return w.commitLocked(recCohortUpsertV2, func(uint64) { w.applyCohortUpsert(partnerSlug, id, name, createdAt, now) })
}

func (w *Workspace) applyCohortUpsert(partnerSlug, id, name string, createdAt, now time.Time) *Cohort {
	c := w.Cohort(partnerSlug, id)
	if c == nil {
		c = newCohort(partnerSlug, id, w.e.dense)
		c.meta.Store(&cohortMeta{name: name, createdAt: createdAt.UTC(), updatedAt: now})
		w.cohorts.Lock()
		w.cohorts.m[cohortKey{partnerSlug, id}] = c
		w.cohorts.Unlock()
		return c
	}
	m := *c.meta.Load()
	m.name = name
	m.updatedAt = now
	c.meta.Store(&m)
	return c
}

// DeleteCohort removes a cohort and its members.
func (w *Workspace) DeleteCohort(partnerSlug, id string) error {
	if w.e.repl != nil {
		return w.proposeCohort(cmdOpDelete, partnerSlug, id, "", time.Time{})
	}
	return w.deleteCohort(partnerSlug, id)
}

func (w *Workspace) deleteCohort(partnerSlug, id string) error {
	return w.write(func() error {
		if w.Cohort(partnerSlug, id) == nil {
			return fmt.Errorf("%w: cohort %s/%s", ErrNotFound, partnerSlug, id)
		}
		w.enc.Reset()
		w.enc.Str(w.id)
		w.enc.Str(partnerSlug)
		w.enc.Str(id)
		_, err := w.commitLocked(recCohortDelete, func(uint64) { w.applyCohortDelete(partnerSlug, id) })
		return err
	})
}

func (w *Workspace) applyCohortDelete(partnerSlug, id string) {
	w.cohorts.Lock()
	delete(w.cohorts.m, cohortKey{partnerSlug, id})
	w.cohorts.Unlock()
	// Sessions of a deleted cohort die with it (replay does the same).
	for k := range w.sessions.m {
		if k.partner == partnerSlug && k.cohort == id {
			w.sessions.delete(k)
		}
	}
}

// ensureCohortLocked returns the cohort, creating it (name = id) with a WAL
// record when unknown. It returns the LSN of that record or 0.
func (w *Workspace) ensureCohortLocked(partnerSlug, id string) (*Cohort, uint64, error) {
	if c := w.Cohort(partnerSlug, id); c != nil {
		return c, 0, nil
	}
	now := w.e.writeTime().UTC()
	lsn, err := w.upsertCohortLocked(partnerSlug, id, id, now)
	if err != nil {
		return nil, 0, err
	}
	return w.Cohort(partnerSlug, id), lsn, nil
}
