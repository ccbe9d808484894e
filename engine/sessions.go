package engine

import (
	"sort"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/engine/codec"
)

// Webhook snapshot sessions (docs/API.md §3b). Mixpanel sends a full cohort as
// pages sharing a session id; each page is resolved at once and staged as
// dense ids (a WAL record per page, so staging survives a restart), and the
// cohort is replaced by the union of the pages when the last missing page
// arrives. Until then readers see the previous membership.
//
// A session is keyed by (partner, cohort, session id) inside a workspace.
// Sessions are ordered by when they began; committing one drops the older
// open sessions of the same cohort, so an old sync never overwrites a newer
// one. A session with no page for Options.WebhookSessionTTL is dropped
// (wall-clock: time spent stopped counts); a later page starts anew.

type sessionKey struct{ partner, cohort, id string }

type session struct {
	key       sessionKey
	total     int
	pages     *roaring.Bitmap // page numbers received
	members   *roaring.Bitmap // union of the staged pages (writer-private)
	seq       uint64          // begin order within the workspace
	lastPage  int64           // unix nanoseconds of the latest page
	accounted int64           // bytes counted in sessionTable.staged
	sync      sessionSync     // the pages' counts for the sync history (syncs.go)
}

// sessionTable holds a workspace's open sessions (under Workspace.mu).
type sessionTable struct {
	m       map[sessionKey]*session
	nextSeq uint64
	// done remembers recently committed sessions (unix nanoseconds of the
	// commit) for one TTL: Mixpanel re-sends a page whose reply it lost,
	// and such a page must not open a new session.
	done map[sessionKey]int64
	// open is len(m) and staged the bytes of the open sessions' staged ids
	// and page sets, for readers that must not take the writer lock
	// (metrics, the memory report, the session expiry loop).
	open   atomic.Int64
	staged atomic.Int64
}

func (t *sessionTable) get(k sessionKey) *session {
	if t.m == nil {
		return nil
	}
	return t.m[k]
}

func (t *sessionTable) put(s *session) {
	if t.m == nil {
		t.m = make(map[sessionKey]*session)
	}
	if old := t.m[s.key]; old != nil {
		t.staged.Add(-old.accounted)
	}
	t.m[s.key] = s
	s.accounted = 0
	t.account(s)
	if s.seq >= t.nextSeq {
		t.nextSeq = s.seq + 1
	}
	t.open.Store(int64(len(t.m)))
}

func (t *sessionTable) delete(k sessionKey) {
	if s := t.m[k]; s != nil {
		t.staged.Add(-s.accounted)
	}
	delete(t.m, k)
	t.open.Store(int64(len(t.m)))
}

// StageResult reports a staged webhook page.
type StageResult struct {
	Repeat        bool          // the session had already committed: nothing staged
	Matched       int           // members of this page that matched a user (duplicates included)
	Staged        int           // members of this page matched and staged
	Unmatched     int           // identifiers of this page that matched nobody
	PagesReceived int           // distinct pages of the session so far
	Committed     bool          // the page completed the session: the cohort was replaced
	Replace       ReplaceResult // what the replacement did (when Committed)
}

// Limits on open sessions, so that abandoned syncs cannot pile up: a
// Mixpanel cohort syncs one session at a time and starts a new one after a
// failure, so a few per cohort cover every real pattern. Past
// maxSessionsPerCohort the oldest open session of the cohort is dropped;
// past maxSessionsPerWorkspace the session idle longest in the workspace.
// Either drop is a record like an expiry, and is counted in
// Stats.SessionsEvicted.
const (
	maxSessionsPerCohort    = 3
	maxSessionsPerWorkspace = 100
)

// StagePage stages one page (1-based) of a snapshot session and, when every
// page 1…total has arrived, replaces the cohort by their union in one step.
// The cohort is created (name = id) when unknown, and renamed to name when
// name is not empty, once the page has passed every check. total must be ≥
// 1 and the same on every page of a session.
func (w *Workspace) StagePage(partnerSlug, cohortID, name, sessionID string, page, total int, ms *MemberSet) (StageResult, error) {
	defer ms.Discard()
	if total < 1 {
		return StageResult{}, invalidf("total_pages must be at least 1")
	}
	if page < 1 || page > total {
		return StageResult{}, invalidf("page_count must be between 1 and total_pages (%d)", total)
	}
	if ms.cmd != nil {
		return w.proposeWebhookPage(partnerSlug, cohortID, name, sessionID, page, total, ms)
	}
	ids := ms.Bitmap()
	var res StageResult
	err := w.write(func() error {
		if w.ulog.staleLocked(&ms.guard, ids) {
			return ErrUsersChanged
		}
		var err error
		res, err = w.stagePageLocked(partnerSlug, cohortID, name, sessionID, page, total, ids, ms.Matched(), ms.unmatched)
		return err
	})
	if err != nil {
		return StageResult{}, err
	}
	res.Matched, res.Unmatched = ms.Matched(), ms.unmatched
	return res, nil
}

// stagePageLocked stages a page whose members are ids (matched of its
// identifiers matched, unmatched did not) under w.mu.
func (w *Workspace) stagePageLocked(partnerSlug, cohortID, name, sessionID string, page, total int, ids *roaring.Bitmap, matched, unmatched int) (StageResult, error) {
	now := w.e.writeTime().UTC()
	k := sessionKey{partnerSlug, cohortID, sessionID}
	if _, err := w.expireSessionsLocked(now); err != nil {
		return StageResult{}, err
	}
	if _, ok := w.sessions.done[k]; ok {
		return StageResult{Repeat: true, PagesReceived: total}, nil
	}
	s := w.sessions.get(k)
	if s != nil && s.total != total {
		return StageResult{}, invalidf("total_pages %d differs from %d sent earlier in session %q", total, s.total, sessionID)
	}
	// Every check has passed: from here on the page is applied.
	c, _, err := w.ensureCohortLocked(partnerSlug, cohortID)
	if err != nil {
		return StageResult{}, err
	}
	if name != "" {
		if _, err := w.upsertCohortLocked(partnerSlug, cohortID, name, now); err != nil {
			return StageResult{}, err
		}
	}
	seq := w.sessions.nextSeq
	if s != nil {
		seq = s.seq
	} else if err := w.makeRoomLocked(k, now); err != nil {
		return StageResult{}, err
	}
	w.enc.Reset()
	w.enc.Str(w.id)
	w.enc.Str(partnerSlug)
	w.enc.Str(cohortID)
	w.enc.Str(sessionID)
	w.enc.Uvarint(uint64(total))
	w.enc.Uvarint(uint64(page))
	w.enc.Uvarint(seq)
	w.enc.Varint(now.UnixNano())
	w.enc.Bitmap(ids)
	if _, err := w.commitLocked(recSession, func(uint64) { s = w.applyStage(k, total, page, seq, now.UnixNano(), ids) }); err != nil {
		return StageResult{}, err
	}
	if _, err := w.stagePageSyncLocked(k, now, matched, unmatched); err != nil {
		return StageResult{}, err
	}
	res := StageResult{Staged: int(ids.GetCardinality()), PagesReceived: int(s.pages.GetCardinality())}
	if res.PagesReceived < total {
		return res, nil
	}
	if res.Replace, _, err = w.replaceLocked(c, s.members); err != nil {
		return StageResult{}, err
	}
	if _, err := w.commitSessionSyncLocked(c, s, &res.Replace, now); err != nil {
		return StageResult{}, err
	}
	// Drop this session and every older open one of the same cohort.
	if _, err := w.dropSessionsLocked(k, now.UnixNano(), func(o *session) bool {
		return o.key.partner == partnerSlug && o.key.cohort == cohortID && o.seq <= s.seq
	}); err != nil {
		return StageResult{}, err
	}
	res.Committed = true
	return res, nil
}

// makeRoomLocked drops open sessions so that a new session k fits the
// limits: the oldest of k's cohort past maxSessionsPerCohort, then the one
// idle longest in the workspace past maxSessionsPerWorkspace.
func (w *Workspace) makeRoomLocked(k sessionKey, now time.Time) error {
	var sameCohort []*session
	var idlest *session
	for _, s := range w.sessions.m {
		if s.key.partner == k.partner && s.key.cohort == k.cohort {
			sameCohort = append(sameCohort, s)
		}
		if idlest == nil || s.lastPage < idlest.lastPage || (s.lastPage == idlest.lastPage && s.seq < idlest.seq) {
			idlest = s
		}
	}
	var victim *session
	switch {
	case len(sameCohort) >= maxSessionsPerCohort:
		victim = sameCohort[0]
		for _, s := range sameCohort[1:] {
			if s.seq < victim.seq {
				victim = s
			}
		}
	case len(w.sessions.m) >= maxSessionsPerWorkspace:
		victim = idlest
	default:
		return nil
	}
	w.e.log.Warn("webhook session evicted to stay within the limits",
		"workspace", w.id, "cohort", victim.key.partner+"/"+victim.key.cohort, "session", victim.key.id,
		"per_cohort", maxSessionsPerCohort, "per_workspace", maxSessionsPerWorkspace)
	w.e.Stats.SessionsEvicted.Add(1)
	_, err := w.dropSessionsLocked(sessionKey{}, 0, func(s *session) bool { return s == victim })
	return err
}

// applyStage stages a page (live path and replay).
func (w *Workspace) applyStage(k sessionKey, total, page int, seq uint64, at int64, ids *roaring.Bitmap) *session {
	s := w.sessions.get(k)
	if s == nil {
		s = &session{key: k, total: total, pages: roaring.New(), members: roaring.New(), seq: seq}
		w.sessions.put(s)
	}
	s.pages.Add(uint32(page))
	s.members.Or(ids)
	s.lastPage = at
	w.sessions.account(s)
	return s
}

// account brings staged up to date with s's staged ids and page set.
// Sizes are remembered per session, so that a session whose members were
// consumed by its commit is taken off by what was added.
func (t *sessionTable) account(s *session) {
	n := int64(s.members.GetSizeInBytes() + s.pages.GetSizeInBytes())
	t.staged.Add(n - s.accounted)
	s.accounted = n
}

// expireSessionsLocked drops sessions idle for longer than the TTL.
func (w *Workspace) expireSessionsLocked(now time.Time) (uint64, error) {
	cutoff := now.Add(-w.e.opts.WebhookSessionTTL).UnixNano()
	for k, at := range w.sessions.done {
		if at < cutoff {
			delete(w.sessions.done, k) // derived state: replay prunes alike
		}
	}
	return w.dropSessionsLocked(sessionKey{}, 0, func(s *session) bool { return s.lastPage < cutoff })
}

// ExpireSessions drops idle webhook sessions now. The webhook does it on
// every request of the workspace and Engine.RunSnapshots for every
// workspace once a minute, so an abandoned session never outlives its TTL
// by much, whatever the traffic.
func (w *Workspace) ExpireSessions() error {
	if w.e.repl != nil {
		// Log mode: a record, so that every node drops the same sessions
		// at the same place; only when this node's clock says one is due.
		if !w.idleSession(w.e.now()) {
			return nil
		}
		_, err := w.e.propose(cmdExpireSessions, w.id, w.gen, nil)
		return err
	}
	return w.expireSessions()
}

func (w *Workspace) expireSessions() error {
	return w.write(func() error {
		_, err := w.expireSessionsLocked(w.e.writeTime().UTC())
		return err
	})
}

// idleSession reports whether an open session has had no page for the TTL
// as of now.
func (w *Workspace) idleSession(now time.Time) bool {
	cutoff := now.Add(-w.e.opts.WebhookSessionTTL).UnixNano()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.sessions.m {
		if s.lastPage < cutoff {
			return true
		}
	}
	return false
}

// dropSessionsLocked logs and drops every session matching drop; when
// committed.id is set, that session is also remembered as committed at
// time at.
func (w *Workspace) dropSessionsLocked(committed sessionKey, at int64, drop func(*session) bool) (uint64, error) {
	var keys []sessionKey
	for k, s := range w.sessions.m {
		if drop(s) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 && committed.id == "" {
		return 0, nil
	}
	sort.Slice(keys, func(i, j int) bool { return w.sessions.m[keys[i]].seq < w.sessions.m[keys[j]].seq })
	w.enc.Reset()
	w.enc.Str(w.id)
	w.enc.Uvarint(uint64(len(keys)))
	for _, k := range keys {
		w.enc.Str(k.partner)
		w.enc.Str(k.cohort)
		w.enc.Str(k.id)
	}
	w.enc.Str(committed.partner)
	w.enc.Str(committed.cohort)
	w.enc.Str(committed.id)
	w.enc.Varint(at)
	return w.commitLocked(recSessionDrop, func(uint64) { w.applySessionDrop(keys, committed, at) })
}

func (w *Workspace) applySessionDrop(keys []sessionKey, committed sessionKey, at int64) {
	for _, k := range keys {
		w.sessions.delete(k)
	}
	if committed.id != "" {
		if w.sessions.done == nil {
			w.sessions.done = make(map[sessionKey]int64)
		}
		w.sessions.done[committed] = at
	}
}

// OpenSessions is the number of open webhook sessions (for tests and
// metrics). It takes no lock.
func (w *Workspace) OpenSessions() int { return int(w.sessions.open.Load()) }

// replaySession re-applies a recSession or recSessionDrop record.
func (w *Workspace) replaySession(typ uint8, d *codec.Decoder) error {
	if typ == recSession {
		p, cid, sid := d.Str(), d.Str(), d.Str()
		total, page := int(d.U32()), int(d.U32())
		seq := d.Uvarint()
		at := d.Varint()
		ids := d.Bitmap()
		if err := d.Done(); err != nil {
			return err
		}
		if total < 1 || page < 1 || page > total {
			return invalidf("session page %d of %d", page, total)
		}
		w.applyStage(sessionKey{p, cid, sid}, total, page, seq, at, ids)
		return nil
	}
	n := d.Count()
	if err := d.Err(); err != nil {
		return err
	}
	keys := make([]sessionKey, 0, n)
	for i := 0; i < n && d.Err() == nil; i++ {
		keys = append(keys, sessionKey{d.Str(), d.Str(), d.Str()})
	}
	committed := sessionKey{d.Str(), d.Str(), d.Str()}
	at := d.Varint()
	if err := d.Done(); err != nil {
		return err
	}
	// Replay prunes remembered commits by the record's own clock, as the
	// live path did by its clock when it wrote later records.
	w.applySessionDrop(keys, committed, at)
	return nil
}

// sessionCapture is a session copied for a snapshot.
type sessionCapture struct {
	key      sessionKey
	total    int
	seq      uint64
	lastPage int64
	pages    *roaring.Bitmap
	members  *roaring.Bitmap
}

func (w *Workspace) captureSessionsLocked() []sessionCapture {
	out := make([]sessionCapture, 0, len(w.sessions.m))
	for _, s := range w.sessions.m {
		out = append(out, sessionCapture{key: s.key, total: s.total, seq: s.seq, lastPage: s.lastPage,
			pages: s.pages.Clone(), members: s.members.Clone()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

// doneCapture is a remembered committed session.
type doneCapture struct {
	key sessionKey
	at  int64
}

func (w *Workspace) captureDoneLocked() []doneCapture {
	out := make([]doneCapture, 0, len(w.sessions.done))
	for k, at := range w.sessions.done {
		out = append(out, doneCapture{k, at})
	}
	// A total order: in log mode two commits can share a millisecond, and
	// snapshots of the same state must be the same bytes on every node.
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.at != b.at {
			return a.at < b.at
		}
		if a.key.partner != b.key.partner {
			return a.key.partner < b.key.partner
		}
		if a.key.cohort != b.key.cohort {
			return a.key.cohort < b.key.cohort
		}
		return a.key.id < b.key.id
	})
	return out
}

func writeSessions(sw *snapWriter, ss []sessionCapture, done []doneCapture) {
	sw.Uvarint(uint64(len(done)))
	for _, d := range done {
		sw.Str(d.key.partner)
		sw.Str(d.key.cohort)
		sw.Str(d.key.id)
		sw.Varint(d.at)
	}
	sw.Uvarint(uint64(len(ss)))
	for _, s := range ss {
		sw.Str(s.key.partner)
		sw.Str(s.key.cohort)
		sw.Str(s.key.id)
		sw.Uvarint(uint64(s.total))
		sw.Uvarint(s.seq)
		sw.Varint(s.lastPage)
		sw.Bitmap(s.pages)
		sw.Bitmap(s.members)
	}
}

func (w *Workspace) readSessions(s *codec.Decoder) {
	nd := s.Uvarint()
	for i := uint64(0); i < nd && s.Err() == nil; i++ {
		k := sessionKey{s.Str(), s.Str(), s.Str()}
		at := s.Varint()
		if s.Err() == nil {
			w.applySessionDrop(nil, k, at)
		}
	}
	n := s.Uvarint()
	for i := uint64(0); i < n && s.Err() == nil; i++ {
		k := sessionKey{s.Str(), s.Str(), s.Str()}
		total := s.Uvarint()
		seq := s.Uvarint()
		last := s.Varint()
		pages := s.Bitmap()
		members := s.Bitmap()
		if s.Err() != nil {
			return
		}
		if total < 1 || total > 1<<31 {
			s.Fail("session with invalid total_pages")
			return
		}
		w.sessions.put(&session{key: k, total: int(total), pages: pages, members: members, seq: seq, lastPage: last})
	}
}

// stagingBytes is the memory held by open sessions' staged ids and page
// sets (for benchmarks and metrics). It takes no lock.
func (w *Workspace) stagingBytes() float64 { return float64(w.sessions.staged.Load()) }
