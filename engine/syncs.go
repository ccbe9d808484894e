package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// Sync history and health (docs/API.md §8).
//
// Every change batch, snapshot replace and webhook commit is a sync event of
// its cohort. Events merge into syncs: consecutive requests of one source
// less than five minutes apart are one sync, and so is one Mixpanel
// snapshot session (its pages, committed together). Each cohort keeps its
// last maxSyncs syncs in memory, varint-encoded in blocks (the compact form
// below), and health is computed from them when asked: the engine runs no
// timer.
//
// # Durability
//
// A sync event is a recSync record written under the workspace's writer
// lock right after the membership record of the same request, so a
// snapshot holds both or neither. The record carries the event's own
// counts and times; size_after is the cohort's size when the record is
// applied, which replay reproduces exactly. Webhook pages write a small
// recSyncPage record each, so a session's counts survive a restart like its
// staged pages; the commit's recSync carries the session's totals. Apply is
// a function of the records alone: the times are the records' times, never
// the clock at replay.
//
// # Compact form
//
// The newest sync stays decoded (it may still merge with the next event);
// older ones are appended to blocks of syncBlockLen entries, each entry a
// handful of varints relative to the previous sync: start time delta,
// duration, requests<<2|source, the counts, and size_after as the
// difference from what the previous size plus this sync's added minus
// removed predicts (zero unless users were deleted or merged in between).
// A block is trimmed to its length when full; the oldest block is dropped
// once the others hold maxSyncs syncs, so a cohort holds at most
// maxSyncs+syncBlockLen syncs and shows the newest maxSyncs.

// Record types of the sync history (20–29 are reserved for it).
const (
	recSync     uint8 = 20 // a sync event of a cohort: source, times, counts
	recSyncPage uint8 = 21 // the counts of one staged webhook page
)

const (
	// MaxSyncs is the number of syncs kept per cohort.
	MaxSyncs = 1000
	// syncBlockLen is the number of encoded syncs per block. Small blocks
	// keep the decode work of a health check short (at most two blocks).
	syncBlockLen = 16
	// syncMergeGap is the largest gap between consecutive requests of one
	// source inside one sync.
	syncMergeGap = 5 * time.Minute
)

// SyncSource is where a sync came from. The values are stored in the WAL
// and snapshots and never change.
type SyncSource uint8

// Sync sources.
const (
	SourceBulk    SyncSource = 0 // POST /v1/cohorts/…/changes (the zero value)
	SourcePartner SyncSource = 1 // POST /partners/{partner}/cohorts/users
	SourceReplace SyncSource = 2 // PUT /v1/cohorts/…/members
	SourceWebhook SyncSource = 3 // the Mixpanel webhook
	numSources               = 4
)

// String returns the source's name on the wire.
func (s SyncSource) String() string {
	switch s {
	case SourceBulk:
		return "bulk"
	case SourcePartner:
		return "partner"
	case SourceReplace:
		return "replace"
	case SourceWebhook:
		return "webhook"
	}
	return "source(" + strconv.Itoa(int(s)) + ")"
}

// Sync is one sync of a cohort.
type Sync struct {
	StartedAt, EndedAt time.Time  // first and last request (millisecond precision)
	Source             SyncSource // the API that carried it
	Requests           uint64     // requests of the sync
	Matched            uint64     // identifiers matched, as sent
	Added, Removed     uint64     // users whose membership changed
	Unknown            uint64     // unmatched: no user holds the identifier
	DeviceIdentified   uint64     // unmatched: a device id of an identified user
	DroppedBeforeFloor uint64     // identifiers of changes stamped before the retention floor
	SizeAfter          uint64     // the cohort's size after the sync
}

// DataPoints is the effective changes of the sync (docs/API.md §2 rule 7).
func (s *Sync) DataPoints() uint64 { return s.Added + s.Removed }

// Unmatched is the identifiers of the sync that matched nobody.
func (s *Sync) Unmatched() uint64 { return s.Unknown + s.DeviceIdentified }

// unmatchedShare is the unmatched part of the identifiers sent (0 when none
// were sent).
func (s *Sync) unmatchedShare() float64 {
	n := s.Matched + s.Unmatched()
	if n == 0 {
		return 0
	}
	return float64(s.Unmatched()) / float64(n)
}

// syncRec is a sync as kept in memory: times in unix milliseconds.
type syncRec struct {
	start, end int64
	source     SyncSource
	requests   uint64
	matched    uint64
	added      uint64
	removed    uint64
	unknown    uint64
	devIdent   uint64
	dropped    uint64
	sizeAfter  uint64
}

func (r *syncRec) sync() Sync {
	return Sync{
		StartedAt: time.UnixMilli(r.start).UTC(), EndedAt: time.UnixMilli(r.end).UTC(),
		Source: r.source, Requests: r.requests, Matched: r.matched, Added: r.added, Removed: r.removed,
		Unknown: r.unknown, DeviceIdentified: r.devIdent, DroppedBeforeFloor: r.dropped, SizeAfter: r.sizeAfter,
	}
}

// syncBlock holds up to syncBlockLen encoded syncs. baseStart and baseSize
// are the start and size_after of the sync before its first entry, the
// bases of that entry's deltas.
type syncBlock struct {
	b         []byte
	n         int
	baseStart int64
	baseSize  uint64
}

// syncHistory is the sync history of one cohort. The writer changes it
// under Workspace.mu and mu; readers take mu.
type syncHistory struct {
	mu        sync.Mutex
	blocks    []syncBlock // older syncs, oldest first
	closed    int         // syncs in blocks
	tailStart int64       // start and size_after of the last encoded sync
	tailSize  uint64
	open      syncRec // the newest sync, valid when hasOpen
	hasOpen   bool
	openWhole bool // the newest sync is a webhook session: nothing merges into it

	// recent holds what health needs of the last healthWindow encoded
	// syncs (recent[recentN-1] is the newest), so that a health check
	// decodes nothing.
	recent  [healthWindow]recentSync
	recentN int

	// facts caches what health needs from the newest syncs; recomputed
	// after a change on the next health check.
	facts      healthFacts
	factsValid bool
}

// recentSync is what health needs of an older sync.
type recentSync struct {
	start int64
	share float64 // unmatched share
}

func (h *syncHistory) pushRecent(r *syncRec) {
	if h.recentN == healthWindow {
		copy(h.recent[:], h.recent[1:])
		h.recentN--
	}
	s := r.sync()
	h.recent[h.recentN] = recentSync{r.start, s.unmatchedShare()}
	h.recentN++
}

// syncEvent is one request (or a whole webhook session) of a sync.
type syncEvent struct {
	source     SyncSource
	whole      bool // a webhook session: a sync of its own
	start, end time.Time
	requests   uint64
	matched    uint64
	added      uint64
	removed    uint64
	unknown    uint64
	devIdent   uint64
	dropped    uint64
}

// observe adds an event whose cohort has sizeAfter members after it.
// Deterministic: it depends on the event and the history only.
func (h *syncHistory) observe(ev *syncEvent, sizeAfter uint64) {
	start, end := ev.start.UnixMilli(), ev.end.UnixMilli()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.factsValid = false
	if h.hasOpen && !h.openWhole && !ev.whole && h.open.source == ev.source &&
		start-h.open.end < syncMergeGap.Milliseconds() {
		o := &h.open
		o.end = max(o.end, end)
		o.requests += ev.requests
		o.matched += ev.matched
		o.added += ev.added
		o.removed += ev.removed
		o.unknown += ev.unknown
		o.devIdent += ev.devIdent
		o.dropped += ev.dropped
		o.sizeAfter = sizeAfter
		return
	}
	if h.hasOpen {
		h.appendClosed(&h.open)
	}
	h.open = syncRec{start: start, end: end, source: ev.source, requests: ev.requests, matched: ev.matched,
		added: ev.added, removed: ev.removed, unknown: ev.unknown, devIdent: ev.devIdent, dropped: ev.dropped, sizeAfter: sizeAfter}
	h.hasOpen, h.openWhole = true, ev.whole
}

// appendClosed encodes r after the last encoded sync and drops the oldest
// block once the rest hold enough syncs. Under mu.
func (h *syncHistory) appendClosed(r *syncRec) {
	if len(h.blocks) == 0 || h.blocks[len(h.blocks)-1].n == syncBlockLen {
		if len(h.blocks) > 0 {
			last := &h.blocks[len(h.blocks)-1]
			last.b = slices.Clone(last.b) // trim the append slack
		}
		h.blocks = append(h.blocks, syncBlock{b: make([]byte, 0, 16*syncBlockLen), baseStart: h.tailStart, baseSize: h.tailSize})
	}
	blk := &h.blocks[len(h.blocks)-1]
	blk.b = appendSyncRec(blk.b, r, h.tailStart, h.tailSize)
	blk.n++
	h.closed++
	h.tailStart, h.tailSize = r.start, r.sizeAfter
	h.pushRecent(r)
	// The open sync counts toward MaxSyncs.
	if len(h.blocks) > 1 && h.closed-h.blocks[0].n >= MaxSyncs-1 {
		h.closed -= h.blocks[0].n
		h.blocks = slices.Delete(h.blocks, 0, 1)
	}
}

// appendSyncRec encodes r relative to the previous sync (its start and
// size_after).
func appendSyncRec(b []byte, r *syncRec, prevStart int64, prevSize uint64) []byte {
	b = binary.AppendVarint(b, r.start-prevStart)
	b = binary.AppendVarint(b, r.end-r.start)
	b = binary.AppendUvarint(b, r.requests<<2|uint64(r.source))
	b = binary.AppendUvarint(b, r.matched)
	b = binary.AppendUvarint(b, r.added)
	b = binary.AppendUvarint(b, r.removed)
	b = binary.AppendUvarint(b, r.unknown)
	b = binary.AppendUvarint(b, r.devIdent)
	b = binary.AppendUvarint(b, r.dropped)
	predicted := prevSize + r.added - r.removed
	return binary.AppendVarint(b, int64(r.sizeAfter-predicted))
}

var errSyncBlock = errors.New("engine: malformed sync block")

// decodeBlock appends the n syncs of blk to dst. It fails on a malformed
// block (snapshots are read through it, and may be damaged).
func decodeBlock(dst []syncRec, blk *syncBlock) ([]syncRec, error) {
	b := blk.b
	start, size := blk.baseStart, blk.baseSize
	var fields [10]uint64
	for i := 0; i < blk.n; i++ {
		for f := range fields {
			var n int
			if f == 0 || f == 1 || f == 9 {
				var v int64
				v, n = binary.Varint(b)
				fields[f] = uint64(v)
			} else {
				fields[f], n = binary.Uvarint(b)
			}
			if n <= 0 {
				return dst, errSyncBlock
			}
			b = b[n:]
		}
		r := syncRec{
			start: start + int64(fields[0]), source: SyncSource(fields[2] & 3), requests: fields[2] >> 2,
			matched: fields[3], added: fields[4], removed: fields[5], unknown: fields[6], devIdent: fields[7], dropped: fields[8],
		}
		r.end = r.start + int64(fields[1])
		r.sizeAfter = size + r.added - r.removed + fields[9]
		dst = append(dst, r)
		start, size = r.start, r.sizeAfter
	}
	if len(b) != 0 {
		return dst, errSyncBlock
	}
	return dst, nil
}

// newestLocked returns up to limit of the newest syncs, oldest first.
// Under mu.
func (h *syncHistory) newestLocked(limit int) []syncRec {
	total := h.closed
	if h.hasOpen {
		total++
	}
	limit = min(limit, total, MaxSyncs)
	if limit <= 0 {
		return nil
	}
	need := limit
	if h.hasOpen {
		need--
	}
	first := len(h.blocks)
	for got := 0; first > 0 && got < need; {
		first--
		got += h.blocks[first].n
	}
	out := make([]syncRec, 0, limit+syncBlockLen)
	for i := first; i < len(h.blocks); i++ {
		var err error
		if out, err = decodeBlock(out, &h.blocks[i]); err != nil {
			panic("BUG: sync block written by appendClosed does not decode")
		}
	}
	if h.hasOpen {
		out = append(out, h.open)
	}
	return out[len(out)-limit:]
}

// Syncs returns up to limit of the cohort's newest syncs, newest first.
func (c *Cohort) Syncs(limit int) []Sync {
	c.syncs.mu.Lock()
	recs := c.syncs.newestLocked(limit)
	c.syncs.mu.Unlock()
	out := make([]Sync, len(recs))
	for i := range recs {
		out[len(recs)-1-i] = recs[i].sync()
	}
	return out
}

// Sizes of the bookkeeping structs, for syncBytes.
const (
	unsafeSizeofHistory = unsafe.Sizeof(syncHistory{})
	unsafeSizeofBlock   = unsafe.Sizeof(syncBlock{})
)

// syncBytes is the memory held by the history's encoded blocks and its
// bookkeeping (for benchmarks).
func (h *syncHistory) syncBytes() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := int(unsafeSizeofHistory) + cap(h.blocks)*int(unsafeSizeofBlock)
	for _, b := range h.blocks {
		n += cap(b.b)
	}
	return n
}

// ---- health ----

// HealthStatus is a cohort's sync health (docs/API.md §8).
type HealthStatus string

// Health statuses.
const (
	HealthOK            HealthStatus = "ok"
	HealthStale         HealthStatus = "stale"
	HealthUnmatchedHigh HealthStatus = "unmatched_high"
	HealthShrunk        HealthStatus = "shrunk"
	HealthNeverSynced   HealthStatus = "never_synced"
)

// HealthStatuses lists every status, ok first (for metrics).
var HealthStatuses = []HealthStatus{HealthOK, HealthStale, HealthUnmatchedHigh, HealthShrunk, HealthNeverSynced}

// Thresholds of the health rules.
const (
	staleFactor       = 3                // stale: no sync for over 3× the median interval …
	staleFloor        = 45 * time.Minute // … and over 45 minutes
	healthWindow      = 10               // syncs whose intervals (and unmatched shares) are the baseline
	unmatchedHighAt   = 0.20             // unmatched_high: the last sync's share over 20% …
	unmatchedHighRate = 2                // … and over twice the median of the previous syncs
)

// Health is a cohort's sync health at a moment.
type Health struct {
	Status  HealthStatus // ok, or the first failed rule in precedence order
	Reasons []string     // why the status is not ok, one sentence per failed rule
	// LastSyncAt is when the newest sync's last request arrived (zero
	// before the first sync).
	LastSyncAt time.Time
	// ExpectedInterval is the median interval between the starts of the
	// last syncs; HasInterval is false with fewer than two syncs.
	ExpectedInterval time.Duration
	HasInterval      bool // ExpectedInterval is known
}

// healthFacts are what the rules need from the newest syncs; they change
// only when a sync does.
type healthFacts struct {
	any          bool
	lastEnd      int64 // unix ms
	interval     int64 // ms, median interval between starts of the last healthWindow syncs
	hasInterval  bool  // at least two syncs
	lastShare    float64
	medianShare  float64 // of up to healthWindow syncs before the last
	sizeBefore   uint64
	sizeAfter    uint64
	unmatched    uint64
	identifiersN uint64
}

func (h *syncHistory) factsLocked() healthFacts {
	if h.factsValid {
		return h.facts
	}
	var f healthFacts
	if h.hasOpen {
		last := h.open.sync()
		prev := h.recent[:h.recentN]
		f.any, f.lastEnd = true, h.open.end
		// The intervals between the starts of the last healthWindow syncs.
		starts := prev[max(0, len(prev)-(healthWindow-1)):]
		if len(starts) > 0 {
			iv := make([]float64, 0, healthWindow)
			for i := 1; i < len(starts); i++ {
				iv = append(iv, float64(starts[i].start-starts[i-1].start))
			}
			iv = append(iv, float64(h.open.start-starts[len(starts)-1].start))
			f.interval, f.hasInterval = int64(median(iv)), true
		}
		f.lastShare = last.unmatchedShare()
		f.unmatched, f.identifiersN = last.Unmatched(), last.Matched+last.Unmatched()
		shares := make([]float64, 0, healthWindow)
		for _, p := range prev {
			shares = append(shares, p.share)
		}
		f.medianShare = median(shares)
		f.sizeAfter = last.SizeAfter
		if b := last.SizeAfter + last.Removed; b >= last.Added {
			f.sizeBefore = b - last.Added
		}
	}
	h.facts, h.factsValid = f, true
	return f
}

// median returns the median of v (sorted in place), 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	m := len(v) / 2
	if len(v)%2 == 1 {
		return v[m]
	}
	return (v[m-1] + v[m]) / 2
}

// Health returns the cohort's sync health at now. Rules, in the order of
// precedence for Status: never_synced; stale (no sync for over 3× the
// median interval of the last 10 syncs and over 45 minutes); shrunk (the
// last sync more than halved the size); unmatched_high (the last sync's
// unmatched share over 20% and over twice the median share of the 10
// syncs before it).
func (c *Cohort) Health(now time.Time) Health {
	c.syncs.mu.Lock()
	f := c.syncs.factsLocked()
	c.syncs.mu.Unlock()
	return f.health(now)
}

// status is the status of health(now) without the reasons.
func (f *healthFacts) status(now time.Time) HealthStatus {
	switch {
	case !f.any:
		return HealthNeverSynced
	case f.hasInterval && now.UnixMilli()-f.lastEnd > max(staleFactor*f.interval, staleFloor.Milliseconds()):
		return HealthStale
	case f.sizeAfter*2 < f.sizeBefore:
		return HealthShrunk
	case f.lastShare > unmatchedHighAt && f.lastShare > unmatchedHighRate*f.medianShare:
		return HealthUnmatchedHigh
	}
	return HealthOK
}

func (f *healthFacts) health(now time.Time) Health {
	if !f.any {
		return Health{Status: HealthNeverSynced, Reasons: []string{"no sync has arrived yet"}}
	}
	h := Health{Status: HealthOK, LastSyncAt: time.UnixMilli(f.lastEnd).UTC(),
		ExpectedInterval: time.Duration(f.interval) * time.Millisecond, HasInterval: f.hasInterval}
	set := func(s HealthStatus, reason string) {
		if h.Status == HealthOK {
			h.Status = s
		}
		h.Reasons = append(h.Reasons, reason)
	}
	if f.hasInterval {
		since := now.Sub(h.LastSyncAt)
		limit := max(staleFactor*h.ExpectedInterval, staleFloor)
		if since > limit {
			set(HealthStale, fmt.Sprintf("no sync for %s: more than %d× the usual interval of %s and more than %s",
				roundDuration(since), staleFactor, roundDuration(h.ExpectedInterval), staleFloor))
		}
	}
	if f.sizeAfter*2 < f.sizeBefore {
		set(HealthShrunk, fmt.Sprintf("the last sync shrank the cohort by more than half, from %d to %d members", f.sizeBefore, f.sizeAfter))
	}
	if f.lastShare > unmatchedHighAt && f.lastShare > unmatchedHighRate*f.medianShare {
		set(HealthUnmatchedHigh, fmt.Sprintf("%d of %d identifiers of the last sync matched nobody (%.1f%%; the previous syncs' median is %.1f%%)",
			f.unmatched, f.identifiersN, 100*f.lastShare, 100*f.medianShare))
	}
	if h.Reasons == nil {
		h.Reasons = []string{}
	}
	return h
}

// roundDuration rounds d for a sentence: seconds under an hour, minutes above.
func roundDuration(d time.Duration) time.Duration {
	if d >= time.Hour {
		return d.Round(time.Minute)
	}
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

// HealthCounts returns the number of the workspace's cohorts in each status
// at now.
func (w *Workspace) HealthCounts(now time.Time) map[HealthStatus]int {
	out := make(map[HealthStatus]int, len(HealthStatuses))
	w.cohorts.RLock()
	defer w.cohorts.RUnlock()
	for _, c := range w.cohorts.m {
		c.syncs.mu.Lock()
		f := c.syncs.factsLocked()
		c.syncs.mu.Unlock()
		out[f.status(now)]++
	}
	return out
}

// ---- write path ----

// SetSource sets where the batch comes from (the sync source of its
// event); the default is SourceBulk.
func (cs *ChangeSet) SetSource(src SyncSource) { cs.src = src }

// changeEvent is the sync event of an applied change batch.
func changeEvent(src SyncSource, res *ApplyResult, now time.Time) syncEvent {
	return syncEvent{source: src, start: now, end: now, requests: 1,
		matched: uint64(res.Matched), added: uint64(res.Added), removed: uint64(res.Removed),
		unknown: uint64(res.Unknown), devIdent: uint64(res.DeviceIdentified), dropped: uint64(res.DroppedBeforeFloor)}
}

// replaceEvent is the sync event of a snapshot replace of the set staged
// in ms (nil: a bitmap of target members, all matched).
func replaceEvent(ms *MemberSet, target int, res *ReplaceResult, now time.Time) syncEvent {
	ev := syncEvent{source: SourceReplace, start: now, end: now, requests: 1,
		matched: uint64(target), added: uint64(res.Added), removed: uint64(res.Removed)}
	if ms != nil {
		ev.matched, ev.unknown, ev.devIdent = uint64(ms.Matched()), uint64(ms.unmatched-ms.identified), uint64(ms.identified)
	}
	return ev
}

// recordSyncLocked logs a sync event of c and applies it. The caller holds
// w.mu and has applied the event's membership change.
func (w *Workspace) recordSyncLocked(c *Cohort, ev syncEvent) (uint64, error) {
	w.enc.reset()
	encodeSyncEvent(&w.enc, w.id, c.partner, c.id, &ev)
	return w.commitLocked(recSync, func(uint64) { c.syncs.observe(&ev, c.Members().GetCardinality()) })
}

// encodeSyncEvent appends the payload of a recSync record.
func encodeSyncEvent(enc *recordEncoder, ws, partnerSlug, cohortID string, ev *syncEvent) {
	enc.str(ws)
	enc.str(partnerSlug)
	enc.str(cohortID)
	enc.u8(uint8(ev.source))
	var flags uint8
	if ev.whole {
		flags |= 1
	}
	enc.u8(flags)
	enc.time(ev.start)
	enc.time(ev.end)
	for _, v := range [...]uint64{ev.requests, ev.matched, ev.unknown, ev.devIdent, ev.dropped, ev.added, ev.removed} {
		enc.uvarint(v)
	}
}

// stagePageSyncLocked logs and applies the counts of a staged webhook page.
func (w *Workspace) stagePageSyncLocked(k sessionKey, at time.Time, matched, unmatched int) (uint64, error) {
	w.enc.reset()
	w.enc.str(w.id)
	w.enc.str(k.partner)
	w.enc.str(k.cohort)
	w.enc.str(k.id)
	w.enc.time(at)
	w.enc.uvarint(uint64(matched))
	w.enc.uvarint(uint64(unmatched))
	var err error
	lsn, cerr := w.commitLocked(recSyncPage, func(uint64) { err = w.applySyncPage(k, at, uint64(matched), uint64(unmatched)) })
	if cerr != nil {
		return 0, cerr
	}
	if err != nil {
		panic("BUG: " + err.Error())
	}
	return lsn, nil
}

// sessionSync accumulates the counts of a webhook session's pages.
type sessionSync struct {
	first    int64 // unix ms of the first page
	requests uint64
	matched  uint64
	unknown  uint64
}

func (w *Workspace) applySyncPage(k sessionKey, at time.Time, matched, unmatched uint64) error {
	s := w.sessions.get(k)
	if s == nil {
		return fmt.Errorf("sync page of unknown session %s/%s/%s", k.partner, k.cohort, k.id)
	}
	if s.sync.requests == 0 {
		s.sync.first = at.UnixMilli()
	}
	s.sync.requests++
	s.sync.matched += matched
	s.sync.unknown += unmatched
	return nil
}

// commitSessionSyncLocked logs the sync of a committed webhook session: its
// pages' counts and the replace's changes, as one sync.
func (w *Workspace) commitSessionSyncLocked(c *Cohort, s *session, res *ReplaceResult, now time.Time) (uint64, error) {
	ev := syncEvent{source: SourceWebhook, whole: true, start: time.UnixMilli(s.sync.first), end: now,
		requests: s.sync.requests, matched: s.sync.matched, unknown: s.sync.unknown,
		added: uint64(res.Added), removed: uint64(res.Removed)}
	if s.sync.requests == 0 {
		ev.start = now
	}
	return w.recordSyncLocked(c, ev)
}

// replaySync re-applies a recSync or recSyncPage record.
func (w *Workspace) replaySync(typ uint8, d *recordDecoder) error {
	p, cid := d.str(), d.str()
	if typ == recSyncPage {
		sid := d.str()
		at := d.time()
		matched, unmatched := d.uvarint(), d.uvarint()
		if err := d.done(); err != nil {
			return err
		}
		return w.applySyncPage(sessionKey{p, cid, sid}, at, matched, unmatched)
	}
	src, flags := d.u8(), d.u8()
	ev := syncEvent{source: SyncSource(src), whole: flags&1 != 0}
	ev.start, ev.end = d.time(), d.time()
	for _, v := range [...]*uint64{&ev.requests, &ev.matched, &ev.unknown, &ev.devIdent, &ev.dropped, &ev.added, &ev.removed} {
		*v = d.uvarint()
	}
	if err := d.done(); err != nil {
		return err
	}
	if src >= numSources || flags > 1 || ev.requests >= 1<<62 {
		return fmt.Errorf("sync event with source %d, flags %d, %d requests", src, flags, ev.requests)
	}
	c := w.Cohort(p, cid)
	if c == nil {
		return fmt.Errorf("sync of unknown cohort %s/%s", p, cid)
	}
	c.syncs.observe(&ev, c.Members().GetCardinality())
	return nil
}

// ---- snapshots ----

// syncCapture is a cohort's history copied for a snapshot. Blocks share
// their bytes with the live history: appends never change bytes already
// written, and a full block is replaced by a copy, never changed.
type syncCapture struct {
	partner, id string
	blocks      []syncBlock
	tailStart   int64
	tailSize    uint64
	open        syncRec
	hasOpen     bool
	openWhole   bool
}

// sessionSyncCapture is a webhook session's accumulated page counts.
type sessionSyncCapture struct {
	key sessionKey
	s   sessionSync
}

// captureSyncsLocked copies every history (cohorts sorted) and the open
// sessions' page counts. The caller holds w.mu.
func (w *Workspace) captureSyncsLocked(cohorts []*Cohort) ([]syncCapture, []sessionSyncCapture) {
	var out []syncCapture
	for _, c := range cohorts {
		h := &c.syncs
		h.mu.Lock()
		if h.hasOpen {
			out = append(out, syncCapture{partner: c.partner, id: c.id, blocks: slices.Clone(h.blocks),
				tailStart: h.tailStart, tailSize: h.tailSize, open: h.open, hasOpen: true, openWhole: h.openWhole})
		}
		h.mu.Unlock()
	}
	var ss []sessionSyncCapture
	for k, s := range w.sessions.m {
		if s.sync.requests > 0 {
			ss = append(ss, sessionSyncCapture{k, s.sync})
		}
	}
	sort.Slice(ss, func(i, j int) bool { return w.sessions.m[ss[i].key].seq < w.sessions.m[ss[j].key].seq })
	return out, ss
}

// writeSyncHistory writes the sync section of a workspace: the histories,
// then the page counts of open webhook sessions.
func writeSyncHistory(sw *snapWriter, hs []syncCapture, ss []sessionSyncCapture) {
	sw.uvarint(uint64(len(hs)))
	for i := range hs {
		h := &hs[i]
		sw.str(h.partner)
		sw.str(h.id)
		sw.uvarint(uint64(len(h.blocks)))
		for _, b := range h.blocks {
			sw.uvarint(uint64(b.n))
			sw.varint(b.baseStart)
			sw.uvarint(b.baseSize)
			sw.uvarint(uint64(len(b.b)))
			sw.write(b.b)
		}
		sw.varint(h.tailStart)
		sw.uvarint(h.tailSize)
		var flags uint64
		if h.openWhole {
			flags = 1
		}
		sw.uvarint(flags)
		sw.write(appendSyncRec(nil, &h.open, 0, 0))
	}
	sw.uvarint(uint64(len(ss)))
	for _, s := range ss {
		sw.str(s.key.partner)
		sw.str(s.key.cohort)
		sw.str(s.key.id)
		sw.varint(s.s.first)
		sw.uvarint(s.s.requests)
		sw.uvarint(s.s.matched)
		sw.uvarint(s.s.unknown)
	}
}

// readSyncHistory reads the section written by writeSyncHistory. Every
// block is decoded once to refuse a damaged one. With check (an offline
// check of the file, which loads no cohorts) nothing is kept.
func (w *Workspace) readSyncHistory(s *snapReader, check bool) {
	n := s.uvarint()
	for i := uint64(0); i < n && s.err == nil; i++ {
		p, cid := s.str(), s.str()
		nb := s.uvarint()
		if nb > MaxSyncs {
			s.fail(fmt.Sprintf("sync history of %s/%s has %d blocks", p, cid, nb))
			return
		}
		var h syncHistory
		var scratch []syncRec
		for j := uint64(0); j < nb && s.err == nil; j++ {
			bn := s.uvarint()
			blk := syncBlock{baseStart: s.varint(), baseSize: s.uvarint()}
			raw := s.bytes()
			if s.err != nil {
				return
			}
			if bn == 0 || bn > syncBlockLen {
				s.fail(fmt.Sprintf("sync block of %d entries", bn))
				return
			}
			blk.n, blk.b = int(bn), slices.Clone(raw)
			var err error
			if scratch, err = decodeBlock(scratch[:0], &blk); err != nil {
				s.fail(fmt.Sprintf("sync history of %s/%s: %v", p, cid, err))
				return
			}
			h.blocks = append(h.blocks, blk)
			h.closed += blk.n
			for k := range scratch {
				h.pushRecent(&scratch[k])
			}
		}
		h.tailStart, h.tailSize = s.varint(), s.uvarint()
		flags := s.uvarint()
		open, err := readSyncRec(s)
		if s.err != nil {
			return
		}
		if err != nil || flags > 1 {
			s.fail(fmt.Sprintf("sync history of %s/%s: malformed newest sync", p, cid))
			return
		}
		h.open, h.hasOpen, h.openWhole = open, true, flags == 1
		if check {
			continue
		}
		c := w.Cohort(p, cid)
		if c == nil {
			s.fail(fmt.Sprintf("sync history of unknown cohort %s/%s", p, cid))
			return
		}
		c.syncs.blocks, c.syncs.closed = h.blocks, h.closed
		c.syncs.tailStart, c.syncs.tailSize = h.tailStart, h.tailSize
		c.syncs.open, c.syncs.hasOpen, c.syncs.openWhole = h.open, h.hasOpen, h.openWhole
		c.syncs.recent, c.syncs.recentN = h.recent, h.recentN
		c.syncs.factsValid = false
	}
	ns := s.uvarint()
	for i := uint64(0); i < ns && s.err == nil; i++ {
		k := sessionKey{s.str(), s.str(), s.str()}
		acc := sessionSync{first: s.varint(), requests: s.uvarint(), matched: s.uvarint(), unknown: s.uvarint()}
		if s.err != nil {
			return
		}
		if sess := w.sessions.get(k); sess != nil && !check {
			sess.sync = acc
		}
	}
}

// readSyncRec reads one sync encoded against zero bases.
func readSyncRec(s *snapReader) (syncRec, error) {
	var buf [10 * binary.MaxVarintLen64]byte
	b := buf[:0]
	for f := 0; f < 10 && s.err == nil; f++ {
		start := len(b)
		for {
			c, err := s.ReadByte()
			if err != nil {
				s.fail("truncated sync")
				return syncRec{}, err
			}
			b = append(b, c)
			if c < 0x80 || len(b)-start == binary.MaxVarintLen64 {
				break
			}
		}
	}
	recs, err := decodeBlock(nil, &syncBlock{b: b, n: 1})
	if err != nil {
		return syncRec{}, err
	}
	return recs[0], nil
}
