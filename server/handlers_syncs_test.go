package server

import (
	"bytes"
	"io/fs"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fasthttp"
)

// TestSyncsEndpoint: each endpoint's requests become syncs of its source,
// listed newest first with health; limits and unknown cohorts answer 400
// and 404.
func TestSyncsEndpoint(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	// webhook (add_members), then partner, then bulk, then replace: four
	// sources, four syncs of cohort mixpanel/777.
	if st, _ := h.hook(w.secret, "", diffBody("add_members", "u1", "u2", "ghost"), ""); st != 200 {
		t.Fatalf("webhook: %d", st)
	}
	h.must(201, tReq{method: "POST", path: w.usersPath, body: w.creds(map[string]any{"cohort_id": "777", "cohort_changes": []map[string]any{
		{"user_ids": []string{"u3"}, "device_ids": []string{"d9", "d1"}},
		{"user_ids": []string{"u4"}, "timestamp": "2001-01-01T00:00:00Z"},
	}})})
	h.must(200, tReq{method: "POST", path: "/v1/cohorts/mixpanel/777/changes", token: w.wsKey, body: []byte(`{"cohort_changes":[{"user_ids":["u1"],"should_remove":true}]}`)})
	h.must(200, tReq{method: "PUT", path: "/v1/cohorts/mixpanel/777/members", token: w.wsKey, body: []byte(`{"user_ids":["u5","nobody"]}`)})

	r := h.must(200, tReq{method: "GET", path: "/v1/cohorts/mixpanel/777/syncs", token: w.wsKey}).json(t)
	syncs := r["syncs"].([]any)
	var got []string
	for _, s := range syncs {
		m := s.(map[string]any)
		u := m["unmatched"].(map[string]any)
		got = append(got, strings.Join([]string{m["source"].(string), num(m["requests"]), num(m["matched"]), num(m["added"]), num(m["removed"]),
			num(u["unknown"]), num(u["device_id_identified"]), num(m["dropped_before_floor"]), num(m["data_points"]), num(m["size_after"])}, " "))
	}
	want := []string{
		"replace 1 1 1 3 1 0 0 4 1",
		"bulk 1 1 0 1 0 0 0 1 3",
		"partner 1 2 2 0 0 1 1 2 4",
		"webhook 1 2 2 0 1 0 0 2 2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("syncs (source requests matched added removed unknown device_identified dropped data_points size_after):\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	health := r["health"].(map[string]any)
	if health["status"] != "shrunk" || health["last_sync_at"] == nil || health["expected_interval_s"] == nil {
		t.Errorf("health %v, want shrunk (4 → 1) with a last sync and an interval", health)
	}
	if r := h.must(200, tReq{method: "GET", path: "/v1/cohorts/mixpanel/777/syncs?limit=2", token: w.wsKey}).json(t); len(r["syncs"].([]any)) != 2 {
		t.Errorf("limit=2: %v", r)
	}
	for _, q := range []string{"0", "1001", "x", "-1", ""} {
		h.must(400, tReq{method: "GET", path: "/v1/cohorts/mixpanel/777/syncs?limit=" + q, token: w.wsKey})
	}
	h.must(404, tReq{method: "GET", path: "/v1/cohorts/mixpanel/nope/syncs", token: w.wsKey})
	h.must(400, tReq{method: "GET", path: "/v1/cohorts/Bad/777/syncs", token: w.wsKey})
	h.must(401, tReq{method: "GET", path: "/v1/cohorts/mixpanel/777/syncs"})

	// A cohort never synced, and the list of cohorts that are not ok.
	h.must(201, tReq{method: "POST", path: w.partnerPath, body: w.creds(map[string]any{"cohort_id": "quiet", "name": "Quiet", "created_at": "2026-01-01T00:00:00Z"})})
	hc := h.must(200, tReq{method: "GET", path: "/v1/health/cohorts", token: w.wsKey}).json(t)["cohorts"].([]any)
	var ids []string
	for _, c := range hc {
		m := c.(map[string]any)
		ids = append(ids, m["cohort_id"].(string)+"="+m["health"].(map[string]any)["status"].(string))
	}
	if strings.Join(ids, ",") != "777=shrunk,quiet=never_synced" {
		t.Errorf("health list %v", ids)
	}
	// The cohort list carries health too.
	for _, c := range h.must(200, tReq{method: "GET", path: "/v1/cohorts", token: w.wsKey}).json(t)["cohorts"].([]any) {
		if c.(map[string]any)["health"] == nil {
			t.Errorf("cohort without health: %v", c)
		}
	}
	// /metrics: cohorts by status per workspace, zeros included.
	mt := h.metricsText()
	for _, line := range []string{
		`cohortd_cohorts_health{workspace="acme",status="shrunk"} 1`,
		`cohortd_cohorts_health{workspace="acme",status="never_synced"} 1`,
		`cohortd_cohorts_health{workspace="acme",status="ok"} 0`,
		`cohortd_cohorts_health{workspace="acme",status="stale"} 0`,
		`cohortd_cohorts_health{workspace="acme",status="unmatched_high"} 0`,
	} {
		if !strings.Contains(mt, line+"\n") {
			t.Errorf("/metrics lacks %s", line)
		}
	}
}

func num(v any) string {
	f, _ := v.(float64)
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// doWithHeader sends a GET with one extra request header.
func (h *harness) doWithHeader(q tReq, k, v string) tResp {
	h.t.Helper()
	rq := fasthttp.AcquireRequest()
	rs := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(rq)
	defer fasthttp.ReleaseResponse(rs)
	rq.Header.SetMethod(q.method)
	rq.SetRequestURI("http://cohortd" + q.path)
	rq.Header.Set(k, v)
	if err := h.c.DoTimeout(rq, rs, 20*time.Second); err != nil {
		h.t.Fatal(err)
	}
	return tResp{status: rs.StatusCode(), body: append([]byte(nil), rs.Body()...)}
}

// TestUIFiles: the page is served with its content types, a strict CSP,
// revalidation against an ETag and gzip; its files load nothing from
// elsewhere and hold no inline script or style.
func TestUIFiles(t *testing.T) {
	h := newHarness(t, Options{}, false) // the page loads during recovery too
	r := h.must(301, tReq{method: "GET", path: "/ui"})
	if string(r.header.Peek("Location")) != "/ui/" {
		t.Errorf("/ui redirects to %q", r.header.Peek("Location"))
	}
	types := map[string]string{
		"/ui/": "text/html; charset=utf-8", "/ui/index.html": "text/html; charset=utf-8",
		"/ui/app.js": "text/javascript; charset=utf-8", "/ui/chart.js": "text/javascript; charset=utf-8",
		"/ui/app.css": "text/css; charset=utf-8", "/ui/favicon.svg": "image/svg+xml",
	}
	for p, ct := range types {
		r := h.must(200, tReq{method: "GET", path: p})
		if got := string(r.header.ContentType()); got != ct {
			t.Errorf("%s: Content-Type %q, want %q", p, got, ct)
		}
		csp := string(r.header.Peek("Content-Security-Policy"))
		for _, d := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, d) {
				t.Errorf("%s: CSP %q lacks %s", p, csp, d)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP allows unsafe sources: %s", p, csp)
		}
		for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"} {
			if got := string(r.header.Peek(k)); got != v {
				t.Errorf("%s: %s %q, want %q", p, k, got, v)
			}
		}
		etag := string(r.header.Peek("ETag"))
		if etag == "" {
			t.Fatalf("%s: no ETag", p)
		}
		rq := tReq{method: "GET", path: p}
		nm := h.doWithHeader(rq, "If-None-Match", etag)
		if nm.status != 304 || len(nm.body) != 0 {
			t.Errorf("%s with If-None-Match: %d (%d bytes), want 304", p, nm.status, len(nm.body))
		}
	}
	// gzip when asked, the same bytes once decoded.
	plain := h.must(200, tReq{method: "GET", path: "/ui/app.js"}).body
	gz := h.must(200, tReq{method: "GET", path: "/ui/app.js", accept: "gzip"})
	if string(gz.header.Peek("Content-Encoding")) != "gzip" {
		t.Fatal("app.js not gzipped when asked")
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz.body))
	if err != nil {
		t.Fatal(err)
	}
	var dec bytes.Buffer
	if _, err := dec.ReadFrom(zr); err != nil || !bytes.Equal(dec.Bytes(), plain) {
		t.Fatalf("gzipped app.js differs: %v", err)
	}
	h.must(404, tReq{method: "GET", path: "/ui/nope.js"})

	// Static checks of the embedded files.
	inlineScript := regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`)
	remote := regexp.MustCompile(`(?i)(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	err = fs.WalkDir(uiFiles, "ui", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := uiFiles.ReadFile(p)
		s := strings.ReplaceAll(string(b), "http://www.w3.org/2000/svg", "")
		if m := remote.FindString(s); m != "" {
			t.Errorf("%s refers to another origin: %q", p, m)
		}
		if strings.HasSuffix(p, ".html") {
			if inlineScript.MatchString(s) {
				t.Errorf("%s has an inline script", p)
			}
			if strings.Contains(s, " style=") || strings.Contains(s, "<style") || regexp.MustCompile(`\son[a-z]+=`).MatchString(s) {
				t.Errorf("%s has inline style or event handler attributes", p)
			}
		}
		if strings.HasSuffix(p, ".js") && regexp.MustCompile(`\blocalStorage\s*[.\[]|document\.cookie|\beval\(|new Function\(`).MatchString(s) {
			t.Errorf("%s uses localStorage, cookies or eval", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Every data-testid that the browser tests rely on is in the page.
	page, _ := uiFiles.ReadFile("ui/index.html")
	for _, id := range []string{"segment-builder", "segment-clause", "segment-cohort", "segment-negate", "segment-add-clause", "segment-op",
		"segment-count", "signin-key", "signin-submit", "signout", "cohort-list", "sync-chart", "lookup-input", "lookup-result"} {
		if !bytes.Contains(page, []byte(`data-testid="`+id+`"`)) {
			t.Errorf("index.html lacks data-testid=%q", id)
		}
	}
}
