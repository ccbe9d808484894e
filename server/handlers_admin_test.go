package server

import (
	"testing"
)

func TestAdminEndpoints(t *testing.T) {
	h := newHarness(t, Options{}, true)
	r := h.must(201, tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(`{"id":"acme","extra":1}`)}).json(t)
	if r["id"] != "acme" || r["api_key"] == "" {
		t.Errorf("workspace %v", r)
	}
	for _, c := range []struct {
		body string
		code int
	}{
		{`{"id":"acme"}`, 409},
		{`{"id":"bad id!"}`, 400},
		{`{"id":5}`, 400},
		{`{}`, 400},
		{`[]`, 400},
		{``, 400},
	} {
		r := h.do(tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(c.body)})
		if r.status != c.code {
			t.Errorf("workspace %s: %d, want %d: %s", c.body, r.status, c.code, r.body)
		}
		r.message(t)
	}
	p := h.must(201, tReq{method: "POST", path: "/v1/partners", token: testAdmin, body: []byte(`{"slug":"mixpanel"}`)}).json(t)
	if p["slug"] != "mixpanel" || p["partner_api_key"] == "" {
		t.Errorf("partner %v", p)
	}
	h.must(409, tReq{method: "POST", path: "/v1/partners", token: testAdmin, body: []byte(`{"slug":"mixpanel"}`)})
	h.must(400, tReq{method: "POST", path: "/v1/partners", token: testAdmin, body: []byte(`{"slug":"Mix Panel"}`)})

	keys := "/v1/workspaces/acme/partners/mixpanel/keys"
	k1 := h.must(201, tReq{method: "POST", path: keys, token: testAdmin}).json(t)
	k2 := h.must(201, tReq{method: "POST", path: keys, token: testAdmin, body: []byte(`{}`)}).json(t)
	if k1["key_id"] == "" || k1["client_secret"] == "" || k1["key_id"] == k2["key_id"] {
		t.Errorf("keys %v %v", k1, k2)
	}
	h.must(400, tReq{method: "POST", path: keys, token: testAdmin, body: []byte(`[1]`)})
	h.must(404, tReq{method: "POST", path: "/v1/workspaces/nope/partners/mixpanel/keys", token: testAdmin})
	h.must(404, tReq{method: "POST", path: "/v1/workspaces/acme/partners/nope/keys", token: testAdmin})
	h.must(404, tReq{method: "GET", path: "/v1/workspaces/nope/partners/mixpanel/keys", token: testAdmin})

	// Use k1 once: last_used_at becomes a time.
	pkey := p["partner_api_key"].(string)
	h.must(201, tReq{method: "POST", path: "/partners/mixpanel/cohorts", body: jsonBody(map[string]any{
		"partner_api_key": pkey, "client_secret": k1["client_secret"], "cohort_id": "c", "name": "C", "created_at": "2026-01-01T00:00:00Z"})})
	h.must(204, tReq{method: "DELETE", path: keys + "/" + k2["key_id"].(string), token: testAdmin})
	h.must(404, tReq{method: "DELETE", path: keys + "/nope", token: testAdmin})
	list := h.must(200, tReq{method: "GET", path: keys, token: testAdmin}).json(t)["keys"].([]any)
	if len(list) != 2 {
		t.Fatalf("keys %v", list)
	}
	byID := map[string]map[string]any{}
	for _, k := range list {
		m := k.(map[string]any)
		byID[m["key_id"].(string)] = m
		if _, ok := m["client_secret"]; ok {
			t.Error("listing shows a secret")
		}
		if _, ok := m["created_at"].(string); !ok {
			t.Errorf("created_at %v", m)
		}
	}
	if a := byID[k1["key_id"].(string)]; a["revoked"] != false || a["last_used_at"] == nil {
		t.Errorf("used key %v", a)
	}
	if b := byID[k2["key_id"].(string)]; b["revoked"] != true || b["last_used_at"] != nil {
		t.Errorf("revoked key %v", b)
	}
}
