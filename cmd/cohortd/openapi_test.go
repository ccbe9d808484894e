package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

const openAPIPath = "../../docs/openapi.yaml"

func init() {
	// kin-openapi has no NDJSON decoder. The document describes an NDJSON
	// stream as the array of its lines, so decode it into exactly that and
	// every line is validated against the item schema.
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		if err != nil {
			return nil, err
		}
		lines := []any{}
		for _, ln := range bytes.Split(b, []byte("\n")) {
			if len(bytes.TrimSpace(ln)) == 0 {
				continue
			}
			var v any
			if err := json.Unmarshal(ln, &v); err != nil {
				return nil, fmt.Errorf("NDJSON line %q: %w", ln, err)
			}
			lines = append(lines, v)
		}
		return lines, nil
	})
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
	// The files of the built-in page.
	for _, ct := range []string{"text/javascript", "text/css", "image/svg+xml"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
}

// loadOpenAPI loads and validates docs/openapi.yaml.
func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(openAPIPath)
	if err != nil {
		t.Fatalf("load %s: %v", openAPIPath, err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("validate %s: %v", openAPIPath, err)
	}
	return doc
}

// apiChecker sends requests to a daemon and validates every reply against
// the document; it records which operations and statuses were seen.
type apiChecker struct {
	t      *testing.T
	d      *daemon
	router routers.Router
	seen   map[string]map[int]bool // operationId -> statuses
	// errSchema is components.schemas.Error.
	errSchema *openapi3.Schema
}

func newAPIChecker(t *testing.T, doc *openapi3.T, d *daemon) *apiChecker {
	t.Helper()
	doc.Servers = openapi3.Servers{{URL: d.base}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &apiChecker{t: t, d: d, router: router, seen: map[string]map[int]bool{}, errSchema: doc.Components.Schemas["Error"].Value}
}

// check sends q, expects status want and validates the reply.
func (c *apiChecker) check(q req, want int) reply {
	c.t.Helper()
	hr := q.build(c.t, c.d.base)
	route, params, err := c.router.FindRoute(hr)
	// The legacy router returns a fresh RouteError, not the sentinel.
	var re *routers.RouteError
	if errors.As(err, &re) && re.Reason == routers.ErrMethodNotAllowed.Error() && want == 405 {
		return c.checkMethodNotAllowed(q, hr)
	}
	if err != nil {
		c.t.Fatalf("%s %s: not in the document: %v", q.method, q.path, err)
	}
	resp, err := httpClient.Do(hr)
	if err != nil {
		c.t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		c.t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, body: body}
	if r.status != want {
		c.t.Errorf("%s %s: got %s, want status %d", q.method, q.path, r, want)
		return r
	}
	plain := body
	switch resp.Header.Get("Content-Encoding") {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err == nil {
			plain, err = io.ReadAll(zr)
		}
		if err != nil {
			c.t.Fatalf("%s %s: gunzip: %v", q.method, q.path, err)
		}
	case "zstd":
		zr, err := zstd.NewReader(nil)
		if err != nil {
			c.t.Fatal(err)
		}
		plain, err = zr.DecodeAll(body, nil)
		zr.Close()
		if err != nil {
			c.t.Fatalf("%s %s: unzstd: %v", q.method, q.path, err)
		}
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: hr, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(plain)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		c.t.Errorf("%s %s → %d does not match the document: %v\nbody: %s", q.method, q.path, resp.StatusCode, err, tail(string(plain), 2000))
	}
	op := route.Operation.OperationID
	if c.seen[op] == nil {
		c.seen[op] = map[int]bool{}
	}
	c.seen[op][resp.StatusCode] = true
	return reply{status: resp.StatusCode, header: resp.Header, body: plain}
}

// checkMethodNotAllowed covers a method the document has no operation for:
// the router cannot name a route, so the reply is checked against the
// MethodNotAllowed response directly (status, Allow, Error body).
func (c *apiChecker) checkMethodNotAllowed(q req, hr *http.Request) reply {
	c.t.Helper()
	resp, err := httpClient.Do(hr)
	if err != nil {
		c.t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	r := reply{status: resp.StatusCode, header: resp.Header, body: body}
	if r.status != 405 || resp.Header.Get("Allow") == "" {
		c.t.Errorf("%s %s: got %s (Allow %q), want 405 with Allow", q.method, q.path, r, resp.Header.Get("Allow"))
		return r
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		c.t.Fatalf("%s %s: 405 body: %v", q.method, q.path, err)
	}
	if err := c.errSchema.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
		c.t.Errorf("%s %s: 405 body does not match Error: %v", q.method, q.path, err)
	}
	c.seen["(405)"] = map[int]bool{405: true}
	return r
}

// TestOpenAPI checks docs/openapi.yaml against the real binary: every
// operation is exercised (success and its main errors) and every reply is
// validated against the document.
func TestOpenAPI(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-max-body", "1MiB", "-partner-max-body", "64KiB"}})
	c := newAPIChecker(t, doc, d)
	admin := d.adminToken()

	// Operations.
	c.check(req{method: "GET", path: "/livez"}, 200)
	c.check(req{method: "GET", path: "/readyz"}, 200)
	if r := c.check(req{method: "GET", path: "/metrics"}, 200); !bytes.Contains(r.body, []byte("# TYPE")) && !bytes.Contains(r.body, []byte("go_")) {
		t.Errorf("/metrics does not look like Prometheus text: %.200s", r.body)
	}
	c.check(req{method: "GET", path: "/debug/pprof/", token: admin}, 200)
	c.check(req{method: "GET", path: "/debug/pprof/"}, 401)
	c.check(req{method: "GET", path: "/debug/pprof/goroutine?debug=1", token: admin}, 200)

	// Admin.
	c.check(req{method: "POST", path: "/v1/workspaces", body: map[string]string{"id": "acme"}}, 401)
	ws := c.check(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "acme"}}, 201).json(t)
	apiKey := str(t, ws, "api_key")
	c.check(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "acme"}}, 409)
	c.check(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "no spaces"}}, 400)
	c.check(req{method: "POST", path: "/v1/workspaces", token: apiKey, body: map[string]string{"id": "x"}}, 403)
	c.check(req{method: "POST", path: "/v1/workspaces", token: admin, body: `{"id":"x"}`, header: map[string]string{"Content-Encoding": "br"}}, 415)
	c.check(req{method: "POST", path: "/v1/workspaces", token: admin, body: `<id>x</id>`, ctype: "text/xml"}, 415)
	c.check(req{method: "PUT", path: "/v1/workspaces", token: admin}, 405)
	pt := c.check(req{method: "POST", path: "/v1/partners", token: admin, body: map[string]string{"slug": "amplitude"}}, 201).json(t)
	partnerKey := str(t, pt, "partner_api_key")
	c.check(req{method: "POST", path: "/v1/partners", token: admin, body: map[string]string{"slug": "amplitude"}}, 409)
	c.check(req{method: "POST", path: "/v1/partners", token: admin, body: map[string]string{"slug": "Not A Slug"}}, 400)
	key := c.check(req{method: "POST", path: "/v1/workspaces/acme/partners/amplitude/keys", token: admin}, 201).json(t)
	secret, keyID := str(t, key, "client_secret"), str(t, key, "key_id")
	c.check(req{method: "POST", path: "/v1/workspaces/nope/partners/amplitude/keys", token: admin, body: map[string]any{}}, 404)
	old := c.check(req{method: "POST", path: "/v1/workspaces/acme/partners/amplitude/keys", token: admin, body: map[string]any{}}, 201).json(t)
	c.check(req{method: "GET", path: "/v1/workspaces/acme/partners/amplitude/keys", token: admin}, 200)
	c.check(req{method: "GET", path: "/v1/workspaces/acme/partners/nope/keys", token: admin}, 404)
	c.check(req{method: "DELETE", path: "/v1/workspaces/acme/partners/amplitude/keys/" + str(t, old, "key_id"), token: admin}, 204)
	c.check(req{method: "DELETE", path: "/v1/workspaces/acme/partners/amplitude/keys/nope", token: admin}, 404)
	c.check(req{method: "GET", path: "/v1/workspaces/acme/partners/amplitude/keys", token: admin}, 200)
	c.check(req{method: "GET", path: "/v1/admin/memory", token: admin}, 200)
	c.check(req{method: "GET", path: "/v1/admin/memory"}, 401)
	c.check(req{method: "GET", path: "/v1/admin/memory", token: apiKey}, 403)

	// Tenant administration.
	c.check(req{method: "GET", path: "/v1/workspaces", token: admin}, 200)
	c.check(req{method: "GET", path: "/v1/workspaces", token: apiKey}, 403)
	c.check(req{method: "GET", path: "/v1/partners", token: admin}, 200)
	c.check(req{method: "GET", path: "/v1/partners"}, 401)
	c.check(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "tmp"}}, 201)
	c.check(req{method: "POST", path: "/v1/workspaces/tmp/api-key", token: admin}, 201)
	c.check(req{method: "POST", path: "/v1/workspaces/tmp/api-key", token: admin, body: map[string]any{}, encoding: "gzip"}, 201)
	c.check(req{method: "POST", path: "/v1/workspaces/nope/api-key", token: admin, body: map[string]any{}}, 404)
	c.check(req{method: "POST", path: "/v1/workspaces/tmp/api-key", token: admin, body: "[1]"}, 400)
	c.check(req{method: "DELETE", path: "/v1/workspaces/tmp?force=maybe", token: admin}, 400)
	c.check(req{method: "DELETE", path: "/v1/workspaces/tmp", token: admin}, 204)
	c.check(req{method: "DELETE", path: "/v1/workspaces/tmp?force=true", token: admin}, 404)
	c.check(req{method: "POST", path: "/v1/partners", token: admin, body: map[string]string{"slug": "tmp"}}, 201)
	c.check(req{method: "POST", path: "/v1/partners/tmp/api-key", token: admin}, 201)
	c.check(req{method: "POST", path: "/v1/partners/nope/api-key", token: admin, body: map[string]any{}}, 404)
	c.check(req{method: "DELETE", path: "/v1/partners/tmp", token: admin}, 204)
	c.check(req{method: "DELETE", path: "/v1/partners/tmp", token: admin}, 404)
	c.check(req{method: "DELETE", path: "/v1/partners/tmp", token: apiKey}, 403)
	if r := c.check(req{method: "POST", path: "/v1/admin/snapshot", token: admin}, 201).json(t); num(t, r, "bytes") <= 0 || !strings.HasPrefix(str(t, r, "file"), "snapshot-") {
		t.Errorf("snapshot reply %v", r)
	}
	c.check(req{method: "POST", path: "/v1/admin/snapshot", token: apiKey, body: map[string]any{}}, 403)
	// Replication endpoints on a single node (docs/API.md §7).
	if r := c.check(req{method: "GET", path: "/v1/admin/snapshot", token: admin}, 200); !bytes.HasPrefix(r.body, []byte("COHORTD-SNAPSHOT")) ||
		!strings.HasPrefix(r.header.Get("X-Cohortd-Snapshot"), "snapshot-") {
		t.Errorf("GET /v1/admin/snapshot: %d bytes, name %q", len(r.body), r.header.Get("X-Cohortd-Snapshot"))
	}
	c.check(req{method: "GET", path: "/v1/admin/snapshot"}, 401)
	c.check(req{method: "GET", path: "/v1/admin/snapshot", token: apiKey}, 403)
	if r := c.check(req{method: "GET", path: "/v1/admin/replication", token: admin}, 200).json(t); r["log"] != "local" {
		t.Errorf("replication of a single node: %v", r)
	}
	c.check(req{method: "GET", path: "/v1/admin/replication", token: apiKey}, 403)
	d1 := c.check(req{method: "GET", path: "/v1/admin/digest", token: admin}, 200).json(t)
	if d2 := c.check(req{method: "GET", path: "/v1/admin/digest", token: admin}, 200).json(t); d1["digest"] != d2["digest"] {
		t.Errorf("digest changed without a write: %v, %v", d1, d2)
	}
	c.check(req{method: "GET", path: "/v1/admin/digest"}, 401)

	// Users.
	var users []map[string]any
	for _, id := range userIDs("u", 0, 30) {
		users = append(users, map[string]any{"external_id": id})
	}
	users = append(users, map[string]any{"device_id": "dev-1"}, map[string]any{"external_id": "al", "aliases": []map[string]string{{"alias_name": "email", "alias_label": "al@example.com"}}})
	c.check(req{method: "POST", path: "/v1/users", token: apiKey, body: map[string]any{"users": users}}, 200)
	c.check(req{method: "POST", path: "/v1/users", token: apiKey, body: "{\"external_id\":\"nd1\"}\n{\"device_id\":\"dev-2\"}\n", ctype: "application/x-ndjson", encoding: "zstd"}, 200)
	c.check(req{method: "POST", path: "/v1/users", token: apiKey, body: `{"users":[{"external_id":""}]}`}, 400)
	c.check(req{method: "POST", path: "/v1/users", token: apiKey, body: `{"users":[`}, 400)
	c.check(req{method: "POST", path: "/v1/users", token: "wrong", body: `{"users":[]}`}, 401)
	c.check(req{method: "POST", path: "/v1/users", token: admin, body: `{"users":[]}`}, 403)
	c.check(req{method: "POST", path: "/v1/users", token: apiKey, body: bytes.Repeat([]byte(" "), 2<<20), encoding: "gzip"}, 413)
	c.check(req{method: "POST", path: "/v1/users/delete", token: apiKey, body: map[string]any{"user_ids": []string{"u29", "ghost"}}}, 200)
	c.check(req{method: "POST", path: "/v1/users/delete", token: apiKey, body: map[string]any{"user_ids": "u1"}}, 400)
	c.check(req{method: "GET", path: "/v1/users/lookup?external_id=u1", token: apiKey}, 200)
	c.check(req{method: "GET", path: "/v1/users/lookup?device_id=dev-1", token: apiKey}, 200)
	c.check(req{method: "GET", path: "/v1/users/lookup?alias_name=email&alias_label=al@example.com", token: apiKey}, 200)
	c.check(req{method: "GET", path: "/v1/users/lookup?external_id=ghost", token: apiKey}, 404)
	c.check(req{method: "GET", path: "/v1/users/lookup", token: apiKey}, 400)
	c.check(req{method: "DELETE", path: "/v1/workspaces/acme", token: admin}, 409)

	// Partner endpoints.
	creds := func(m map[string]any) map[string]any {
		m["partner_api_key"], m["client_secret"] = partnerKey, secret
		return m
	}
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts", body: creds(map[string]any{"cohort_id": "c1", "name": "One", "created_at": "2026-11-01T00:00:00+01:00"})}, 201)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts", body: creds(map[string]any{"cohort_id": "c1", "name": "", "created_at": "2026-11-01T00:00:00Z"})}, 400)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts", body: map[string]any{"partner_api_key": "x", "client_secret": secret, "cohort_id": "c1", "name": "One", "created_at": "2026-11-01T00:00:00Z"}}, 401)
	c.check(req{method: "POST", path: "/partners/nope/cohorts", body: creds(map[string]any{"cohort_id": "c1", "name": "One", "created_at": "2026-11-01T00:00:00Z"})}, 401)
	changes := creds(map[string]any{"cohort_id": "c1", "cohort_changes": []map[string]any{
		{"user_ids": userIDs("u", 0, 10), "device_ids": []string{"dev-1", "nodev"}, "aliases": []map[string]string{{"alias_name": "email", "alias_label": "al@example.com"}}},
		{"user_ids": []string{"u0"}, "should_remove": true, "timestamp": "2026-11-01T00:00:00Z"},
		{"user_ids": []string{"u9"}, "should_remove": true, "timestamp": "2001-01-01T00:00:00Z"},
	}})
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: changes, encoding: "gzip", header: map[string]string{"Idempotency-Key": "p-1"}}, 201)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: changes, encoding: "gzip", header: map[string]string{"Idempotency-Key": "p-1"}}, 201)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: creds(map[string]any{"cohort_id": "c1", "cohort_changes": []any{}}), header: map[string]string{"Idempotency-Key": "p-1"}}, 422)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: creds(map[string]any{"cohort_id": "c1"})}, 400)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: creds(map[string]any{"cohort_id": "c1", "cohort_changes": []map[string]any{{"user_ids": userIDs("x", 0, 1001)}}})}, 400)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: map[string]any{"partner_api_key": partnerKey, "client_secret": "bad", "cohort_id": "c1", "cohort_changes": []any{}}}, 401)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: append(append([]byte(`{"pad":"`), bytes.Repeat([]byte("a"), 100<<10)...), `"}`...), encoding: "zstd"}, 413)

	// Cohorts.
	c.check(req{method: "GET", path: "/v1/cohorts", token: apiKey}, 200)
	c.check(req{method: "GET", path: "/v1/cohorts/amplitude/c1", token: apiKey}, 200)
	c.check(req{method: "GET", path: "/v1/cohorts/amplitude/nope", token: apiKey}, 404)
	c.check(req{method: "GET", path: "/v1/cohorts/Bad%20Slug/c1", token: apiKey}, 400)
	c.check(req{method: "POST", path: "/v1/cohorts/amplitude/c%2F2/changes", token: apiKey, body: map[string]any{"cohort_changes": []map[string]any{{"user_ids": userIDs("u", 10, 20)}}}}, 200)
	c.check(req{method: "POST", path: "/v1/cohorts/amplitude/c%2F2/changes", token: apiKey, body: "{\"user_ids\":[\"u20\"]}\n{\"device_ids\":[\"dev-2\"]}\n", ctype: "application/x-ndjson"}, 200)
	c.check(req{method: "POST", path: "/v1/cohorts/amplitude/c%2F2/changes", token: apiKey, body: map[string]any{"cohort_changes": "no"}}, 400)
	c.check(req{method: "PUT", path: "/v1/cohorts/segment/c3/members", token: apiKey, body: map[string]any{"user_ids": userIDs("u", 0, 5), "device_ids": []string{"dev-1"}, "aliases": []any{}}}, 200)
	c.check(req{method: "PUT", path: "/v1/cohorts/segment/c3/members", token: apiKey, body: "{\"external_id\":\"u1\"}\n{\"alias_name\":\"email\",\"alias_label\":\"al@example.com\"}\n", ctype: "application/x-ndjson", encoding: "gzip"}, 200)
	c.check(req{method: "PUT", path: "/v1/cohorts/segment/c3/members", token: apiKey, body: "{\"external_id\":\n", ctype: "application/x-ndjson"}, 400)
	c.check(req{method: "GET", path: "/v1/cohorts/amplitude/c1/members", token: apiKey}, 200)
	if r := c.check(req{method: "GET", path: "/v1/cohorts/amplitude/c1/members", token: apiKey, header: map[string]string{"Accept-Encoding": "gzip"}}, 200); len(ndjsonLines(t, r.body)) == 0 {
		t.Error("gzip member stream is empty")
	}
	c.check(req{method: "GET", path: "/v1/cohorts/amplitude/c1/members", token: apiKey, header: map[string]string{"Accept-Encoding": "zstd"}}, 200)
	c.check(req{method: "GET", path: "/v1/cohorts/amplitude/nope/members", token: apiKey}, 404)

	// Sync history and health (docs/API.md §8).
	if r := c.check(req{method: "GET", path: "/v1/cohorts/amplitude/c1/syncs", token: apiKey}, 200).json(t); len(r["syncs"].([]any)) == 0 {
		t.Errorf("no sync listed for amplitude/c1: %v", r)
	}
	c.check(req{method: "GET", path: "/v1/cohorts/segment/c3/syncs?limit=1", token: apiKey}, 200)
	c.check(req{method: "GET", path: "/v1/cohorts/segment/c3/syncs?limit=0", token: apiKey}, 400)
	c.check(req{method: "GET", path: "/v1/cohorts/amplitude/nope/syncs", token: apiKey}, 404)
	c.check(req{method: "GET", path: "/v1/cohorts/amplitude/c1/syncs"}, 401)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts", body: creds(map[string]any{"cohort_id": "quiet", "name": "Quiet", "created_at": "2026-11-01T00:00:00Z"})}, 201)
	if r := c.check(req{method: "GET", path: "/v1/health/cohorts", token: apiKey}, 200); !bytes.Contains(r.body, []byte(`"never_synced"`)) {
		t.Errorf("health list without the never synced cohort: %s", r.body)
	}
	c.check(req{method: "GET", path: "/v1/health/cohorts", token: admin}, 403)

	// The built-in page.
	c.check(req{method: "GET", path: "/ui"}, 301)
	index := c.check(req{method: "GET", path: "/ui/"}, 200)
	c.check(req{method: "GET", path: "/ui/", header: map[string]string{"If-None-Match": index.header.Get("ETag")}}, 304)
	for _, f := range []string{"index.html", "app.js", "chart.js", "app.css", "favicon.svg"} {
		c.check(req{method: "GET", path: "/ui/" + f}, 200)
	}
	c.check(req{method: "GET", path: "/ui/app.js", header: map[string]string{"Accept-Encoding": "gzip"}}, 200)
	c.check(req{method: "GET", path: "/ui/nope.js"}, 404)

	// Segments.
	seg := map[string]any{"or": []any{map[string]any{"cohort": "amplitude/c1"}, map[string]any{"and": []any{map[string]any{"cohort": "segment/c3"}, map[string]any{"not": map[string]any{"cohort": "amplitude/zzz"}}}}}}
	if r := c.check(req{method: "POST", path: "/v1/segments/count", token: apiKey, body: map[string]any{"segment": seg}}, 200); !bytes.Contains(r.body, []byte("unknown cohort amplitude/zzz")) {
		t.Errorf("no warning for an unknown cohort: %s", r.body)
	}
	c.check(req{method: "POST", path: "/v1/segments/count", token: apiKey, body: map[string]any{"segment": map[string]any{"all": true}}}, 200)
	c.check(req{method: "POST", path: "/v1/segments/count", token: apiKey, body: map[string]any{"segment": map[string]any{"or": []any{}}}}, 400)
	c.check(req{method: "POST", path: "/v1/segments/contains", token: apiKey, body: map[string]any{"segment": seg,
		"users": []map[string]string{{"external_id": "u1"}, {"device_id": "dev-1"}, {"alias_name": "email", "alias_label": "al@example.com"}, {"external_id": "ghost"}}}}, 200)
	c.check(req{method: "POST", path: "/v1/segments/contains", token: apiKey, body: map[string]any{"segment": seg, "users": "u1"}}, 400)
	c.check(req{method: "POST", path: "/v1/segments/contains", token: apiKey, body: map[string]any{"segment": seg, "external_ids": []string{"u1", "ghost"}}}, 200)
	c.check(req{method: "POST", path: "/v1/segments/contains", token: apiKey, body: map[string]any{"segment": seg, "device_ids": []string{"dev-1"}}}, 200)
	c.check(req{method: "POST", path: "/v1/segments/contains", token: apiKey, body: map[string]any{"segment": seg, "users": []any{}, "device_ids": []string{"dev-1"}}}, 400)
	page := c.check(req{method: "POST", path: "/v1/segments/members", token: apiKey, body: map[string]any{"segment": seg, "limit": 2}}, 200).json(t)
	c.check(req{method: "POST", path: "/v1/segments/members", token: apiKey, body: map[string]any{"segment": seg, "limit": 2, "cursor": page["next_cursor"]}}, 200)
	c.check(req{method: "POST", path: "/v1/segments/members", token: apiKey, body: map[string]any{"segment": seg}}, 200)
	c.check(req{method: "POST", path: "/v1/segments/members", token: apiKey, body: map[string]any{"segment": seg}, header: map[string]string{"Accept-Encoding": "zstd"}}, 200)
	c.check(req{method: "POST", path: "/v1/segments/members", token: apiKey, body: map[string]any{"segment": seg, "limit": 0}}, 400)

	// Usage, deletes.
	c.check(req{method: "GET", path: "/v1/usage", token: apiKey}, 200)
	c.check(req{method: "GET", path: "/v1/usage"}, 401)
	c.check(req{method: "PUT", path: "/v1/usage", token: apiKey}, 405)
	c.check(req{method: "DELETE", path: "/v1/cohorts/amplitude/c%2F2", token: apiKey}, 204)
	c.check(req{method: "DELETE", path: "/v1/cohorts/amplitude/c%2F2", token: apiKey}, 404)
	c.check(req{method: "DELETE", path: "/v1/workspaces/acme/partners/amplitude/keys/" + keyID, token: admin}, 204)
	c.check(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: changes}, 401)

	// The Mixpanel webhook (docs/API.md §3b) may not be implemented yet.
	t.Run("webhook", func(t *testing.T) {
		probe := d.do(req{method: "POST", path: "/webhooks/mixpanel", body: map[string]any{}})
		if probe.status == 404 && bytes.Contains(probe.body, []byte("no route")) {
			t.Skip("POST /webhooks/mixpanel is not implemented yet (404 no route)")
		}
		c.t = t
		c.check(req{method: "POST", path: "/v1/partners", token: admin, body: map[string]string{"slug": "mixpanel"}}, 201)
		mk := c.check(req{method: "POST", path: "/v1/workspaces/acme/partners/mixpanel/keys", token: admin, body: map[string]any{}}, 201).json(t)
		basic := map[string]string{"Authorization": "Basic " + basicAuth("mp", str(t, mk, "client_secret"))}
		body := map[string]any{"action": "add_members", "parameters": map[string]any{
			"mixpanel_project_id": "1", "mixpanel_cohort_id": 42, "mixpanel_cohort_name": "Buyers",
			"members": []map[string]any{{"mixpanel_distinct_id": "u1", "email": "u1@example.com"}, {"mixpanel_distinct_id": 7}}}}
		c.check(req{method: "POST", path: "/webhooks/mixpanel", body: body, header: basic}, 200)
		c.check(req{method: "POST", path: "/webhooks/mixpanel", body: body}, 401)
		c.check(req{method: "POST", path: "/webhooks/mixpanel", body: map[string]any{"action": "add_members", "parameters": map[string]any{"mixpanel_cohort_id": 42, "members": "x"}}, header: basic}, 400)
		snap := map[string]any{"action": "members", "parameters": map[string]any{
			"mixpanel_cohort_id": "43", "mixpanel_cohort_name": "Snap", "mixpanel_session_id": "s1",
			"page_info": map[string]any{"total_pages": 2, "page_count": 1},
			"members":   []map[string]any{{"mixpanel_distinct_id": "u2"}}}}
		r := c.check(req{method: "POST", path: "/webhooks/mixpanel?alias=email", body: snap, header: basic}, 200).json(t)
		if r["committed"] == true {
			t.Errorf("page 1 of 2 committed: %v", r)
		}
		params := snap["parameters"].(map[string]any)
		params["page_info"] = map[string]any{"total_pages": 2, "page_count": 2}
		params["members"] = []map[string]any{{"mixpanel_distinct_id": "nobody", "email": "al@example.com"}}
		r = c.check(req{method: "POST", path: "/webhooks/mixpanel?alias=email", body: snap, header: basic, encoding: "gzip"}, 200).json(t)
		if r["committed"] != true {
			t.Errorf("page 2 of 2 did not commit: %v", r)
		}
		if co := c.check(req{method: "GET", path: "/v1/cohorts/mixpanel/43", token: apiKey}, 200).json(t); num(t, co, "size") != 2 || co["name"] != "Snap" {
			t.Errorf("snapshot cohort: %v, want size 2 (u2 and the alias)", co)
		}
		// total_pages must be equal on every page of a session.
		params["mixpanel_session_id"] = "s2"
		params["page_info"] = map[string]any{"total_pages": 2, "page_count": 1}
		c.check(req{method: "POST", path: "/webhooks/mixpanel", body: snap, header: basic}, 200)
		params["page_info"] = map[string]any{"total_pages": 3, "page_count": 2}
		c.check(req{method: "POST", path: "/webhooks/mixpanel", body: snap, header: basic}, 400)
		c.check(req{method: "POST", path: "/webhooks/mixpanel", body: map[string]any{"action": "explode", "parameters": map[string]any{}}, header: basic}, 400)
		c.check(req{method: "POST", path: "/webhooks/mixpanel", body: "<xml/>", ctype: "text/xml", header: basic}, 415)
		c.check(req{method: "POST", path: "/webhooks/mixpanel", body: body, header: map[string]string{"Authorization": "Basic " + basicAuth("mp", secret)}}, 401)
	})

	// A workspace with everything in it goes with force.
	c.check(req{method: "DELETE", path: "/v1/workspaces/acme?force=true", token: admin}, 204)
	c.check(req{method: "GET", path: "/v1/usage", token: apiKey}, 401)

	// Every operation of the document was exercised.
	var missing []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if c.seen[op.OperationID] == nil && op.OperationID != "mixpanelWebhook" {
				if !servesOperation(t, d, method, path, admin) {
					// docs/API.md and the document describe the whole
					// contract; parts built in other branches are checked
					// here from the moment the binary routes them.
					t.Logf("documented, not routed by this build: %s %s", method, path)
					continue
				}
				missing = append(missing, method+" "+path)
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("operations never exercised: %s", strings.Join(missing, ", "))
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
}

// TestOpenAPIRateLimit: a 429 carries Retry-After and the Error shape.
func TestOpenAPIRateLimit(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-rate-limit", "0.5", "-rate-burst", "3"}})
	c := newAPIChecker(t, doc, d)
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")
	for i := 0; i < 10; i++ {
		r := d.do(req{method: "GET", path: "/v1/usage", token: tn.apiKey})
		if r.status == 429 {
			if r.header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
			c.check(req{method: "GET", path: "/v1/usage", token: tn.apiKey}, 429)
			d.stop(syscall.SIGTERM, 30*time.Second)
			return
		}
	}
	t.Fatal("no 429 after 10 quick requests with -rate-limit 0.5 -rate-burst 3")
}

func basicAuth(user, pass string) string {
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth(user, pass)
	return strings.TrimPrefix(req.Header.Get("Authorization"), "Basic ")
}
