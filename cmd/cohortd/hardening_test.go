package main

// Regression tests of the hardening review (data loss, corruption, leaks),
// each through the real binary on a fresh data dir.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHugeUserUpsertRestarts: NDJSON lines that move one 500-byte alias
// back and forth between two users: a 1.5 MB gzip body of ~150 MB whose
// user operations come to ~290 MB, more than one log record may hold. It
// used to answer 500 with the users already changed in memory, and after
// kill -9 the data dir failed to open ("replay: created user 0, record
// says 2"). Now it is applied, logged in bounded records, and replayed.
func TestHugeUserUpsertRestarts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{args: []string{"-fsync", "off"}})
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")
	name := strings.Repeat("n", 500)
	var body bytes.Buffer
	const lines = 270_000
	for i := range lines {
		fmt.Fprintf(&body, `{"external_id":"pp-%d","aliases":[{"alias_name":%q,"alias_label":"l"}]}`+"\n", i%2, name)
	}
	r := d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: body.Bytes(), ctype: "application/x-ndjson", encoding: "gzip"}, 200).json(t)
	if num(t, r, "created") != 2 || num(t, r, "updated") != lines-2 {
		t.Fatalf("upsert: %v", r)
	}
	d.stop(syscall.SIGKILL, 10*time.Second)

	d = startDaemon(t, dir, startOpts{args: []string{"-fsync", "off"}})
	r = d.must(req{method: "GET", path: "/v1/users/lookup?alias_name=" + name + "&alias_label=l", token: tn.apiKey}, 200).json(t)
	if u := r["user"].(map[string]any); u["external_id"] != "pp-1" {
		t.Fatalf("alias after restart held by %v, want pp-1", u)
	}
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: `{"users":[{"external_id":"after"}]}`}, 200)
}

// TestFarCreatedAtSurvivesRestart: a created_at outside what UnixNano
// holds (1678–2262) reads back as sent after kill -9 and after a restart
// from a snapshot (it was rewritten to 1816-03-29 on restart). Storing it
// exactly, rather than refusing it with 400, is what a sender expects: the
// value is a valid RFC 3339 time, and a sync must not pause over a cohort's
// metadata.
func TestFarCreatedAtSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")
	for id, at := range map[string]string{"far": "9999-12-31T00:00:00Z", "early": "0001-01-01T00:00:00Z"} {
		d.must(req{method: "POST", path: "/partners/amplitude/cohorts", body: map[string]any{
			"partner_api_key": tn.partnerKey, "client_secret": tn.secret, "cohort_id": id, "name": id, "created_at": at}}, 201)
	}
	// kill -9 (replay of the WAL), then SIGTERM and start (the snapshot).
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		d.stop(sig, 30*time.Second)
		d = startDaemon(t, dir, startOpts{})
		for id, at := range map[string]string{"far": "9999-12-31T00:00:00Z", "early": "0001-01-01T00:00:00Z"} {
			c := d.must(req{method: "GET", path: "/v1/cohorts/amplitude/" + id, token: tn.apiKey}, 200).json(t)
			if c["created_at"] != at {
				t.Errorf("cohort %s: created_at %v after a restart (%v), sent %s", id, c["created_at"], sig, at)
			}
		}
	}
}

// TestRefusedWebhookPageChangesNothing: a members page refused with 400
// (total_pages differs within the session) does not rename the cohort.
func TestRefusedWebhookPageChangesNothing(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), startOpts{})
	tn := setupTenant(d, d.adminToken(), "wh", "mixpanel")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: `{"users":[{"external_id":"u1"},{"external_id":"u2"}]}`}, 200)
	if r := d.hook(tn.secret, mixpanelPage("s", 1, 2, 1, 2)); r.status != 200 {
		t.Fatalf("page 1: %s", r)
	}
	bad := strings.Replace(mixpanelPage("s", 2, 3, 2, 3), `"Whales"`, `"Renamed"`, 1)
	if r := d.hook(tn.secret, bad); r.status != 400 {
		t.Fatalf("page with another total_pages: %s, want 400", r)
	}
	c := d.must(req{method: "GET", path: "/v1/cohorts/mixpanel/4242", token: tn.apiKey}, 200).json(t)
	if c["name"] != "Whales" {
		t.Fatalf("a refused page renamed the cohort: %v", c)
	}
}

// TestIdempotencySurvivesRestart: the reply to a write with an
// Idempotency-Key is returned again after kill -9, without applying the
// write again (a retried key creation used to issue a second key).
func TestIdempotencySurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "amplitude")
	create := req{method: "POST", path: "/v1/workspaces/acme/partners/amplitude/keys", token: admin, body: map[string]any{},
		header: map[string]string{"Idempotency-Key": "issue-1"}}
	first := d.must(create, 201)
	change := req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c", []string{"nobody"}, false),
		header: map[string]string{"Idempotency-Key": "batch-1"}}
	firstChange := d.must(change, 201)
	d.stop(syscall.SIGKILL, 10*time.Second)

	d = startDaemon(t, dir, startOpts{})
	again := d.must(create, 201)
	if !bytes.Equal(again.body, first.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry after restart: %s (replayed %q), first reply %s", again, again.header.Get("Idempotent-Replayed"), first)
	}
	keys := d.must(req{method: "GET", path: "/v1/workspaces/acme/partners/amplitude/keys", token: admin}, 200).json(t)
	if n := len(keys["keys"].([]any)); n != 2 { // setupTenant's and the idempotent one
		t.Fatalf("%d keys after the retry, want 2", n)
	}
	if r := d.must(change, 201); !bytes.Equal(r.body, firstChange.body) {
		t.Fatalf("partner retry after restart: %s, first %s", r, firstChange)
	}
	changed := change
	changed.body = tn.changes("c", []string{"other"}, false)
	d.must(changed, 422)
}

// TestDataDirIsPrivate: the data dir and wal/ are 0700 and every file in
// them 0600 (WAL segments were 0644, readable by any local user); looser
// modes left by an older version are tightened at start.
func TestDataDirIsPrivate(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(filepath.Join(dir, "wal"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "wal", "00000000000000000001.wal"), appendTestSegmentHeader(1), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, dir, startOpts{})
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: `{"users":[{"external_id":"u1"}]}`}, 200)
	d.stop(syscall.SIGTERM, 30*time.Second) // writes a snapshot too
	if !strings.Contains(d.stderr.String(), "tightened permissions") {
		t.Error("tightening was not logged")
	}
	var files int
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		} else {
			files++
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil || files < 4 {
		t.Fatalf("walk: %v, %d files", err, files)
	}
}

// appendTestSegmentHeader is an empty WAL segment starting at first, as
// engine/wal writes it (docs/FORMATS.md): magic, version, first LSN.
func appendTestSegmentHeader(first uint64) []byte {
	b := []byte("CDWL")
	b = append(b, 1, 0, 0, 0)
	for i := range 8 {
		b = append(b, byte(first>>(8*i)))
	}
	return b
}

// TestCorruptCursorKeyRefused: a damaged cursor.key stops start-up with a
// message instead of being silently replaced (which invalidated every
// open member-page cursor).
func TestCorruptCursorKeyRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cursor.key"), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newCmd(nil, "-data-dir", dir, "-addr", "127.0.0.1:0")
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if code := cmd.ProcessState.ExitCode(); code == 0 || !strings.Contains(stderr.String(), "cursor.key is corrupt") {
			t.Fatalf("exit %d (%v), stderr %q; want a refusal naming cursor.key", code, err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("cohortd started on a damaged cursor.key:\n%s", stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cursor.key")); string(b) != "short" {
		t.Fatal("the damaged cursor.key was replaced")
	}
}

// TestDamagedSnapshotFallsBack: the newest snapshot damaged on disk is set
// aside, and the state comes back from the previous snapshot and the WAL;
// a snapshot-*.tmp left by a crash is removed.
func TestDamagedSnapshotFallsBack(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON(userIDs("u", 0, 300))}}, 200)
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c", userIDs("u", 0, 100), false)}, 201)
	d.stop(syscall.SIGTERM, 30*time.Second) // snapshot 1
	d = startDaemon(t, dir, startOpts{})
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c", userIDs("u", 100, 250), false)}, 201)
	d.stop(syscall.SIGTERM, 30*time.Second) // snapshot 2

	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshot-*.snap"))
	if len(snaps) != 2 {
		t.Fatalf("snapshots kept: %v, want the newest and the previous", snaps)
	}
	newest := snaps[len(snaps)-1]
	b, err := os.ReadFile(newest)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(newest, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "snapshot-123.tmp"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, dir, startOpts{})
	c := d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c", token: tn.apiKey}, 200).json(t)
	if num(t, c, "size") != 250 {
		t.Fatalf("after the fallback: %v, want size 250", c)
	}
	if !strings.Contains(d.stderr.String(), "SNAPSHOT UNREADABLE") {
		t.Error("the fallback was not logged loudly")
	}
	if _, err := os.Stat(newest + ".corrupt"); err != nil {
		t.Errorf("damaged snapshot not set aside: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "snapshot-123.tmp")); !os.IsNotExist(err) {
		t.Errorf("leftover tmp snapshot: %v", err)
	}
}

// TestWebhookSessionsExpireWithoutTraffic: an abandoned session expires
// after the TTL even when no later request of its workspace arrives.
func TestWebhookSessionsExpireWithoutTraffic(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-webhook-session-ttl", "1s"}})
	tn := setupTenant(d, d.adminToken(), "wh", "mixpanel")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: `{"users":[{"external_id":"u1"}]}`}, 200)
	d.hook(tn.secret, mixpanelPage("s", 1, 2, 1, 2))
	open := func() string {
		m := d.must(req{method: "GET", path: "/metrics"}, 200)
		for _, l := range strings.Split(string(m.body), "\n") {
			if strings.HasPrefix(l, "cohortd_webhook_sessions_open ") {
				return strings.TrimPrefix(l, "cohortd_webhook_sessions_open ")
			}
		}
		return "missing"
	}
	if got := open(); got != "1" {
		t.Fatalf("open sessions %s, want 1", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for open() != "0" {
		if time.Now().After(deadline) {
			t.Fatalf("session still open %s after its TTL without traffic", open())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
