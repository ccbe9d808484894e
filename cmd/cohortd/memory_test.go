package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMemoryReport seeds users through the real binary and reads them back
// from GET /v1/admin/memory and /metrics: users per workspace, bytes by
// structure, the identity tables off the Go heap (and on huge pages where the
// kernel offers them); after a restart, which loads the version 2 snapshot's
// arrays straight into new regions, the report is the same.
func TestMemoryReport(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "mem", "mixpanel")
	const n = 200_000
	for start := 0; start < n; start += 50_000 {
		var body bytes.Buffer
		for i := start; i < start+50_000; i++ {
			fmt.Fprintf(&body, "{\"external_id\":\"user-%014d\"}\n", i)
		}
		d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: body.Bytes(), ctype: "application/x-ndjson", encoding: "zstd"}, 200)
	}
	d.must(req{method: "POST", path: "/partners/mixpanel/cohorts/users", body: tn.changes("c1", userIDs("user-0000000000", 0, 90), false)}, 201)

	check := func(stage string) map[string]any {
		t.Helper()
		r := d.must(req{method: "GET", path: "/v1/admin/memory", token: admin}, 200).json(t)
		wss := r["workspaces"].([]any)
		if len(wss) != 1 {
			t.Fatalf("%s: workspaces %v", stage, wss)
		}
		ws := wss[0].(map[string]any)
		b := ws["bytes"].(map[string]any)
		if ws["id"] != "mem" || num(t, ws, "users") != n || num(t, ws, "identifiers") != n {
			t.Fatalf("%s: %v", stage, ws)
		}
		// One 19-byte external id a user: a 24-byte arena entry, ~16 bytes of
		// table, 5 of user table.
		if per := num(t, ws, "bytes_per_user"); per < 30 || per > 80 {
			t.Errorf("%s: %v bytes a user: %v", stage, per, b)
		}
		if num(t, b, "identity_table") <= 0 || num(t, b, "arena") < 24*n || num(t, b, "user_table") < 5*n || num(t, b, "cohort_bitmaps") <= 0 {
			t.Errorf("%s: bytes %v", stage, b)
		}
		p := r["process"].(map[string]any)
		if num(t, p, "rss_bytes") <= 0 || num(t, p, "go_heap_bytes") <= 0 {
			t.Errorf("%s: process %v", stage, p)
		}
		if num(t, b, "off_heap_reserved") <= 0 || num(t, p, "off_heap_reserved_bytes") < num(t, b, "off_heap_reserved") {
			t.Errorf("%s: the identity tables are not off the Go heap: %v %v", stage, b, p)
		}
		if thpMadvise() && num(t, p, "anon_huge_pages_bytes") < 2<<20 {
			t.Errorf("%s: transparent huge pages are available but the process has none: %v", stage, p)
		}
		t.Logf("%s: %v", stage, r)

		m := string(d.must(req{method: "GET", path: "/metrics"}, 200).body)
		if !strings.Contains(m, `cohortd_workspace_users{workspace="mem"} 200000`) {
			t.Errorf("%s: /metrics lacks the users of workspace mem", stage)
		}
		for _, s := range []string{"identity_table", "arena", "user_table", "cohort_bitmaps", "staging", "user_change_log", "go_heap", "rss", "anon_huge_pages"} {
			re := regexp.MustCompile(`(?m)^cohortd_memory_bytes\{structure="` + s + `"\} (\d+)$`)
			mm := re.FindStringSubmatch(m)
			if mm == nil {
				t.Errorf("%s: /metrics lacks cohortd_memory_bytes{structure=%q}", stage, s)
				continue
			}
			if v, _ := strconv.ParseInt(mm[1], 10, 64); v == 0 && s != "staging" && s != "user_change_log" && (s != "anon_huge_pages" || thpMadvise()) {
				t.Errorf("%s: cohortd_memory_bytes{structure=%q} is 0", stage, s)
			}
		}
		return ws
	}
	before := check("seeded")
	if code := d.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	d = startDaemon(t, dir, startOpts{})
	after := check("restarted")
	bb, ab := before["bytes"].(map[string]any), after["bytes"].(map[string]any)
	for _, k := range []string{"identity_table", "arena", "user_table", "cohort_bitmaps"} {
		if bb[k] != ab[k] {
			t.Errorf("%s: %v before the restart, %v after", k, bb[k], ab[k])
		}
	}
	d.must(req{method: "GET", path: "/v1/users/lookup?external_id=user-00000000199999", token: tn.apiKey}, 200)
	d.stop(syscall.SIGTERM, 30*time.Second)
}

// thpMadvise reports whether the kernel gives transparent huge pages to
// regions advised MADV_HUGEPAGE.
func thpMadvise() bool {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	return err == nil && (bytes.Contains(b, []byte("[madvise]")) || bytes.Contains(b, []byte("[always]")))
}

// TestUserChangeLogFreed drives every import shape through the binary,
// including bodies refused halfway through (after identifiers were
// staged), then changes a user: with no import in flight the user-change
// log must hold nothing. A stager that kept its lease would keep up to
// 16 MiB of key hashes for nobody.
func TestUserChangeLogFreed(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "log", "mixpanel")
	var users bytes.Buffer
	for i := range 100 {
		fmt.Fprintf(&users, "{\"external_id\":\"u%d\"}\n", i)
	}
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: users.Bytes(), ctype: "application/x-ndjson"}, 200)

	logBytes := func() int {
		t.Helper()
		r := d.must(req{method: "GET", path: "/v1/admin/memory", token: admin}, 200).json(t)
		ws := r["workspaces"].([]any)[0].(map[string]any)
		return num(t, ws["bytes"].(map[string]any), "user_change_log")
	}
	next := 0
	touchUser := func() {
		t.Helper()
		next++
		body := fmt.Appendf(nil, "{\"external_id\":\"new%d\"}\n", next)
		d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: body, ctype: "application/x-ndjson"}, 200)
	}
	nd := func(lines ...string) []byte { return []byte(strings.Join(lines, "\n") + "\n") }
	steps := []struct {
		name string
		req  req
		code int
	}{
		{"bulk changes", req{method: "POST", path: "/v1/cohorts/mixpanel/c1/changes", token: tn.apiKey,
			body: nd(`{"user_ids":["u1","u2"]}`), ctype: "application/x-ndjson"}, 200},
		{"bulk changes refused on line 2", req{method: "POST", path: "/v1/cohorts/mixpanel/c1/changes", token: tn.apiKey,
			body: nd(`{"user_ids":["u1","u2"]}`, `{"user_ids":[`), ctype: "application/x-ndjson"}, 400},
		{"snapshot sync", req{method: "PUT", path: "/v1/cohorts/mixpanel/c2/members", token: tn.apiKey,
			body: map[string]any{"user_ids": []string{"u3", "u4"}}}, 200},
		{"snapshot sync refused halfway", req{method: "PUT", path: "/v1/cohorts/mixpanel/c2/members", token: tn.apiKey,
			body: nd(`{"external_id":"u3"}`, `{"external_id":`), ctype: "application/x-ndjson"}, 400},
		{"partner changes", req{method: "POST", path: "/partners/mixpanel/cohorts/users",
			body: tn.changes("c3", []string{"u5", "u6"}, false)}, 201},
	}
	for _, s := range steps {
		d.must(s.req, s.code)
		touchUser()
		if b := logBytes(); b != 0 {
			t.Errorf("after %s and a user change: user_change_log %v bytes, want 0", s.name, b)
		}
	}
}
