package main

import (
	"encoding/base64"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mixpanelPage is a webhook members page naming users u<lo>…u<hi-1>.
func mixpanelPage(session string, page, total, lo, hi int) string {
	var ms []string
	for i := lo; i < hi; i++ {
		ms = append(ms, fmt.Sprintf(`{"mixpanel_distinct_id":"u%d","email":"u%d@example.com","first_name":"U"}`, i, i))
	}
	return fmt.Sprintf(`{"action":"members","parameters":{"mixpanel_project_id":"1","mixpanel_cohort_id":4242,"mixpanel_cohort_name":"Whales","mixpanel_session_id":%q,"page_info":{"total_pages":%d,"page_count":%d},"members":[%s]}}`,
		session, total, page, strings.Join(ms, ","))
}

func (d *daemon) hook(secret, body string) reply {
	d.t.Helper()
	return d.do(req{method: "POST", path: "/webhooks/mixpanel", body: body, encoding: "gzip",
		header: map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("mixpanel:"+secret))}})
}

func (d *daemon) membersOf(apiKey, cohort string) map[string]bool {
	d.t.Helper()
	r := d.do(req{method: "GET", path: "/v1/cohorts/mixpanel/" + cohort + "/members", token: apiKey})
	got := map[string]bool{}
	if r.status == 404 {
		return got
	}
	for _, m := range ndjsonLines(d.t, r.body) {
		got[m["external_id"].(string)] = true
	}
	return got
}

// TestWebhookSessionSurvivesKill9: a 10-page Mixpanel sync interrupted by
// kill -9 after page 6 completes after the restart with the exact union,
// and the old membership stays visible until the last page.
func TestWebhookSessionSurvivesKill9(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	tn := setupTenant(d, d.adminToken(), "wh", "mixpanel")
	var users strings.Builder
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&users, "{\"external_id\":\"u%d\"}\n", i)
	}
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: users.String(), ctype: "application/x-ndjson"}, 200)
	if r := d.hook(tn.secret, mixpanelPage("old", 1, 1, 900, 1000)); r.status != 200 {
		t.Fatalf("old sync: %s", r)
	}
	for p := 1; p <= 6; p++ {
		if r := d.hook(tn.secret, mixpanelPage("s", p, 10, (p-1)*50, p*50)); r.status != 200 || r.json(t)["committed"] != false {
			t.Fatalf("page %d: %s", p, r)
		}
	}
	d.stop(syscall.SIGKILL, 10*time.Second)
	d = startDaemon(t, dir, startOpts{})
	for p := 7; p <= 10; p++ {
		if got := d.membersOf(tn.apiKey, "4242"); len(got) != 100 || !got["u950"] {
			t.Fatalf("before page %d: %d members, want the old 100", p, len(got))
		}
		r := d.hook(tn.secret, mixpanelPage("s", p, 10, (p-1)*50, p*50))
		if r.status != 200 {
			t.Fatalf("page %d: %s", p, r)
		}
		if p == 10 && r.json(t)["committed"] != true {
			t.Fatalf("last page did not commit: %s", r)
		}
	}
	got := d.membersOf(tn.apiKey, "4242")
	if len(got) != 500 || !got["u0"] || !got["u499"] || got["u500"] || got["u950"] {
		t.Fatalf("after completion: %d members", len(got))
	}
	c := d.must(req{method: "GET", path: "/v1/cohorts/mixpanel/4242", token: tn.apiKey}, 200).json(t)
	if c["name"] != "Whales" {
		t.Fatalf("cohort %v", c)
	}
}

// TestWebhookSessionExpires: with -webhook-session-ttl 1s an incomplete
// session is dropped; its late page starts a new session and the cohort is
// untouched.
func TestWebhookSessionExpires(t *testing.T) {
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-webhook-session-ttl", "1s"}})
	tn := setupTenant(d, d.adminToken(), "wh", "mixpanel")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: `{"users":[{"external_id":"u1"},{"external_id":"u2"},{"external_id":"u3"}]}`}, 200)
	d.hook(tn.secret, mixpanelPage("old", 1, 1, 3, 4))
	d.hook(tn.secret, mixpanelPage("s", 1, 2, 1, 2))
	time.Sleep(1500 * time.Millisecond)
	r := d.hook(tn.secret, mixpanelPage("s", 2, 2, 2, 3))
	if r.status != 200 || r.json(t)["committed"] != false || r.json(t)["pages_received"] != 1.0 {
		t.Fatalf("late page: %s", r)
	}
	if got := d.membersOf(tn.apiKey, "4242"); len(got) != 1 || !got["u3"] {
		t.Fatalf("expired session changed the cohort: %v", got)
	}
}
