package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// syncShape is a kind of sync stream, for the memory figures of the
// history.
type syncShape struct {
	name     string
	every    time.Duration // between syncs
	requests int           // requests per sync (merged)
	size     int           // cohort size
	churn    float64       // share of the cohort added and removed per sync
	unknown  float64       // share of identifiers matching nobody
	source   SyncSource
}

var syncShapes = []syncShape{
	// A partner exporter: hourly, 1,000 ids a request, 1M members, 1% churn.
	{"partner_hourly_1M", time.Hour, 1000, 1_000_000, 0.01, 0.01, SourcePartner},
	// Mixpanel snapshot sessions: daily, 20 pages, 50k members.
	{"webhook_daily_50k", 24 * time.Hour, 20, 50_000, 0.05, 0.02, SourceWebhook},
	// A bulk loader: every 10 minutes, one request, 2k members.
	{"bulk_10min_2k", 10 * time.Minute, 1, 2_000, 0.1, 0, SourceBulk},
}

// fillHistory feeds n syncs of shape s into h, jittered by r.
func fillHistory(h *syncHistory, s syncShape, n int, r *rand.Rand) {
	t := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	size := uint64(s.size)
	for i := 0; i < n; i++ {
		start := t.Add(time.Duration(r.Int64N(int64(time.Minute))))
		end := start.Add(time.Duration(s.requests) * time.Duration(200+r.IntN(100)) * time.Millisecond)
		moved := uint64(float64(s.size) * s.churn * (0.5 + r.Float64()))
		added, removed := moved, moved-moved/10
		size = size + added - removed
		sent := size + removed
		ev := syncEvent{source: s.source, whole: s.source == SourceWebhook, start: start, end: end, requests: uint64(s.requests),
			matched: sent, added: added, removed: removed, unknown: uint64(float64(sent) * s.unknown * r.Float64() * 2)}
		h.observe(&ev, size)
		t = t.Add(s.every)
	}
}

// BenchmarkSyncHistoryBytes reports the memory of a cohort's full history
// (MaxSyncs syncs) per sync and per cohort, for a few sync shapes. The
// loop measures observe (one sync event, the encoding included).
func BenchmarkSyncHistoryBytes(b *testing.B) {
	for _, s := range syncShapes {
		b.Run(s.name, func(b *testing.B) {
			b.ReportAllocs()
			r := rand.New(rand.NewPCG(1, 2))
			var full syncHistory
			fillHistory(&full, s, 3*MaxSyncs, r)
			kept := len(full.newestLocked(MaxSyncs))
			bytes := full.syncBytes()
			var h syncHistory
			ev := syncEvent{source: s.source, whole: true, requests: uint64(s.requests), matched: uint64(s.size), added: 100, removed: 90}
			t := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			for b.Loop() {
				t = t.Add(s.every)
				ev.start, ev.end = t, t.Add(time.Minute)
				h.observe(&ev, uint64(s.size))
			}
			// Reported after the loop: b.Loop's first call resets the timer,
			// which deletes metrics reported before it.
			b.ReportMetric(float64(bytes)/float64(kept), "B/sync")
			b.ReportMetric(float64(bytes), "B/cohort")
		})
	}
}

// TestSyncHistoryBytes logs the figures of BenchmarkSyncHistoryBytes (go
// test -v -run TestSyncHistoryBytes ./engine) and checks the bound: a full
// history must stay far below the fixed-size form (10 uint64 fields and two
// times, 96 bytes a sync).
func TestSyncHistoryBytes(t *testing.T) {
	for _, s := range syncShapes {
		var h syncHistory
		fillHistory(&h, s, 3*MaxSyncs, rand.New(rand.NewPCG(1, 2)))
		kept := len(h.newestLocked(MaxSyncs))
		if kept != MaxSyncs {
			t.Fatalf("%s: %d syncs kept", s.name, kept)
		}
		n := h.syncBytes()
		t.Logf("%-20s %5.1f B/sync  %6d B/cohort (%d syncs)", s.name, float64(n)/float64(kept), n, kept)
		if per := float64(n) / float64(kept); per > 40 {
			t.Errorf("%s: %.1f bytes a sync", s.name, per)
		}
	}
	// The WAL cost of one sync event: a partner request of 1,000
	// identifiers to cohort amplitude/power_users of workspace acme (the
	// record framing adds 17 bytes).
	var enc recordEncoder
	ev := syncEvent{source: SourcePartner, start: time.Now(), end: time.Now(), requests: 1, matched: 990, unknown: 10, added: 500, removed: 490}
	encodeSyncEvent(&enc, "acme", "amplitude", "power_users", &ev)
	t.Logf("WAL: %d payload bytes a sync event (+17 framing)", len(enc.b))
}

// BenchmarkHealthCounts is the cost of the /metrics health gauges: every
// cohort of a workspace rated (histories of MaxSyncs syncs). fresh: every
// history changed since the last scrape (facts recomputed); cached: none did.
func BenchmarkHealthCounts(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		w := syntheticWorkspace(10)
		r := rand.New(rand.NewPCG(3, 4))
		for i := 0; i < n; i++ {
			c := w.applyCohortUpsert("p", fmt.Sprintf("c%05d", i), "c", time.Time{}, time.Time{})
			fillHistory(&c.syncs, syncShapes[i%len(syncShapes)], MaxSyncs, r)
		}
		now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
		for _, mode := range []string{"fresh", "cached"} {
			b.Run(fmt.Sprintf("cohorts_%d/%s", n, mode), func(b *testing.B) {
				b.ReportAllocs()
				cohorts := w.Cohorts()
				for b.Loop() {
					if mode == "fresh" {
						for _, c := range cohorts {
							c.syncs.factsValid = false
						}
					}
					w.HealthCounts(now)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/cohort")
			})
		}
	}
}
