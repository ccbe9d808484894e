package server

import (
	"fmt"
	"github.com/cohortd/cohortd/server/client"
	"strings"
	"testing"
)

func TestPartnerCohortErrors(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	h.createPartner("amplitude")
	w := h.newWorld("acme", pkey)
	_, ampSecret := h.createKey("acme", "amplitude")
	revokedID, revoked := h.createKey("acme", "mixpanel")
	h.must(204, tReq{method: "DELETE", path: "/v1/workspaces/acme/partners/mixpanel/keys/" + revokedID, token: testAdmin})

	good := map[string]any{"partner_api_key": pkey, "client_secret": w.secret, "cohort_id": "c1", "name": "Cohort 1", "created_at": "2026-01-02T03:04:05.123+02:00"}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for kk, vv := range good {
			m[kk] = vv
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	cases := []struct {
		name string
		path string
		body map[string]any
		code int
		msg  string
	}{
		{"bad partner key", w.partnerPath, with("partner_api_key", "nope"), 401, "Invalid Partner API key"},
		{"no partner key", w.partnerPath, with("partner_api_key", nil), 401, "Invalid Partner API key"},
		{"unknown partner slug", "/partners/heap/cohorts", good, 401, "Invalid Partner API key"},
		{"bad secret", w.partnerPath, with("client_secret", "nope"), 401, "Invalid client secret"},
		{"revoked secret", w.partnerPath, with("client_secret", revoked), 401, "Invalid client secret"},
		{"other partner's secret", w.partnerPath, with("client_secret", ampSecret), 401, "Partner not enabled for client with client secret: " + ampSecret[:4] + "..."},
		{"credentials before fields", w.partnerPath, map[string]any{"partner_api_key": "x"}, 401, "Invalid Partner API key"},
		{"no cohort_id", w.partnerPath, with("cohort_id", nil), 400, "cohort_id must be a valid string"},
		{"empty cohort_id", w.partnerPath, with("cohort_id", ""), 400, "cohort_id must be a valid string"},
		{"numeric cohort_id", w.partnerPath, with("cohort_id", 12), 400, "cohort_id must be a valid string"},
		{"no name", w.partnerPath, with("name", nil), 400, "name must be a non-empty string"},
		{"empty name", w.partnerPath, with("name", ""), 400, "name must be a non-empty string"},
		{"no created_at", w.partnerPath, with("created_at", nil), 400, "created_at must be a valid time as an ISO-8601 string"},
		{"bad created_at", w.partnerPath, with("created_at", "yesterday"), 400, "created_at must be a valid time as an ISO-8601 string"},
		{"ok", w.partnerPath, with("extra_field", map[string]any{"x": 1}), 201, ""},
		{"double slash", "/" + w.partnerPath, with("name", "Renamed"), 201, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.do(tReq{method: "POST", path: c.path, body: jsonBody(c.body)})
			if r.status != c.code {
				t.Fatalf("status %d, want %d: %s", r.status, c.code, r.body)
			}
			if c.code == 201 {
				if string(r.body) != `{"message":"success"}` {
					t.Errorf("body %s", r.body)
				}
				return
			}
			if got := r.message(t); got != c.msg {
				t.Errorf("message %q, want %q", got, c.msg)
			}
		})
	}
	h.must(400, tReq{method: "POST", path: w.partnerPath, body: []byte(`not json`)}).message(t)
	// The rename took; created_at is the first value.
	c := h.must(200, tReq{method: "GET", path: "/v1/cohorts/mixpanel/c1", token: w.wsKey}).json(t)
	if c["name"] != "Renamed" || c["created_at"] != "2026-01-02T01:04:05.123Z" {
		t.Errorf("cohort %v", c)
	}
}

func TestPartnerUsers(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	post := func(body []byte, enc string) map[string]any {
		t.Helper()
		return h.must(201, tReq{method: "POST", path: w.usersPath, body: body, encoding: enc}).json(t)
	}
	changes := func(cs ...any) []byte {
		if cs == nil {
			cs = []any{}
		}
		return w.creds(map[string]any{"cohort_id": "c1", "cohort_changes": cs, "unknown_field": true})
	}
	// Never-seen cohort with [] : a no-op that creates the cohort lazily.
	r := post(w.creds(map[string]any{"cohort_id": "fresh", "cohort_changes": []any{}}), "")
	if r["matched"].(float64) != 0 || r["message"] != "success" {
		t.Errorf("empty: %v", r)
	}
	r = post(changes(
		map[string]any{"user_ids": []string{"u1", "u2", "nobody"}, "device_ids": []string{"d1", "d9", "dx"},
			"aliases": []any{map[string]string{"alias_name": "email", "alias_label": "a@x.io"}, map[string]string{"alias_name": "a@x.io", "alias_label": "email"}}},
		map[string]any{"user_ids": []string{"u2"}, "should_remove": true, "device_ids": []string{}},
		map[string]any{"user_ids": []string{"u3", "u4"}, "timestamp": "2009-12-31T23:59:59Z"},
		map[string]any{"user_ids": []string{"u5"}, "timestamp": "2026-01-01T00:00:00Z"},
	), "")
	want := map[string]float64{"matched": 6, "unmatched": 4, "added": 4, "removed": 0, "dropped_before_floor": 2, "data_points": 4}
	for k, v := range want {
		if r[k] != v {
			t.Errorf("%s = %v, want %v (%v)", k, r[k], v, r)
		}
	}
	by := r["unmatched_by_reason"].(map[string]any)
	if by["unknown"] != 3.0 || by["device_id_identified"] != 1.0 {
		t.Errorf("unmatched_by_reason %v", by)
	}
	// gzip and zstd bodies; a retry is free.
	for _, enc := range []string{"gzip", "zstd"} {
		b := changes(map[string]any{"user_ids": []string{"u1"}})
		if enc == "gzip" {
			b = client.Compress(b, client.EncodingGzip)
		} else {
			b = client.Compress(b, client.EncodingZstd)
		}
		r = post(b, enc)
		if r["matched"] != 1.0 || r["data_points"] != 0.0 {
			t.Errorf("%s: %v", enc, r)
		}
	}
	r = post(changes(map[string]any{"user_ids": []string{"u1"}, "should_remove": true}), "")
	if r["removed"] != 1.0 || r["data_points"] != 1.0 {
		t.Errorf("remove: %v", r)
	}
	u := h.must(200, tReq{method: "GET", path: "/v1/usage", token: w.wsKey}).json(t)
	if u["total"] != 5.0 {
		t.Errorf("usage %v", u)
	}
	if p := u["partners"].(map[string]any)["mixpanel"].(map[string]any); p["total"] != 5.0 || len(p["days"].(map[string]any)) != 1 {
		t.Errorf("usage %v", u)
	}
	// Via //partners/ too.
	h.must(201, tReq{method: "POST", path: "/" + w.usersPath, body: changes()})
}

func TestPartnerUsersErrors(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	const shape = "cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object"
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("id%d", i)
		}
		return out
	}
	cases := []struct {
		name string
		body []byte
		code int
		msg  string
	}{
		{"no changes", w.creds(map[string]any{"cohort_id": "c"}), 400, shape},
		{"null changes", w.creds(map[string]any{"cohort_id": "c", "cohort_changes": nil}), 400, shape},
		{"object changes", w.creds(map[string]any{"cohort_id": "c", "cohort_changes": map[string]any{}}), 400, shape},
		{"string ids", w.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"user_ids": "u1"}}}), 400, shape},
		{"number id", w.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"user_ids": []any{1}}}}), 400, shape},
		{"no cohort_id", w.creds(map[string]any{"cohort_changes": []any{}}), 400, "cohort_id must be a valid string"},
		{"too long id", w.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"user_ids": []string{strings.Repeat("x", 513)}}}}), 400, "cohort_changes[0].user_ids[0] must be 1-512 bytes of valid UTF-8 without NUL"},
		{"NUL id", w.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"device_ids": []string{"a\x00b"}}}}), 400, "cohort_changes[0].device_ids[0] must be 1-512 bytes of valid UTF-8 without NUL"},
		{"1,001 ids", w.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"user_ids": ids(500)}, map[string]any{"device_ids": ids(501)}}}), 400, "Only 1,000 user_ids, device_ids, and aliases are allowed per request"},
		{"1,000 ids", w.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"user_ids": ids(500)}, map[string]any{"device_ids": ids(499), "aliases": []any{map[string]string{"alias_name": "a", "alias_label": "b"}}}}}), 201, ""},
		{"bad creds first", []byte(`{"partner_api_key":"x","cohort_id":"c","cohort_changes":"nope"}`), 401, "Invalid Partner API key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.do(tReq{method: "POST", path: w.usersPath, body: c.body})
			if r.status != c.code {
				t.Fatalf("status %d, want %d: %s", r.status, c.code, r.body)
			}
			if c.code != 201 {
				if got := r.message(t); got != c.msg {
					t.Errorf("message %q, want %q", got, c.msg)
				}
			}
		})
	}
	// Invalid UTF-8 in a raw body.
	h.must(400, tReq{method: "POST", path: w.usersPath, body: []byte(`{"partner_api_key":"` + pkey + `","client_secret":"` + w.secret + `","cohort_id":"c","cohort_changes":[{"user_ids":["` + "\xff" + `"]}]}`)}).message(t)
	// The configured cap, written with separators.
	h2 := newHarness(t, Options{PartnerMaxIDs: 2500}, true)
	w2 := h2.newWorld("acme", h2.createPartner("mixpanel"))
	r := h2.must(400, tReq{method: "POST", path: w2.usersPath, body: w2.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"user_ids": ids(2501)}}})})
	if got := r.message(t); got != "Only 2,500 user_ids, device_ids, and aliases are allowed per request" {
		t.Errorf("cap message %q", got)
	}
}

func TestKeyRevocationIsImmediate(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	id2, secret2 := h.createKey("acme", "mixpanel")
	body := func(secret string) []byte {
		return jsonBody(map[string]any{"partner_api_key": pkey, "client_secret": secret, "cohort_id": "c", "cohort_changes": []any{}})
	}
	h.must(201, tReq{method: "POST", path: w.usersPath, body: body(secret2)})
	h.must(201, tReq{method: "POST", path: w.usersPath, body: body(w.secret)})
	h.must(204, tReq{method: "DELETE", path: "/v1/workspaces/acme/partners/mixpanel/keys/" + id2, token: testAdmin})
	if got := h.must(401, tReq{method: "POST", path: w.usersPath, body: body(secret2)}).message(t); got != "Invalid client secret" {
		t.Errorf("revoked: %q", got)
	}
	h.must(201, tReq{method: "POST", path: w.usersPath, body: body(w.secret)}) // the other key still works
}
