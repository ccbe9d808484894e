package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine/wal"
)

// stepClock is a clock that advances a second per reading, so that every
// created_at differs and a value taken from the wall clock at replay would
// show.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second + 7*time.Nanosecond)
	return c.t
}

func newStepClock() *stepClock {
	return &stepClock{t: time.Date(2031, 3, 4, 5, 6, 7, 8, time.UTC)}
}

func addUsers(t testing.TB, w *Workspace, ids ...string) {
	t.Helper()
	var b UserBatch
	for _, id := range ids {
		b.Add([]byte(id), nil, nil)
	}
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
}

func TestWorkspaceAdmin(t *testing.T) {
	clock := newStepClock()
	e, err := Open(Options{Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.CreateWorkspace("acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateWorkspace("empty"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreatePartner("p"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("acme")
	addUsers(t, w, "u1", "u2")
	_, secret, err := w.CreateImportKey("p")
	if err != nil {
		t.Fatal(err)
	}
	list := e.ListWorkspaces()
	if len(list) != 2 || list[0].ID != "acme" || list[0].Users != 2 || list[0].Cohorts != 0 || list[1].ID != "empty" {
		t.Fatalf("ListWorkspaces = %+v", list)
	}
	if list[0].CreatedAt.IsZero() || !list[0].CreatedAt.Before(list[1].CreatedAt) {
		t.Fatalf("created_at not from the clock: %+v", list)
	}

	// Rotation: the old key fails at once, the new one works.
	key2, err := e.RotateWorkspaceKey("acme")
	if err != nil {
		t.Fatal(err)
	}
	if e.WorkspaceByAPIKey([]byte(key)) != nil || e.WorkspaceByAPIKey([]byte(key2)) != w {
		t.Fatal("rotation did not swap the keys")
	}
	if _, err := e.RotateWorkspaceKey("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rotate unknown: %v", err)
	}

	// A non-empty workspace needs force.
	var ne *NotEmptyError
	if err := e.DeleteWorkspace("acme", false); !errors.As(err, &ne) || ne.Users != 2 {
		t.Fatalf("delete non-empty: %v", err)
	}
	if err := e.DeleteWorkspace("empty", false); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteWorkspace("empty", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := e.DeleteWorkspace("acme", true); err != nil {
		t.Fatal(err)
	}
	if e.Workspace("acme") != nil || e.WorkspaceByAPIKey([]byte(key2)) != nil || len(e.ListWorkspaces()) != 0 {
		t.Fatal("deleted workspace still reachable")
	}
	if _, err := e.AuthPartner("p", []byte("x"), []byte(secret)); err == nil {
		t.Fatal("deleted workspace's import key still works")
	}
	if _, err := e.AuthImportKey("p", []byte(secret)); !errors.Is(err, ErrBadClientSecret) {
		t.Fatalf("import key of a deleted workspace: %v", err)
	}
	// A request that authenticated before the deletion changes nothing.
	if _, err := w.UpsertUsers(&UserBatch{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("write to a detached workspace: %v", err)
	}
	if err := w.UpsertCohort("p", "c", "renamed", e.now()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cohort upsert on a detached workspace: %v", err)
	}
	// The id can be used again, for a fresh workspace.
	if _, err := e.CreateWorkspace("acme"); err != nil {
		t.Fatal(err)
	}
	if n := e.Workspace("acme").UserCount(); n != 0 {
		t.Fatalf("re-created workspace has %d users", n)
	}
}

func TestPartnerAdmin(t *testing.T) {
	e, err := Open(Options{Now: newStepClock().now})
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := e.CreatePartner("p")
	if _, err := e.CreatePartner("q"); err != nil {
		t.Fatal(err)
	}
	e.CreateWorkspace("a")
	e.CreateWorkspace("b")
	wa, wb := e.Workspace("a"), e.Workspace("b")
	addUsers(t, wa, "u1")
	_, sa, _ := wa.CreateImportKey("p")
	_, sb, _ := wb.CreateImportKey("p")
	_, sq, _ := wb.CreateImportKey("q")
	cs := wa.NewChangeSet()
	cs.AddMany(1, [][]byte{[]byte("u1")}, false)
	if _, err := wa.ApplyChanges("p", "c1", cs); err != nil {
		t.Fatal(err)
	}
	ps := e.ListPartners()
	if len(ps) != 2 || ps[0].Slug != "p" || ps[1].Slug != "q" || !ps[0].CreatedAt.Before(ps[1].CreatedAt) {
		t.Fatalf("ListPartners = %+v", ps)
	}

	pk2, err := e.RotatePartnerKey("p")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AuthPartner("p", []byte(pk), []byte(sa)); !errors.Is(err, ErrBadPartnerKey) {
		t.Fatalf("old partner key: %v", err)
	}
	if w, err := e.AuthPartner("p", []byte(pk2), []byte(sa)); err != nil || w != wa {
		t.Fatalf("new partner key: %v", err)
	}

	if err := e.DeletePartner("p"); err != nil {
		t.Fatal(err)
	}
	if err := e.DeletePartner("p"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := e.AuthPartner("p", []byte(pk2), []byte(sa)); !errors.Is(err, ErrBadPartnerKey) {
		t.Fatalf("deleted partner: %v", err)
	}
	for _, s := range []string{sa, sb} {
		if _, err := e.AuthImportKey("p", []byte(s)); !errors.Is(err, ErrBadClientSecret) {
			t.Fatalf("import key of a deleted partner (webhook path): %v", err)
		}
	}
	if _, err := e.AuthImportKey("q", []byte(sq)); err != nil {
		t.Fatalf("another partner's key: %v", err)
	}
	if wa.Cohort("p", "c1") == nil {
		t.Fatal("the deleted partner's cohort is gone")
	}
	if _, _, err := wa.CreateImportKey("p"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("import key for a deleted partner: %v", err)
	}
	// Registered again: the old keys stay revoked, new ones work.
	pk3, _ := e.CreatePartner("p")
	if _, err := e.AuthPartner("p", []byte(pk3), []byte(sa)); !errors.Is(err, ErrBadClientSecret) {
		t.Fatalf("old import key after re-registering: %v", err)
	}
	_, sa2, err := wa.CreateImportKey("p")
	if err != nil {
		t.Fatal(err)
	}
	if w, err := e.AuthPartner("p", []byte(pk3), []byte(sa2)); err != nil || w != wa {
		t.Fatalf("new import key: %v", err)
	}
}

// adminState renders what the admin endpoints and key checks observe.
func adminState(e *Engine, secrets map[string]string) string {
	var b strings.Builder
	for _, w := range e.ListWorkspaces() {
		fmt.Fprintf(&b, "ws %s created=%s users=%d cohorts=%d\n", w.ID, w.CreatedAt.Format(time.RFC3339Nano), w.Users, w.Cohorts)
	}
	for _, p := range e.ListPartners() {
		fmt.Fprintf(&b, "partner %s created=%s\n", p.Slug, p.CreatedAt.Format(time.RFC3339Nano))
	}
	names := make([]string, 0, len(secrets))
	for n := range secrets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := secrets[n]
		kind, slug, _ := strings.Cut(n, ":")
		slug, _, _ = strings.Cut(slug, "#")
		var ok bool
		switch kind {
		case "ws":
			w := e.WorkspaceByAPIKey([]byte(s))
			ok = w != nil
			if ok {
				fmt.Fprintf(&b, "%s -> %s\n", n, w.ID())
			}
		case "partner":
			_, err := e.AuthPartner(slug, []byte(s), nil)
			ok = errors.Is(err, ErrBadClientSecret) // the partner key passed
		case "import":
			p, _, _ := strings.Cut(slug, "/")
			w, err := e.AuthImportKey(p, []byte(s))
			ok = err == nil
			if ok {
				fmt.Fprintf(&b, "%s -> %s\n", n, w.ID())
			}
		}
		fmt.Fprintf(&b, "%s valid=%v\n", n, ok)
	}
	return b.String()
}

// TestAdminRecovery replays every admin record from the WAL alone, from a
// snapshot alone, and from snapshots taken between the steps, and checks
// that the state (creation times included) is what the live engine had.
func TestAdminRecovery(t *testing.T) {
	steps := []func(t *testing.T, e *Engine, sec map[string]string){
		func(t *testing.T, e *Engine, sec map[string]string) {
			for _, id := range []string{"a", "b", "c"} {
				k, err := e.CreateWorkspace(id)
				if err != nil {
					t.Fatal(err)
				}
				sec["ws:"+id] = k
			}
			for _, p := range []string{"p", "q"} {
				k, err := e.CreatePartner(p)
				if err != nil {
					t.Fatal(err)
				}
				sec["partner:"+p] = k
			}
		},
		func(t *testing.T, e *Engine, sec map[string]string) {
			addUsers(t, e.Workspace("a"), "u1", "u2")
			for _, ws := range []string{"a", "b"} {
				for _, p := range []string{"p", "q"} {
					_, s, err := e.Workspace(ws).CreateImportKey(p)
					if err != nil {
						t.Fatal(err)
					}
					sec["import:"+p+"/"+ws+"/1"] = s
				}
			}
		},
		func(t *testing.T, e *Engine, sec map[string]string) {
			k, err := e.RotateWorkspaceKey("a")
			if err != nil {
				t.Fatal(err)
			}
			sec["ws:a#2"] = k
			k, err = e.RotatePartnerKey("q")
			if err != nil {
				t.Fatal(err)
			}
			sec["partner:q#2"] = k
		},
		func(t *testing.T, e *Engine, sec map[string]string) {
			if err := e.DeletePartner("p"); err != nil {
				t.Fatal(err)
			}
			if err := e.DeleteWorkspace("b", false); err != nil {
				t.Fatal(err)
			}
		},
		func(t *testing.T, e *Engine, sec map[string]string) {
			// The slug and the id come back; keys issued now must survive
			// the replay of the deletion above.
			k, err := e.CreatePartner("p")
			if err != nil {
				t.Fatal(err)
			}
			sec["partner:p#3"] = k
			if k, err = e.CreateWorkspace("b"); err != nil {
				t.Fatal(err)
			}
			sec["ws:b#3"] = k
			_, s, err := e.Workspace("a").CreateImportKey("p")
			if err != nil {
				t.Fatal(err)
			}
			sec["import:p/a/3"] = s
			if err := e.DeleteWorkspace("c", true); err != nil {
				t.Fatal(err)
			}
		},
	}
	// snapAfter: -1 none (WAL only); i: a snapshot after step i.
	for snapAfter := -1; snapAfter < len(steps); snapAfter++ {
		t.Run(fmt.Sprintf("snapshot_after_%d", snapAfter), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, Sync: wal.SyncOff, Now: newStepClock().now, Logger: quietLogger()}
			e, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			sec := map[string]string{}
			for i, step := range steps {
				step(t, e, sec)
				if i == snapAfter {
					if _, err := e.SnapshotNow(); err != nil {
						t.Fatal(err)
					}
				}
			}
			want := adminState(e, sec)
			for _, line := range []string{"ws:a valid=false", "ws:a#2 -> a", "partner:q valid=false", "partner:q#2 valid=true",
				"import:p/a/1 valid=false", "import:q/a/1 -> a", "import:p/a/3 -> a", "ws:b valid=false", "ws:b#3 -> b", "ws:c valid=false"} {
				if !strings.Contains(want, line+"\n") {
					t.Fatalf("live state lacks %q:\n%s", line, want)
				}
			}
			wantFull := dumpState(e)
			crash(e)
			// Reopened with another clock: times must come from the records.
			opts.Now = func() time.Time { return time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC) }
			e2, err := Open(opts)
			if err != nil {
				t.Fatalf("reopen after crash: %v", err)
			}
			if got := adminState(e2, sec); got != want {
				t.Fatalf("after crash:\n%s", firstDiff(want, got))
			}
			if got := dumpState(e2); got != wantFull {
				t.Fatalf("after crash:\n%s", firstDiff(wantFull, got))
			}
			if err := e2.Close(); err != nil {
				t.Fatal(err)
			}
			e3, err := Open(opts)
			if err != nil {
				t.Fatalf("reopen after close: %v", err)
			}
			if got := adminState(e3, sec); got != want {
				t.Fatalf("after close (snapshot):\n%s", firstDiff(want, got))
			}
			if err := e3.Check(); err != nil {
				t.Fatal(err)
			}
			e3.Close()
		})
	}
}

// TestAdminConcurrentWithSnapshots races rotations, deletions and key
// issues against imports and snapshots, then checks that a crash recovers
// exactly the live state: each scope of a snapshot must hold an admin
// change exactly when its position covers the record.
func TestAdminConcurrentWithSnapshots(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff, Logger: quietLogger()}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	sec := map[string]string{}
	put := func(k, v string) { mu.Lock(); sec[k] = v; mu.Unlock() }
	for i := range 4 {
		id := fmt.Sprintf("w%d", i)
		k, _ := e.CreateWorkspace(id)
		put("ws:"+id, k)
		addUsers(t, e.Workspace(id), "u1", "u2", "u3")
	}
	rounds := 60
	if testing.Short() {
		rounds = 25
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(f func(i int) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				if err := f(i); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	run(func(i int) error { // partners come and go; keys are issued meanwhile
		k, err := e.CreatePartner("p")
		if err != nil {
			return err
		}
		put(fmt.Sprintf("partner:p#%d", i), k)
		if i%2 == 0 {
			if k, err = e.RotatePartnerKey("p"); err != nil {
				return err
			}
			put(fmt.Sprintf("partner:p#%dr", i), k)
		}
		time.Sleep(time.Millisecond)
		return e.DeletePartner("p")
	})
	run(func(i int) error { // import keys of the partner above, when it exists
		w := e.Workspace(fmt.Sprintf("w%d", i%4))
		_, s, err := w.CreateImportKey("p")
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		put(fmt.Sprintf("import:p/%s/%d", w.ID(), i), s)
		return err
	})
	run(func(i int) error { // rotations and a workspace that is recreated
		id := fmt.Sprintf("w%d", i%4)
		k, err := e.RotateWorkspaceKey(id)
		if err != nil {
			return err
		}
		put(fmt.Sprintf("ws:%s#%d", id, i), k)
		if err := e.DeleteWorkspace("tmp", true); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if k, err = e.CreateWorkspace("tmp"); err != nil {
			return err
		}
		put(fmt.Sprintf("ws:tmp#%d", i), k)
		var b UserBatch
		b.Add(fmt.Appendf(nil, "t%d", i), nil, nil)
		_, err = e.Workspace("tmp").UpsertUsers(&b)
		return err
	})
	run(func(i int) error { // imports
		w := e.Workspace(fmt.Sprintf("w%d", i%4))
		cs := w.NewChangeSet()
		cs.AddMany(1, [][]byte{[]byte("u1"), []byte("u2")}, i%3 == 0)
		_, err := w.ApplyChanges("x", "c", cs)
		return err
	})
	run(func(i int) error { // snapshots
		if i%3 != 0 {
			return nil
		}
		_, err := e.SnapshotNow()
		return err
	})
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	want, wantFull := adminState(e, sec), dumpState(e)
	crash(e)
	e2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := adminState(e2, sec); got != want {
		t.Fatalf("after crash:\n%s", firstDiff(want, got))
	}
	if got := dumpState(e2); got != wantFull {
		t.Fatalf("after crash:\n%s", firstDiff(wantFull, got))
	}
	if err := e2.Check(); err != nil {
		t.Fatal(err)
	}
	e2.Close()
}

// TestVersion1SnapshotHasNoCreationTimes reads a version 1 snapshot,
// written before creation times were recorded: they are unknown (zero),
// the rest loads; the next snapshot keeps them zero.
func TestVersion1SnapshotHasNoCreationTimes(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff, Logger: quietLogger()}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.CreateWorkspace("acme")
	e.CreatePartner("p")
	addUsers(t, e.Workspace("acme"), "u1")
	snapshotV1(t, e)
	crash(e)
	// Only the version 1 snapshot: the WAL it covers goes.
	if err := os.RemoveAll(filepath.Join(dir, "wal")); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		e2, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		ws := e2.ListWorkspaces()
		if len(ws) != 1 || ws[0].Users != 1 || !ws[0].CreatedAt.IsZero() || !e2.ListPartners()[0].CreatedAt.IsZero() {
			t.Fatalf("round %d: %+v %+v", round, ws, e2.ListPartners())
		}
		if err := e2.Close(); err != nil { // round 1 reads a version 2 snapshot
			t.Fatal(err)
		}
	}
}

func TestSnapshotNowAndLastSnapshot(t *testing.T) {
	if _, err := (&Engine{}).SnapshotNow(); !errors.Is(err, ErrNoDataDir) {
		t.Fatalf("in-memory engine: %v", err)
	}
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff, Logger: quietLogger()}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e.LastSnapshot(); ok {
		t.Fatal("fresh dir has a last snapshot")
	}
	e.CreateWorkspace("acme")
	info, err := e.SnapshotNow()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, info.File))
	if err != nil || fi.Size() != info.Bytes || info.LSN != 1 {
		t.Fatalf("info %+v, file %v %v", info, fi, err)
	}
	if last, ok := e.LastSnapshot(); !ok || last != info {
		t.Fatalf("LastSnapshot = %+v, want %+v", last, info)
	}
	// A failure is counted: a directory in the way of the file's name makes
	// the rename fail, even for root.
	e.CreatePartner("p")
	blocker := filepath.Join(dir, snapName(2))
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := e.SnapshotNow(); err == nil {
		t.Fatal("snapshot over a directory succeeded")
	}
	if n := e.Stats.SnapshotFailures.Load(); n != 1 {
		t.Fatalf("failures = %d", n)
	}
	if last, _ := e.LastSnapshot(); last != info {
		t.Fatalf("a failed snapshot replaced the last good one: %+v", last)
	}
	os.RemoveAll(blocker)
	e.Close()
	e2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if last, ok := e2.LastSnapshot(); !ok || last.At.IsZero() || last.Bytes == 0 {
		t.Fatalf("loaded snapshot not noted: %+v", last)
	}
	e2.Close()
}

func TestRecordTime(t *testing.T) {
	for _, tm := range []time.Time{{}, time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), time.Date(2026, 1, 2, 3, 4, 5, 999999999, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC)} {
		var enc recordEncoder
		enc.time(tm)
		d := &recordDecoder{b: enc.b}
		got := d.time()
		if err := d.done(); err != nil || !got.Equal(tm) || got.IsZero() != tm.IsZero() {
			t.Fatalf("%v → %v, %v", tm, got, err)
		}
	}
	d := &recordDecoder{b: []byte{0, 0x80, 0x94, 0xeb, 0xdc, 0x03}} // 0 s, 1e9 ns
	if d.time(); d.err == nil {
		t.Fatal("nanoseconds ≥ 1e9 accepted")
	}
}

// TestReplayPartnerDeleteRespectsWorkspacePosition covers a snapshot whose
// engine section predates a partner's deletion while a workspace section
// was captured after the slug was registered again and a key issued: the
// replayed deletion must not revoke that newer key, but must revoke the
// keys of a workspace captured before it.
func TestReplayPartnerDeleteRespectsWorkspacePosition(t *testing.T) {
	e, _ := Open(Options{})
	e.CreateWorkspace("after")
	e.CreateWorkspace("before")
	e.CreatePartner("p")
	_, newer, _ := e.Workspace("after").CreateImportKey("p")
	_, older, _ := e.Workspace("before").CreateImportKey("p")
	// As loaded from the snapshot: engine at 10, "before" at 12, "after" at 20.
	e.mu.lsn = 10
	e.Workspace("before").lsn = 12
	e.Workspace("after").lsn = 20
	var enc recordEncoder
	enc.str("p")
	if err := e.replayRecord(recPartnerDelete, 15, enc.b); err != nil {
		t.Fatal(err)
	}
	enc.reset()
	enc.str("p")
	enc.digest(digestOf([]byte("pk")))
	enc.time(time.Unix(100, 0))
	if err := e.replayRecord(recPartnerCreate, 16, enc.b); err != nil {
		t.Fatal(err)
	}
	if w, err := e.AuthPartner("p", []byte("pk"), []byte(newer)); err != nil || w.ID() != "after" {
		t.Fatalf("key issued after the re-registration: %v", err)
	}
	if _, err := e.AuthPartner("p", []byte("pk"), []byte(older)); !errors.Is(err, ErrBadClientSecret) {
		t.Fatalf("key of the deleted partner: %v", err)
	}
	if got := e.ListPartners()[0].CreatedAt; !got.Equal(time.Unix(100, 0)) {
		t.Fatalf("created_at %v not from the record", got)
	}
	// Records the snapshot covers are skipped.
	enc.reset()
	enc.str("p")
	if err := e.replayRecord(recPartnerDelete, 9, enc.b); err != nil || !e.PartnerExists("p") {
		t.Fatalf("covered record applied: %v", err)
	}
}

// FuzzReplayAdmin feeds arbitrary payloads of the admin record types to
// replay: errors are fine, panics are not, and the engine stays consistent.
func FuzzReplayAdmin(f *testing.F) {
	var enc recordEncoder
	enc.str("ws")
	enc.digest(digestOf([]byte("k")))
	enc.time(time.Unix(5, 6))
	f.Add(recWorkspaceCreate, bytes.Clone(enc.b))
	f.Add(recPartnerCreate, bytes.Clone(enc.b))
	enc.reset()
	enc.str("ws")
	enc.digest(digestOf([]byte("k2")))
	f.Add(recWorkspaceKey, bytes.Clone(enc.b))
	f.Add(recPartnerKey, append([]byte("\x01p"), enc.b[3:]...))
	f.Add(recWorkspaceDelete, []byte("\x02ws"))
	f.Add(recPartnerDelete, []byte("\x01p"))
	f.Fuzz(func(t *testing.T, typ uint8, payload []byte) {
		e, _ := Open(Options{})
		e.CreateWorkspace("ws")
		e.CreatePartner("p")
		e.Workspace("ws").CreateImportKey("p")
		_ = e.replayRecord(recAdminFirst+typ%(recAdminLast-recAdminFirst+1), 1<<40, payload)
		_ = e.Check()
		_ = e.ListWorkspaces()
		_ = e.ListPartners()
	})
}
