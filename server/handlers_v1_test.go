package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/url"
	"sort"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func TestUsersUpsertLookupDelete(t *testing.T) {
	h := newHarness(t, Options{}, true)
	key := h.createWorkspace("acme")
	up := func(body string, ctype string) map[string]any {
		t.Helper()
		return h.must(200, tReq{method: "POST", path: "/v1/users", token: key, body: []byte(body), ctype: ctype}).json(t)
	}
	r := up(`{"users":[{"external_id":"e1"},{"device_id":"dev1"},{"aliases":[{"alias_name":"email","alias_label":"a@b"}]}]}`, "")
	if r["created"] != 3.0 {
		t.Errorf("upsert %v", r)
	}
	r = up("{\"external_id\":\"e1\",\"device_id\":\"dev1\"}\n", "application/x-ndjson")
	if r["merged"] != 1.0 {
		t.Errorf("merge %v", r)
	}
	r = up(`{"users":[{"external_id":"e1"}]}`, "")
	if r["unchanged"] != 1.0 {
		t.Errorf("unchanged %v", r)
	}
	for _, k := range []string{"created", "identified", "merged", "updated", "unchanged"} {
		if _, ok := r[k]; !ok {
			t.Errorf("upsert reply lacks %s", k)
		}
	}
	// Lookup by each kind.
	l := h.must(200, tReq{method: "GET", path: "/v1/users/lookup?device_id=dev1", token: key}).json(t)
	u := l["user"].(map[string]any)
	if u["external_id"] != "e1" || u["anonymous"] != false || len(u["device_ids"].([]any)) != 1 || len(u["aliases"].([]any)) != 0 {
		t.Errorf("lookup %v", l)
	}
	l = h.must(200, tReq{method: "GET", path: "/v1/users/lookup?alias_name=email&alias_label=a%40b", token: key}).json(t)
	u = l["user"].(map[string]any)
	if u["external_id"] != nil || u["anonymous"] != false {
		t.Errorf("alias lookup %v", l)
	}
	if _, ok := u["external_id"]; !ok {
		t.Error("external_id key must be present (null)")
	}
	h.must(404, tReq{method: "GET", path: "/v1/users/lookup?alias_name=a%40b&alias_label=email", token: key}) // never swapped
	for _, q := range []string{"", "?external_id=a&device_id=b", "?alias_name=x", "?alias_label=x", "?foo=bar"} {
		h.must(400, tReq{method: "GET", path: "/v1/users/lookup" + q, token: key}).message(t)
	}
	if got := h.must(400, tReq{method: "GET", path: "/v1/users/lookup?external_id=", token: key}).message(t); got != "external_id must be 1-512 bytes of valid UTF-8 without NUL" {
		t.Errorf("rule message %q", got)
	}
	h.must(400, tReq{method: "GET", path: "/v1/users/lookup?external_id=" + strings.Repeat("x", 513), token: key})
	h.must(400, tReq{method: "GET", path: "/v1/users/lookup?external_id=%00", token: key})
	h.must(400, tReq{method: "GET", path: "/v1/users/lookup?external_id=%ff", token: key})
	// Bad bodies.
	h.must(400, tReq{method: "POST", path: "/v1/users", token: key, body: []byte(`{"users":[{}]}`)}).message(t)
	h.must(400, tReq{method: "POST", path: "/v1/users", token: key, body: []byte(`{"nope":[]}`)})
	h.must(400, tReq{method: "POST", path: "/v1/users", token: key, body: []byte(`{"users":[{"external_id":""}]}`)})
	// Delete.
	d := h.must(200, tReq{method: "POST", path: "/v1/users/delete", token: key, body: []byte(`{"user_ids":["e1","ghost"],"aliases":[{"alias_name":"email","alias_label":"a@b"}]}`)}).json(t)
	if d["deleted"] != 2.0 || d["unmatched"] != 1.0 {
		t.Errorf("delete %v", d)
	}
	h.must(404, tReq{method: "GET", path: "/v1/users/lookup?external_id=e1", token: key})
	h.must(400, tReq{method: "POST", path: "/v1/users/delete", token: key, body: []byte(`{"user_ids":"e1"}`)}).message(t)
}

// members reads an NDJSON member stream, decoding per Content-Encoding.
func members(t *testing.T, r tResp) []string {
	t.Helper()
	var rd io.Reader = bytes.NewReader(r.body)
	switch string(r.header.Peek("Content-Encoding")) {
	case "gzip":
		zr, err := gzip.NewReader(rd)
		if err != nil {
			t.Fatal(err)
		}
		rd = zr
	case "zstd":
		zr, err := zstd.NewReader(rd)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		rd = zr
	}
	var out []string
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, memberName(m))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// memberName names an M by its first identifier.
func memberName(m map[string]any) string {
	if e, ok := m["external_id"].(string); ok {
		return e
	}
	if a, ok := m["aliases"].([]any); ok {
		x := a[0].(map[string]any)
		return x["alias_name"].(string) + ":" + x["alias_label"].(string)
	}
	if d, ok := m["device_ids"].([]any); ok {
		return "dev:" + d[0].(string)
	}
	return "?"
}

func TestCohortsV1(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	cid := "weird/id with spaces"
	base := "/v1/cohorts/census/" + url.PathEscape(cid)
	// Changes, JSON then NDJSON; the unregistered partner slug is fine.
	r := h.must(200, tReq{method: "POST", path: base + "/changes", token: w.wsKey, body: []byte(`{"cohort_changes":[
		{"user_ids":["u1","u2","nobody"],"device_ids":["d1","d9"],"aliases":[{"alias_name":"email","alias_label":"a@x.io"}]},
		{"user_ids":["u3"],"timestamp":"2001-01-01T00:00:00Z"}]}`)}).json(t)
	if r["message"] != "success" || r["matched"] != 4.0 || r["unmatched"] != 2.0 || r["added"] != 4.0 || r["dropped_before_floor"] != 1.0 || r["data_points"] != 4.0 {
		t.Errorf("changes %v", r)
	}
	r = h.must(200, tReq{method: "POST", path: base + "/changes", token: w.wsKey, ctype: "application/x-ndjson",
		body: []byte("{\"user_ids\":[\"u2\"],\"should_remove\":true}\n{\"device_ids\":[\"d2\"]}\n")}).json(t)
	if r["added"] != 1.0 || r["removed"] != 1.0 {
		t.Errorf("ndjson changes %v", r)
	}
	h.must(400, tReq{method: "POST", path: base + "/changes", token: w.wsKey, body: []byte(`{"cohort_changes":[{"user_ids":[1]}]}`)}).message(t)
	h.must(400, tReq{method: "POST", path: base + "/changes", token: w.wsKey, body: []byte(`{}`)}).message(t)
	h.must(400, tReq{method: "POST", path: "/v1/cohorts/Bad!/c/changes", token: w.wsKey, body: []byte(`{"cohort_changes":[]}`)}).message(t)
	h.must(400, tReq{method: "GET", path: "/v1/cohorts/census/%zz", token: w.wsKey}).message(t)

	c := h.must(200, tReq{method: "GET", path: base, token: w.wsKey}).json(t)
	if c["partner"] != "census" || c["cohort_id"] != cid || c["name"] != cid || c["size"] != 4.0 {
		t.Errorf("cohort %v", c)
	}
	for _, k := range []string{"created_at", "updated_at"} {
		if s, _ := c[k].(string); !strings.HasSuffix(s, "Z") {
			t.Errorf("%s = %v", k, c[k])
		}
	}
	list := h.must(200, tReq{method: "GET", path: "/v1/cohorts", token: w.wsKey}).json(t)["cohorts"].([]any)
	if len(list) != 1 {
		t.Errorf("list %v", list)
	}
	want := []string{"dev:d1", "dev:d2", "u1", "u6"}
	for _, enc := range []string{"", "gzip", "zstd", "gzip;q=0, identity"} {
		r := h.must(200, tReq{method: "GET", path: base + "/members", token: w.wsKey, accept: enc})
		if got := members(t, r); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("members (%s) = %v, want %v", enc, got, want)
		}
		if ct := string(r.header.ContentType()); ct != "application/x-ndjson" {
			t.Errorf("content type %q", ct)
		}
	}
	h.must(404, tReq{method: "GET", path: "/v1/cohorts/census/nope/members", token: w.wsKey}).message(t)
	h.must(404, tReq{method: "GET", path: "/v1/cohorts/census/nope", token: w.wsKey}).message(t)

	// Snapshot replace, JSON then NDJSON.
	m := h.must(200, tReq{method: "PUT", path: base + "/members", token: w.wsKey, body: []byte(`{"user_ids":["u4","u1","ghost"],"device_ids":["d9"]}`)}).json(t)
	if m["added"] != 1.0 || m["removed"] != 3.0 || m["unchanged"] != 1.0 || m["unmatched"] != 2.0 || m["data_points"] != 4.0 {
		t.Errorf("replace %v", m)
	}
	m = h.must(200, tReq{method: "PUT", path: base + "/members", token: w.wsKey, ctype: "application/x-ndjson",
		body: []byte("{\"external_id\":\"u4\"}\n{\"alias_name\":\"email\",\"alias_label\":\"a@x.io\"}\n{\"device_id\":\"d3\"}\n")}).json(t)
	if m["added"] != 2.0 || m["removed"] != 1.0 || m["unchanged"] != 1.0 {
		t.Errorf("replace ndjson %v", m)
	}
	h.must(400, tReq{method: "PUT", path: base + "/members", token: w.wsKey, ctype: "application/x-ndjson", body: []byte("{\"external_id\":\"u4\",\"device_id\":\"d1\"}\n")}).message(t)
	// A new cohort via PUT answers 200.
	h.must(200, tReq{method: "PUT", path: "/v1/cohorts/census/new/members", token: w.wsKey, body: []byte(`{}`)})
	h.must(204, tReq{method: "DELETE", path: base, token: w.wsKey})
	h.must(404, tReq{method: "DELETE", path: base, token: w.wsKey})
	h.must(404, tReq{method: "GET", path: base, token: w.wsKey})
	// Cohort deletes cost no data points.
	u := h.must(200, tReq{method: "GET", path: "/v1/usage", token: w.wsKey}).json(t)
	if u["total"] != 13.0 {
		t.Errorf("usage %v", u)
	}
}

func TestSegments(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	set := func(cohort string, users ...string) {
		h.must(200, tReq{method: "PUT", path: "/v1/cohorts/mixpanel/" + cohort + "/members", token: w.wsKey, body: jsonBody(map[string]any{"user_ids": users})})
	}
	set("a", "u1", "u2", "u3")
	set("b", "u2", "u3", "u4")
	h.must(200, tReq{method: "PUT", path: "/v1/cohorts/mixpanel/anon/members", token: w.wsKey, body: []byte(`{"device_ids":["d1"]}`)})
	count := func(seg string) map[string]any {
		return h.must(200, tReq{method: "POST", path: "/v1/segments/count", token: w.wsKey, body: []byte(`{"segment":` + seg + `}`)}).json(t)
	}
	for seg, want := range map[string]float64{
		`{"cohort":"mixpanel/a"}`:                                           3,
		`{"and":[{"cohort":"mixpanel/a"},{"cohort":"mixpanel/b"}]}`:         2,
		`{"or":[{"cohort":"mixpanel/a"},{"cohort":"mixpanel/b"}]}`:          4,
		`{"and":[{"cohort":"mixpanel/a"},{"not":{"cohort":"mixpanel/b"}}]}`: 1,
		`{"all":true}`:                        10,
		`{"not":{"cohort":"mixpanel/a"}}`:     7,
		`{"or":[{"cohort":"mixpanel/anon"}]}`: 1,
	} {
		r := count(seg)
		if r["count"] != want {
			t.Errorf("%s: %v, want %v", seg, r, want)
		}
		if _, ok := r["warnings"]; ok {
			t.Errorf("%s: unexpected warnings %v", seg, r)
		}
	}
	r := count(`{"or":[{"cohort":"mixpanel/a"},{"cohort":"mixpanel/zz"}]}`)
	if r["count"] != 3.0 || len(r["warnings"].([]any)) != 1 || r["warnings"].([]any)[0] != "unknown cohort mixpanel/zz" {
		t.Errorf("warnings %v", r)
	}
	for _, body := range []string{`{}`, `{"segment":{"and":[]}}`, `{"segment":{"bogus":1}}`, `{"segment":"x"}`, `nope`} {
		h.must(400, tReq{method: "POST", path: "/v1/segments/count", token: w.wsKey, body: []byte(body)}).message(t)
	}
	// Contains: a device id of an identified user resolves for queries.
	c := h.must(200, tReq{method: "POST", path: "/v1/segments/contains", token: w.wsKey, body: []byte(`{"segment":{"cohort":"mixpanel/a"},
		"users":[{"external_id":"u1"},{"external_id":"u4"},{"external_id":"ghost"},{"alias_name":"email","alias_label":"a@x.io"},{"device_id":"d1"}]}`)}).json(t)
	if got, _ := json.Marshal(c["results"]); string(got) != `[true,false,false,false,false]` {
		t.Errorf("contains %s", got)
	}
	h.must(400, tReq{method: "POST", path: "/v1/segments/contains", token: w.wsKey, body: []byte(`{"segment":{"all":true},"users":[{"external_id":"u1","device_id":"d1"}]}`)}).message(t)
	h.must(400, tReq{method: "POST", path: "/v1/segments/contains", token: w.wsKey, body: []byte(`{"segment":{"all":true}}`)}).message(t)
	// Pages with cursors cover the segment exactly once.
	var got []string
	cursor := any(nil)
	for i := 0; ; i++ {
		if i > 10 {
			t.Fatal("cursor loop")
		}
		p := h.must(200, tReq{method: "POST", path: "/v1/segments/members", token: w.wsKey, body: jsonBody(map[string]any{"segment": map[string]any{"all": true}, "limit": 3, "cursor": cursor})}).json(t)
		ms := p["members"].([]any)
		for _, m := range ms {
			got = append(got, memberName(m.(map[string]any)))
		}
		if p["next_cursor"] == nil {
			break
		}
		if len(ms) != 3 {
			t.Errorf("short page %v", p)
		}
		cursor = p["next_cursor"]
	}
	if len(got) != 10 {
		t.Errorf("paged %v", got)
	}
	// The stream, and its errors.
	s := h.must(200, tReq{method: "POST", path: "/v1/segments/members", token: w.wsKey, accept: "gzip", body: []byte(`{"segment":{"or":[{"cohort":"mixpanel/a"},{"cohort":"mixpanel/anon"}]}}`)})
	if got := members(t, s); strings.Join(got, ",") != "dev:d1,u1,u2,u3" {
		t.Errorf("stream %v", got)
	}
	for _, body := range []string{
		`{"segment":{"all":true},"limit":0}`, `{"segment":{"all":true},"limit":10001}`, `{"segment":{"all":true},"limit":"3"}`,
		`{"segment":{"all":true},"limit":1.5}`, `{"segment":{"all":true},"limit":2,"cursor":"garbage"}`, `{"segment":{"all":true},"cursor":"x"}`,
	} {
		h.must(400, tReq{method: "POST", path: "/v1/segments/members", token: w.wsKey, body: []byte(body)}).message(t)
	}
}
