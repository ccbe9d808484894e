package engine

import (
	"sort"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
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
	key      sessionKey
	total    int
	pages    *roaring.Bitmap // page numbers received
	members  *roaring.Bitmap // union of the staged pages (writer-private)
	seq      uint64          // begin order within the workspace
	lastPage int64           // unix nanoseconds of the latest page
}

// sessionTable holds a workspace's open sessions (under Workspace.mu).
type sessionTable struct {
	m       map[sessionKey]*session
	nextSeq uint64
	// done remembers recently committed sessions (unix nanoseconds of the
	// commit) for one TTL: Mixpanel re-sends a page whose reply it lost,
	// and such a page must not open a new session.
	done map[sessionKey]int64
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
	t.m[s.key] = s
	if s.seq >= t.nextSeq {
		t.nextSeq = s.seq + 1
	}
}

// StageResult reports a staged webhook page.
type StageResult struct {
	Repeat        bool // the session had already committed: nothing staged
	Staged        int  // members of this page matched and staged
	Unmatched     int  // identifiers of this page that matched nobody
	PagesReceived int  // distinct pages of the session so far
	Committed     bool // the page completed the session: the cohort was replaced
	Replace       ReplaceResult
}

// StagePage stages one page (1-based) of a snapshot session and, when every
// page 1…total has arrived, replaces the cohort by their union in one step.
// The cohort is created (name = id) when unknown. total must be ≥ 1 and the
// same on every page of a session.
func (w *Workspace) StagePage(partnerSlug, cohortID, sessionID string, page, total int, ms *MemberSet) (StageResult, error) {
	if total < 1 {
		return StageResult{}, invalidf("total_pages must be at least 1")
	}
	if page < 1 || page > total {
		return StageResult{}, invalidf("page_count must be between 1 and total_pages (%d)", total)
	}
	ids := ms.Bitmap()
	now := w.e.now().UTC()
	k := sessionKey{partnerSlug, cohortID, sessionID}

	w.mu.Lock()
	if w.ulog.staleLocked(&ms.guard, ids) {
		w.mu.Unlock()
		return StageResult{}, ErrUsersChanged
	}
	var lsns []uint64
	lsn, err := w.expireSessionsLocked(now)
	if err != nil {
		w.mu.Unlock()
		return StageResult{}, err
	}
	lsns = append(lsns, lsn)
	if _, ok := w.sessions.done[k]; ok {
		w.mu.Unlock()
		return StageResult{Repeat: true, PagesReceived: total, Unmatched: ms.unmatched}, w.e.waitDurable(maxOf(lsns))
	}
	s := w.sessions.get(k)
	if s != nil && s.total != total {
		w.mu.Unlock()
		return StageResult{}, invalidf("total_pages %d differs from %d sent earlier in session %q", total, s.total, sessionID)
	}
	c, lsn, err := w.ensureCohortLocked(partnerSlug, cohortID)
	if err != nil {
		w.mu.Unlock()
		return StageResult{}, err
	}
	lsns = append(lsns, lsn)
	seq := w.sessions.nextSeq
	if s != nil {
		seq = s.seq
	}
	w.enc.reset()
	w.enc.str(w.id)
	w.enc.str(partnerSlug)
	w.enc.str(cohortID)
	w.enc.str(sessionID)
	w.enc.uvarint(uint64(total))
	w.enc.uvarint(uint64(page))
	w.enc.uvarint(seq)
	w.enc.varint(now.UnixNano())
	w.enc.bitmap(ids)
	lsn, err = w.commitLocked(recSession, func(uint64) { s = w.applyStage(k, total, page, seq, now.UnixNano(), ids) })
	if err != nil {
		w.mu.Unlock()
		return StageResult{}, err
	}
	lsns = append(lsns, lsn)
	res := StageResult{Staged: int(ids.GetCardinality()), Unmatched: ms.unmatched, PagesReceived: int(s.pages.GetCardinality())}
	if res.PagesReceived == total {
		res.Replace, lsn, err = w.replaceLocked(c, s.members)
		if err != nil {
			w.mu.Unlock()
			return StageResult{}, err
		}
		lsns = append(lsns, lsn)
		// Drop this session and every older open one of the same cohort.
		lsn, err = w.dropSessionsLocked(k, now.UnixNano(), func(o *session) bool {
			return o.key.partner == partnerSlug && o.key.cohort == cohortID && o.seq <= s.seq
		})
		if err != nil {
			w.mu.Unlock()
			return StageResult{}, err
		}
		lsns = append(lsns, lsn)
		res.Committed = true
	}
	w.mu.Unlock()
	return res, w.e.waitDurable(maxOf(lsns))
}

func maxOf(v []uint64) uint64 {
	var m uint64
	for _, x := range v {
		m = max(m, x)
	}
	return m
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
	return s
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

// ExpireSessions drops idle webhook sessions now (the webhook also does it
// on every request).
func (w *Workspace) ExpireSessions() error {
	w.mu.Lock()
	lsn, err := w.expireSessionsLocked(w.e.now().UTC())
	w.mu.Unlock()
	if err != nil {
		return err
	}
	return w.e.waitDurable(lsn)
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
	w.enc.reset()
	w.enc.str(w.id)
	w.enc.uvarint(uint64(len(keys)))
	for _, k := range keys {
		w.enc.str(k.partner)
		w.enc.str(k.cohort)
		w.enc.str(k.id)
	}
	w.enc.str(committed.partner)
	w.enc.str(committed.cohort)
	w.enc.str(committed.id)
	w.enc.varint(at)
	return w.commitLocked(recSessionDrop, func(uint64) { w.applySessionDrop(keys, committed, at) })
}

func (w *Workspace) applySessionDrop(keys []sessionKey, committed sessionKey, at int64) {
	for _, k := range keys {
		delete(w.sessions.m, k)
	}
	if committed.id != "" {
		if w.sessions.done == nil {
			w.sessions.done = make(map[sessionKey]int64)
		}
		w.sessions.done[committed] = at
	}
}

// OpenSessions is the number of open webhook sessions (for tests and
// metrics).
func (w *Workspace) OpenSessions() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.sessions.m)
}

// replaySession re-applies a recSession or recSessionDrop record.
func (w *Workspace) replaySession(typ uint8, d *recordDecoder) error {
	if typ == recSession {
		p, cid, sid := d.str(), d.str(), d.str()
		total, page := int(d.u32()), int(d.u32())
		seq := d.uvarint()
		at := d.varint()
		ids := d.bitmap()
		if err := d.done(); err != nil {
			return err
		}
		if total < 1 || page < 1 || page > total {
			return invalidf("session page %d of %d", page, total)
		}
		w.applyStage(sessionKey{p, cid, sid}, total, page, seq, at, ids)
		return nil
	}
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		return errShortRecord
	}
	keys := make([]sessionKey, 0, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		keys = append(keys, sessionKey{d.str(), d.str(), d.str()})
	}
	committed := sessionKey{d.str(), d.str(), d.str()}
	at := d.varint()
	if err := d.done(); err != nil {
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
	sort.Slice(out, func(i, j int) bool {
		return out[i].at < out[j].at || (out[i].at == out[j].at && out[i].key.id < out[j].key.id)
	})
	return out
}

func writeSessions(sw *snapWriter, ss []sessionCapture, done []doneCapture) {
	sw.uvarint(uint64(len(done)))
	for _, d := range done {
		sw.str(d.key.partner)
		sw.str(d.key.cohort)
		sw.str(d.key.id)
		sw.varint(d.at)
	}
	sw.uvarint(uint64(len(ss)))
	for _, s := range ss {
		sw.str(s.key.partner)
		sw.str(s.key.cohort)
		sw.str(s.key.id)
		sw.uvarint(uint64(s.total))
		sw.uvarint(s.seq)
		sw.varint(s.lastPage)
		sw.bitmap(s.pages)
		sw.bitmap(s.members)
	}
}

func (w *Workspace) readSessions(s *snapReader) {
	nd := s.uvarint()
	for i := uint64(0); i < nd && s.err == nil; i++ {
		k := sessionKey{s.str(), s.str(), s.str()}
		at := s.varint()
		if s.err == nil {
			w.applySessionDrop(nil, k, at)
		}
	}
	n := s.uvarint()
	for i := uint64(0); i < n && s.err == nil; i++ {
		k := sessionKey{s.str(), s.str(), s.str()}
		total := s.uvarint()
		seq := s.uvarint()
		last := s.varint()
		pages := s.bitmap()
		members := s.bitmap()
		if s.err != nil {
			return
		}
		if total < 1 || total > 1<<31 {
			s.fail("session with invalid total_pages")
			return
		}
		w.sessions.put(&session{key: k, total: int(total), pages: pages, members: members, seq: seq, lastPage: last})
	}
}

// stagingBytes is the memory held by open sessions' staged ids and page
// sets (for benchmarks and metrics).
func (w *Workspace) stagingBytes() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n uint64
	for _, s := range w.sessions.m {
		n += s.members.GetSizeInBytes() + s.pages.GetSizeInBytes()
	}
	return float64(n)
}
