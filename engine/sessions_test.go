package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// sessionFixture has 1,000 users ext0…ext999.
func sessionFixture(t *testing.T, opts Options) (*Engine, *Workspace) {
	t.Helper()
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if e.Workspace("ws") == nil {
		e.CreateWorkspace("ws")
		var b UserBatch
		for i := 0; i < 1000; i++ {
			b.Add(fmt.Appendf(nil, "ext%d", i), nil, nil)
		}
		if _, err := e.Workspace("ws").UpsertUsers(&b); err != nil {
			t.Fatal(err)
		}
	}
	return e, e.Workspace("ws")
}

// page stages users [from, to) as page p of total.
func page(t *testing.T, w *Workspace, sid string, p, total, from, to int) StageResult {
	t.Helper()
	ms := w.NewMemberSet()
	var keys [][]byte
	for i := from; i < to; i++ {
		keys = append(keys, fmt.Appendf(nil, "ext%d", i))
	}
	keys = append(keys, []byte("nobody"))
	ms.AddMany(index.KindExternal, keys)
	res, err := w.StagePage("mixpanel", "42", "", sid, p, total, ms)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func size(w *Workspace) uint64 {
	c := w.Cohort("mixpanel", "42")
	if c == nil {
		return 0
	}
	return c.Members().GetCardinality()
}

func TestSessionOutOfOrderWithDuplicates(t *testing.T) {
	e, w := sessionFixture(t, Options{})
	// Old membership: users 900…999.
	page(t, w, "old", 1, 1, 900, 1000)
	if size(w) != 100 {
		t.Fatalf("old membership %d", size(w))
	}
	perm := rand.New(rand.NewPCG(1, 1)).Perm(10)
	// Out of order, with two duplicates before the last page.
	order := append(append(append([]int{}, perm[:5]...), perm[1], perm[3]), perm[5:]...)
	seen := map[int]bool{}
	for i, p := range order {
		res := page(t, w, "s1", p+1, 10, p*50, p*50+50)
		seen[p] = true
		if res.Unmatched != 1 || res.Staged != 50 || res.PagesReceived != len(seen) {
			t.Fatalf("page %d: %+v", p+1, res)
		}
		done := i == len(order)-1
		if res.Committed != done {
			t.Fatalf("after %d pages committed=%v", i+1, res.Committed)
		}
		if !done && size(w) != 100 {
			t.Fatalf("readers see staged pages before the session completes: %d", size(w))
		}
		if done && (res.Replace.Added != 500 || res.Replace.Removed != 100 || res.Replace.DataPoints != 600) {
			t.Fatalf("commit %+v", res.Replace)
		}
	}
	// A page re-sent after the commit (its reply was lost) changes nothing.
	if res := page(t, w, "s1", 3, 10, 0, 1000); !res.Repeat || res.Committed {
		t.Fatalf("repeat after commit: %+v", res)
	}
	if size(w) != 500 {
		t.Fatalf("after commit %d members, want 500", size(w))
	}
	if w.OpenSessions() != 0 {
		t.Fatalf("%d sessions left open", w.OpenSessions())
	}
	// total_pages must agree within a session.
	page(t, w, "s2", 1, 3, 0, 10)
	ms := w.NewMemberSet()
	if _, err := w.StagePage("mixpanel", "42", "", "s2", 2, 4, ms); err == nil {
		t.Fatal("total_pages change accepted")
	}
	for _, bad := range [][2]int{{0, 3}, {4, 3}, {1, 0}} {
		if _, err := w.StagePage("mixpanel", "42", "", "s3", bad[0], bad[1], ms); err == nil {
			t.Fatalf("page %d of %d accepted", bad[0], bad[1])
		}
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestSessionSurvivesCrash(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncAlways}
	e1, w := sessionFixture(t, opts)
	page(t, w, "old", 1, 1, 0, 10)
	for p := 1; p <= 6; p++ {
		page(t, w, "s", p, 10, 100*p, 100*p+10)
	}
	// Crash: reopen without closing.
	crash(e1)
	e2, w2 := sessionFixture(t, opts)
	if size(w2) != 10 || w2.OpenSessions() != 1 {
		t.Fatalf("after crash: size %d, sessions %d", size(w2), w2.OpenSessions())
	}
	if err := e2.Snapshot(); err != nil { // the session must also survive a snapshot
		t.Fatal(err)
	}
	crash(e2)
	e3, w3 := sessionFixture(t, opts)
	for p := 7; p <= 10; p++ {
		if p < 10 && size(w3) != 10 {
			t.Fatalf("old membership not visible before completion")
		}
		page(t, w3, "s", p, 10, 100*(p%10), 100*(p%10)+10)
	}
	if size(w3) != 100 {
		t.Fatalf("after completion %d members, want 100", size(w3))
	}
	if err := e3.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestSessionExpiresAndOlderSessionsDrop(t *testing.T) {
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	_, w := sessionFixture(t, Options{Now: clock, WebhookSessionTTL: time.Hour})
	page(t, w, "old", 1, 1, 0, 5)
	page(t, w, "exp", 1, 2, 10, 20)
	now = now.Add(61 * time.Minute)
	if err := w.ExpireSessions(); err != nil {
		t.Fatal(err)
	}
	if w.OpenSessions() != 0 || size(w) != 5 {
		t.Fatalf("expired session: open %d, size %d", w.OpenSessions(), size(w))
	}
	// A later page of the expired session starts a new one: not complete.
	if res := page(t, w, "exp", 2, 2, 20, 30); res.Committed || res.PagesReceived != 1 {
		t.Fatalf("late page: %+v", res)
	}
	// An older open session is dropped when a newer one commits.
	page(t, w, "a", 1, 2, 40, 50)
	page(t, w, "b", 1, 1, 60, 70)
	if w.OpenSessions() != 0 {
		t.Fatalf("older sessions not dropped: %d open", w.OpenSessions())
	}
	if res := page(t, w, "a", 2, 2, 50, 60); res.Committed {
		t.Fatal("a page of a dropped older session committed stale data")
	}
	if size(w) != 10 {
		t.Fatalf("size %d, want the newer session's 10", size(w))
	}
}
