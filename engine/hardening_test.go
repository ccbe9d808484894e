package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// pingPong is a user batch that moves one long alias back and forth
// between two users n times: each record costs a detach and an attach of
// the alias, so the operations far outweigh the body.
func pingPong(n, aliasLen int) *UserBatch {
	alias := index.AliasKey(nil, bytes.Repeat([]byte("n"), aliasLen), []byte("l"))
	var b UserBatch
	for i := range n {
		b.Add([]byte(fmt.Sprintf("pp-%d", i%2)), nil, [][]byte{alias})
	}
	return &b
}

// TestUserOpsSplitIntoRecords: the operations of one large upsert are
// logged as several records of bounded size (the log refuses records over
// wal.MaxRecordSize, and a refused record after the index was changed left
// the data dir unopenable), and replay rebuilds exactly the same state.
func TestUserOpsSplitIntoRecords(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	before := e.wal.LastLSN()
	b := pingPong(12_000, 500) // ~12 MiB of operations
	res, err := w.UpsertUsers(b)
	if err != nil {
		t.Fatal(err)
	}
	if res.Created != 2 || res.Updated != 11_998 {
		t.Fatalf("upsert: %+v", res)
	}
	if n := e.wal.LastLSN() - before; n < 3 {
		t.Fatalf("12 MiB of user operations in %d record(s); want records of at most %d bytes", n, userRecordSplit)
	}
	if w.enc.Cap() > maxScratch {
		t.Fatalf("the record encoder keeps %d bytes after the request", w.enc.Cap())
	}
	want := dumpState(e)
	crash(e)
	e2, err := Open(opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer e2.Close()
	if got := dumpState(e2); got != want {
		t.Fatalf("replay differs:\n%s", firstDiff(want, got))
	}
	alias := index.AliasKey(nil, bytes.Repeat([]byte("n"), 500), []byte("l"))
	if id := e2.Workspace("ws").Resolve(index.KindAlias, alias); e2.Workspace("ws").UserInfo(id).ExternalID != "pp-1" {
		t.Fatalf("alias held by %+v, want pp-1", e2.Workspace("ws").UserInfo(id))
	}
	if err := e2.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestUpsertRefusesBadKeysBeforeChanging: a key the index cannot store is
// refused as invalid before anything changes (it used to panic inside the
// writer section, leaving the workspace locked for good).
func TestUpsertRefusesBadKeysBeforeChanging(t *testing.T) {
	e, _ := Open(Options{})
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	var b UserBatch
	b.Add([]byte("fine"), nil, nil)
	b.Add(bytes.Repeat([]byte("x"), index.MaxKeyLen+1), nil, nil)
	_, err := w.UpsertUsers(&b)
	var inv *InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("want InvalidError, got %v", err)
	}
	if w.users.NextID() != 0 {
		t.Fatalf("a refused batch created %d users", w.users.NextID())
	}
	upsertStillRuns(t, w, "later", "the workspace stayed locked after a refused batch")
}

// upsertStillRuns fails the test when an upsert of one user does not
// complete within 10 s: the writer lock stayed held.
func upsertStillRuns(t *testing.T, w *Workspace, ext, msg string) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		var b UserBatch
		b.Add([]byte(ext), nil, nil)
		_, err := w.UpsertUsers(&b)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal(msg)
	}
}

// TestCloseDuringUserUpsert: an upsert racing Close is either applied and
// logged whole (and answered), or refused with ErrClosed having changed
// nothing — never applied in memory and answered as failed.
func TestCloseDuringUserUpsert(t *testing.T) {
	for i := range 8 {
		dir := t.TempDir()
		opts := Options{Dir: dir, Sync: wal.SyncOff}
		e, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.CreateWorkspace("ws"); err != nil {
			t.Fatal(err)
		}
		w := e.Workspace("ws")
		var b UserBatch
		for j := range 20_000 {
			b.Add([]byte(fmt.Sprintf("u%d", j)), nil, nil)
		}
		errc := make(chan error, 1)
		go func() {
			_, err := w.UpsertUsers(&b)
			errc <- err
		}()
		time.Sleep(time.Duration(i) * time.Millisecond)
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		uerr := <-errc
		e2, err := Open(opts)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		n := e2.Workspace("ws").users.Len()
		switch {
		case uerr == nil && n != 20_000:
			t.Fatalf("acknowledged upsert: %d users after restart", n)
		case errors.Is(uerr, ErrClosed) && n != 0:
			t.Fatalf("refused upsert left %d users", n)
		case uerr != nil && !errors.Is(uerr, ErrClosed):
			t.Fatal(uerr)
		}
		e2.Close()
	}
}

// TestNoopRepliesWaitForDurability: a write that changes nothing still
// waits until the records of the state it observed are durable, so that
// it never acknowledges state a crash could still lose. The state comes
// from a record another writer appended and has not waited for yet.
func TestNoopRepliesWaitForDurability(t *testing.T) {
	cases := []struct {
		name string
		noop func(w *Workspace) error
	}{
		{"cohort upsert fast path", func(w *Workspace) error { return w.UpsertCohort("p", "c", "renamed", time.Now()) }},
		{"changes without effect", func(w *Workspace) error {
			cs := w.NewChangeSet()
			cs.AddMany(index.KindExternal, [][]byte{[]byte("u1")}, false)
			_, err := w.ApplyChanges("p", "c", cs)
			return err
		}},
		{"unchanged replace", func(w *Workspace) error {
			ms := w.NewMemberSet()
			ms.AddMany(index.KindExternal, [][]byte{[]byte("u1")})
			_, err := w.ReplaceMembers("p", "c", ms)
			return err
		}},
		{"unchanged user upsert", func(w *Workspace) error {
			var b UserBatch
			b.Add([]byte("u1"), nil, nil)
			_, err := w.UpsertUsers(&b)
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Open(Options{Dir: t.TempDir(), Sync: wal.SyncOff})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if _, err := e.CreateWorkspace("ws"); err != nil {
				t.Fatal(err)
			}
			w := e.Workspace("ws")
			var b UserBatch
			b.Add([]byte("u1"), nil, nil)
			if _, err := w.UpsertUsers(&b); err != nil {
				t.Fatal(err)
			}
			cs := w.NewChangeSet()
			cs.AddMany(index.KindExternal, [][]byte{[]byte("u1")}, false)
			if _, err := w.ApplyChanges("p", "c", cs); err != nil {
				t.Fatal(err)
			}
			// Another writer's rename: appended and applied, not yet
			// written out (it would wait for that after the lock).
			w.mu.Lock()
			if _, err := w.upsertCohortLocked("p", "c", "renamed", time.Now()); err != nil {
				t.Fatal(err)
			}
			w.mu.Unlock()
			pending := e.wal.LastLSN()
			writes := e.wal.Stats().Writes
			if err := tc.noop(w); err != nil {
				t.Fatal(err)
			}
			if e.wal.Stats().Writes == writes {
				t.Fatalf("the no-op returned before record %d (which it observed) was written", pending)
			}
		})
	}
}

// TestIdempotencyStores: replies are kept per workspace, bounded per
// workspace (one tenant cannot evict another's), expire after the TTL by
// the records' own times, and survive a crash.
func TestIdempotencyStores(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	opts := Options{Dir: dir, Sync: wal.SyncOff, Now: clock}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := e.CreateWorkspace(id); err != nil {
			t.Fatal(err)
		}
	}
	a, b := e.Workspace("a"), e.Workspace("b")
	reply := func(i int) IdempotentReply {
		return IdempotentReply{Sum: [32]byte{byte(i)}, Status: 201, ContentType: "application/json", Body: []byte(fmt.Sprintf(`{"n":%d}`, i))}
	}
	if err := b.RememberReply("b-key", reply(7)); err != nil {
		t.Fatal(err)
	}
	if err := e.RememberReply("admin-key", reply(8)); err != nil {
		t.Fatal(err)
	}
	for i := range MaxIdempotencyEntries + 50 {
		if err := a.RememberReply(fmt.Sprintf("a-%d", i), reply(i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.IdempotencyEntries(); n != MaxIdempotencyEntries {
		t.Fatalf("workspace a keeps %d replies, want the cap %d", n, MaxIdempotencyEntries)
	}
	if _, ok := a.IdempotentReply("a-0"); ok {
		t.Fatal("the oldest reply of a was not evicted")
	}
	if r, ok := b.IdempotentReply("b-key"); !ok || string(r.Body) != `{"n":7}` {
		t.Fatal("workspace a's replies evicted workspace b's")
	}
	if _, ok := a.IdempotentReply("b-key"); ok {
		t.Fatal("a key of workspace b is visible in workspace a")
	}

	// A crash keeps them.
	crash(e)
	e, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	a, b = e.Workspace("a"), e.Workspace("b")
	if r, ok := b.IdempotentReply("b-key"); !ok || r.Status != 201 || r.Sum != reply(7).Sum {
		t.Fatalf("after a crash: %+v %v", r, ok)
	}
	if r, ok := e.IdempotentReply("admin-key"); !ok || string(r.Body) != `{"n":8}` {
		t.Fatalf("admin scope after a crash: %+v %v", r, ok)
	}
	if n := a.IdempotencyEntries(); n != MaxIdempotencyEntries {
		t.Fatalf("after a crash workspace a keeps %d replies", n)
	}

	// A snapshot keeps them too (the WAL below it is retired later).
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	a, b = e.Workspace("a"), e.Workspace("b")
	if r, ok := b.IdempotentReply("b-key"); !ok || r.Sum != reply(7).Sum || string(r.Body) != `{"n":7}` {
		t.Fatalf("after a snapshot: %+v %v", r, ok)
	}
	if _, ok := e.IdempotentReply("admin-key"); !ok {
		t.Fatal("admin scope lost by the snapshot")
	}
	if n := a.IdempotencyEntries(); n != MaxIdempotencyEntries {
		t.Fatalf("after a snapshot workspace a keeps %d replies", n)
	}

	// Past the TTL a reply is gone, and the next record drops it.
	mu.Lock()
	now = now.Add(25 * time.Hour)
	mu.Unlock()
	if _, ok := b.IdempotentReply("b-key"); ok {
		t.Fatal("a reply older than the TTL is still served")
	}
	if err := b.RememberReply("b-new", reply(9)); err != nil {
		t.Fatal(err)
	}
	if n := b.IdempotencyEntries(); n != 1 {
		t.Fatalf("expired replies kept: %d entries", n)
	}
	e.Close()
}

// TestWebhookSessionLimits: open sessions are bounded per cohort (the
// oldest goes) and per workspace (the one idle longest goes), and expire
// without traffic through RunSnapshots.
func TestWebhookSessionLimits(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(time.Microsecond); return now }
	e, _ := Open(Options{Now: clock, WebhookSessionTTL: 100 * time.Millisecond})
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	stage := func(cohort, session string) {
		t.Helper()
		if _, err := w.StagePage("mixpanel", cohort, "", session, 1, 2, w.NewMemberSet()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		stage("c", fmt.Sprint("s", i))
	}
	if n := w.OpenSessions(); n != maxSessionsPerCohort {
		t.Fatalf("one cohort holds %d open sessions, want %d", n, maxSessionsPerCohort)
	}
	w.mu.Lock()
	_, oldestKept := w.sessions.m[sessionKey{"mixpanel", "c", "s2"}]
	_, oldestGone := w.sessions.m[sessionKey{"mixpanel", "c", "s0"}]
	w.mu.Unlock()
	if !oldestKept || oldestGone {
		t.Fatal("the per-cohort limit did not drop the oldest sessions")
	}
	for i := range 150 {
		stage(fmt.Sprint("k", i), "s")
	}
	if n := w.OpenSessions(); n != maxSessionsPerWorkspace {
		t.Fatalf("the workspace holds %d open sessions, want %d", n, maxSessionsPerWorkspace)
	}
	if got := e.Stats.SessionsEvicted.Load(); got != 2+(maxSessionsPerCohort+150-maxSessionsPerWorkspace) {
		t.Fatalf("evictions counted: %d", got)
	}

	// No more traffic: the snapshot loop expires them.
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.RunSnapshots(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for w.OpenSessions() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open without traffic", w.OpenSessions())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCohortTimesKeepFarDates: created_at outside 1678–2262 (what a
// UnixNano holds) reads back as sent after replay.
func TestCohortTimesKeepFarDates(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	far := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	early := time.Date(1, 1, 1, 0, 0, 0, 123, time.UTC)
	for id, at := range map[string]time.Time{"far": far, "early": early} {
		if err := e.Workspace("ws").UpsertCohort("p", id, id, at); err != nil {
			t.Fatal(err)
		}
	}
	crash(e)
	for _, how := range []string{"replay", "snapshot"} {
		e2, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		for id, at := range map[string]time.Time{"far": far, "early": early} {
			if got := e2.Workspace("ws").Cohort("p", id).Info().CreatedAt; !got.Equal(at) {
				t.Errorf("cohort %s: created_at %v after %s, sent %v", id, got, how, at)
			}
		}
		if err := e2.Close(); err != nil { // the next round loads its snapshot
			t.Fatal(err)
		}
	}
}

// TestRestoreFromSnapshotAlone: a data dir holding only a snapshot (the
// backup procedure) numbers new records after every record the snapshot
// covers. Each scope of a snapshot is captured at its own position, and a
// workspace written while the snapshot ran covers records past the
// snapshot's name; new records numbered from the name were taken for
// records inside the snapshot on the next replay, and lost.
func TestRestoreFromSnapshotAlone(t *testing.T) {
	src := t.TempDir()
	e, err := Open(Options{Dir: src, Sync: wal.SyncOff})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := e.CreateWorkspace(id); err != nil {
			t.Fatal(err)
		}
	}
	a, b := e.Workspace("a"), e.Workspace("b")
	// Hold workspace a so that the snapshot captures the engine scope,
	// then waits for a while b takes writes.
	a.mu.Lock()
	done := make(chan error, 1)
	go func() { done <- e.Snapshot() }()
	time.Sleep(100 * time.Millisecond)
	for i := range 5 {
		if err := b.UpsertCohort("p", fmt.Sprint("during-", i), "x", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	a.mu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	snaps, _ := listSnapshots(src)
	probe, _ := Open(Options{})
	if err := probe.loadSnapshot(filepath.Join(src, snaps[0].name)); err != nil {
		t.Fatal(err)
	}
	if probe.Workspace("b").lsn <= snaps[0].lsn {
		t.Fatalf("setup: workspace b covers %d, not past the snapshot's name %d", probe.Workspace("b").lsn, snaps[0].lsn)
	}
	e.Close()

	// Restore: the snapshot alone in an empty data dir.
	dst := t.TempDir()
	raw, err := os.ReadFile(filepath.Join(src, snaps[0].name))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, snaps[0].name), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	opts := Options{Dir: dst, Sync: wal.SyncOff}
	e2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Workspace("b").UpsertCohort("p", "after-restore", "x", time.Now()); err != nil {
		t.Fatal(err)
	}
	crash(e2)
	e3, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e3.Close()
	if e3.Workspace("b").Cohort("p", "after-restore") == nil {
		t.Fatal("a write acknowledged after restoring from a snapshot alone was lost on the next restart")
	}
}

// TestUpsertBeyondCapacityChangesNothing: a batch that would not fit in
// the workspace's key arena is refused with ErrCapacity before anything
// changes (an attach failing half-way through used to panic with the
// writer lock held), and the workspace takes the next write.
func TestUpsertBeyondCapacityChangesNothing(t *testing.T) {
	e, _ := Open(Options{})
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	w.users.Close()
	w.users = index.NewUsers(index.Options{MaxArenaBytes: 64 << 10})
	var big UserBatch
	for i := range 200 {
		big.Add([]byte(fmt.Sprintf("u%03d-%s", i, strings.Repeat("x", 500))), nil, nil)
	}
	if _, err := w.UpsertUsers(&big); !errors.Is(err, ErrCapacity) {
		t.Fatalf("want ErrCapacity, got %v", err)
	}
	if w.users.NextID() != 0 {
		t.Fatalf("a refused batch created %d users", w.users.NextID())
	}
	var small UserBatch
	small.Add([]byte("fits"), nil, nil)
	if _, err := w.UpsertUsers(&small); err != nil {
		t.Fatal(err)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestScrapesTakeNoWriterLock: what /metrics and the memory report read
// (counts, staged bytes, health) is read without the workspace's writer
// lock, so a scrape never waits behind a long import.
func TestScrapesTakeNoWriterLock(t *testing.T) {
	e, _ := Open(Options{})
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	var b UserBatch
	b.Add([]byte("u1"), nil, nil)
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
	ms := w.NewMemberSet()
	ms.AddMany(index.KindExternal, [][]byte{[]byte("u1")})
	if _, err := w.StagePage("mixpanel", "c", "", "s", 1, 2, ms); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock() // a writer in the middle of a long batch
	done := make(chan []WorkspaceMemory, 1)
	go func() {
		_ = w.CohortCount()
		_ = w.OpenSessions()
		_ = w.HealthCounts(time.Now())
		done <- e.Memory()
	}()
	select {
	case mem := <-done:
		w.mu.Unlock()
		if len(mem) != 1 || mem[0].Staging <= 0 {
			t.Fatalf("memory report %+v: staging bytes missing", mem)
		}
	case <-time.After(5 * time.Second):
		w.mu.Unlock()
		t.Fatal("a scrape waited for the workspace's writer lock")
	}
	// The staged bytes go when the session commits.
	ms = w.NewMemberSet()
	ms.AddMany(index.KindExternal, [][]byte{[]byte("u1")})
	if _, err := w.StagePage("mixpanel", "c", "", "s", 2, 2, ms); err != nil {
		t.Fatal(err)
	}
	if got := w.stagingBytes(); got != 0 {
		t.Fatalf("staged bytes after the commit: %v", got)
	}
}

// TestWriterSectionReleasesLockOnPanic: a panic inside a writer section
// (a bug, recovered by the server's handler) must not leave the
// workspace's lock held: writes and snapshots would hang for good.
func TestWriterSectionReleasesLockOnPanic(t *testing.T) {
	e, _ := Open(Options{})
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	func() {
		defer func() { _ = recover() }()
		_ = w.write(func() error { panic("injected") })
	}()
	upsertStillRuns(t, w, "after-panic", "the writer lock stayed held after a panic in a writer section")
}

// TestHugeRecordDoesNotPinScratch: the workspace's record encoder grows
// to the largest record written; after a huge user upsert it is dropped,
// so one request does not pin its record's memory for the workspace's life.
func TestHugeRecordDoesNotPinScratch(t *testing.T) {
	e, _ := Open(Options{})
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	if _, err := w.UpsertUsers(pingPong(4000, 512)); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	c := w.enc.Cap()
	w.mu.Unlock()
	if c > maxScratch {
		t.Fatalf("record encoder keeps %d bytes after the request (cap %d)", c, maxScratch)
	}
}
