package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/loadgen"
)

// BenchmarkRemote is the cross-process mode (bench/crossproc.sh): the
// server is another process, pinned alone to its own CPU, and this process
// is its client on another CPU. One server at a time, chosen by
// COHORTD_BENCH_REMOTE:
//
//   - cohortd: a cohortd at COHORTD_BENCH_ADDR (host:port) with admin token
//     COHORTD_BENCH_ADMIN_TOKEN, on an empty data directory; the benchmark
//     seeds it over HTTP as loadgen does;
//   - redis: the redis-server at REDIS_ADDR (FLUSHed and seeded).
//
// COHORTD_BENCH_SERVER_PID names the server's process: every benchmark then
// reports the server's CPU time per operation (server-cpu-ns/op, from
// /proc/<pid>/stat) and identifiers or requests per server CPU-second, the
// figure that compares servers whose clients cost differently.
//
// Names follow Remote/users_N/<system>/<workload…> so that the report puts
// the two systems of a workload side by side (COHORTD_BENCH_LABEL renames
// the system, for a second cohortd mode such as -fsync always).
func BenchmarkRemote(b *testing.B) {
	sys := os.Getenv("COHORTD_BENCH_REMOTE")
	if sys == "" {
		b.Skip("cross-process mode: set COHORTD_BENCH_REMOTE (see bench/crossproc.sh)")
	}
	if sys != "cohortd" && sys != "redis" {
		b.Fatalf("COHORTD_BENCH_REMOTE=%q: want cohortd or redis", sys)
	}
	users := Users()[0]
	pid, _ := strconv.Atoi(os.Getenv("COHORTD_BENCH_SERVER_PID"))
	rt := &remote{sys: sys, pid: pid, u: universe(users)}
	if err := rt.setup(b); err != nil {
		b.Fatal(err)
	}
	// COHORTD_BENCH_LABEL names the system in results when one system runs
	// in several modes (cohortd_fsync_always).
	label := sys
	if l := os.Getenv("COHORTD_BENCH_LABEL"); l != "" {
		label = l
	}
	name := func(rest string) string { return fmt.Sprintf("users_%d/%s/%s", users, label, rest) }
	for _, fl := range Flavours {
		for _, perLine := range []int{1, 1000} {
			b.Run(name(fmt.Sprintf("import/bulk/%s/lines_of_%d", fl, perLine)), func(b *testing.B) {
				rt.benchImport(b, "bulk", fl, 100_000, perLine, 1)
			})
		}
		b.Run(name(fmt.Sprintf("import/partner/%s/senders_8", fl)), func(b *testing.B) {
			rt.benchImport(b, "partner", fl, 1_000, 0, 8)
		})
	}
	if sys == "cohortd" {
		b.Run(name("livez/conns_32"), func(b *testing.B) { rt.benchLivez(b, 32) })
	}
	b.Run(name("contains/single/clauses_1/conns_32"), func(b *testing.B) { rt.benchContains(b, 32) })
	b.Run(name("contains/single/clauses_1/latency_70"), func(b *testing.B) { rt.benchLatency(b) })
	b.Run(name("contains/single/clauses_1/latency_70_raw"), func(b *testing.B) { rt.benchLatencyRaw(b) })
	for _, form := range []string{"compact", "users"} {
		b.Run(name("contains/batch_"+form+"/clauses_1/ids_1000"), func(b *testing.B) { rt.benchBatch(b, form) })
	}
	for _, fl := range Flavours {
		b.Run(name("count/"+string(fl)+"/and_and_not"), func(b *testing.B) { rt.benchCount(b, fl) })
	}
}

// remote is the server under test and what the benchmarks send it.
type remote struct {
	sys string
	pid int
	u   loadgen.Universe

	// cohortd
	hc                         *fasthttp.HostClient
	apiKey, partnerKey, secret string
	// redis
	rc *redis.Client
}

func (rt *remote) setup(b *testing.B) error {
	ctx := context.Background()
	start := time.Now()
	if rt.sys == "redis" {
		rt.rc = redisFixtureFor(b, rt.u.Users).c
		return nil
	}
	addr, admin := os.Getenv("COHORTD_BENCH_ADDR"), os.Getenv("COHORTD_BENCH_ADMIN_TOKEN")
	if addr == "" || admin == "" {
		return fmt.Errorf("cohortd needs COHORTD_BENCH_ADDR and COHORTD_BENCH_ADMIN_TOKEN")
	}
	rt.hc = &fasthttp.HostClient{Addr: addr, MaxConns: 256, ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10,
		MaxResponseBodySize: 64 << 20, ReadTimeout: 5 * time.Minute, WriteTimeout: 5 * time.Minute}
	var ws struct {
		APIKey string `json:"api_key"`
	}
	if err := rt.call("POST", "/v1/workspaces", admin, []byte(`{"id":"bench"}`), "", 201, &ws); err != nil {
		return err
	}
	var p struct {
		Key string `json:"partner_api_key"`
	}
	if err := rt.call("POST", "/v1/partners", admin, []byte(`{"slug":"`+Partner+`"}`), "", 201, &p); err != nil {
		return err
	}
	var k struct {
		Secret string `json:"client_secret"`
	}
	if err := rt.call("POST", "/v1/workspaces/bench/partners/"+Partner+"/keys", admin, []byte(`{}`), "", 201, &k); err != nil {
		return err
	}
	rt.apiKey, rt.partnerKey, rt.secret = ws.APIKey, p.Key, k.Secret
	rep, err := loadgen.Seed(ctx, loadgen.Options{
		Addr: "http://" + addr, Users: rt.u.Users, Seed: Seed, Concurrency: 1,
		Credentials: loadgen.Credentials{Workspace: "bench", APIKey: rt.apiKey, Partner: Partner,
			PartnerAPIKey: rt.partnerKey, ClientSecret: rt.secret},
	}, nil)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	_ = rep
	for _, f := range Flavours {
		for i := range algebraCohorts {
			body := MembersBody(idents(rt.u, algebraMembers(rt.u, f, i), nil, 0))
			if err := rt.call("PUT", "/v1/cohorts/"+Partner+"/"+algebraID(f, i)+"/members", rt.apiKey, Zstd(body), "zstd", 200, nil); err != nil {
				return err
			}
		}
	}
	b.Logf("cohortd: %d users and the algebra cohorts seeded over HTTP in %v", rt.u.Users, time.Since(start).Round(time.Millisecond))
	// COHORTD_BENCH_KEY_FILE receives what an outside client (wrk, in
	// bench/crossproc.sh) needs to ask the seeded server: the workspace key,
	// a member of cohort A and the cohort.
	if path := os.Getenv("COHORTD_BENCH_KEY_FILE"); path != "" {
		user := externalUsers(rt.u, 1, 11)[0].Value
		cohort := Partner + "/" + algebraID(loadgen.FlavourUniform, 0)
		if err := os.WriteFile(path, []byte("api_key="+rt.apiKey+"\nuser="+user+"\ncohort="+cohort+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// call sends one request to cohortd and decodes a JSON reply into out.
func (rt *remote) call(method, path, bearer string, body []byte, encoding string, want int, out any) error {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(path)
	req.Header.SetHost("bench")
	if body != nil {
		req.Header.SetContentType("application/json")
		if strings.Contains(path, "/changes") {
			req.Header.SetContentType("application/x-ndjson")
		}
		req.SetBodyRaw(body)
	}
	if encoding != "" {
		req.Header.Set(fasthttp.HeaderContentEncoding, encoding)
	}
	if bearer != "" {
		req.Header.Set(fasthttp.HeaderAuthorization, "Bearer "+bearer)
	}
	if err := rt.hc.Do(req, resp); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode() != want {
		return fmt.Errorf("%s %s: status %d, want %d: %.300s", method, path, resp.StatusCode(), want, resp.Body())
	}
	if out != nil {
		if err := json.Unmarshal(resp.Body(), out); err != nil {
			return fmt.Errorf("%s %s: reply: %w", method, path, err)
		}
	}
	return nil
}

// serverCPU returns the server's CPU seconds so far (0 without a pid).
func (rt *remote) serverCPU() float64 { return loadgen.ProcessCPUSeconds(rt.pid) }

// measure runs the closed loop of conns connections and reports rates per
// second and per server CPU-second.
func (rt *remote) measure(b *testing.B, conns, idsPerOp int, fn func(g int) error) {
	cpu0 := rt.serverCPU()
	runConcurrent(b, conns, fn)
	cpu := rt.serverCPU() - cpu0
	reportRate(b, idsPerOp, 1)
	if rt.pid > 0 && cpu > 0 {
		b.ReportMetric(cpu*1e9/float64(b.N), "server-cpu-ns/op")
		if idsPerOp > 0 {
			b.ReportMetric(float64(b.N)*float64(idsPerOp)/cpu, "ids/server-cpu-s")
		}
		b.ReportMetric(float64(b.N)/cpu, "req/server-cpu-s")
	}
}

// benchImport sends the steady-state import plan of NewImportPlan (every
// request adds half its members and removes the other half, plus the
// unmatched identifiers of docs/WORKLOADS.md): bulk = zstd NDJSON of
// perLine identifiers a line to …/changes; partner = the /cohorts upsert
// then gzip JSON, from senders senders, each on a cohort of its own.
func (rt *remote) benchImport(b *testing.B, shape string, fl loadgen.Flavour, n, perLine, senders int) {
	ctx := context.Background()
	maxPairs := 8
	if n >= 100_000 {
		maxPairs = 2
	}
	plan := NewImportPlan(rt.u, fl, n, maxPairs, 7+n%9973)
	if len(plan.Requests) == 0 {
		b.Skipf("no %s cohort large enough for requests of %d ids", fl, n)
	}
	cohort := func(g int) string { return fmt.Sprintf("x-%s-%s-%d-%d-g%d", shape, fl, n, perLine, g) }
	var send func(g, i int, r Request) error
	switch {
	case rt.sys == "redis":
		send = func(g, _ int, r Request) error {
			name := ""
			if shape == "partner" {
				name = cohort(g)
			}
			return RedisApply(ctx, rt.rc, cohort(g), r, name)
		}
	case shape == "bulk":
		bodies := make([][]byte, len(plan.Requests))
		for i, r := range plan.Requests {
			bodies[i] = Zstd(BulkNDJSON(r, perLine))
		}
		// Bodies are encoded before the clock starts (the primers, i < 0,
		// as they come): encoding one in the loop cost the one sender
		// more than the server's whole handling of it.
		send = func(g, i int, r Request) error {
			var body []byte
			if i >= 0 {
				body = bodies[i]
			} else {
				body = Zstd(BulkNDJSON(r, perLine))
			}
			return rt.call("POST", "/v1/cohorts/"+Partner+"/"+cohort(g)+"/changes", rt.apiKey, body, "zstd", 200, nil)
		}
	default:
		upserts := make([][]byte, senders)
		bodies := make([][][]byte, senders)
		for g := range senders {
			upserts[g] = Gzip(CohortUpsertBody(rt.partnerKey, rt.secret, cohort(g)))
			for _, r := range plan.Requests {
				bodies[g] = append(bodies[g], Gzip(PartnerBody(rt.partnerKey, rt.secret, cohort(g), r)))
			}
		}
		send = func(g, i int, r Request) error {
			var body []byte
			if i >= 0 {
				body = bodies[g][i]
			} else {
				body = Gzip(PartnerBody(rt.partnerKey, rt.secret, cohort(g), r))
			}
			if err := rt.call("POST", "/partners/"+Partner+"/cohorts", "", upserts[g], "gzip", 201, nil); err != nil {
				return err
			}
			return rt.call("POST", "/partners/"+Partner+"/cohorts/users", "", body, "gzip", 201, nil)
		}
	}
	for g := range senders {
		for _, r := range plan.Prime {
			if err := send(g, -1, r); err != nil {
				b.Fatal(err)
			}
		}
	}
	next := make([]int, senders)
	b.SetBytes(int64(n))
	rt.measure(b, senders, n, func(g int) error {
		i := next[g]
		next[g] = (i + 1) % len(plan.Requests)
		return send(g, i, plan.Requests[i])
	})
}

// benchLivez is the floor of a request over HTTP/1.1 with this client:
// GET /livez.
func (rt *remote) benchLivez(b *testing.B, conns int) {
	rt.measure(b, conns, 0, func(int) error { return rt.call("GET", "/livez", "", nil, "", 200, nil) })
}

// containsOne returns a function answering single contains of pool users
// against expression A.
func (rt *remote) containsOne(pool []Ident) containsSys {
	ctx := context.Background()
	fl := loadgen.FlavourUniform
	if rt.sys == "redis" {
		keys, neg := RedisClauses(fl, 1)
		return func(i int) error {
			_, err := RedisContains(ctx, rt.rc, keys, neg, redisMember(pool[i%len(pool)]))
			return err
		}
	}
	expr := ContainsQueries[0].Expr(fl)
	bodies := make([][]byte, len(pool))
	for i := range pool {
		bodies[i] = ContainsBody(expr, pool[i:i+1])
	}
	return func(i int) error {
		return rt.call("POST", "/v1/segments/contains", rt.apiKey, bodies[i%len(bodies)], "", 200, nil)
	}
}

func (rt *remote) benchContains(b *testing.B, conns int) {
	do := rt.containsOne(QueryUsers(rt.u, queryPool, 7))
	var next atomic.Uint64
	rt.measure(b, conns, 1, func(int) error { return do(int(next.Add(1))) })
}

// benchLatency runs single contains in an open loop at 70% of the rate a
// closed loop of 32 connections reaches just before (docs/WORKLOADS.md).
func (rt *remote) benchLatency(b *testing.B) {
	do := rt.containsOne(QueryUsers(rt.u, queryPool, 9))
	maxRate := closedLoopRate(b, do, queryPool, 32, 2*time.Second)
	rate := 0.7 * maxRate
	cpu0 := rt.serverCPU()
	h, done, err := openLoop(do, queryPool, rate, time.Duration(latencySeconds()*float64(time.Second)), 64)
	if err != nil {
		b.Fatal(err)
	}
	cpu := rt.serverCPU() - cpu0
	for b.Loop() {
		// The figures are the open loop's, measured above.
	}
	rt.reportLatency(b, h, 1e3, maxRate, rate, done, cpu)
}

// reportLatency reports an open loop's figures: h holds its latencies in
// units of 1/usPer µs (nanoseconds: 1e3; microseconds: 1); cpu is the
// server's CPU seconds over the loop. Call it after b.Loop, which would
// delete metrics reported before it.
func (rt *remote) reportLatency(b *testing.B, h *hdrhistogram.Histogram, usPer, maxRate, offered, done, cpu float64) {
	b.ReportMetric(maxRate, "max-req/s")
	b.ReportMetric(offered, "offered-req/s")
	b.ReportMetric(done, "req/s")
	for _, p := range []struct {
		unit string
		q    float64
	}{{"p50-us", 50}, {"p90-us", 90}, {"p99-us", 99}, {"p99.9-us", 99.9}} {
		b.ReportMetric(float64(h.ValueAtQuantile(p.q))/usPer, p.unit)
	}
	b.ReportMetric(float64(h.Max())/usPer, "max-us")
	if rt.pid > 0 && cpu > 0 {
		b.ReportMetric(float64(h.TotalCount())/cpu, "req/server-cpu-s")
	}
	b.ReportMetric(0, "ns/op")
}

// benchLatencyRaw is benchLatency with loadgen's raw client (RunRaw):
// pre-encoded requests sent on time from one epoll thread, where the Go
// clients spend most of the client's core at these rates and their
// percentiles carry their own queueing. The maximum is the raw client's
// closed loop of 32 connections; the open loop uses the same connections.
func (rt *remote) benchLatencyRaw(b *testing.B) {
	pool := QueryUsers(rt.u, queryPool, 9)
	l := loadgen.RawLoad{Conns: 32, Frame: loadgen.FrameHTTP, Requests: make([][]byte, len(pool))}
	if rt.sys == "redis" {
		keys, _ := RedisClauses(loadgen.FlavourUniform, 1)
		l.Addr, l.Frame = rt.rc.Options().Addr, loadgen.FrameRESP
		for i, id := range pool {
			l.Requests[i] = loadgen.AppendRESPCommand(nil, "SISMEMBER", keys[0], redisMember(id))
		}
	} else {
		expr := ContainsQueries[0].Expr(loadgen.FlavourUniform)
		l.Addr = rt.hc.Addr
		for i := range pool {
			l.Requests[i] = loadgen.AppendHTTPPost(nil, rt.hc.Addr, "/v1/segments/contains", rt.apiKey, ContainsBody(expr, pool[i:i+1]))
		}
	}
	ctx := context.Background()
	l.Duration = 2 * time.Second
	closed, err := loadgen.RunRaw(ctx, l)
	if err != nil {
		b.Fatal(err)
	}
	l.Rate = 0.7 * closed.PerSecond()
	l.Duration = time.Duration(latencySeconds() * float64(time.Second))
	cpu0 := rt.serverCPU()
	res, err := loadgen.RunRaw(ctx, l)
	if err != nil {
		b.Fatal(err)
	}
	cpu := rt.serverCPU() - cpu0
	if res.Failed > 0 || closed.Failed > 0 {
		b.Fatalf("%d and %d requests answered with an error", closed.Failed, res.Failed)
	}
	for b.Loop() {
		// The figures are the open loop's, measured above.
	}
	rt.reportLatency(b, res.Latency, 1, closed.PerSecond(), l.Rate, res.PerSecond(), cpu)
	b.ReportMetric(float64(res.SendLag.ValueAtQuantile(99)), "send-lag-p99-us")
}

// externalUsers returns count users that have an external id (the compact
// form names users by external id), drawn at random.
func externalUsers(u loadgen.Universe, count int, seed uint64) []Ident {
	var out []Ident
	for _, id := range QueryUsers(u, 4*count, seed) {
		if id.Kind == loadgen.KindExternal && len(out) < count {
			out = append(out, id)
		}
	}
	return out
}

// benchBatch sends batch contains of 1,000 external ids against A: the
// compact form ({"external_ids":[…]}) or the users form; Redis answers
// SMISMEMBER.
func (rt *remote) benchBatch(b *testing.B, form string) {
	const batch, groups = 1000, 16
	pool := externalUsers(rt.u, batch*groups, 8)
	if len(pool) < batch*groups {
		b.Skip("universe too small")
	}
	ctx := context.Background()
	fl := loadgen.FlavourUniform
	var do func(i int) error
	if rt.sys == "redis" {
		keys, neg := RedisClauses(fl, 1)
		members := make([][]any, groups)
		for i := range members {
			for _, id := range pool[i*batch : (i+1)*batch] {
				members[i] = append(members[i], redisMember(id))
			}
		}
		do = func(i int) error {
			_, err := RedisContainsBatch(ctx, rt.rc, keys, neg, members[i%groups], nil)
			return err
		}
	} else {
		expr := ContainsQueries[0].Expr(fl)
		bodies := make([][]byte, groups)
		for i := range bodies {
			g := pool[i*batch : (i+1)*batch]
			if form == "compact" {
				bodies[i] = CompactContainsBody(expr, g)
			} else {
				bodies[i] = ContainsBody(expr, g)
			}
		}
		do = func(i int) error {
			return rt.call("POST", "/v1/segments/contains", rt.apiKey, bodies[i%groups], "", 200, nil)
		}
	}
	var next atomic.Uint64
	b.SetBytes(batch)
	rt.measure(b, 4, batch, func(int) error { return do(int(next.Add(1))) })
}

// benchCount counts A and B and not C over one connection.
func (rt *remote) benchCount(b *testing.B, fl loadgen.Flavour) {
	ctx := context.Background()
	q := CountQueries[1]
	var do func() error
	if rt.sys == "redis" {
		do = func() error { _, err := RedisCount(ctx, rt.rc, fl, q.Name, "tmp:count"); return err }
	} else {
		body := CountBody(q.Expr(fl))
		do = func() error { return rt.call("POST", "/v1/segments/count", rt.apiKey, body, "", 200, nil) }
	}
	rt.measure(b, 1, 0, func(int) error { return do() })
}
