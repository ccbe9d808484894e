package server

import (
	"strconv"
	"testing"
)

func TestRateLimit(t *testing.T) {
	h := newHarness(t, Options{RateLimit: 0.5, RateBurst: 2}, true)
	pkey := h.createPartner("mixpanel") // admin: 1 of 2
	key := h.createWorkspace("acme")    // admin: 2 of 2
	r := h.must(429, tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(`{"id":"b"}`)})
	if r.message(t) != "rate limit exceeded" {
		t.Errorf("429 %s", r.body)
	}
	if n, err := strconv.Atoi(string(r.header.Peek("Retry-After"))); err != nil || n < 1 {
		t.Errorf("Retry-After %q", r.header.Peek("Retry-After"))
	}
	// Each credential has its own bucket.
	h.must(200, tReq{method: "GET", path: "/v1/cohorts", token: key})
	h.must(200, tReq{method: "GET", path: "/v1/cohorts", token: key})
	h.must(429, tReq{method: "GET", path: "/v1/cohorts", token: key})
	// Partner requests are limited per client secret; the key was issued
	// before the admin bucket ran dry, so use the engine directly.
	_, secret, err := h.e.Workspace("acme").CreateImportKey("mixpanel")
	if err != nil {
		t.Fatal(err)
	}
	body := jsonBody(map[string]any{"partner_api_key": pkey, "client_secret": secret, "cohort_id": "c", "cohort_changes": []any{}})
	h.must(201, tReq{method: "POST", path: "/partners/mixpanel/cohorts/users", body: body})
	h.must(201, tReq{method: "POST", path: "/partners/mixpanel/cohorts/users", body: body})
	r = h.must(429, tReq{method: "POST", path: "/partners/mixpanel/cohorts/users", body: body})
	if r.header.Peek("Retry-After") == nil {
		t.Error("no Retry-After")
	}
	// Bad credentials are refused before any bucket is taken.
	h.must(401, tReq{method: "GET", path: "/v1/cohorts", token: "nope"})
}

// TestTenantIsolation drives every workspace endpoint with workspace A's
// key at workspace B's objects and checks that B is unchanged and that
// nothing of B shows through.
func TestTenantIsolation(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	a := h.newWorld("wsa", pkey)
	b := h.newWorld("wsb", pkey)
	// B-only objects: users and cohorts that A does not have.
	h.must(200, tReq{method: "POST", path: "/v1/users", token: b.wsKey, body: []byte(`{"users":[{"external_id":"bonly"},{"device_id":"bdev"}]}`)})
	h.must(200, tReq{method: "PUT", path: "/v1/cohorts/mixpanel/bcohort/members", token: b.wsKey, body: []byte(`{"user_ids":["bonly","u1"],"device_ids":["bdev"]}`)})
	h.must(201, tReq{method: "POST", path: b.partnerPath, body: b.creds(map[string]any{"cohort_id": "bnamed", "name": "B", "created_at": "2026-01-01T00:00:00Z"})})

	snapshot := func() string {
		var out string
		for _, p := range []string{"/v1/cohorts", "/v1/usage", "/v1/cohorts/mixpanel/bcohort/members", "/v1/cohorts/mixpanel/bcohort/syncs", "/v1/users/lookup?external_id=bonly", "/v1/users/lookup?device_id=bdev"} {
			r := h.must(200, tReq{method: "GET", path: p, token: b.wsKey})
			out += string(r.body) + "\n"
		}
		return out
	}
	// B uses an Idempotency-Key that A will use too: scopes never mix.
	bReply := h.must(200, tReq{method: "POST", path: "/v1/users", token: b.wsKey, body: []byte(`{"users":[{"external_id":"bonly"}]}`), idemKey: "shared"})
	before := snapshot()

	covered := map[string]bool{}
	cases := []struct {
		pattern string
		q       tReq
		check   func(r tResp)
	}{
		{"/v1/users", tReq{method: "POST", path: "/v1/users", body: []byte(`{"users":[{"external_id":"bonly","device_id":"bdev"}]}`)}, nil},
		{"/v1/users/delete", tReq{method: "POST", path: "/v1/users/delete", body: []byte(`{"user_ids":["bonly","u1"],"device_ids":["bdev"]}`)}, nil},
		{"/v1/users/lookup", tReq{method: "GET", path: "/v1/users/lookup?external_id=bonly"}, nil},
		{"/v1/cohorts", tReq{method: "GET", path: "/v1/cohorts"}, func(r tResp) {
			for _, c := range r.json(t)["cohorts"].([]any) {
				if id := c.(map[string]any)["cohort_id"]; id == "bcohort" || id == "bnamed" {
					t.Errorf("A lists B's cohort %v", c)
				}
			}
		}},
		{"/v1/cohorts/{partner}/{cohort_id}", tReq{method: "GET", path: "/v1/cohorts/mixpanel/bcohort"}, func(r tResp) {
			if r.status != 404 {
				t.Errorf("A reads B's cohort: %d %s", r.status, r.body)
			}
		}},
		{"/v1/cohorts/{partner}/{cohort_id}/members", tReq{method: "GET", path: "/v1/cohorts/mixpanel/bcohort/members"}, func(r tResp) {
			if r.status != 404 {
				t.Errorf("A lists B's members: %d", r.status)
			}
		}},
		{"/v1/cohorts/{partner}/{cohort_id}/changes", tReq{method: "POST", path: "/v1/cohorts/mixpanel/bcohort/changes", body: []byte(`{"cohort_changes":[{"user_ids":["u1","bonly"],"should_remove":true}]}`)}, nil},
		{"/v1/cohorts/{partner}/{cohort_id}/members", tReq{method: "PUT", path: "/v1/cohorts/mixpanel/bcohort/members", body: []byte(`{"user_ids":[]}`)}, nil},
		{"/v1/cohorts/{partner}/{cohort_id}", tReq{method: "DELETE", path: "/v1/cohorts/mixpanel/bnamed"}, nil},
		{"/v1/segments/count", tReq{method: "POST", path: "/v1/segments/count", body: []byte(`{"segment":{"cohort":"mixpanel/bnamed"}}`)}, func(r tResp) {
			if m := r.json(t); m["count"] != 0.0 || m["warnings"] == nil {
				t.Errorf("A counts B's cohort: %v", m)
			}
		}},
		{"/v1/segments/contains", tReq{method: "POST", path: "/v1/segments/contains", body: []byte(`{"segment":{"all":true},"users":[{"external_id":"bonly"},{"device_id":"bdev"}]}`)}, func(r tResp) {
			if string(r.body) != `{"results":[false,false]}` {
				t.Errorf("A sees B's users: %s", r.body)
			}
		}},
		{"/v1/segments/members", tReq{method: "POST", path: "/v1/segments/members", body: []byte(`{"segment":{"all":true},"limit":100}`)}, func(r tResp) {
			for _, m := range r.json(t)["members"].([]any) {
				if n := memberName(m.(map[string]any)); n == "bonly" || n == "dev:bdev" {
					t.Errorf("A pages B's user %s", n)
				}
			}
		}},
		{"/v1/usage", tReq{method: "GET", path: "/v1/usage"}, nil},
		{"/v1/cohorts/{partner}/{cohort_id}/syncs", tReq{method: "GET", path: "/v1/cohorts/mixpanel/bcohort/syncs"}, func(r tResp) {
			// A made its own bcohort above; B's one sync matched 3 users.
			for _, s := range r.json(t)["syncs"].([]any) {
				if s.(map[string]any)["matched"] != 0.0 {
					t.Errorf("A reads B's syncs: %s", r.body)
				}
			}
		}},
		{"/v1/health/cohorts", tReq{method: "GET", path: "/v1/health/cohorts"}, func(r tResp) {
			for _, c := range r.json(t)["cohorts"].([]any) {
				if id := c.(map[string]any)["cohort_id"]; id == "bcohort" || id == "bnamed" {
					t.Errorf("A sees the health of B's cohort %v", c)
				}
			}
		}},
	}
	for _, c := range cases {
		q := c.q
		q.token = a.wsKey
		q.idemKey = ""
		r := h.do(q)
		if r.status >= 500 {
			t.Errorf("%s %s: %d", q.method, q.path, r.status)
		}
		if c.check != nil {
			c.check(r)
		}
		covered[c.q.method+" "+c.pattern] = true
		// The same request with an Idempotency-Key B used must not replay B's reply.
		if q.method != "GET" {
			q.idemKey = "shared"
			r := h.do(q)
			if string(r.body) == string(bReply.body) && r.header.Peek("Idempotent-Replayed") != nil {
				t.Errorf("%s %s: A got B's idempotent reply", q.method, q.path)
			}
		}
	}
	for _, rt := range h.s.routes {
		if rt.auth == authWorkspace && !covered[rt.method+" "+rt.pattern] {
			t.Errorf("isolation test misses %s %s", rt.method, rt.pattern)
		}
	}
	if after := snapshot(); after != before {
		t.Errorf("B changed:\nbefore %s\nafter %s", before, after)
	}
	// Partner credentials of B write only to B, never to A.
	h.must(201, tReq{method: "POST", path: b.usersPath, body: b.creds(map[string]any{"cohort_id": "only-b", "cohort_changes": []any{}})})
	h.must(404, tReq{method: "GET", path: "/v1/cohorts/mixpanel/only-b", token: a.wsKey})
	// And A's key cannot reach admin endpoints for B.
	h.must(403, tReq{method: "GET", path: "/v1/workspaces/wsb/partners/mixpanel/keys", token: a.wsKey})
	h.must(403, tReq{method: "DELETE", path: "/v1/workspaces/wsb/partners/mixpanel/keys/" + b.keyID, token: a.wsKey})
}
