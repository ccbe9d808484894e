package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/client"
)

const testAdmin = "test-admin-token"

// harness runs a Server over an in-memory listener with an in-memory
// engine.
type harness struct {
	t  *testing.T
	s  *Server
	e  *engine.Engine
	ln *fasthttputil.InmemoryListener
	c  *fasthttp.Client

	wantPanics uint64
	served     chan error
}

func newHarness(t *testing.T, opts Options, ready bool) *harness {
	t.Helper()
	if opts.AdminToken == "" {
		opts.AdminToken = testAdmin
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	h := &harness{t: t, s: New(opts), ln: fasthttputil.NewInmemoryListener(), served: make(chan error, 1)}
	if ready {
		e, err := engine.Open(engine.Options{})
		if err != nil {
			t.Fatal(err)
		}
		h.e = e
		h.s.SetEngine(e)
	}
	h.c = &fasthttp.Client{
		Dial:                      func(string) (net.Conn, error) { return h.ln.Dial() },
		DisablePathNormalizing:    true,
		MaxIdemponentCallAttempts: 1,
	}
	go func() { h.served <- h.s.Serve(h.ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		_ = h.ln.Close()
		// The 500 path must be reached by no input.
		if got := h.s.met.panics.Get(); got != h.wantPanics {
			t.Errorf("cohortd_panics_total = %d, want %d", got, h.wantPanics)
		}
		if h.e != nil {
			_ = h.e.Close()
		}
	})
	return h
}

// tResp is a reply as the tests see it.
type tResp struct {
	status int
	body   []byte
	header *fasthttp.ResponseHeader
}

func (r tResp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("reply is not a JSON object: %v: %q", err, r.body)
	}
	return m
}

func (r tResp) message(t *testing.T) string {
	t.Helper()
	m := r.json(t)
	if errs, ok := m["errors"].([]any); !ok || errs == nil {
		t.Errorf("error reply without an errors array: %s", r.body)
	}
	s, _ := m["message"].(string)
	return s
}

// tReq is one request; zero fields are omitted.
type tReq struct {
	method, path string
	token        string
	body         []byte
	ctype        string
	encoding     string
	accept       string
	idemKey      string
	stream       io.Reader
}

func (h *harness) do(q tReq) tResp {
	h.t.Helper()
	rq := fasthttp.AcquireRequest()
	rs := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(rq)
	defer fasthttp.ReleaseResponse(rs)
	rq.Header.SetMethod(q.method)
	rq.SetRequestURI("http://cohortd" + q.path)
	rq.URI().DisablePathNormalizing = true
	if q.token != "" {
		rq.Header.Set("Authorization", "Bearer "+q.token)
	}
	// No Content-Type unless the test asks; "json" is the default of tests
	// with a body.
	rq.Header.SetNoDefaultContentType(true)
	switch {
	case q.ctype == "none":
	case q.ctype != "":
		rq.Header.SetContentType(q.ctype)
	case q.body != nil || q.stream != nil:
		rq.Header.SetContentType("application/json")
	}
	if q.encoding != "" {
		rq.Header.Set("Content-Encoding", q.encoding)
	}
	if q.accept != "" {
		rq.Header.Set("Accept-Encoding", q.accept)
	}
	if q.idemKey != "" {
		rq.Header.Set("Idempotency-Key", q.idemKey)
	}
	if q.stream != nil {
		rq.SetBodyStream(q.stream, -1)
	} else if q.body != nil {
		rq.SetBody(q.body)
	}
	if err := h.c.DoTimeout(rq, rs, 20*time.Second); err != nil {
		h.t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	out := tResp{status: rs.StatusCode(), body: append([]byte(nil), rs.Body()...), header: new(fasthttp.ResponseHeader)}
	rs.Header.CopyTo(out.header)
	return out
}

// must asserts the status of a reply and returns it.
func (h *harness) must(status int, q tReq) tResp {
	h.t.Helper()
	r := h.do(q)
	if r.status != status {
		h.t.Fatalf("%s %s: status %d, want %d: %s", q.method, q.path, r.status, status, r.body)
	}
	return r
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// world is a workspace with a partner key and a few users.
type world struct {
	ws, wsKey              string
	partner, partnerKey    string
	keyID, secret          string
	partnerPath, usersPath string
}

func (h *harness) createWorkspace(id string) string {
	h.t.Helper()
	r := h.must(201, tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: jsonBody(map[string]string{"id": id})})
	return r.json(h.t)["api_key"].(string)
}

func (h *harness) createPartner(slug string) string {
	h.t.Helper()
	r := h.do(tReq{method: "POST", path: "/v1/partners", token: testAdmin, body: jsonBody(map[string]string{"slug": slug})})
	if r.status == 409 {
		return ""
	}
	if r.status != 201 {
		h.t.Fatalf("create partner: %d %s", r.status, r.body)
	}
	return r.json(h.t)["partner_api_key"].(string)
}

func (h *harness) createKey(ws, partner string) (string, string) {
	h.t.Helper()
	r := h.must(201, tReq{method: "POST", path: "/v1/workspaces/" + ws + "/partners/" + partner + "/keys", token: testAdmin})
	m := r.json(h.t)
	return m["key_id"].(string), m["client_secret"].(string)
}

// newWorld creates workspace ws with partner "mixpanel" (key shared by
// every world of the harness) and users u1..u5 (external), anonymous
// devices d1..d3, and user u9 identified from device d9.
func (h *harness) newWorld(ws string, partnerKey string) *world {
	h.t.Helper()
	w := &world{ws: ws, partner: "mixpanel", partnerKey: partnerKey}
	w.wsKey = h.createWorkspace(ws)
	w.keyID, w.secret = h.createKey(ws, w.partner)
	w.partnerPath = "/partners/mixpanel/cohorts"
	w.usersPath = "/partners/mixpanel/cohorts/users"
	h.must(200, tReq{method: "POST", path: "/v1/users", token: w.wsKey, body: []byte(`{"users":[
		{"external_id":"u1"},{"external_id":"u2"},{"external_id":"u3"},{"external_id":"u4"},{"external_id":"u5"},
		{"device_id":"d1"},{"device_id":"d2"},{"device_id":"d3"},{"device_id":"d9"},
		{"external_id":"u6","aliases":[{"alias_name":"email","alias_label":"a@x.io"}]}]}`)})
	h.must(200, tReq{method: "POST", path: "/v1/users", token: w.wsKey, body: []byte(`{"users":[{"external_id":"u9","device_id":"d9"}]}`)})
	return w
}

func (w *world) creds(extra map[string]any) []byte {
	m := map[string]any{"partner_api_key": w.partnerKey, "client_secret": w.secret}
	for k, v := range extra {
		m[k] = v
	}
	return jsonBody(m)
}

func (h *harness) metricsText() string {
	h.t.Helper()
	return string(h.must(200, tReq{method: "GET", path: "/metrics"}).body)
}

func TestNotReady(t *testing.T) {
	h := newHarness(t, Options{}, false)
	h.must(200, tReq{method: "GET", path: "/livez"})
	if m := h.metricsText(); !strings.Contains(m, "cohortd_panics_total 0") {
		t.Errorf("metrics without panics counter:\n%s", m)
	}
	r := h.must(503, tReq{method: "GET", path: "/readyz"})
	if r.message(t) != "not ready" {
		t.Errorf("readyz: %s", r.body)
	}
	for _, q := range []tReq{
		{method: "GET", path: "/v1/cohorts", token: "x"},
		{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(`{"id":"a"}`)},
		{method: "POST", path: "/partners/mixpanel/cohorts", body: []byte(`{}`)},
		{method: "GET", path: "/debug/pprof/", token: testAdmin},
	} {
		r := h.must(503, q)
		if r.message(t) != "not ready" || string(r.header.Peek("Retry-After")) != "1" {
			t.Errorf("%s %s: %s, Retry-After %q", q.method, q.path, r.body, r.header.Peek("Retry-After"))
		}
	}
	e, err := engine.Open(engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h.e = e
	h.s.SetEngine(e)
	h.must(200, tReq{method: "GET", path: "/readyz"})
	h.must(200, tReq{method: "GET", path: "/v1/usage", token: h.createWorkspace("late")})
}

func TestRoutingErrors(t *testing.T) {
	h := newHarness(t, Options{}, true)
	r := h.must(404, tReq{method: "GET", path: "/nope"})
	if !strings.Contains(r.message(t), "no route") {
		t.Errorf("404: %s", r.body)
	}
	h.must(404, tReq{method: "GET", path: "/v1/cohorts/a/b/c/d", token: "x"})
	r = h.must(405, tReq{method: "DELETE", path: "/v1/cohorts", token: "x"})
	if got := string(r.header.Peek("Allow")); got != "GET" {
		t.Errorf("Allow = %q", got)
	}
	r = h.must(405, tReq{method: "PATCH", path: "/v1/cohorts/p/c/members", token: "x"})
	if got := string(r.header.Peek("Allow")); got != "PUT, GET" {
		t.Errorf("Allow = %q", got)
	}
	r.message(t)
	h.must(405, tReq{method: "GET", path: "/partners/mixpanel/cohorts"})
}

func TestAuth(t *testing.T) {
	h := newHarness(t, Options{}, true)
	key := h.createWorkspace("acme")
	cases := []struct {
		q    tReq
		code int
	}{
		{tReq{method: "GET", path: "/v1/cohorts"}, 401},
		{tReq{method: "GET", path: "/v1/cohorts", token: "wrong"}, 401},
		{tReq{method: "GET", path: "/v1/cohorts", token: testAdmin}, 403},
		{tReq{method: "GET", path: "/v1/cohorts", token: key}, 200},
		{tReq{method: "POST", path: "/v1/workspaces", body: []byte(`{"id":"b"}`)}, 401},
		{tReq{method: "POST", path: "/v1/workspaces", token: "wrong", body: []byte(`{"id":"b"}`)}, 401},
		{tReq{method: "POST", path: "/v1/workspaces", token: key, body: []byte(`{"id":"b"}`)}, 403},
		{tReq{method: "POST", path: "/v1/partners", token: key, body: []byte(`{"slug":"b"}`)}, 403},
		{tReq{method: "GET", path: "/v1/workspaces/acme/partners/x/keys", token: key}, 403},
		{tReq{method: "GET", path: "/debug/pprof/", token: key}, 403},
		{tReq{method: "GET", path: "/debug/pprof/"}, 401},
		{tReq{method: "GET", path: "/debug/pprof/", token: testAdmin}, 200},
	}
	for _, c := range cases {
		r := h.do(c.q)
		if r.status != c.code {
			t.Errorf("%s %s token %q: %d, want %d: %s", c.q.method, c.q.path, c.q.token, r.status, c.code, r.body)
		}
		if c.code >= 400 {
			r.message(t)
		}
	}
}

func TestContentTypeAndEncoding(t *testing.T) {
	h := newHarness(t, Options{}, true)
	key := h.createWorkspace("acme")
	r := h.must(415, tReq{method: "POST", path: "/v1/users", token: key, ctype: "text/xml", body: []byte(`<x/>`)})
	r.message(t)
	h.must(415, tReq{method: "POST", path: "/v1/users", token: key, encoding: "br", body: []byte(`{"users":[]}`)})
	h.must(415, tReq{method: "POST", path: "/partners/mixpanel/cohorts", ctype: "application/x-ndjson", body: []byte(`{}`)})
	h.must(200, tReq{method: "POST", path: "/v1/users", token: key, ctype: "application/json; charset=utf-8", body: []byte(`{"users":[]}`)})
	h.must(200, tReq{method: "POST", path: "/v1/users", token: key, ctype: "application/x-ndjson", body: []byte("{\"external_id\":\"n1\"}\n\n{\"device_id\":\"nd\"}\n")})
	h.must(200, tReq{method: "POST", path: "/v1/users", token: key, encoding: "gzip", body: client.Compress([]byte(`{"users":[{"external_id":"g1"}]}`), client.EncodingGzip)})
	h.must(200, tReq{method: "POST", path: "/v1/users", token: key, encoding: "zstd", body: client.Compress([]byte(`{"users":[{"external_id":"z1"}]}`), client.EncodingZstd)})
	h.must(400, tReq{method: "POST", path: "/v1/users", token: key, encoding: "gzip", body: []byte(`not gzip`)})
	for _, id := range []string{"n1", "g1", "z1"} {
		h.must(200, tReq{method: "GET", path: "/v1/users/lookup?external_id=" + id, token: key})
	}
}

func TestBodyLimits(t *testing.T) {
	h := newHarness(t, Options{MaxBody: 64 << 10, PartnerMaxBody: 16 << 10, QueryMaxBody: 64 << 10}, true)
	key := h.createWorkspace("acme")
	pkey := h.createPartner("mixpanel")
	_, secret := h.createKey("acme", "mixpanel")
	// A bomb: a small body expanding far past the cap.
	bomb := append([]byte(`{"users":[{"external_id":"x"}],"pad":"`), bytes.Repeat([]byte("a"), 4<<20)...)
	bomb = append(bomb, `"}`...)
	for _, enc := range []string{"gzip", "zstd"} {
		var b []byte
		if enc == "gzip" {
			b = client.Compress(bomb, client.EncodingGzip)
		} else {
			b = client.Compress(bomb, client.EncodingZstd)
		}
		if len(b) > 64<<10 {
			t.Fatalf("%s bomb is %d bytes", enc, len(b))
		}
		r := h.must(413, tReq{method: "POST", path: "/v1/users", token: key, encoding: enc, body: b})
		r.message(t)
		h.must(413, tReq{method: "PUT", path: "/v1/cohorts/p/c/members", token: key, encoding: enc, body: b})
		h.must(413, tReq{method: "POST", path: "/partners/mixpanel/cohorts", encoding: enc, body: b})
		h.must(413, tReq{method: "POST", path: "/v1/segments/count", token: key, encoding: enc, body: b})
	}
	// Identity bodies past the cap.
	h.must(413, tReq{method: "POST", path: "/v1/users", token: key, body: bomb})
	h.must(413, tReq{method: "POST", path: "/partners/mixpanel/cohorts/users", body: bomb[:32<<10]})
	// Within the caps all is well, streamed (chunked) or not.
	body := jsonBody(map[string]any{"partner_api_key": pkey, "client_secret": secret, "cohort_id": "c", "name": "C", "created_at": "2026-01-01T00:00:00Z"})
	h.must(201, tReq{method: "POST", path: "/partners/mixpanel/cohorts", stream: bytes.NewReader(body)})
	h.must(200, tReq{method: "POST", path: "/v1/users", token: key, stream: bytes.NewReader([]byte(`{"users":[{"external_id":"s"}]}`))})
}

func TestPanicIsCountedAnd500(t *testing.T) {
	h := newHarness(t, Options{}, true)
	rt := &route{method: "GET", pattern: "/test/panic", segs: []string{"", "test", "panic"}, ungated: true,
		h: func(*request) error { panic("boom") }}
	h.s.routes = append(h.s.routes, rt)
	h.s.static, h.s.byLen = staticRoutes(h.s.routes), routesByLen(h.s.routes)
	h.s.met.durations[rt] = h.s.met.unmatched
	h.wantPanics = 1
	r := h.must(500, tReq{method: "GET", path: "/test/panic"})
	if r.message(t) != "internal error" {
		t.Errorf("500 body: %s", r.body)
	}
	if !strings.Contains(h.metricsText(), "cohortd_panics_total 1") {
		t.Error("panic not counted")
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	h.must(404, tReq{method: "GET", path: "/v1/cohorts/mixpanel/some%2Fcohort", token: w.wsKey})
	h.must(201, tReq{method: "POST", path: w.usersPath, body: w.creds(map[string]any{"cohort_id": "c1",
		"cohort_changes": []any{map[string]any{"user_ids": []string{"u1", "zz"}}}})})
	m := h.metricsText()
	for _, want := range []string{
		`cohortd_http_requests_total{route="/v1/cohorts/{partner}/{cohort_id}",method="GET",code="404"} 1`,
		`cohortd_http_requests_total{route="/partners/{partner}/cohorts/users",method="POST",code="201"} 1`,
		`cohortd_http_request_duration_seconds_bucket{route="/v1/users",method="POST",le=`,
		`cohortd_identifiers_received_total 2`,
		`cohortd_identifiers_matched_total 1`,
		`cohortd_identifiers_unmatched_total{reason="unknown"} 1`,
		`cohortd_data_points_total 1`,
		`cohortd_users 10`,
		`cohortd_cohorts 1`,
		`cohortd_recovery_seconds`,
		`cohortd_http_request_body_bytes_total`,
		`process_cpu_seconds_total`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(m, "some%2Fcohort") || strings.Contains(m, w.wsKey) || strings.Contains(m, w.secret) {
		t.Error("metrics carry a raw path or a secret")
	}
}

func TestShutdownDrains(t *testing.T) {
	h := newHarness(t, Options{}, true)
	key := h.createWorkspace("acme")
	pr, pw := io.Pipe()
	done := make(chan tResp, 1)
	go func() {
		done <- h.do(tReq{method: "POST", path: "/v1/users", token: key, stream: pr})
	}()
	_, _ = pw.Write([]byte(`{"users":[{"external_id":"slow"}`))
	// Wait until the handler runs.
	deadline := time.Now().Add(5 * time.Second)
	for h.s.inflight.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- h.s.Shutdown(ctx)
	}()
	for !h.s.closing.Load() {
		time.Sleep(time.Millisecond)
	}
	r := h.must(503, tReq{method: "GET", path: "/readyz"})
	if r.message(t) != "shutting down" {
		t.Errorf("readyz: %s", r.body)
	}
	r = h.must(503, tReq{method: "GET", path: "/v1/cohorts", token: key})
	if r.message(t) != "shutting down" {
		t.Errorf("new request: %s", r.body)
	}
	h.must(200, tReq{method: "GET", path: "/livez"})
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with a request in flight: %v", err)
	default:
	}
	_, _ = pw.Write([]byte(`]}`))
	_ = pw.Close()
	if r := <-done; r.status != 200 {
		t.Fatalf("in-flight request: %d %s", r.status, r.body)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-h.served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if h.e.Workspace("acme").Resolve(engine.KindExternal, []byte("slow")) == engine.NoUser {
		t.Error("in-flight write lost")
	}
}

// TestConcurrentRequests exercises the server under -race.
func TestConcurrentRequests(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 10 {
				check := func(q tReq, codes ...int) {
					r := h.do(q)
					for _, c := range codes {
						if r.status == c {
							return
						}
					}
					t.Errorf("%s %s: %d %s", q.method, q.path, r.status, r.body)
				}
				check(tReq{method: "POST", path: w.usersPath, body: w.creds(map[string]any{"cohort_id": fmt.Sprintf("c%d", i%3),
					"cohort_changes": []any{map[string]any{"user_ids": []string{"u1", "u2"}, "should_remove": j%2 == 1}}})}, 201)
				check(tReq{method: "POST", path: "/v1/segments/count", token: w.wsKey, body: []byte(`{"segment":{"or":[{"cohort":"mixpanel/c0"},{"cohort":"mixpanel/c1"}]}}`)}, 200)
				check(tReq{method: "GET", path: "/v1/cohorts/mixpanel/c0/members", token: w.wsKey}, 200, 404)
			}
		}()
	}
	wg.Wait()
}

// TestNoInputReaches500 throws malformed bodies and parameters at every
// route with valid credentials: nothing may answer 5xx (the panic counter
// is checked by the harness).
func TestNoInputReaches500(t *testing.T) {
	h := newHarness(t, Options{MaxBody: 1 << 20, PartnerMaxBody: 1 << 16}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	creds := `"partner_api_key":"` + pkey + `","client_secret":"` + w.secret + `"`
	bodies := []string{"", "{", "}", "null", "[]", "0", `"x"`, "{}", `{"a":}`, "\xff\xfe", strings.Repeat("[", 10000),
		`{` + creds + `}`, `{` + creds + `,"cohort_id":"c","cohort_changes":[null]}`, `{` + creds + `,"cohort_id":"c","cohort_changes":[{"aliases":[{"alias_name":1}]}]}`,
		`{` + creds + `,"cohort_id":"c","name":"n","created_at":"2026-13-01T00:00:00Z"}`,
		`{"cohort_changes":[{"user_ids":["a"],"timestamp":12}]}`, `{"users":[{"aliases":{}}]}`, `{"user_ids":[null]}`,
		`{"segment":{"not":{"not":{"and":[{"all":false}]}}}}`, `{"segment":` + strings.Repeat(`{"not":`, 100) + `{"all":true}` + strings.Repeat("}", 100) + `}`,
		`{"segment":{"all":true},"users":[1,{},{"alias_name":"a"}]}`, `{"segment":{"cohort":"nopartner"}}`, `{"id":"` + strings.Repeat("x", 100) + `"}`,
		"{\"external_id\":\"a\"}\n{\"external_id\":\n", `{"slug":null}`, `{"segment":{"all":true},"limit":1e300}`,
	}
	// Each body as is, and (for every other one) gzip- and zstd-encoded.
	encoded := make([]map[string][]byte, len(bodies))
	for i, b := range bodies {
		encoded[i] = map[string][]byte{"": []byte(b), "gzip": []byte(b), "zstd": []byte(b)}
		if i%2 == 0 {
			encoded[i]["gzip"], encoded[i]["zstd"] = client.Compress([]byte(b), client.EncodingGzip), client.Compress([]byte(b), client.EncodingZstd)
		}
	}
	paths := map[string]string{"{partner}": "mixpanel", "{cohort_id}": "c%2Fd", "{ws}": "acme", "{key_id}": w.keyID}
	for _, rt := range h.s.routes {
		if rt.prefix || rt.pattern == "/metrics" {
			continue
		}
		p := rt.pattern
		for k, v := range paths {
			p = strings.ReplaceAll(p, k, v)
		}
		token := ""
		switch rt.auth {
		case authAdmin:
			token = testAdmin
		case authWorkspace:
			token = w.wsKey
		}
		cts := []string{""}
		if rt.body == bodyBulk {
			cts = append(cts, "application/x-ndjson")
		}
		for i, b := range bodies {
			for _, ct := range cts {
				for enc, body := range encoded[i] {
					short := b[:min(len(b), 64)]
					r := h.do(tReq{method: rt.method, path: p + "?external_id=" + url.QueryEscape(short), token: token, body: body, ctype: ct, encoding: enc})
					if r.status >= 500 {
						t.Errorf("%s %s body %q ct %q enc %q: %d %s", rt.method, p, short, ct, enc, r.status, r.body)
					}
				}
			}
		}
	}
}

// TestHandlerDirect calls Handler on a bare RequestCtx (no server, no body
// stream), as embedding code may.
func TestHandlerDirect(t *testing.T) {
	s := New(Options{AdminToken: testAdmin, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	e, err := engine.Open(engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s.SetEngine(e)
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/v1/workspaces")
	ctx.Request.Header.Set("Authorization", "Bearer "+testAdmin)
	ctx.Request.SetBody([]byte(`{"id":"direct"}`))
	s.Handler(&ctx)
	if ctx.Response.StatusCode() != 201 || e.Workspace("direct") == nil {
		t.Fatalf("direct: %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	if s.inflight.Load() != 0 {
		t.Error("inflight leaked")
	}
}
