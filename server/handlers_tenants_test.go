package server

import (
	"strings"
	"testing"
)

func TestTenantAdmin(t *testing.T) {
	h := newHarness(t, Options{}, true)
	ws := h.must(201, tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(`{"id":"acme"}`)}).json(t)
	key := ws["api_key"].(string)
	h.must(201, tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(`{"id":"empty"}`)})
	pt := h.must(201, tReq{method: "POST", path: "/v1/partners", token: testAdmin, body: []byte(`{"slug":"amp"}`)}).json(t)
	pkey := pt["partner_api_key"].(string)
	k := h.must(201, tReq{method: "POST", path: "/v1/workspaces/acme/partners/amp/keys", token: testAdmin}).json(t)
	secret := k["client_secret"].(string)
	h.must(200, tReq{method: "POST", path: "/v1/users", token: key, body: []byte(`{"users":[{"external_id":"u1"}]}`)})

	// Auth: admin token only.
	for _, q := range []tReq{
		{method: "GET", path: "/v1/workspaces"},
		{method: "GET", path: "/v1/partners", token: "wrong"},
		{method: "DELETE", path: "/v1/workspaces/acme", token: "nope"},
	} {
		h.must(401, q).message(t)
	}
	h.must(403, tReq{method: "GET", path: "/v1/workspaces", token: key})
	h.must(403, tReq{method: "POST", path: "/v1/admin/snapshot", token: key})

	list := h.must(200, tReq{method: "GET", path: "/v1/workspaces", token: testAdmin}).json(t)["workspaces"].([]any)
	if len(list) != 2 {
		t.Fatalf("workspaces %v", list)
	}
	acme := list[0].(map[string]any)
	if acme["id"] != "acme" || acme["users"] != 1.0 || acme["cohorts"] != 0.0 || acme["created_at"] == nil {
		t.Fatalf("acme %v", acme)
	}

	// Rotation.
	rot := h.must(201, tReq{method: "POST", path: "/v1/workspaces/acme/api-key", token: testAdmin}).json(t)
	key2 := rot["api_key"].(string)
	if rot["id"] != "acme" || key2 == key {
		t.Fatalf("rotation %v", rot)
	}
	h.must(401, tReq{method: "GET", path: "/v1/usage", token: key})
	h.must(200, tReq{method: "GET", path: "/v1/usage", token: key2})
	h.must(404, tReq{method: "POST", path: "/v1/workspaces/nope/api-key", token: testAdmin, body: []byte(`{}`)})
	h.must(400, tReq{method: "POST", path: "/v1/workspaces/acme/api-key", token: testAdmin, body: []byte(`[]`)})

	prot := h.must(201, tReq{method: "POST", path: "/v1/partners/amp/api-key", token: testAdmin, body: []byte(`{}`)}).json(t)
	pkey2 := prot["partner_api_key"].(string)
	if prot["slug"] != "amp" || pkey2 == pkey {
		t.Fatalf("partner rotation %v", prot)
	}
	upsert := func(pk string) tReq {
		return tReq{method: "POST", path: "/partners/amp/cohorts", body: jsonBody(map[string]any{
			"partner_api_key": pk, "client_secret": secret, "cohort_id": "c", "name": "C", "created_at": "2026-01-01T00:00:00Z"})}
	}
	if m := h.must(401, upsert(pkey)).message(t); m != "Invalid Partner API key" {
		t.Fatalf("old partner key: %q", m)
	}
	h.must(201, upsert(pkey2))
	h.must(404, tReq{method: "POST", path: "/v1/partners/nope/api-key", token: testAdmin})

	// Partners: list, delete.
	ps := h.must(200, tReq{method: "GET", path: "/v1/partners", token: testAdmin}).json(t)["partners"].([]any)
	if len(ps) != 1 || ps[0].(map[string]any)["slug"] != "amp" || ps[0].(map[string]any)["created_at"] == nil {
		t.Fatalf("partners %v", ps)
	}
	h.must(204, tReq{method: "DELETE", path: "/v1/partners/amp", token: testAdmin})
	h.must(404, tReq{method: "DELETE", path: "/v1/partners/amp", token: testAdmin})
	h.must(401, upsert(pkey2))
	if ps := h.must(200, tReq{method: "GET", path: "/v1/partners", token: testAdmin}).json(t)["partners"].([]any); len(ps) != 0 {
		t.Fatalf("partners after delete %v", ps)
	}
	// Cohorts stay.
	h.must(200, tReq{method: "GET", path: "/v1/cohorts/amp/c", token: key2})

	// Workspaces: delete.
	r := h.must(409, tReq{method: "DELETE", path: "/v1/workspaces/acme", token: testAdmin})
	if m := r.message(t); !strings.Contains(m, "force=true") {
		t.Fatalf("409 message %q", m)
	}
	h.must(400, tReq{method: "DELETE", path: "/v1/workspaces/acme?force=yes", token: testAdmin})
	h.must(204, tReq{method: "DELETE", path: "/v1/workspaces/empty", token: testAdmin})
	h.must(204, tReq{method: "DELETE", path: "/v1/workspaces/acme?force=true", token: testAdmin, idemKey: "del-1"})
	// The same Idempotency-Key replays the first reply.
	h.must(204, tReq{method: "DELETE", path: "/v1/workspaces/acme?force=true", token: testAdmin, idemKey: "del-1"})
	h.must(404, tReq{method: "DELETE", path: "/v1/workspaces/acme?force=true", token: testAdmin})
	h.must(401, tReq{method: "GET", path: "/v1/usage", token: key2})
	if list := h.must(200, tReq{method: "GET", path: "/v1/workspaces", token: testAdmin}).json(t)["workspaces"].([]any); len(list) != 0 {
		t.Fatalf("workspaces after delete %v", list)
	}
	r = h.must(405, tReq{method: "PUT", path: "/v1/workspaces/acme", token: testAdmin})
	if a := string(r.header.Peek("Allow")); a != "DELETE" {
		t.Fatalf("Allow %q", a)
	}

	// A workspace created again under a deleted one's id shares nothing
	// with it, not even Idempotency-Key replies.
	up := func(key string) tReq {
		return tReq{method: "POST", path: "/v1/users", token: key, idemKey: "same", body: []byte(`{"users":[{"external_id":"x"}]}`)}
	}
	k3 := h.must(201, tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(`{"id":"again"}`)}).json(t)["api_key"].(string)
	h.must(200, up(k3))
	h.must(204, tReq{method: "DELETE", path: "/v1/workspaces/again?force=true", token: testAdmin})
	k4 := h.must(201, tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(`{"id":"again"}`)}).json(t)["api_key"].(string)
	if r := h.must(200, up(k4)); string(r.header.Peek("Idempotent-Replayed")) != "" || r.json(t)["created"] != 1.0 {
		t.Fatalf("re-created workspace got the deleted one's reply: %s", r.body)
	}

	// An engine without a data directory cannot snapshot.
	h.must(409, tReq{method: "POST", path: "/v1/admin/snapshot", token: testAdmin})
}

func TestSnapshotMetrics(t *testing.T) {
	h := newHarness(t, Options{}, true)
	body := string(h.must(200, tReq{method: "GET", path: "/metrics"}).body)
	for _, m := range []string{"cohortd_snapshot_failures_total 0", "cohortd_snapshot_last_success_timestamp_seconds 0", "cohortd_snapshot_age_seconds "} {
		if !strings.Contains(body, "\n"+m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
}
