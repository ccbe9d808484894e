package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
)

// fakeServer implements just enough of docs/API.md, for one workspace, to check
// that loadgen sends well-formed bodies and verifies what it should. Protocol
// violations are collected in problems.
type fakeServer struct {
	admin      string
	shrink     bool        // report every cohort one member short
	throttled  atomic.Bool // whether the first change request got its 429
	upserts    atomic.Int64
	changeReqs atomic.Int64
	queries    atomic.Int64

	mu struct {
		sync.Mutex
		wsKey, ws    string
		partners     map[string]string // slug → partner api key
		secret       string
		ext, alias   map[string]int
		device       map[string]int
		anon         map[int]bool
		next         int
		cohorts      map[string]map[int]bool
		problems     []string
		seenWorkflow []string
	}
}

func newFakeServer() *fakeServer {
	f := &fakeServer{admin: "admin-token"}
	f.mu.partners = map[string]string{"loadgen": "taken"} // forces the 409 path
	f.mu.ext, f.mu.alias, f.mu.device = map[string]int{}, map[string]int{}, map[string]int{}
	f.mu.anon = map[int]bool{}
	f.mu.cohorts = map[string]map[int]bool{}
	return f
}

func (f *fakeServer) problem(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.mu.problems) < 20 {
		f.mu.problems = append(f.mu.problems, fmt.Sprintf(format, args...))
	}
}

func reply(ctx *fasthttp.RequestCtx, status int, v any) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	b, _ := json.Marshal(v)
	ctx.SetBody(b)
}

// body decodes the request body per Content-Encoding.
func (f *fakeServer) body(ctx *fasthttp.RequestCtx) ([]byte, error) {
	raw := ctx.Request.Body()
	switch enc := string(ctx.Request.Header.Peek("Content-Encoding")); enc {
	case "":
		return raw, nil
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	case "zstd":
		d, err := zstd.NewReader(nil)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		return d.DecodeAll(raw, nil)
	default:
		return nil, fmt.Errorf("encoding %q", enc)
	}
}

func (f *fakeServer) handle(ctx *fasthttp.RequestCtx) {
	path, method := string(ctx.Path()), string(ctx.Method())
	auth := strings.TrimPrefix(string(ctx.Request.Header.Peek("Authorization")), "Bearer ")
	body, err := f.body(ctx)
	if err != nil {
		f.problem("%s %s: body: %v", method, path, err)
		reply(ctx, 400, map[string]string{"message": err.Error()})
		return
	}
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	switch {
	case method == "POST" && path == "/v1/workspaces":
		f.adminOnly(ctx, auth, func() {
			var in struct{ ID string }
			_ = json.Unmarshal(body, &in)
			f.mu.Lock()
			f.mu.ws, f.mu.wsKey = in.ID, "ws-key-"+in.ID
			f.mu.Unlock()
			reply(ctx, 201, map[string]string{"id": in.ID, "api_key": "ws-key-" + in.ID})
		})
	case method == "POST" && path == "/v1/partners":
		f.adminOnly(ctx, auth, func() {
			var in struct{ Slug string }
			_ = json.Unmarshal(body, &in)
			f.mu.Lock()
			defer f.mu.Unlock()
			if _, ok := f.mu.partners[in.Slug]; ok {
				reply(ctx, 409, map[string]string{"message": "exists"})
				return
			}
			f.mu.partners[in.Slug] = "pk-" + in.Slug
			reply(ctx, 201, map[string]string{"slug": in.Slug, "partner_api_key": "pk-" + in.Slug})
		})
	case method == "POST" && len(parts) == 6 && parts[0] == "v1" && parts[1] == "workspaces" && parts[5] == "keys":
		f.adminOnly(ctx, auth, func() {
			f.mu.Lock()
			f.mu.secret = "secret-" + parts[4]
			f.mu.Unlock()
			reply(ctx, 201, map[string]string{"key_id": "k1", "client_secret": "secret-" + parts[4]})
		})
	case path == "/v1/users" && method == "POST":
		f.workspace(ctx, auth, func() { f.users(ctx, body) })
	case method == "POST" && len(parts) == 3 && parts[0] == "partners" && parts[2] == "cohorts":
		f.upsert(ctx, parts[1], body)
	case method == "POST" && len(parts) == 4 && parts[0] == "partners" && parts[3] == "users":
		f.partnerChanges(ctx, parts[1], body)
	case method == "POST" && len(parts) == 5 && parts[1] == "cohorts" && parts[4] == "changes":
		f.workspace(ctx, auth, func() { f.bulkChanges(ctx, parts[2]+"/"+parts[3], body) })
	case method == "GET" && len(parts) == 4 && parts[1] == "cohorts":
		f.workspace(ctx, auth, func() {
			f.mu.Lock()
			size := len(f.mu.cohorts[parts[2]+"/"+parts[3]])
			f.mu.Unlock()
			if f.shrink {
				size--
			}
			reply(ctx, 200, map[string]any{"partner": parts[2], "cohort_id": parts[3], "size": size})
		})
	case method == "POST" && strings.HasPrefix(path, "/v1/segments/"):
		f.workspace(ctx, auth, func() { f.segments(ctx, path, body) })
	default:
		f.problem("unexpected %s %s", method, path)
		reply(ctx, 404, map[string]string{"message": "not found"})
	}
}

func (f *fakeServer) adminOnly(ctx *fasthttp.RequestCtx, auth string, next func()) {
	if auth != f.admin {
		f.problem("admin endpoint %s without the admin token", ctx.Path())
		reply(ctx, 401, map[string]string{"message": "unauthorized"})
		return
	}
	next()
}

func (f *fakeServer) workspace(ctx *fasthttp.RequestCtx, auth string, next func()) {
	f.mu.Lock()
	ok := auth != "" && auth == f.mu.wsKey
	f.mu.Unlock()
	if !ok {
		f.problem("%s %s: wrong workspace key %q", ctx.Method(), ctx.Path(), auth)
		reply(ctx, 401, map[string]string{"message": "unauthorized"})
		return
	}
	next()
}

func (f *fakeServer) users(ctx *fasthttp.RequestCtx, body []byte) {
	if ct := string(ctx.Request.Header.ContentType()); ct != "application/x-ndjson" {
		f.problem("users: content type %q", ct)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	counts := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct {
			ExternalID string `json:"external_id"`
			DeviceID   string `json:"device_id"`
			Aliases    []struct {
				Name  string `json:"alias_name"`
				Label string `json:"alias_label"`
			} `json:"aliases"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			f.mu.problems = append(f.mu.problems, "users: bad line "+sc.Text())
			continue
		}
		switch {
		case rec.ExternalID != "" && rec.DeviceID != "":
			d, ok := f.mu.device[rec.DeviceID]
			if !ok || !f.mu.anon[d] {
				f.mu.problems = append(f.mu.problems, "identify: device not anonymous "+rec.DeviceID)
				continue
			}
			f.mu.ext[rec.ExternalID], f.mu.anon[d] = d, false
			counts["identified"]++
		case rec.ExternalID != "":
			if _, ok := f.mu.ext[rec.ExternalID]; ok {
				counts["unchanged"]++
				continue
			}
			f.mu.next++
			f.mu.ext[rec.ExternalID] = f.mu.next
			counts["created"]++
		case len(rec.Aliases) == 1 && rec.Aliases[0].Name == "email":
			f.mu.next++
			f.mu.alias[rec.Aliases[0].Label] = f.mu.next
			counts["created"]++
		case rec.DeviceID != "":
			f.mu.next++
			f.mu.device[rec.DeviceID], f.mu.anon[f.mu.next] = f.mu.next, true
			counts["created"]++
		default:
			f.mu.problems = append(f.mu.problems, "users: record without identifiers "+sc.Text())
		}
	}
	reply(ctx, 200, counts)
}

type fakePartnerBody struct {
	PartnerAPIKey string            `json:"partner_api_key"`
	ClientSecret  string            `json:"client_secret"`
	CohortID      string            `json:"cohort_id"`
	Name          string            `json:"name"`
	CreatedAt     string            `json:"created_at"`
	Changes       []json.RawMessage `json:"cohort_changes"`
}

func (f *fakeServer) partnerAuth(ctx *fasthttp.RequestCtx, slug string, in *fakePartnerBody) bool {
	f.mu.Lock()
	ok := f.mu.partners[slug] == in.PartnerAPIKey && in.ClientSecret == f.mu.secret && f.mu.secret != ""
	f.mu.Unlock()
	if !ok || in.CohortID == "" {
		f.problem("partner %s: bad credentials or cohort id %+v", slug, in)
		reply(ctx, 401, map[string]string{"message": "Invalid Partner API key"})
	}
	return ok && in.CohortID != ""
}

func (f *fakeServer) upsert(ctx *fasthttp.RequestCtx, slug string, body []byte) {
	var in fakePartnerBody
	if err := json.Unmarshal(body, &in); err != nil {
		f.problem("upsert: %v", err)
	}
	if !f.partnerAuth(ctx, slug, &in) {
		return
	}
	if _, err := time.Parse(time.RFC3339, in.CreatedAt); err != nil || in.Name == "" {
		f.problem("upsert: created_at %q name %q", in.CreatedAt, in.Name)
	}
	f.upserts.Add(1)
	reply(ctx, 201, map[string]string{"message": "success"})
}

// change is one decoded change object; it insists on all three arrays.
type change struct {
	UserIDs   []string `json:"user_ids"`
	DeviceIDs []string `json:"device_ids"`
	Aliases   []struct {
		Name  string `json:"alias_name"`
		Label string `json:"alias_label"`
	} `json:"aliases"`
	Remove bool `json:"should_remove"`
}

func (f *fakeServer) decodeChange(raw []byte) (change, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return change{}, err
	}
	for _, k := range []string{"user_ids", "device_ids", "aliases"} {
		if v, ok := keys[k]; !ok || string(v) == "null" {
			return change{}, fmt.Errorf("change without %s", k)
		}
	}
	var c change
	err := json.Unmarshal(raw, &c)
	return c, err
}

func (f *fakeServer) partnerChanges(ctx *fasthttp.RequestCtx, slug string, body []byte) {
	if enc := string(ctx.Request.Header.Peek("Content-Encoding")); enc != "gzip" {
		f.problem("partner changes: encoding %q, want gzip", enc)
	}
	if f.throttled.CompareAndSwap(false, true) {
		ctx.Response.Header.Set("Retry-After", "0")
		reply(ctx, 429, map[string]string{"message": "slow down"})
		return
	}
	var in fakePartnerBody
	if err := json.Unmarshal(body, &in); err != nil {
		f.problem("partner changes: %v", err)
	}
	if !f.partnerAuth(ctx, slug, &in) {
		return
	}
	var changes []change
	ids := 0
	for _, raw := range in.Changes {
		c, err := f.decodeChange(raw)
		if err != nil {
			f.problem("partner changes: %v", err)
			reply(ctx, 400, map[string]string{"message": err.Error()})
			return
		}
		ids += len(c.UserIDs) + len(c.DeviceIDs) + len(c.Aliases)
		changes = append(changes, c)
	}
	if ids > 1000 {
		f.problem("partner changes: %d ids", ids)
		reply(ctx, 400, map[string]string{"message": "Only 1,000 user_ids, device_ids, and aliases are allowed per request"})
		return
	}
	f.changeReqs.Add(1)
	reply(ctx, 201, f.apply(slug+"/"+in.CohortID, changes))
}

func (f *fakeServer) bulkChanges(ctx *fasthttp.RequestCtx, cohort string, body []byte) {
	if enc := string(ctx.Request.Header.Peek("Content-Encoding")); enc != "zstd" {
		f.problem("bulk changes: encoding %q, want zstd", enc)
	}
	var changes []change
	for line := range bytes.Lines(body) {
		c, err := f.decodeChange(line)
		if err != nil {
			f.problem("bulk changes: %v", err)
			reply(ctx, 400, map[string]string{"message": err.Error()})
			return
		}
		if n := len(c.UserIDs) + len(c.DeviceIDs) + len(c.Aliases); n > 1000 {
			f.problem("bulk line of %d ids", n)
		}
		changes = append(changes, c)
	}
	f.changeReqs.Add(1)
	reply(ctx, 200, f.apply(cohort, changes))
}

// apply applies changes in order with the matching rules of docs/API.md §2.
func (f *fakeServer) apply(cohort string, changes []change) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	set := f.mu.cohorts[cohort]
	if set == nil {
		set = map[int]bool{}
		f.mu.cohorts[cohort] = set
	}
	var matched, unmatched, added, removed int
	sawRemove := false
	for _, c := range changes {
		if c.Remove {
			sawRemove = true
		} else if sawRemove {
			f.mu.problems = append(f.mu.problems, "adds after removes")
		}
		var users []int
		for _, id := range c.UserIDs {
			if u, ok := f.mu.ext[id]; ok {
				users = append(users, u)
			} else {
				unmatched++
			}
		}
		for _, d := range c.DeviceIDs {
			if u, ok := f.mu.device[d]; ok && f.mu.anon[u] {
				users = append(users, u)
			} else {
				unmatched++
			}
		}
		for _, a := range c.Aliases {
			if u, ok := f.mu.alias[a.Label]; ok && a.Name == "email" {
				users = append(users, u)
			} else {
				unmatched++
			}
		}
		matched += len(users)
		for _, u := range users {
			switch {
			case c.Remove && set[u]:
				delete(set, u)
				removed++
			case !c.Remove && !set[u]:
				set[u] = true
				added++
			}
		}
	}
	return map[string]any{"message": "success", "matched": matched, "unmatched": unmatched, "added": added, "removed": removed}
}

// checkExpr walks a segment expression.
func checkExpr(e map[string]json.RawMessage) error {
	if len(e) != 1 {
		return fmt.Errorf("expression with %d keys", len(e))
	}
	for k, v := range e {
		switch k {
		case "cohort":
			var s string
			if err := json.Unmarshal(v, &s); err != nil || !strings.Contains(s, "/") {
				return fmt.Errorf("bad cohort %s", v)
			}
		case "not":
			var sub map[string]json.RawMessage
			if err := json.Unmarshal(v, &sub); err != nil {
				return err
			}
			return checkExpr(sub)
		case "and", "or":
			var subs []map[string]json.RawMessage
			if err := json.Unmarshal(v, &subs); err != nil || len(subs) == 0 {
				return fmt.Errorf("bad %s %s", k, v)
			}
			for _, s := range subs {
				if err := checkExpr(s); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("unknown operator %q", k)
		}
	}
	return nil
}

func (f *fakeServer) segments(ctx *fasthttp.RequestCtx, path string, body []byte) {
	f.queries.Add(1)
	var in struct {
		Segment     map[string]json.RawMessage `json:"segment"`
		Users       []map[string]string        `json:"users"`
		ExternalIDs []string                   `json:"external_ids"`
		Limit       int                        `json:"limit"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		f.problem("%s: %v", path, err)
		reply(ctx, 400, map[string]string{"message": err.Error()})
		return
	}
	if err := checkExpr(in.Segment); err != nil {
		f.problem("%s: %v", path, err)
		reply(ctx, 400, map[string]string{"message": err.Error()})
		return
	}
	switch path {
	case "/v1/segments/contains":
		for _, u := range in.Users {
			if len(u) == 0 || (len(u) == 2 && u["alias_name"] != "email") {
				f.problem("contains: bad user %v", u)
			}
		}
		if len(in.Users) > 0 && len(in.ExternalIDs) > 0 {
			f.problem("contains: both users and external_ids")
		}
		for _, id := range in.ExternalIDs {
			if !strings.HasPrefix(id, "user-") {
				f.problem("contains: compact form names %q, not an external id", id)
			}
		}
		reply(ctx, 200, map[string]any{"results": make([]bool, len(in.Users)+len(in.ExternalIDs))})
	case "/v1/segments/count":
		reply(ctx, 200, map[string]any{"count": 7})
	case "/v1/segments/members":
		if in.Limit != 1000 {
			f.problem("members: limit %d", in.Limit)
		}
		reply(ctx, 200, map[string]any{"members": []any{map[string]string{"external_id": "user-00000000000001"}}, "next_cursor": nil})
	default:
		f.problem("unknown segment endpoint %s", path)
		reply(ctx, 404, nil)
	}
}

func (f *fakeServer) problems() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.mu.problems...)
}

func runMixed(t *testing.T, f *fakeServer, o Options) (*Report, error) {
	t.Helper()
	o.Dial = serveInmemory(t, f.handle)
	o.AdminToken = f.admin
	o.BackoffBase, o.BackoffMax = time.Millisecond, 10*time.Millisecond
	var log bytes.Buffer
	o.Progress, o.ReportEvery = &log, 200*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	rep, err := Mixed(ctx, o, &log)
	t.Logf("log:\n%s", log.String())
	return rep, err
}

func opsByName(rep *Report) map[string]OpReport {
	m := map[string]OpReport{}
	for _, o := range rep.Ops {
		m[o.Name] = o
	}
	return m
}

func TestMixedPartnerClustered(t *testing.T) {
	f := newFakeServer()
	rep, err := runMixed(t, f, Options{
		Users: 4_000, Cohorts: 2, Duration: time.Second, Interval: 150 * time.Millisecond,
		Rate: 300, Seed: 3, UsersPerBody: 1_500,
	})
	if err != nil {
		t.Fatalf("Mixed: %v (problems %v)", err, f.problems())
	}
	if p := f.problems(); len(p) > 0 {
		t.Fatalf("protocol problems: %v", p)
	}
	var md bytes.Buffer
	_ = rep.WriteMarkdown(&md)
	t.Logf("\n%s", md.String())
	ops := opsByName(rep)
	for _, name := range []string{"users", "identify", "upsert", "partner_changes", "verify", opContains} {
		if ops[name].Count == 0 {
			t.Errorf("no %s requests", name)
		}
	}
	if ops["partner_changes"].Retries < 1 {
		t.Error("the 429 was not retried")
	}
	if got, want := f.upserts.Load(), f.changeReqs.Load(); got != want {
		t.Errorf("%d upserts for %d change requests; want one before every batch", got, want)
	}
	if rep.Seed == nil || rep.Seed.Created != 4_000 || rep.Seed.Identified != 200 {
		t.Errorf("seed counts %+v, want 4000 created and 200 identified", rep.Seed)
	}
	if rep.Workload.Partner == "loadgen" || !strings.HasPrefix(rep.Workload.Partner, "lg-") {
		t.Errorf("partner %q: the 409 should give a fresh lg- slug", rep.Workload.Partner)
	}
	if rep.Verification.Checks < 3 || !rep.Verification.OK() {
		t.Errorf("verification %+v", rep.Verification)
	}
}

func TestMixedBulkUniform(t *testing.T) {
	f := newFakeServer()
	rep, err := runMixed(t, f, Options{
		Users: 3_000, Cohorts: 2, Flavour: FlavourUniform, Shape: ShapeBulk,
		ChangeSets: 3, Interval: 100 * time.Millisecond, Requests: 50,
		BulkIDs: 700, BulkLineIDs: 100, Mix: Mix{Count: 1, Page: 1},
	})
	if err != nil {
		t.Fatalf("Mixed: %v (problems %v)", err, f.problems())
	}
	if p := f.problems(); len(p) > 0 {
		t.Fatalf("protocol problems: %v", p)
	}
	ops := opsByName(rep)
	if ops["bulk_changes"].Count == 0 || ops["upsert"].Count != 0 || ops[opCount].Count+ops[opPage].Count != 50 {
		t.Errorf("ops %+v", ops)
	}
	if !rep.Verification.OK() {
		t.Errorf("verification %+v", rep.Verification)
	}
}

func TestMixedDetectsSizeMismatch(t *testing.T) {
	f := newFakeServer()
	f.shrink = true
	rep, err := runMixed(t, f, Options{Users: 2_000, Cohorts: 1, ChangeSets: 1, Interval: 50 * time.Millisecond, Requests: 5})
	if !errors.Is(err, ErrRunFailed) || rep == nil || rep.Verification.OK() {
		t.Fatalf("err %v, report %+v: want a verification failure", err, rep)
	}
}
