package engine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// clock is an injectable engine clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncFixture opens an engine on the clock with users user-0…user-(n-1).
func syncFixture(t testing.TB, opts Options, clk *clock, n int) (*Engine, *Workspace) {
	t.Helper()
	opts.Now = clk.now
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	var b UserBatch
	for i := 0; i < n; i++ {
		b.Add(fmt.Appendf(nil, "user-%d", i), nil, nil)
	}
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
	return e, w
}

func keys(prefix string, lo, hi int) [][]byte {
	var out [][]byte
	for i := lo; i < hi; i++ {
		out = append(out, fmt.Appendf(nil, "%s%d", prefix, i))
	}
	return out
}

// batch applies one change batch of src: adds users lo…hi-1 plus unknown
// identifiers.
func batch(t testing.TB, w *Workspace, src SyncSource, cohort string, lo, hi, unknown int, remove bool) ApplyResult {
	t.Helper()
	cs := w.NewChangeSet()
	cs.SetSource(src)
	cs.AddMany(index.KindExternal, keys("user-", lo, hi), remove)
	cs.AddMany(index.KindExternal, keys("ghost-", 0, unknown), remove)
	res, err := w.ApplyChanges("p", cohort, cs)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func replace(t testing.TB, w *Workspace, cohort string, lo, hi, unknown int) ReplaceResult {
	t.Helper()
	ms := w.NewMemberSet()
	ms.AddMany(index.KindExternal, keys("user-", lo, hi))
	ms.AddMany(index.KindExternal, keys("ghost-", 0, unknown))
	res, err := w.ReplaceMembers("p", cohort, ms)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func stage(t testing.TB, w *Workspace, cohort, session string, page, total, lo, hi, unknown int) StageResult {
	t.Helper()
	ms := w.NewMemberSet()
	ms.AddMany(index.KindExternal, keys("user-", lo, hi))
	ms.AddMany(index.KindExternal, keys("ghost-", 0, unknown))
	res, err := w.StagePage("p", cohort, "", session, page, total, ms)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// brief renders the fields of syncs that the tests compare.
func brief(ss []Sync) string {
	var b strings.Builder
	for _, s := range ss {
		fmt.Fprintf(&b, "[%s req=%d m=%d +%d -%d unk=%d dev=%d drop=%d size=%d %s..%s] ", s.Source, s.Requests, s.Matched, s.Added, s.Removed,
			s.Unknown, s.DeviceIdentified, s.DroppedBeforeFloor, s.SizeAfter, s.StartedAt.Format("15:04:05"), s.EndedAt.Format("15:04:05"))
	}
	return b.String()
}

func TestSyncEventsMerge(t *testing.T) {
	clk := newClock()
	_, w := syncFixture(t, Options{}, clk, 100)
	// Three partner requests a minute apart: one sync.
	batch(t, w, SourcePartner, "c", 0, 10, 2, false)
	clk.advance(time.Minute)
	batch(t, w, SourcePartner, "c", 10, 20, 0, false)
	clk.advance(time.Minute)
	batch(t, w, SourcePartner, "c", 5, 8, 1, true)
	// Six minutes later: a new sync of the same source.
	clk.advance(6 * time.Minute)
	batch(t, w, SourcePartner, "c", 20, 30, 0, false)
	// A bulk request right after: another source, another sync.
	clk.advance(10 * time.Second)
	batch(t, w, SourceBulk, "c", 30, 31, 0, false)
	// A no-op batch is still a request of the open sync.
	clk.advance(10 * time.Second)
	batch(t, w, SourceBulk, "c", 30, 31, 0, false)
	// A replace.
	clk.advance(time.Second)
	replace(t, w, "c", 0, 10, 3)
	c := w.Cohort("p", "c")
	got := brief(c.Syncs(100))
	want := "[replace req=1 m=10 +3 -21 unk=3 dev=0 drop=0 size=10 09:08:21..09:08:21] " +
		"[bulk req=2 m=2 +1 -0 unk=0 dev=0 drop=0 size=28 09:08:10..09:08:20] " +
		"[partner req=1 m=10 +10 -0 unk=0 dev=0 drop=0 size=27 09:08:00..09:08:00] " +
		"[partner req=3 m=23 +20 -3 unk=3 dev=0 drop=0 size=17 09:00:00..09:02:00] "
	if got != want {
		t.Fatalf("syncs:\n got %s\nwant %s", got, want)
	}
	if s := c.Syncs(1); len(s) != 1 || s[0].Source != SourceReplace {
		t.Fatalf("limit 1: %s", brief(s))
	}
	if s := c.Syncs(2)[1]; s.DataPoints() != 1 || s.Unmatched() != 0 {
		t.Fatalf("data points / unmatched of the bulk sync: %d %d", s.DataPoints(), s.Unmatched())
	}
}

func TestSyncWebhookSessionIsOneSync(t *testing.T) {
	clk := newClock()
	_, w := syncFixture(t, Options{}, clk, 100)
	// add_members requests merge like partner requests.
	batch(t, w, SourceWebhook, "c", 0, 5, 0, false)
	clk.advance(time.Minute)
	// A session of three pages, ten minutes from first to last page (over
	// the merge gap: the session, not the gap, makes the sync), one page
	// sent twice.
	stage(t, w, "c", "s1", 2, 3, 10, 20, 1)
	clk.advance(5 * time.Minute)
	stage(t, w, "c", "s1", 1, 3, 0, 10, 0)
	stage(t, w, "c", "s1", 1, 3, 0, 10, 0)
	clk.advance(5 * time.Minute)
	if r := stage(t, w, "c", "s1", 3, 3, 20, 30, 4); !r.Committed {
		t.Fatal("session did not commit")
	}
	// A repeated page after the commit is not a request of any sync.
	stage(t, w, "c", "s1", 3, 3, 20, 30, 4)
	// add_members a minute later does not merge into the session.
	clk.advance(time.Minute)
	batch(t, w, SourceWebhook, "c", 40, 41, 0, false)
	got := brief(w.Cohort("p", "c").Syncs(10))
	want := "[webhook req=1 m=1 +1 -0 unk=0 dev=0 drop=0 size=31 09:12:00..09:12:00] " +
		"[webhook req=4 m=40 +25 -0 unk=5 dev=0 drop=0 size=30 09:01:00..09:11:00] " +
		"[webhook req=1 m=5 +5 -0 unk=0 dev=0 drop=0 size=5 09:00:00..09:00:00] "
	if got != want {
		t.Fatalf("syncs:\n got %s\nwant %s", got, want)
	}
}

// TestSyncHistoryModel runs random syncs (sources, gaps, sessions, user
// deletes between syncs) against a naive list of syncs and compares the
// kept history and its bound.
func TestSyncHistoryModel(t *testing.T) {
	clk := newClock()
	_, w := syncFixture(t, Options{}, clk, 400)
	r := rand.New(rand.NewPCG(3, 4))
	var model []Sync
	openWhole := false
	observe := func(ev Sync, whole bool) {
		ev.SizeAfter = w.Cohort("p", "c").Members().GetCardinality()
		if n := len(model); n > 0 && !openWhole && !whole && model[n-1].Source == ev.Source && ev.StartedAt.Sub(model[n-1].EndedAt) < syncMergeGap {
			o := &model[n-1]
			if ev.EndedAt.After(o.EndedAt) {
				o.EndedAt = ev.EndedAt
			}
			o.Requests += ev.Requests
			o.Matched += ev.Matched
			o.Added += ev.Added
			o.Removed += ev.Removed
			o.Unknown += ev.Unknown
			o.SizeAfter = ev.SizeAfter
			return
		}
		model = append(model, ev)
		openWhole = whole
	}
	for i := 0; i < 3000; i++ {
		gaps := []time.Duration{time.Second, 4 * time.Minute, 6 * time.Minute, time.Hour, 25 * time.Hour}
		clk.advance(gaps[r.IntN(len(gaps))] + time.Duration(r.IntN(1000))*time.Millisecond)
		now := clk.now().Truncate(time.Millisecond)
		switch op := r.IntN(10); {
		case op < 6:
			src := SyncSource(r.IntN(2)) // bulk or partner
			lo := r.IntN(300)
			res := batch(t, w, src, "c", lo, lo+r.IntN(50), r.IntN(5), r.IntN(3) == 0)
			observe(Sync{StartedAt: now, EndedAt: now, Source: src, Requests: 1, Matched: uint64(res.Matched),
				Added: uint64(res.Added), Removed: uint64(res.Removed), Unknown: uint64(res.Unknown)}, false)
		case op < 8:
			lo, n, unk := r.IntN(300), r.IntN(100), r.IntN(5)
			res := replace(t, w, "c", lo, lo+n, unk)
			observe(Sync{StartedAt: now, EndedAt: now, Source: SourceReplace, Requests: 1,
				Matched: uint64(n), Added: uint64(res.Added), Removed: uint64(res.Removed), Unknown: uint64(unk)}, false)
		case op < 9:
			sid := fmt.Sprintf("s%d", i)
			lo := r.IntN(300)
			stage(t, w, "c", sid, 1, 2, lo, lo+10, 1)
			clk.advance(time.Minute)
			end := clk.now().Truncate(time.Millisecond)
			res := stage(t, w, "c", sid, 2, 2, lo+10, lo+20, 0)
			observe(Sync{StartedAt: now, EndedAt: end, Source: SourceWebhook, Requests: 2, Matched: 20,
				Added: uint64(res.Replace.Added), Removed: uint64(res.Replace.Removed), Unknown: 1}, true)
		default:
			// Users come and go between syncs: size_after is not the
			// previous size plus added minus removed.
			id := r.IntN(300)
			if _, err := w.DeleteUsers(IdentifierSet{ExternalIDs: [][]byte{fmt.Appendf(nil, "user-%d", id)}}); err != nil {
				t.Fatal(err)
			}
			var b UserBatch
			b.Add(fmt.Appendf(nil, "user-%d", id), nil, nil)
			if _, err := w.UpsertUsers(&b); err != nil {
				t.Fatal(err)
			}
		}
		if i%7 == 0 {
			checkFacts(t, w.Cohort("p", "c"), clk.now().Add(time.Duration(r.IntN(100))*time.Hour))
		}
	}
	c := w.Cohort("p", "c")
	checkFacts(t, c, clk.now())
	got := c.Syncs(5000)
	if len(model) <= MaxSyncs {
		t.Fatalf("only %d syncs: the test does not reach the bound", len(model))
	}
	if len(got) != MaxSyncs {
		t.Fatalf("kept %d syncs, want %d", len(got), MaxSyncs)
	}
	for i := range got {
		want := model[len(model)-1-i]
		if !reflect.DeepEqual(got[i], want) {
			t.Fatalf("sync %d (newest first):\n got %+v\nwant %+v", i, got[i], want)
		}
	}
	if n := c.syncs.closed; n > MaxSyncs+syncBlockLen {
		t.Fatalf("%d encoded syncs held, bound is %d", n, MaxSyncs+syncBlockLen)
	}
}

func TestHealth(t *testing.T) {
	clk := newClock()
	_, w := syncFixture(t, Options{}, clk, 1000)
	c := func(id string) *Cohort { return w.Cohort("p", id) }
	if err := w.UpsertCohort("p", "never", "Never", clk.now()); err != nil {
		t.Fatal(err)
	}
	// Hourly partner syncs of 100 users each, 1% unknown.
	for _, id := range []string{"ok", "stale", "shrunk", "unmatched", "first"} {
		n := 10
		if id == "first" {
			n = 1
		}
		for i := 0; i < n; i++ {
			batch(t, w, SourcePartner, id, 0, 100+i, 1, false)
			clk.advance(time.Hour)
		}
	}
	now := clk.now()
	check := func(id string, at time.Time, want HealthStatus, reason string) {
		t.Helper()
		h := c(id).Health(at)
		if h.Status != want {
			t.Errorf("%s: status %s (%q), want %s", id, h.Status, h.Reasons, want)
		}
		if got := strings.Join(h.Reasons, "; "); !strings.Contains(got, reason) {
			t.Errorf("%s: reasons %q, want one containing %q", id, got, reason)
		}
	}
	check("never", now, HealthNeverSynced, "no sync has arrived yet")
	if h := c("never").Health(now); !h.LastSyncAt.IsZero() || h.HasInterval {
		t.Errorf("never synced: %+v", h)
	}
	// The "ok" cohort's last sync was 41 h ago (syncs of the other
	// cohorts followed): stale at once, ok right after its last sync.
	okLast := c("ok").Syncs(1)[0].EndedAt
	check("ok", okLast.Add(time.Minute), HealthOK, "")
	if h := c("ok").Health(okLast); h.ExpectedInterval != time.Hour || !h.HasInterval || !h.LastSyncAt.Equal(okLast) {
		t.Errorf("ok: %+v, want interval 1h, last sync %s", h, okLast)
	}
	check("ok", okLast.Add(3*time.Hour), HealthOK, "")
	check("ok", okLast.Add(3*time.Hour+time.Minute), HealthStale, "no sync for 3h1m0s")
	// A cohort synced every 10 minutes is not stale before 45 minutes.
	for i := 0; i < 5; i++ {
		batch(t, w, SourceReplace, "fast", 0, 50, 0, false)
		clk.advance(10 * time.Minute)
	}
	fastLast := c("fast").Syncs(1)[0].EndedAt
	check("fast", fastLast.Add(44*time.Minute), HealthOK, "")
	check("fast", fastLast.Add(46*time.Minute), HealthStale, "more than 45m0s")
	// One sync: no interval yet, never stale.
	check("first", now.Add(1000*time.Hour), HealthOK, "")
	// Shrunk: a replace keeps 40 of 109.
	replace(t, w, "shrunk", 0, 40, 0)
	check("shrunk", clk.now(), HealthShrunk, "from 109 to 40 members")
	// Unmatched high: 30 unknown of 130 (23%), the previous median is 1%.
	batch(t, w, SourceBulk, "unmatched", 0, 100, 30, false)
	check("unmatched", clk.now(), HealthUnmatchedHigh, "30 of 130 identifiers")
	// Both and stale: status by precedence, every reason listed.
	batch(t, w, SourceReplace, "shrunk", 0, 10, 40, true)
	h := c("shrunk").Health(clk.now().Add(1000 * time.Hour))
	if h.Status != HealthStale || len(h.Reasons) != 3 {
		t.Errorf("stale+shrunk+unmatched: %+v", h)
	}
	// A first sync mostly unmatched is unmatched_high (the median of no
	// previous syncs is 0).
	batch(t, w, SourcePartner, "bad", 0, 10, 10, false)
	check("bad", clk.now(), HealthUnmatchedHigh, "10 of 20")
	counts := w.HealthCounts(clk.now())
	want := map[HealthStatus]int{HealthOK: 2, HealthStale: 2, HealthNeverSynced: 1, HealthShrunk: 1, HealthUnmatchedHigh: 2}
	if !reflect.DeepEqual(counts, want) {
		t.Errorf("HealthCounts = %v, want %v", counts, want)
	}
}

// TestSyncHistoryDurable: the history, and the page counts of a webhook
// session still open, survive a crash (WAL replay) and a clean restart
// (snapshot), and replay uses the records' times, not the clock.
func TestSyncHistoryDurable(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	opts := Options{Dir: dir, Sync: wal.SyncOff, Logger: quietLogger()}
	e, w := syncFixture(t, opts, clk, 100)
	for i := 0; i < 40; i++ {
		batch(t, w, SyncSource(i%2), "c", i, i+20, i%3, i%5 == 0)
		clk.advance(time.Duration(i) * time.Minute)
	}
	replace(t, w, "c", 0, 5, 1)
	stage(t, w, "c", "s", 1, 2, 0, 50, 3) // open session across restarts
	before := dumpState(e)
	syncsBefore := brief(w.Cohort("p", "c").Syncs(MaxSyncs))
	crash(e)

	clk.advance(10 * time.Minute) // replay must not see this (the session TTL is 1h)
	e, err := Open(Options{Dir: dir, Sync: wal.SyncOff, Now: clk.now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if after := dumpState(e); after != before {
		t.Fatalf("after WAL replay: %s", firstDiff(before, after))
	}
	if err := e.Close(); err != nil { // snapshot
		t.Fatal(err)
	}
	e, err = Open(Options{Dir: dir, Sync: wal.SyncOff, Now: clk.now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if after := dumpState(e); after != before {
		t.Fatalf("after snapshot: %s", firstDiff(before, after))
	}
	w = e.Workspace("ws")
	if got := brief(w.Cohort("p", "c").Syncs(MaxSyncs)); got != syncsBefore {
		t.Fatalf("syncs after restarts:\n got %s\nwant %s", got, syncsBefore)
	}
	// The session commits after two restarts with the counts of both pages.
	clk.advance(time.Minute)
	if r := stage(t, w, "c", "s", 2, 2, 50, 60, 2); !r.Committed {
		t.Fatal("session did not commit")
	}
	s := w.Cohort("p", "c").Syncs(1)[0]
	if s.Source != SourceWebhook || s.Requests != 2 || s.Matched != 60 || s.Unknown != 5 || s.SizeAfter != 60 {
		t.Fatalf("session sync after restarts: %+v", s)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotVersion1StillRead: a snapshot of the format before the sync
// history (version 1) loads, with empty histories that then grow.
func TestSnapshotVersion1StillRead(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	opts := Options{Dir: dir, Sync: wal.SyncOff, Logger: quietLogger(), Now: clk.now}
	e, w := syncFixture(t, opts, clk, 10)
	if err := w.UpsertCohort("p", "c", "C", clk.now()); err != nil {
		t.Fatal(err)
	}
	bm := roaring.New()
	bm.AddRange(0, 5)
	w.Cohort("p", "c").members.Reset(bm)
	snapshotV1(t, e)
	crash(e)

	e2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	w2 := e2.Workspace("ws")
	c := w2.Cohort("p", "c")
	if c.Members().GetCardinality() != 5 || len(c.Syncs(10)) != 0 || c.Health(clk.now()).Status != HealthNeverSynced {
		t.Fatalf("after loading version 1: %d members, %d syncs, health %v", c.Members().GetCardinality(), len(c.Syncs(10)), c.Health(clk.now()))
	}
	cs := w2.NewChangeSet()
	cs.AddMany(index.KindExternal, [][]byte{extID(1)}, true)
	if _, err := w2.ApplyChanges("p", "c", cs); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Syncs(10)); n != 1 {
		t.Fatalf("history after a change: %d syncs", n)
	}
}

// FuzzReplaySyncRecord feeds arbitrary payloads of the sync record types
// to replay: errors are fine, panics are not, and an accepted record leaves
// a history that lists and rates.
func FuzzReplaySyncRecord(f *testing.F) {
	var enc codec.Encoder
	enc.Str("ws")
	enc.Str("p")
	enc.Str("c")
	enc.U8(uint8(SourcePartner))
	enc.U8(0)
	enc.Time(time.Unix(1_800_000_000, 5))
	enc.Time(time.Unix(1_800_000_060, 0))
	for i := 0; i < 7; i++ {
		enc.Uvarint(uint64(i + 1))
	}
	f.Add(recSync, bytes.Clone(enc.Bytes()))
	enc.Reset()
	enc.Str("ws")
	enc.Str("p")
	enc.Str("c")
	enc.Str("s")
	enc.Time(time.Unix(1_800_000_000, 0))
	enc.Uvarint(3)
	enc.Uvarint(1)
	f.Add(recSyncPage, bytes.Clone(enc.Bytes()))
	f.Fuzz(func(t *testing.T, typ uint8, payload []byte) {
		clk := newClock()
		e, w := syncFixture(t, Options{}, clk, 3)
		stage(t, w, "c", "s", 1, 2, 0, 2, 0)
		if typ != recSync && typ != recSyncPage {
			typ = recSync
		}
		if err := e.replayRecord(typ, 1<<40, payload); err != nil {
			return
		}
		c := w.Cohort("p", "c")
		c.Syncs(MaxSyncs)
		c.Health(clk.now())
	})
}

// FuzzSyncBlock: decodeBlock refuses or decodes any bytes without
// panicking, and random syncs survive encode + decode.
func FuzzSyncBlock(f *testing.F) {
	f.Add([]byte{0x02, 0x00, 0x05, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00}, uint64(7), int64(-3))
	f.Fuzz(func(t *testing.T, raw []byte, seed uint64, base int64) {
		_, _ = decodeBlock(nil, &syncBlock{b: raw, n: 1 + int(seed%syncBlockLen), baseStart: base, baseSize: seed})
		r := rand.New(rand.NewPCG(seed, uint64(base)))
		var recs []syncRec
		var b []byte
		prevStart, prevSize := base, seed
		for i := 0; i < syncBlockLen; i++ {
			rec := syncRec{start: prevStart + r.Int64N(1e9) - 1e6, source: SyncSource(r.IntN(numSources)), requests: r.Uint64() >> 3,
				matched: r.Uint64(), added: r.Uint64N(1 << 32), removed: r.Uint64N(1 << 32), unknown: r.Uint64(), devIdent: r.Uint64(), dropped: r.Uint64(), sizeAfter: r.Uint64N(1 << 33)}
			rec.end = rec.start + r.Int64N(1e7)
			b = appendSyncRec(b, &rec, prevStart, prevSize)
			recs = append(recs, rec)
			prevStart, prevSize = rec.start, rec.sizeAfter
		}
		got, err := decodeBlock(nil, &syncBlock{b: b, n: len(recs), baseStart: base, baseSize: seed})
		if err != nil || !reflect.DeepEqual(got, recs) {
			t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, got, recs)
		}
	})
}

// checkFacts compares the cached health facts (kept from recent) with
// facts computed from the decoded syncs, and status with Health.
func checkFacts(t *testing.T, c *Cohort, now time.Time) {
	t.Helper()
	ss := c.Syncs(healthWindow + 1) // newest first
	var want healthFacts
	if n := len(ss); n > 0 {
		last := ss[0]
		want.any, want.lastEnd = true, last.EndedAt.UnixMilli()
		var iv []float64
		for i := 0; i+1 < min(n, healthWindow); i++ {
			iv = append(iv, float64(ss[i].StartedAt.UnixMilli()-ss[i+1].StartedAt.UnixMilli()))
		}
		want.interval, want.hasInterval = int64(median(iv)), len(iv) > 0
		var shares []float64
		for _, s := range ss[1:] {
			shares = append(shares, s.unmatchedShare())
		}
		want.medianShare = median(shares)
		want.lastShare = last.unmatchedShare()
		want.unmatched, want.identifiersN = last.Unmatched(), last.Matched+last.Unmatched()
		want.sizeAfter, want.sizeBefore = last.SizeAfter, last.SizeAfter+last.Removed-last.Added
	}
	c.syncs.mu.Lock()
	c.syncs.factsValid = false
	got := c.syncs.factsLocked()
	c.syncs.mu.Unlock()
	if got != want {
		t.Fatalf("health facts:\n got %+v\nwant %+v", got, want)
	}
	if s, h := got.status(now), c.Health(now); s != h.Status {
		t.Fatalf("status %s, Health %+v", s, h)
	}
}

// TestSyncHistoryConcurrentReaders: histories are read (Syncs, Health,
// HealthCounts, snapshots) while writers append to them; run with -race.
func TestSyncHistoryConcurrentReaders(t *testing.T) {
	clk := newClock()
	e, w := syncFixture(t, Options{Dir: t.TempDir(), Sync: wal.SyncOff, Logger: quietLogger()}, clk, 100)
	defer e.Close()
	var writers, readers sync.WaitGroup
	errs := make(chan error, 3)
	for g := 0; g < 2; g++ {
		writers.Add(1)
		go func(g int) {
			defer writers.Done()
			for i := 0; i < 300; i++ {
				clk.advance(time.Duration(i%7) * time.Minute)
				cs := w.NewChangeSet()
				cs.SetSource(SyncSource(i % 3))
				cs.AddMany(index.KindExternal, keys("user-", i%100, i%100+5), i%4 == 0)
				if _, err := w.ApplyChanges("p", fmt.Sprintf("c%d", g), cs); err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	stop := make(chan struct{})
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, c := range w.Cohorts() {
				c.Syncs(MaxSyncs)
				c.Health(clk.now())
			}
			w.HealthCounts(clk.now())
			if err := e.Snapshot(); err != nil {
				errs <- err
				return
			}
		}
	}()
	writers.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, id := range []string{"c0", "c1"} {
		if n := len(w.Cohort("p", id).Syncs(MaxSyncs)); n < 50 {
			t.Errorf("%s: %d syncs", id, n)
		}
	}
}
