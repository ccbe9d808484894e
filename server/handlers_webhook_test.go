package server

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cohortd/cohortd/server/client"
	"github.com/valyala/fasthttp"
)

// hook sends a webhook request with Basic auth password secret ("" sends
// no Authorization header).
func (h *harness) hook(secret, query string, body []byte, encoding string) (int, map[string]any) {
	h.t.Helper()
	rq := fasthttp.AcquireRequest()
	rs := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(rq)
	defer fasthttp.ReleaseResponse(rs)
	rq.Header.SetMethod("POST")
	rq.SetRequestURI("http://cohortd/webhooks/mixpanel" + query)
	rq.Header.SetContentType("application/json")
	if secret != "" {
		rq.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("mixpanel:"+secret)))
	}
	switch encoding {
	case "gzip":
		body = client.Compress(body, client.EncodingGzip)
		rq.Header.Set("Content-Encoding", "gzip")
	case "zstd":
		body = client.Compress(body, client.EncodingZstd)
		rq.Header.Set("Content-Encoding", "zstd")
	}
	rq.SetBody(body)
	if err := h.c.DoTimeout(rq, rs, 20*time.Second); err != nil {
		h.t.Fatal(err)
	}
	r := tResp{status: rs.StatusCode(), body: append([]byte(nil), rs.Body()...)}
	return r.status, r.json(h.t)
}

func membersPage(session string, page, total int, ids ...string) []byte {
	var ms []string
	for _, id := range ids {
		ms = append(ms, fmt.Sprintf(`{"mixpanel_distinct_id":%q,"email":"%s@x.io","first_name":"F"}`, id, id))
	}
	return []byte(fmt.Sprintf(`{"action":"members","parameters":{"mixpanel_project_id":"9","mixpanel_cohort_id":777,"mixpanel_cohort_name":"Webhook cohort","mixpanel_session_id":%q,"page_info":{"total_pages":%d,"page_count":%d},"members":[%s]}}`,
		session, total, page, strings.Join(ms, ",")))
}

func diffBody(action string, ids ...string) []byte {
	var ms []string
	for _, id := range ids {
		ms = append(ms, fmt.Sprintf(`{"mixpanel_distinct_id":%q}`, id))
	}
	return []byte(fmt.Sprintf(`{"action":%q,"parameters":{"mixpanel_cohort_id":"777","members":[%s]}}`, action, strings.Join(ms, ",")))
}

func (h *harness) cohortSize(wsKey, id string) int {
	h.t.Helper()
	r := h.do(tReq{method: "GET", path: "/v1/cohorts/mixpanel/" + id, token: wsKey})
	if r.status == 404 {
		return -1
	}
	return int(r.json(h.t)["size"].(float64))
}

func TestWebhookMembersSession(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	// Two pages, out of order, page 2 twice, unknown and malformed members
	// counted unmatched rather than failing the page.
	st, m := h.hook(w.secret, "", membersPage("s1", 2, 2, "u3", "u4", "nobody"), "gzip")
	if st != 200 || m["status"] != "success" || m["action"] != "members" || m["committed"] != false || m["matched"] != 2.0 || m["unmatched"] != 1.0 || m["pages_received"] != 1.0 {
		t.Fatalf("page 2: %d %v", st, m)
	}
	if got := h.cohortSize(w.wsKey, "777"); got != 0 {
		t.Fatalf("staged page visible: size %d", got)
	}
	h.hook(w.secret, "", membersPage("s1", 2, 2, "u3", "u4"), "zstd")
	st, m = h.hook(w.secret, "", membersPage("s1", 1, 2, "u1"), "")
	if st != 200 || m["committed"] != true || m["added"] != 3.0 || m["data_points"] != 3.0 {
		t.Fatalf("page 1: %d %v", st, m)
	}
	if got := h.cohortSize(w.wsKey, "777"); got != 3 {
		t.Fatalf("after commit size %d, want 3", got)
	}
	r := h.must(200, tReq{method: "GET", path: "/v1/cohorts/mixpanel/777", token: w.wsKey}).json(t)
	if r["name"] != "Webhook cohort" {
		t.Fatalf("cohort name %v", r["name"])
	}
	// A repeat of a committed page changes nothing and opens no session.
	st, m = h.hook(w.secret, "", membersPage("s1", 1, 2, "u5"), "")
	if st != 200 || m["committed"] != true || m["added"] != 0.0 || h.cohortSize(w.wsKey, "777") != 3 {
		t.Fatalf("repeat: %d %v", st, m)
	}
	// An empty cohort arrives as one page with members [].
	h.hook(w.secret, "", membersPage("s2", 1, 1), "")
	if got := h.cohortSize(w.wsKey, "777"); got != 0 {
		t.Fatalf("empty snapshot: size %d", got)
	}
	// total_pages must agree within a session.
	h.hook(w.secret, "", membersPage("s3", 1, 3, "u1"), "")
	st, m = h.hook(w.secret, "", membersPage("s3", 2, 4, "u2"), "")
	if st != 400 || m["status"] != "failure" || m["action"] != "members" {
		t.Fatalf("total_pages change: %d %v", st, m)
	}
}

func TestWebhookDiffsAndMapping(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	st, m := h.hook(w.secret, "", diffBody("add_members", "u1", "u2", "ghost"), "")
	if st != 200 || m["added"] != 2.0 || m["unmatched"] != 1.0 {
		t.Fatalf("add: %d %v", st, m)
	}
	// Re-sent: applied idempotently, no data points.
	st, m = h.hook(w.secret, "", diffBody("add_members", "u1", "u2", "ghost"), "")
	if st != 200 || m["added"] != 0.0 || m["data_points"] != 0.0 {
		t.Fatalf("re-sent add: %d %v", st, m)
	}
	st, m = h.hook(w.secret, "", diffBody("remove_members", "u1"), "")
	if st != 200 || m["removed"] != 1.0 || h.cohortSize(w.wsKey, "777") != 1 {
		t.Fatalf("remove: %d %v", st, m)
	}
	// ?external_id= picks another property; ?alias=email falls back to the
	// alias (email, value) when the external id is missing or unknown.
	body := []byte(`{"action":"add_members","parameters":{"mixpanel_cohort_id":"888","members":[
		{"$braze_external_id":"u3"},{"mixpanel_distinct_id":"u4"},{"$braze_external_id":"zz","email":"a@x.io"},{"email":"a@x.io"},{"$braze_external_id":5}]}}`)
	st, m = h.hook(w.secret, "?external_id=$braze_external_id", body, "")
	if st != 200 || m["matched"] != 1.0 || m["unmatched"] != 4.0 {
		t.Fatalf("custom property: %d %v", st, m)
	}
	st, m = h.hook(w.secret, "?external_id=$braze_external_id&alias=email", body, "")
	if st != 200 || m["matched"] != 3.0 || m["added"] != 1.0 {
		t.Fatalf("alias fallback: %d %v", st, m)
	}
}

func TestWebhookAuthAndErrors(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	h.createPartner("amplitude")
	w := h.newWorld("acme", pkey)
	_, ampSecret := h.createKey("acme", "amplitude")
	ok := diffBody("add_members", "u1")
	for _, c := range []struct {
		name, secret string
		body         []byte
		code         int
		action       any
	}{
		{"no auth", "", ok, 401, "add_members"},
		{"wrong key", "nope", ok, 401, "add_members"},
		{"key of another partner", ampSecret, ok, 401, "add_members"},
		{"not JSON", w.secret, []byte("{"), 400, nil},
		{"unknown action", w.secret, []byte(`{"action":"explode","parameters":{}}`), 400, nil},
		{"members not an array", w.secret, []byte(`{"action":"add_members","parameters":{"mixpanel_cohort_id":"1","members":{}}}`), 400, "add_members"},
		{"members page without page_info", w.secret, []byte(`{"action":"members","parameters":{"mixpanel_cohort_id":"1","mixpanel_session_id":"s","members":[]}}`), 400, "members"},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, m := h.hook(c.secret, "", c.body, "")
			if st != c.code || m["status"] != "failure" {
				t.Fatalf("%d %v", st, m)
			}
			e, _ := m["error"].(map[string]any)
			if e == nil || e["code"] != float64(c.code) || e["message"] == "" {
				t.Fatalf("error object %v", m)
			}
			if c.code == 401 {
				return // the action is not read before authentication
			}
			if m["action"] != c.action {
				t.Fatalf("action %v, want %v", m["action"], c.action)
			}
		})
	}
	// Nothing was applied by the failures.
	if got := h.cohortSize(w.wsKey, "1"); got != -1 {
		t.Fatalf("a failed request created cohort 1 (size %d)", got)
	}
}

func TestWebhookTransientIsRetryable(t *testing.T) {
	h := newHarness(t, Options{}, false) // no engine yet: not ready
	st, m := h.hook("whatever", "", diffBody("add_members", "u1"), "")
	if st != 503 || m["status"] != "failure" {
		t.Fatalf("not ready: %d %v", st, m)
	}
	// Buckets are per credential: the admin makes 3 requests here, the
	// workspace 2, so a burst of 3 lets the setup through.
	h2 := newHarness(t, Options{RateLimit: 0.001, RateBurst: 3}, true)
	pkey := h2.createPartner("mixpanel")
	w := h2.newWorld("acme", pkey)
	for i := 0; i < 3; i++ {
		if st, m := h2.hook(w.secret, "", diffBody("add_members", "u1"), ""); st != 200 {
			t.Fatalf("request %d within the burst: %d %v", i, st, m)
		}
	}
	st, m = h2.hook(w.secret, "", diffBody("add_members", "u1"), "")
	if st != 429 || m["status"] != "failure" {
		t.Fatalf("rate limited: %d %v", st, m)
	}
}
