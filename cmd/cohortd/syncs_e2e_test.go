package main

import (
	"bytes"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestSyncHistorySurvivesRestarts: the sync history and health read the
// same after kill -9 (WAL replay) and after a clean stop (snapshot), and a
// Mixpanel session begun before a crash commits after it as one sync with
// the counts of all its pages.
func TestSyncHistorySurvivesRestarts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/partners", token: admin, body: map[string]string{"slug": "mixpanel"}}, 201)
	mk := d.must(req{method: "POST", path: "/v1/workspaces/acme/partners/mixpanel/keys", token: admin, body: map[string]any{}}, 201).json(t)
	basic := map[string]string{"Authorization": "Basic " + basicAuth("mp", str(t, mk, "client_secret"))}
	var users []map[string]any
	for _, id := range userIDs("u", 0, 200) {
		users = append(users, map[string]any{"external_id": id})
	}
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": users}}, 200)

	// Partner requests (merged into one sync), bulk changes, a replace.
	for i := 0; i < 3; i++ {
		d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c", append(userIDs("u", i*50, i*50+50), "ghost"), false)}, 201)
	}
	d.must(req{method: "POST", path: "/v1/cohorts/amplitude/c/changes", token: tn.apiKey, body: map[string]any{"cohort_changes": []map[string]any{{"user_ids": userIDs("u", 0, 10), "should_remove": true}}}}, 200)
	d.must(req{method: "PUT", path: "/v1/cohorts/amplitude/c/members", token: tn.apiKey, body: map[string]any{"user_ids": userIDs("u", 0, 40)}}, 200)
	// Page 1 of 2 of a Mixpanel snapshot session.
	page := func(n int, ids ...string) map[string]any {
		var ms []map[string]any
		for _, id := range ids {
			ms = append(ms, map[string]any{"mixpanel_distinct_id": id})
		}
		return map[string]any{"action": "members", "parameters": map[string]any{"mixpanel_cohort_id": "m1", "mixpanel_cohort_name": "M",
			"mixpanel_session_id": "s1", "page_info": map[string]any{"total_pages": 2, "page_count": n}, "members": ms}}
	}
	d.must(req{method: "POST", path: "/webhooks/mixpanel", body: page(1, append(userIDs("u", 0, 30), "nobody1", "nobody2")...), header: basic}, 200)

	read := func(d *daemon) string {
		var b bytes.Buffer
		for _, p := range []string{"/v1/cohorts/amplitude/c/syncs?limit=1000", "/v1/cohorts/mixpanel/m1/syncs", "/v1/health/cohorts"} {
			b.Write(d.must(req{method: "GET", path: p, token: tn.apiKey}, 200).body)
			b.WriteByte('\n')
		}
		return b.String()
	}
	before := read(d)
	if c := d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c/syncs", token: tn.apiKey}, 200).json(t); len(c["syncs"].([]any)) != 3 {
		t.Fatalf("want 3 syncs (partner ×3 merged, bulk, replace): %v", c)
	}

	d.stop(syscall.SIGKILL, 10*time.Second)
	d = startDaemon(t, dir, startOpts{})
	if after := read(d); after != before {
		t.Fatalf("after kill -9:\n%s\nbefore:\n%s", after, before)
	}
	// The session's second page commits it: one sync of both pages.
	d.must(req{method: "POST", path: "/webhooks/mixpanel", body: page(2, append(userIDs("u", 30, 50), "nobody3")...), header: basic}, 200)
	s := d.must(req{method: "GET", path: "/v1/cohorts/mixpanel/m1/syncs", token: tn.apiKey}, 200).json(t)["syncs"].([]any)
	if len(s) != 1 {
		t.Fatalf("session syncs: %v", s)
	}
	got := s[0].(map[string]any)
	un := got["unmatched"].(map[string]any)
	if got["source"] != "webhook" || got["requests"] != 2.0 || got["matched"] != 50.0 || un["unknown"] != 3.0 || got["size_after"] != 50.0 {
		t.Fatalf("session sync across a crash: %v", got)
	}
	before = read(d)
	if code := d.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	d = startDaemon(t, dir, startOpts{})
	if after := read(d); after != before {
		t.Fatalf("after a clean restart (snapshot):\n%s\nbefore:\n%s", after, before)
	}
	// c: the replace kept 40 of 140 (shrunk); m1: one sync (ok).
	mt := d.must(req{method: "GET", path: "/metrics"}, 200).body
	for st, n := range map[string]int{"ok": 1, "shrunk": 1, "stale": 0} {
		if want := fmt.Sprintf(`cohortd_cohorts_health{workspace="acme",status=%q} %d`, st, n); !bytes.Contains(mt, []byte(want+"\n")) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
}
