package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
)

// TestHappyPath walks the product as a new user would: start, find the
// admin token, create a workspace, a partner and an import key, load
// users, import cohorts the way a partner does, and query them.
func TestHappyPath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	if !strings.Contains(d.stdout.String(), "admin token: "+admin) {
		t.Fatalf("the generated admin token is not on stdout:\n%s", d.stdout)
	}
	if fi, err := os.Stat(filepath.Join(dir, adminTokenFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v, mode %v; want 0600", err, fi.Mode())
	}
	d.must(req{method: "POST", path: "/v1/workspaces", body: map[string]string{"id": "x"}}, 401)
	d.must(req{method: "POST", path: "/v1/workspaces", token: "wrong", body: map[string]string{"id": "x"}}, 401)

	tn := setupTenant(d, admin, "acme", "amplitude")
	// A workspace key is valid but has no right on admin endpoints.
	d.must(req{method: "POST", path: "/v1/workspaces", token: tn.apiKey, body: map[string]string{"id": "x"}}, 403)
	d.must(req{method: "GET", path: "/v1/cohorts", token: admin}, 403)

	// Users: JSON, NDJSON+gzip, NDJSON+zstd.
	users := []map[string]any{{"device_id": "d-anon"}, {"external_id": "u-alias", "aliases": []map[string]string{{"alias_name": "email", "alias_label": "a@example.com"}}}}
	for _, id := range userIDs("u", 0, 50) {
		users = append(users, map[string]any{"external_id": id})
	}
	r := d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": users}}, 200).json(t)
	if num(t, r, "created") != 52 {
		t.Fatalf("upsert: %v, want created 52", r)
	}
	for i, enc := range []string{"gzip", "zstd"} {
		var nd bytes.Buffer
		for _, id := range userIDs("u", 50+50*i, 100+50*i) {
			fmt.Fprintf(&nd, "{\"external_id\":%q}\n", id)
		}
		r = d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: nd.Bytes(), ctype: "application/x-ndjson", encoding: enc}, 200).json(t)
		if num(t, r, "created") != 50 {
			t.Fatalf("NDJSON %s upsert: %v, want created 50", enc, r)
		}
	}
	r = d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": users[:3]}}, 200).json(t)
	if num(t, r, "unchanged") != 3 || num(t, r, "created") != 0 {
		t.Fatalf("repeated upsert: %v, want 3 unchanged", r)
	}

	// Partner import, the way the exporter calls it (also through //partners/).
	cohort := map[string]any{"partner_api_key": tn.partnerKey, "client_secret": tn.secret,
		"cohort_id": "c1", "name": "Cohort one", "created_at": "2026-11-01T00:00:00Z"}
	r = d.must(req{method: "POST", path: "/partners/amplitude/cohorts", body: cohort}, 201).json(t)
	if r["message"] != "success" {
		t.Fatalf("cohort upsert: %v", r)
	}
	d.must(req{method: "POST", path: "//partners/amplitude/cohorts", body: cohort, encoding: "gzip"}, 201)
	add := tn.changes("c1", append(userIDs("u", 0, 10), "nobody"), false)
	add["cohort_changes"] = append(add["cohort_changes"].([]map[string]any), map[string]any{
		"device_ids": []string{"d-anon"},
		"aliases":    []map[string]string{{"alias_name": "email", "alias_label": "a@example.com"}},
	})
	r = d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: add, encoding: "zstd"}, 201).json(t)
	if num(t, r, "matched") != 12 || num(t, r, "unmatched") != 1 || num(t, r, "added") != 12 || num(t, r, "data_points") != 12 {
		t.Fatalf("import: %v, want matched 12, unmatched 1, added 12, data_points 12", r)
	}
	r = d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", []string{"u0"}, true)}, 201).json(t)
	if num(t, r, "removed") != 1 {
		t.Fatalf("remove: %v", r)
	}
	bad := tn.changes("c1", []string{"u1"}, false)
	bad["client_secret"] = "nope"
	r = d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: bad}, 401).json(t)
	if r["message"] != "Invalid client secret" {
		t.Fatalf("bad secret: %v", r)
	}
	bad = tn.changes("c1", []string{"u1"}, false)
	bad["partner_api_key"] = "nope"
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: bad}, 401)

	// /v1 bulk changes (NDJSON) and a snapshot sync create their cohorts.
	var nd bytes.Buffer
	fmt.Fprintf(&nd, "{\"user_ids\":[%s]}\n", quoteJoin(userIDs("u", 10, 20)))
	r = d.must(req{method: "POST", path: "/v1/cohorts/amplitude/c2/changes", token: tn.apiKey, body: nd.Bytes(), ctype: "application/x-ndjson"}, 200).json(t)
	if num(t, r, "added") != 10 {
		t.Fatalf("bulk changes: %v", r)
	}
	r = d.must(req{method: "PUT", path: "/v1/cohorts/amplitude/c3/members", token: tn.apiKey, body: map[string]any{"user_ids": userIDs("u", 0, 5)}}, 200).json(t)
	if num(t, r, "added") != 5 || num(t, r, "data_points") != 5 {
		t.Fatalf("snapshot sync: %v", r)
	}

	// Lookups.
	r = d.must(req{method: "GET", path: "/v1/users/lookup?external_id=u1", token: tn.apiKey}, 200).json(t)
	if got := cohortIDs(t, r); !reflect.DeepEqual(got, []string{"amplitude/c1", "amplitude/c3"}) {
		t.Fatalf("lookup u1 cohorts = %v: %v", got, r)
	}
	r = d.must(req{method: "GET", path: "/v1/users/lookup?device_id=d-anon", token: tn.apiKey}, 200).json(t)
	if u, _ := r["user"].(map[string]any); u["anonymous"] != true {
		t.Fatalf("lookup d-anon: %v", r)
	}
	d.must(req{method: "GET", path: "/v1/users/lookup?alias_name=email&alias_label=a@example.com", token: tn.apiKey}, 200)
	d.must(req{method: "GET", path: "/v1/users/lookup?external_id=ghost", token: tn.apiKey}, 404)

	// Segments: c1 = u1..u9, d-anon, u-alias; c3 = u0..u4.
	seg := map[string]any{"and": []any{map[string]any{"cohort": "amplitude/c1"}, map[string]any{"not": map[string]any{"cohort": "amplitude/c3"}}}}
	r = d.must(req{method: "POST", path: "/v1/segments/count", token: tn.apiKey, body: map[string]any{"segment": seg}}, 200).json(t)
	if num(t, r, "count") != 7 {
		t.Fatalf("count: %v, want 7", r)
	}
	r = d.must(req{method: "POST", path: "/v1/segments/count", token: tn.apiKey, body: map[string]any{"segment": map[string]any{"cohort": "amplitude/nope"}}}, 200).json(t)
	if num(t, r, "count") != 0 || !strings.Contains(fmt.Sprint(r["warnings"]), "unknown cohort amplitude/nope") {
		t.Fatalf("unknown cohort: %v", r)
	}
	d.must(req{method: "POST", path: "/v1/segments/count", token: tn.apiKey, body: map[string]any{"segment": map[string]any{"and": []any{}}}}, 400)
	r = d.must(req{method: "POST", path: "/v1/segments/contains", token: tn.apiKey, body: map[string]any{"segment": seg,
		"users": []map[string]string{{"external_id": "u5"}, {"external_id": "u1"}, {"external_id": "ghost"}, {"device_id": "d-anon"}}}}, 200).json(t)
	if fmt.Sprint(r["results"]) != "[true false false true]" {
		t.Fatalf("contains: %v", r)
	}
	var paged []string
	var cursor any
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("segment members: cursor never ends")
		}
		body := map[string]any{"segment": seg, "limit": 3}
		if cursor != nil {
			body["cursor"] = cursor
		}
		r = d.must(req{method: "POST", path: "/v1/segments/members", token: tn.apiKey, body: body}, 200).json(t)
		ms, _ := r["members"].([]any)
		for _, m := range ms {
			paged = append(paged, fmt.Sprint(m))
		}
		if cursor = r["next_cursor"]; cursor == nil {
			break
		}
	}
	if len(paged) != 7 {
		t.Fatalf("paged members: %d, want 7: %v", len(paged), paged)
	}
	sr := d.must(req{method: "POST", path: "/v1/segments/members", token: tn.apiKey, body: map[string]any{"segment": seg}}, 200)
	if lines := ndjsonLines(t, sr.body); len(lines) != 7 {
		t.Fatalf("streamed members: %d lines, want 7: %s", len(lines), sr.body)
	}

	// Cohorts.
	r = d.must(req{method: "GET", path: "/v1/cohorts", token: tn.apiKey}, 200).json(t)
	if cs, _ := r["cohorts"].([]any); len(cs) != 3 {
		t.Fatalf("cohorts: %v", r)
	}
	r = d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c1", token: tn.apiKey}, 200).json(t)
	if num(t, r, "size") != 11 || r["name"] != "Cohort one" {
		t.Fatalf("cohort c1: %v", r)
	}
	mr := d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c1/members", token: tn.apiKey}, 200)
	if lines := ndjsonLines(t, mr.body); len(lines) != 11 {
		t.Fatalf("c1 members: %d lines: %s", len(lines), mr.body)
	}
	mr = d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c1/members", token: tn.apiKey, header: map[string]string{"Accept-Encoding": "gzip"}}, 200)
	if mr.header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(mr.body))
		if err != nil {
			t.Fatal(err)
		}
		plain, _ := io.ReadAll(zr)
		if lines := ndjsonLines(t, plain); len(lines) != 11 {
			t.Fatalf("c1 members (gzip): %d lines", len(lines))
		}
	}
	d.must(req{method: "GET", path: "/v1/cohorts/amplitude/nope", token: tn.apiKey}, 404)

	// Idempotency-Key: a retry is free; the same key with another body is 422.
	idem := req{method: "POST", path: "/v1/cohorts/amplitude/c2/changes", token: tn.apiKey,
		body: map[string]any{"cohort_changes": []map[string]any{{"user_ids": []string{"u30"}}}}, header: map[string]string{"Idempotency-Key": "k-1"}}
	first := d.must(idem, 200)
	again := d.must(idem, 200)
	if !bytes.Equal(first.body, again.body) {
		t.Fatalf("idempotent retry: %s then %s", first.body, again.body)
	}
	idem.body = map[string]any{"cohort_changes": []map[string]any{{"user_ids": []string{"u31"}}}}
	d.must(idem, 422)

	// Usage: c1 12 added + 1 removed, c2 10 + 1, c3 5.
	r = d.must(req{method: "GET", path: "/v1/usage", token: tn.apiKey}, 200).json(t)
	if num(t, r, "total") != 29 {
		t.Fatalf("usage: %v, want total 29", r)
	}

	// Keys: list, revoke, refused from the next request on.
	r = d.must(req{method: "GET", path: "/v1/workspaces/acme/partners/amplitude/keys", token: admin}, 200).json(t)
	ks, _ := r["keys"].([]any)
	if len(ks) != 1 {
		t.Fatalf("keys: %v", r)
	}
	if k := ks[0].(map[string]any); k["key_id"] != tn.keyID || k["revoked"] != false || k["last_used_at"] == nil || k["client_secret"] != nil {
		t.Fatalf("key: %v", k)
	}
	d.must(req{method: "DELETE", path: "/v1/workspaces/acme/partners/amplitude/keys/" + tn.keyID, token: admin}, 204)
	r = d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", []string{"u1"}, false)}, 401).json(t)
	if r["message"] != "Invalid client secret" {
		t.Fatalf("revoked key: %v", r)
	}

	// Deletes.
	d.must(req{method: "DELETE", path: "/v1/cohorts/amplitude/c2", token: tn.apiKey}, 204)
	d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c2", token: tn.apiKey}, 404)
	r = d.must(req{method: "POST", path: "/v1/users/delete", token: tn.apiKey, body: map[string]any{"user_ids": []string{"u9", "ghost"}}}, 200).json(t)
	if num(t, r, "deleted") != 1 || num(t, r, "unmatched") != 1 {
		t.Fatalf("delete users: %v", r)
	}
	d.must(req{method: "GET", path: "/v1/users/lookup?external_id=u9", token: tn.apiKey}, 404)

	if code := d.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

func quoteJoin(ids []string) string {
	q := make([]string, len(ids))
	for i, id := range ids {
		q[i] = fmt.Sprintf("%q", id)
	}
	return strings.Join(q, ",")
}

// cohortIDs lists "partner/cohort_id" of a lookup reply, sorted.
func cohortIDs(t *testing.T, r map[string]any) []string {
	t.Helper()
	cs, ok := r["cohorts"].([]any)
	if !ok {
		t.Fatalf("no cohorts array in %v", r)
	}
	var out []string
	for _, c := range cs {
		m := c.(map[string]any)
		out = append(out, fmt.Sprint(m["partner"], "/", m["cohort_id"]))
	}
	sort.Strings(out)
	return out
}

// TestEnvFlags configures cohortd through COHORTD_* only, and checks that
// an explicit flag wins over its environment twin.
func TestEnvFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freePort(t)
	env := []string{"COHORTD_ADDR=" + addr, "COHORTD_DATA_DIR=" + dir, "COHORTD_PARTNER_MAX_IDS=5",
		"COHORTD_ADMIN_TOKEN=env-admin-token", "COHORTD_FSYNC=interval", "COHORTD_MAX_BODY=1MiB"}
	cmdEnv := append(cleanEnv(), env...)
	d := startRaw(t, dir, cmdEnv)
	if d.addr != addr {
		t.Fatalf("listening on %s, want %s from COHORTD_ADDR", d.addr, addr)
	}
	if _, err := os.Stat(filepath.Join(dir, adminTokenFile)); err == nil {
		t.Fatal("an admin token from the environment must not be saved")
	}
	tn := setupTenant(d, "env-admin-token", "ws", "segment")
	r := d.must(req{method: "POST", path: "/partners/segment/cohorts/users", body: tn.changes("c", userIDs("u", 0, 6), false)}, 400).json(t)
	if msg := fmt.Sprint(r["message"]); msg != "Only 5 user_ids, device_ids, and aliases are allowed per request" {
		t.Fatalf("cap message %q", msg)
	}
	d.must(req{method: "POST", path: "/partners/segment/cohorts/users", body: tn.changes("c", userIDs("u", 0, 5), false)}, 201)
	// COHORTD_MAX_BODY=1MiB: a body of 2 MiB decoded is refused. It is sent
	// gzipped, so that the client has finished writing when the early 413
	// arrives (a plain 2 MiB upload may be cut off by the reply: a reset).
	big := bytes.Repeat([]byte(" "), 2<<20)
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: append(big, "{}"...), encoding: "gzip"}, 413)
	d.stop(syscall.SIGTERM, 30*time.Second)

	// An explicit flag beats the environment.
	d = startRaw(t, dir, cmdEnv, "-partner-max-ids", "1234")
	r = d.must(req{method: "POST", path: "/partners/segment/cohorts/users", body: tn.changes("c", userIDs("u", 0, 1235), false)}, 400).json(t)
	if msg := fmt.Sprint(r["message"]); msg != "Only 1,234 user_ids, device_ids, and aliases are allowed per request" {
		t.Fatalf("cap message %q", msg)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
}

// startRaw starts cohortd with exactly env and args (no -addr, no -data-dir).
func startRaw(t *testing.T, dir string, env []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, dataDir: dir, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = newCmd(env, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.stdout, d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exitErr = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", tail(d.stderr.String(), 4000))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := listenRe.FindStringSubmatch(d.stderr.String()); m != nil {
			d.addr = m[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listen address logged:\n%s", d.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.base = "http://" + d.addr
	d.waitReady()
	return d
}

// TestBadFlags: invalid values exit 2 with a message naming the flag.
func TestBadFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{args: []string{"-fsync", "sometimes"}, want: "-fsync"},
		{args: []string{"-max-body", "lots"}, want: "-max-body"},
		{args: []string{"-retention-floor", "2010-01-01"}, want: "-retention-floor"},
		{args: []string{"-partner-max-ids", "0"}, want: "-partner-max-ids"},
		{args: []string{"-shutdown-timeout", "soon"}, want: "-shutdown-timeout"},
		{args: []string{"-log-level", "loud"}, want: "-log-level"},
		{env: []string{"COHORTD_PARTNER_MAX_IDS=many"}, want: "COHORTD_PARTNER_MAX_IDS"},
		{env: []string{"COHORTD_WEBHOOK_SESSION_TTL=1 hour"}, want: "COHORTD_WEBHOOK_SESSION_TTL"},
	} {
		cmd := newCmd(append(cleanEnv(), tc.env...), append([]string{"-data-dir", t.TempDir()}, tc.args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v %v: exit %d (%v), stderr %q; want exit 2 naming %s", tc.args, tc.env, code, err, stderr.String(), tc.want)
		}
	}
}

// TestRestartKeepsState: SIGTERM, exit 0, start again on the same data dir:
// the same answers, and the admin token is reused, not printed again.
func TestRestartKeepsState(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "mixpanel")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON(userIDs("u", 0, 100))}}, 200)
	d.must(req{method: "POST", path: "/partners/mixpanel/cohorts/users", body: tn.changes("c1", userIDs("u", 0, 40), false)}, 201)
	queries := []req{
		{method: "GET", path: "/v1/cohorts/mixpanel/c1", token: tn.apiKey},
		{method: "POST", path: "/v1/segments/count", token: tn.apiKey, body: map[string]any{"segment": map[string]any{"not": map[string]any{"cohort": "mixpanel/c1"}}}},
		{method: "GET", path: "/v1/users/lookup?external_id=u7", token: tn.apiKey},
		{method: "GET", path: "/v1/usage", token: tn.apiKey},
		{method: "GET", path: "/v1/workspaces/acme/partners/mixpanel/keys", token: admin},
	}
	before := make([]string, len(queries))
	for i, q := range queries {
		before[i] = d.must(q, 200).String()
	}
	if code := d.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}

	d = startDaemon(t, dir, startOpts{})
	if strings.Contains(d.stdout.String(), admin) {
		t.Fatal("the admin token was printed again on restart")
	}
	if d.adminToken() != admin {
		t.Fatal("the admin token changed on restart")
	}
	for i, q := range queries {
		if got := d.must(q, 200).String(); got != before[i] {
			t.Errorf("%s %s after restart:\n got %s\nwant %s", q.method, q.path, got, before[i])
		}
	}
	// The old secrets still work.
	d.must(req{method: "POST", path: "/partners/mixpanel/cohorts/users", body: tn.changes("c1", []string{"u50"}, false)}, 201)
	if code := d.stop(syscall.SIGINT, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGINT", code)
	}
}

func usersJSON(ids []string) []map[string]any {
	out := make([]map[string]any, len(ids))
	for i, id := range ids {
		out[i] = map[string]any{"external_id": id}
	}
	return out
}

// TestKill9Durability: what was acknowledged under -fsync=always is there
// after kill -9 and restart.
func TestKill9Durability(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON(userIDs("u", 0, 500))}}, 200)
	for i := 0; i < 5; i++ {
		d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", i*100, i*100+100), false)}, 201)
	}
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", 0, 10), true)}, 201)
	d.must(req{method: "PUT", path: "/v1/cohorts/amplitude/c2/members", token: tn.apiKey, body: map[string]any{"user_ids": userIDs("u", 0, 7)}}, 200)
	d.stop(syscall.SIGKILL, 10*time.Second)

	d = startDaemon(t, dir, startOpts{})
	r := d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c1", token: tn.apiKey}, 200).json(t)
	if num(t, r, "size") != 490 {
		t.Fatalf("c1 after kill -9: %v, want size 490", r)
	}
	r = d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c2", token: tn.apiKey}, 200).json(t)
	if num(t, r, "size") != 7 {
		t.Fatalf("c2 after kill -9: %v, want size 7", r)
	}
	r = d.must(req{method: "POST", path: "/v1/segments/count", token: tn.apiKey, body: map[string]any{"segment": map[string]any{"all": true}}}, 200).json(t)
	if num(t, r, "count") != 500 {
		t.Fatalf("users after kill -9: %v, want 500", r)
	}
	r = d.must(req{method: "GET", path: "/v1/usage", token: tn.apiKey}, 200).json(t)
	if num(t, r, "total") != 517 {
		t.Fatalf("usage after kill -9: %v, want 517", r)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
}

// TestDecompressionBomb: a few KB of gzip or zstd expanding past -max-body
// is refused with 413, and the server keeps answering.
func TestDecompressionBomb(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{args: []string{"-max-body", "4MiB", "-partner-max-body", "1MiB"}})
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")
	// 256 MiB of white space (valid JSON padding) behind ~260 KB of gzip,
	// and 1 GiB behind ~115 KB of zstd.
	pad := bytes.Repeat([]byte(" "), 1<<20)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	_, _ = zw.Write([]byte(`{"users":[`))
	for i := 0; i < 256; i++ {
		_, _ = zw.Write(pad)
	}
	_, _ = zw.Write([]byte(`]}`))
	_ = zw.Close()
	var zs bytes.Buffer
	ze, err := zstd.NewWriter(&zs, zstd.WithWindowSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = ze.Write([]byte(`{"users":[`))
	for i := 0; i < 1024; i++ {
		_, _ = ze.Write(pad)
	}
	_, _ = ze.Write([]byte(`]}`))
	_ = ze.Close()
	t.Logf("bombs: gzip %d bytes -> 256 MiB, zstd %d bytes -> 1 GiB", gz.Len(), zs.Len())
	for _, b := range []struct {
		enc  string
		body []byte
	}{{"gzip", gz.Bytes()}, {"zstd", zs.Bytes()}} {
		d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: bytes.NewReader(b.body),
			header: map[string]string{"Content-Encoding": b.enc}}, 413)
	}
	// Decoding stopped at the limit: the peak RSS stays far below what
	// holding the decoded body would cost.
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid)); err == nil {
		if m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(st); m != nil {
			kb, _ := strconv.Atoi(string(m[1]))
			t.Logf("cohortd peak RSS %d MiB", kb>>10)
			if kb > 200<<10 {
				t.Errorf("peak RSS %d MiB after the bombs; want < 200 MiB", kb>>10)
			}
		}
	}

	small := bytes.Repeat([]byte(" "), 2<<20) // 2 MiB: past the partner limit only
	zsmall := compress(t, "zstd", append(append([]byte(`{"x":"`), small...), `"}`...))
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: bytes.NewReader(zsmall), header: map[string]string{"Content-Encoding": "zstd"}}, 413)

	d.must(req{method: "GET", path: "/livez"}, 200)
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON([]string{"after-bomb"})}}, 200)
	d.stop(syscall.SIGTERM, 30*time.Second)
}

var curlLineRe = regexp.MustCompile(`(?m)^curl .*$`)

// TestDemo: -demo seeds a fresh data dir and prints curl commands that work
// when pasted; a second start prints the commands again without secrets.
func TestDemo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{args: []string{"-demo"}})
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(d.stdout.String(), "Metrics:") {
		if time.Now().After(deadline) {
			t.Fatalf("demo did not finish in 90s; stdout:\n%s\nstderr:\n%s", d.stdout, tail(d.stderr.String(), 3000))
		}
		select {
		case <-d.done:
			t.Fatalf("cohortd exited: %v", d.exitErr)
		default:
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := d.stdout.String()
	cmds := curlLineRe.FindAllString(out, -1)
	if len(cmds) < 3 {
		t.Fatalf("want at least 3 curl commands:\n%s", out)
	}
	for _, c := range cmds {
		code, body := runCurl(t, c)
		if code < 200 || code > 299 {
			t.Errorf("%s\n=> %d %s", c, code, body)
		}
		// The fallback for machines without curl must understand it too.
		if code, body := replayCurl(t, c); code < 200 || code > 299 {
			t.Errorf("replay %s\n=> %d %s", c, code, body)
		}
		if strings.Contains(c, "/v1/segments/count") && !regexp.MustCompile(`"count":[1-9]`).MatchString(body) {
			t.Errorf("segment count: %s", body)
		}
	}
	if code := d.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	keys1 := demoOutputKeys(t, out)
	checkDemoKeysFile(t, dir, keys1)

	// A restart shows the same, working keys (kept in demo.keys).
	d, out2 := restartDemo(t, dir)
	if keys := demoOutputKeys(t, out2); keys != keys1 || strings.Contains(out2, "issued anew") {
		t.Fatalf("second start: keys %v, want %v:\n%s", keys, keys1, out2)
	}
	runDemoCommands(t, out2)
	// The operator re-keys the partner: the next start notices and re-issues it.
	d.must(req{method: "POST", path: "/v1/partners/amplitude/api-key", token: d.adminToken()}, 201)
	d.stop(syscall.SIGTERM, 30*time.Second)
	d, out3 := restartDemo(t, dir)
	keys3 := demoOutputKeys(t, out3)
	if keys3.api != keys1.api || keys3.secret != keys1.secret || keys3.partner == keys1.partner || !strings.Contains(out3, "issued anew") {
		t.Fatalf("third start: keys %v after a partner re-key (first %v):\n%s", keys3, keys1, out3)
	}
	checkDemoKeysFile(t, dir, keys3)
	runDemoCommands(t, out3)
	d.stop(syscall.SIGTERM, 30*time.Second)
	// Without demo.keys (a data dir from before it existed), every key is
	// issued anew and the old ones are refused.
	if err := os.Remove(filepath.Join(dir, demoKeysFile)); err != nil {
		t.Fatal(err)
	}
	d, out4 := restartDemo(t, dir)
	keys4 := demoOutputKeys(t, out4)
	if keys4.api == keys3.api || keys4.partner == keys3.partner || keys4.secret == keys3.secret {
		t.Fatalf("fourth start kept keys: %v", keys4)
	}
	checkDemoKeysFile(t, dir, keys4)
	runDemoCommands(t, out4)
	d.must(req{method: "GET", path: "/v1/usage", token: keys3.api}, 401)
	d.stop(syscall.SIGTERM, 30*time.Second)
}

// demoKeySet is the three secrets the demo prints.
type demoKeySet struct{ api, partner, secret string }

var demoKeyRe = regexp.MustCompile(`(?m)^  (workspace API key|partner_api_key|client_secret) \([^)]*\):\s+(\S+)$`)

func demoOutputKeys(t *testing.T, out string) demoKeySet {
	t.Helper()
	var k demoKeySet
	for _, m := range demoKeyRe.FindAllStringSubmatch(out, -1) {
		switch m[1] {
		case "workspace API key":
			k.api = m[2]
		case "partner_api_key":
			k.partner = m[2]
		case "client_secret":
			k.secret = m[2]
		}
	}
	if k.api == "" || k.partner == "" || k.secret == "" {
		t.Fatalf("the demo printed no keys:\n%s", out)
	}
	return k
}

// checkDemoKeysFile checks demo.keys: mode 0600, holding k.
func checkDemoKeysFile(t *testing.T, dir string, k demoKeySet) {
	t.Helper()
	p := filepath.Join(dir, demoKeysFile)
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, mode %v; want 0600", p, err, fi.Mode())
	}
	b, _ := os.ReadFile(p)
	for _, s := range []string{k.api, k.partner, k.secret} {
		if !strings.Contains(string(b), s) {
			t.Fatalf("%s lacks %s:\n%s", p, s, b)
		}
	}
}

// restartDemo starts cohortd -demo on an existing demo data dir and
// returns what it printed once it printed its commands.
func restartDemo(t *testing.T, dir string) (*daemon, string) {
	t.Helper()
	d := startDaemon(t, dir, startOpts{args: []string{"-demo"}})
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(d.stdout.String(), "Metrics:") {
		if time.Now().After(deadline) {
			t.Fatalf("demo restart printed nothing:\n%s\n%s", d.stdout, tail(d.stderr.String(), 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := d.stdout.String()
	if !strings.Contains(out, filepath.Join(dir, demoKeysFile)) || strings.Contains(out, "$COHORTD_API_KEY") {
		t.Fatalf("restart output:\n%s", out)
	}
	return d, out
}

// runDemoCommands runs every curl command the demo printed.
func runDemoCommands(t *testing.T, out string) {
	t.Helper()
	cmds := curlLineRe.FindAllString(out, -1)
	if len(cmds) < 4 {
		t.Fatalf("want at least 4 curl commands:\n%s", out)
	}
	for _, c := range cmds {
		if code, body := runCurl(t, c); code < 200 || code > 299 {
			t.Errorf("%s\n=> %d %s", c, code, body)
		}
	}
}

func newCmd(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(binPath, args...)
	cmd.Env = env
	return cmd
}

// runCurl runs a printed curl command line in a shell and returns the HTTP
// status and body. Without curl on the machine it replays the command with
// fasthttp instead.
func runCurl(t *testing.T, line string) (int, string) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		return replayCurl(t, line)
	}
	out, err := exec.Command("sh", "-c", line+` -w '\n%{http_code}'`).Output()
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	code, _ := strconv.Atoi(s[i+1:])
	return code, s[:max(i, 0)]
}

// replayCurl sends the request of a printed curl command line with
// fasthttp. It understands what the demo prints: -sS, -X, -H, -d, a URL,
// single and double quotes (with \" and $(cat file) inside double quotes).
func replayCurl(t *testing.T, line string) (int, string) {
	t.Helper()
	words := shellWords(t, line)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod("GET")
	for i := 1; i < len(words); i++ {
		switch w := words[i]; w {
		case "-sS", "-s", "-S":
		case "-X", "-H", "-d":
			if i+1 >= len(words) {
				t.Fatalf("%s: %s without a value", line, w)
			}
			i++
			v := words[i]
			switch w {
			case "-X":
				req.Header.SetMethod(v)
			case "-H":
				k, val, _ := strings.Cut(v, ":")
				req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(val))
			case "-d":
				if string(req.Header.Method()) == "GET" {
					req.Header.SetMethod("POST")
				}
				req.SetBodyString(v)
			}
		default:
			if strings.HasPrefix(w, "-") {
				t.Fatalf("%s: replay does not know %s", line, w)
			}
			req.SetRequestURI(w)
		}
	}
	if err := fasthttp.DoTimeout(req, resp, 30*time.Second); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return resp.StatusCode(), string(resp.Body())
}

// shellWords splits a command line the way sh would for the demo's output.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				t.Fatalf("unterminated ' in %s", line)
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				switch {
				case line[i] == '\\' && i+1 < len(line):
					i++
					cur.WriteByte(line[i])
				case strings.HasPrefix(line[i:], "$(cat "):
					end := strings.IndexByte(line[i:], ')')
					path := shellWords(t, line[i+len("$(cat "):i+end])
					b, err := os.ReadFile(path[0])
					if err != nil {
						t.Fatal(err)
					}
					cur.WriteString(strings.TrimSpace(string(b)))
					i += end
				default:
					cur.WriteByte(line[i])
				}
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// TestOneALineBulk imports a body of one identifier a line, of every kind,
// as exporters write them, through the binary: the decoder hands a run of
// one direction over as one change object whatever its kinds, and the
// result must be what the lines say in order (u20 and d-anon are added,
// then removed), also after a kill -9.
func TestOneALineBulk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")
	users := []map[string]any{{"device_id": "d-anon"}, {"external_id": "u-alias", "aliases": []map[string]string{{"alias_name": "email", "alias_label": "a@example.com"}}}}
	users = append(users, usersJSON(userIDs("u", 0, 30))...)
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": users}}, 200)

	var nd bytes.Buffer
	for _, id := range userIDs("u", 20, 25) {
		fmt.Fprintf(&nd, "{\"user_ids\":[%q]}\n", id)
	}
	nd.WriteString(`{"device_ids":["d-anon"]}` + "\n" +
		`{"aliases":[{"alias_name":"email","alias_label":"a@example.com"}],"should_remove":false}` + "\n" +
		`{"user_ids":["nobody"]}` + "\n" +
		`{"user_ids":["u20"],"should_remove":true}` + "\n" +
		`{"device_ids":["d-anon"],"should_remove":true}` + "\n")
	r := d.must(req{method: "POST", path: "/v1/cohorts/amplitude/c1/changes", token: tn.apiKey, body: nd.Bytes(), ctype: "application/x-ndjson", encoding: "zstd"}, 200).json(t)
	if num(t, r, "matched") != 9 || num(t, r, "unmatched") != 1 || num(t, r, "added") != 5 || num(t, r, "removed") != 0 {
		t.Fatalf("one identifier a line: %v, want matched 9, unmatched 1, added 5 (u21-u24, u-alias), removed 0", r)
	}
	d.stop(syscall.SIGKILL, 10*time.Second)

	d = startDaemon(t, dir, startOpts{})
	for id, want := range map[string]bool{"u20": false, "u21": true, "u24": true, "u-alias": true} {
		r = d.must(req{method: "POST", path: "/v1/segments/contains", token: tn.apiKey,
			body: map[string]any{"segment": map[string]any{"cohort": "amplitude/c1"}, "external_ids": []string{id}}}, 200).json(t)
		if got, _ := r["results"].([]any); len(got) != 1 || got[0] != want {
			t.Errorf("%s in amplitude/c1 after kill -9: %v, want %v", id, r, want)
		}
	}
	r = d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c1", token: tn.apiKey}, 200).json(t)
	if num(t, r, "size") != 5 {
		t.Fatalf("amplitude/c1 after kill -9: %v, want size 5", r)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
}
