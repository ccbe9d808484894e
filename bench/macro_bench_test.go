package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/cohortd/cohortd/index"
	"github.com/cohortd/cohortd/loadgen"
	"github.com/cohortd/cohortd/server/segment"
)

// The systems, in the order the report shows them (see doc.go).
var systems = []string{"cohortd", "redis", "engine", "naive"}

// importShapes are the request shapes of docs/WORKLOADS.md with the batch sizes
// the throughput-against-batch-size plot needs: partner requests carry at
// most 1,000 identifiers, bulk ones up to 100k.
var importShapes = []struct {
	name    string
	sizes   []int
	senders int // concurrent senders (docs/WORKLOADS.md: partners use 4–8)
}{
	{"partner", []int{100, 1_000}, 4},
	{"bulk", []int{1_000, 10_000, 100_000}, 1},
}

// runConcurrent calls fn b.N times from exactly conns goroutines (closed
// loop), g naming the goroutine. b.RunParallel would tie the number of
// senders to GOMAXPROCS; the workloads fix it instead.
func runConcurrent(b *testing.B, conns int, fn func(g int) error) {
	b.Helper()
	if conns == 1 {
		for b.Loop() {
			if err := fn(0); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	var (
		next   atomic.Int64
		wg     sync.WaitGroup
		failed atomic.Pointer[error]
	)
	b.ResetTimer()
	for g := range conns {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) && failed.Load() == nil {
				if err := fn(g); err != nil {
					failed.Store(&err)
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
}

// reportRate reports per-second rates of ids and requests per operation.
func reportRate(b *testing.B, idsPerOp, reqsPerOp int) {
	s := b.Elapsed().Seconds()
	if s == 0 {
		return
	}
	if idsPerOp > 0 {
		b.ReportMetric(float64(b.N)*float64(idsPerOp)/s, "ids/s")
	}
	b.ReportMetric(float64(b.N)*float64(reqsPerOp)/s, "req/s")
}

// BenchmarkImport measures cohort imports in steady state: every request
// adds half its members and removes the other half (NewImportPlan), with
// docs/WORKLOADS.md's unmatched identifiers on top. Partner requests are gzip
// JSON preceded by the /cohorts upsert (2 HTTP requests a batch) from 4
// senders; bulk ones zstd NDJSON of 1,000-id lines from one sender. Each
// sender owns a cohort, so the cycle stays effective.
func BenchmarkImport(b *testing.B) {
	for _, users := range Users() {
		for _, sys := range systems {
			for si, sh := range importShapes {
				for fi, fl := range Flavours {
					for _, n := range sh.sizes {
						name := fmt.Sprintf("users_%d/%s/%s/%s/ids_%d", users, sys, sh.name, fl, n)
						seed := si*100_000 + fi*10_000 + n%9973
						b.Run(name, func(b *testing.B) {
							benchImport(b, users, sys, sh.name, sh.senders, fl, n, seed)
						})
					}
				}
			}
		}
	}
}

func benchImport(b *testing.B, users int, sys, shape string, senders int, fl loadgen.Flavour, n, seed int) {
	u := universe(users)
	maxPairs := 8
	if n >= 100_000 {
		maxPairs = 2
	}
	plan := NewImportPlan(u, fl, n, maxPairs, seed)
	if len(plan.Requests) == 0 {
		b.Skipf("%d users hold no %s cohort large enough for requests of %d ids", users, fl, n)
	}
	cohort := func(g int) string { return fmt.Sprintf("imp-%s-%s-%d-g%d", shape, fl, n, g) }
	partner := shape == "partner"
	reqs := 1
	var send func(g, i int, r Request) error // r is plan.Requests[i] or a prime request (i < 0)
	ctx := context.Background()
	switch sys {
	case "cohortd":
		s := serverFixtureFor(b, users)
		if partner {
			reqs = 2
			send = func(g, _ int, r Request) error {
				if err := s.post("/partners/"+Partner+"/cohorts", "", "application/json", "gzip",
					Gzip(CohortUpsertBody(s.PartnerKey, s.Secret, cohort(g))), 201); err != nil {
					return err
				}
				return s.post("/partners/"+Partner+"/cohorts/users", "", "application/json", "gzip",
					Gzip(PartnerBody(s.PartnerKey, s.Secret, cohort(g), r)), 201)
			}
			// Bodies are built before the timer starts: one set per sender
			// because the cohort id is in the body.
			bodies := make([][][]byte, senders)
			upserts := make([][]byte, senders)
			for g := range senders {
				upserts[g] = Gzip(CohortUpsertBody(s.PartnerKey, s.Secret, cohort(g)))
				for _, r := range plan.Requests {
					bodies[g] = append(bodies[g], Gzip(PartnerBody(s.PartnerKey, s.Secret, cohort(g), r)))
				}
			}
			prime := send
			send = func(g, i int, r Request) error {
				if i < 0 {
					return prime(g, i, r)
				}
				if err := s.post("/partners/"+Partner+"/cohorts", "", "application/json", "gzip", upserts[g], 201); err != nil {
					return err
				}
				return s.post("/partners/"+Partner+"/cohorts/users", "", "application/json", "gzip", bodies[g][i], 201)
			}
		} else {
			bodies := make([][]byte, len(plan.Requests))
			for i, r := range plan.Requests {
				bodies[i] = Zstd(BulkNDJSON(r, 1000))
			}
			send = func(g, i int, r Request) error {
				body := bodies[max(i, 0)]
				if i < 0 {
					body = Zstd(BulkNDJSON(r, 1000))
				}
				return s.post("/v1/cohorts/"+Partner+"/"+cohort(g)+"/changes", s.APIKey, "application/x-ndjson", "zstd", body, 200)
			}
		}
	case "engine":
		f := engineFixture(b, users)
		keyed := make([][]KeyedChange, len(plan.Requests))
		for i, r := range plan.Requests {
			keyed[i] = KeyRequest(r)
		}
		created := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
		send = func(g, i int, r Request) error {
			k := keyed[max(i, 0)]
			if i < 0 {
				k = KeyRequest(r)
			}
			if partner {
				if err := f.W.UpsertCohort(Partner, cohort(g), cohort(g), created); err != nil {
					return err
				}
			}
			_, err := f.W.ApplyChanges(Partner, cohort(g), EngineChangeSet(f.W, k))
			return err
		}
	case "naive":
		f := naiveFixtureFor(b, users)
		send = func(g, _ int, r Request) error {
			f.Apply(Partner+"/"+cohort(g), r)
			return nil
		}
	case "redis":
		f := redisFixtureFor(b, users)
		send = func(g, _ int, r Request) error {
			name := ""
			if partner {
				name = cohort(g)
			}
			return RedisApply(ctx, f.c, cohort(g), r, name)
		}
	}
	// Prime every sender's cohort so that the cycle starts from "Y in".
	for g := range senders {
		for _, r := range plan.Prime {
			if err := send(g, -1, r); err != nil {
				b.Fatal(err)
			}
		}
	}
	next := make([]int, senders) // each sender's position in the cycle
	b.SetBytes(int64(n))         // MB/s reads as M identifiers/s
	b.ReportAllocs()
	runConcurrent(b, senders, func(g int) error {
		i := next[g]
		next[g] = (i + 1) % len(plan.Requests)
		return send(g, i, plan.Requests[i])
	})
	reportRate(b, n, reqs)
}

// containsSys answers contains request i (of the groups it was built for).
// Everything a request needs is built before the timer starts.
type containsSys func(i int) error

// newContains builds the contains requests of groups for a system.
func newContains(b *testing.B, users int, sys string, fl loadgen.Flavour, q Query, groups [][]Ident) containsSys {
	ctx := context.Background()
	expr := q.Expr(fl)
	switch sys {
	case "cohortd":
		s := serverFixtureFor(b, users)
		bodies := make([][]byte, len(groups))
		for i, g := range groups {
			bodies[i] = ContainsBody(expr, g)
		}
		return func(i int) error {
			return s.post("/v1/segments/contains", s.APIKey, "application/json", "", bodies[i], 200)
		}
	case "engine":
		f := engineFixture(b, users)
		seg, err := segment.Parse([]byte(expr))
		if err != nil {
			b.Fatal(err)
		}
		type key struct {
			kind index.Kind
			key  []byte
		}
		keys := make([][]key, len(groups))
		for i, g := range groups {
			for _, id := range g {
				k, v := indexKey(id)
				keys[i] = append(keys[i], key{k, v})
			}
		}
		return func(i int) error {
			// Bind per request, as the server does: a cohort may have been
			// replaced since the last one.
			bs := f.W.Bind(seg)
			for _, k := range keys[i] {
				if id := f.W.Resolve(k.kind, k.key); id != index.NoUser {
					bs.Contains(id)
				}
			}
			return nil
		}
	case "naive":
		f := naiveFixtureFor(b, users)
		e, err := ParseExpr([]byte(expr))
		if err != nil {
			b.Fatal(err)
		}
		var pool sync.Pool
		return func(i int) error {
			dst, _ := pool.Get().(*[]bool)
			if dst == nil {
				dst = new([]bool)
			}
			*dst = f.Contains(&e, groups[i], (*dst)[:0])
			pool.Put(dst)
			return nil
		}
	case "redis":
		f := redisFixtureFor(b, users)
		keys, neg := RedisClauses(fl, q.Clauses)
		members := make([][]any, len(groups))
		for i, g := range groups {
			for _, id := range g {
				members[i] = append(members[i], redisMember(id))
			}
		}
		return func(i int) error {
			if len(members[i]) == 1 {
				_, err := RedisContains(ctx, f.c, keys, neg, members[i][0].(string))
				return err
			}
			_, err := RedisContainsBatch(ctx, f.c, keys, neg, members[i], nil)
			return err
		}
	}
	b.Fatalf("unknown system %q", sys)
	return nil
}

// singles splits users into one-user groups.
func singles(users []Ident) [][]Ident {
	out := make([][]Ident, len(users))
	for i := range users {
		out[i] = users[i : i+1]
	}
	return out
}

// indexKey returns the engine's key of an identifier.
func indexKey(id Ident) (index.Kind, []byte) {
	switch id.Kind {
	case loadgen.KindDevice:
		return index.KindDevice, []byte(id.Value)
	case loadgen.KindAlias:
		return index.KindAlias, index.AliasKey(nil, []byte(AliasName), []byte(id.Value))
	}
	return index.KindExternal, []byte(id.Value)
}

// queryPool is the users a contains benchmark cycles through: random users
// of the universe, a fixed pool so that bodies are built once.
const queryPool = 4096

// BenchmarkContains measures single-user contains (70% of queries) against
// 1–3 clause expressions, closed loop, with 1 and 8 connections.
func BenchmarkContains(b *testing.B) {
	for _, users := range Users() {
		pool := QueryUsers(universe(users), queryPool, 7)
		for _, sys := range systems {
			for _, fl := range Flavours {
				for _, q := range ContainsQueries {
					for _, conns := range []int{1, 8} {
						b.Run(fmt.Sprintf("users_%d/%s/%s/%s/conns_%d", users, sys, fl, q.Name, conns), func(b *testing.B) {
							do := newContains(b, users, sys, fl, q, singles(pool))
							var next atomic.Uint64
							b.ReportAllocs()
							runConcurrent(b, conns, func(int) error {
								return do(int(next.Add(1) % queryPool))
							})
							reportRate(b, 1, 1)
						})
					}
				}
			}
		}
	}
}

// BenchmarkContainsBatch measures batch contains of 1,000 users (20% of
// queries), closed loop, 4 connections.
func BenchmarkContainsBatch(b *testing.B) {
	const batch = 1000
	for _, users := range Users() {
		pool := QueryUsers(universe(users), 16*batch, 8)
		for _, sys := range systems {
			for _, fl := range Flavours {
				for _, q := range ContainsQueries {
					b.Run(fmt.Sprintf("users_%d/%s/%s/%s/ids_%d", users, sys, fl, q.Name, batch), func(b *testing.B) {
						groups := make([][]Ident, 16)
						for i := range groups {
							groups[i] = pool[i*batch : (i+1)*batch]
						}
						do := newContains(b, users, sys, fl, q, groups)
						var next atomic.Uint64
						b.SetBytes(batch)
						b.ReportAllocs()
						runConcurrent(b, 4, func(int) error {
							return do(int(next.Add(1) % 16))
						})
						reportRate(b, batch, 1)
					})
				}
			}
		}
	}
}

// BenchmarkCount measures segment counts over the algebra cohorts (10%
// density), one connection, and checks first that every system agrees.
func BenchmarkCount(b *testing.B) {
	ctx := context.Background()
	for _, users := range Users() {
		for _, sys := range systems {
			for _, fl := range Flavours {
				for _, q := range CountQueries {
					b.Run(fmt.Sprintf("users_%d/%s/%s/%s", users, sys, fl, q.Name), func(b *testing.B) {
						expr := q.Expr(fl)
						seg, err := segment.Parse([]byte(expr))
						if err != nil {
							b.Fatal(err)
						}
						want := engineFixture(b, users).W.Bind(seg).Count()
						var count func() (uint64, error)
						switch sys {
						case "cohortd":
							s := serverFixtureFor(b, users)
							body := CountBody(expr)
							count = func() (uint64, error) {
								return want, s.post("/v1/segments/count", s.APIKey, "application/json", "", body, 200)
							}
						case "engine":
							w := engineFixture(b, users).W
							count = func() (uint64, error) { return w.Bind(seg).Count(), nil }
						case "naive":
							f := naiveFixtureFor(b, users)
							e, err := ParseExpr([]byte(expr))
							if err != nil {
								b.Fatal(err)
							}
							count = func() (uint64, error) { return uint64(f.Count(&e)), nil }
						case "redis":
							f := redisFixtureFor(b, users)
							count = func() (uint64, error) {
								n, err := RedisCount(ctx, f.c, fl, q.Name, "tmp:count")
								return uint64(n), err
							}
						}
						if got, err := count(); err != nil || got != want {
							b.Fatalf("count = %d, %v; the engine counts %d", got, err, want)
						}
						b.ReportAllocs()
						runConcurrent(b, 1, func(int) error { _, err := count(); return err })
						reportRate(b, 0, 1)
					})
				}
			}
		}
	}
}

// latencySeconds is how long each open-loop latency run lasts
// (COHORTD_BENCH_LATENCY_SECONDS, default 3).
func latencySeconds() float64 {
	if v, err := strconv.ParseFloat(os.Getenv("COHORTD_BENCH_LATENCY_SECONDS"), 64); err == nil && v > 0 {
		return v
	}
	return 3
}

// BenchmarkContainsLatency measures single-user contains latency in an open
// loop at 50%, 70% and 90% of the maximum rate that a closed loop of 8
// connections reached just before (docs/WORKLOADS.md: latency at a stated
// offered rate, 70% unless said otherwise). Requests are issued at their
// intended times by 64 workers, and latency is measured from the intended
// time, so a stalled server is charged for the requests it delays
// (no coordinated omission).
//
// Each run lasts latencySeconds whatever b.N is: the figures are the
// percentiles, not ns/op.
func BenchmarkContainsLatency(b *testing.B) {
	q := ContainsQueries[1]
	fl := loadgen.FlavourClustered
	for _, users := range Users() {
		pool := QueryUsers(universe(users), queryPool, 9)
		for _, sys := range []string{"cohortd", "redis"} {
			var maxRate float64
			for _, load := range []int{50, 70, 90} {
				b.Run(fmt.Sprintf("users_%d/%s/%s/%s/load_%d", users, sys, fl, q.Name, load), func(b *testing.B) {
					do := newContains(b, users, sys, fl, q, singles(pool))
					b.ReportAllocs()
					if maxRate == 0 {
						maxRate = closedLoopRate(b, do, queryPool, 8, time.Second)
					}
					rate := maxRate * float64(load) / 100
					h, done, err := openLoop(do, queryPool, rate, time.Duration(latencySeconds()*float64(time.Second)), 64)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(maxRate, "max-req/s")
					b.ReportMetric(rate, "offered-req/s")
					b.ReportMetric(done, "req/s")
					for _, p := range []struct {
						unit string
						q    float64
					}{{"p50-us", 50}, {"p90-us", 90}, {"p99-us", 99}, {"p99.9-us", 99.9}} {
						b.ReportMetric(float64(h.ValueAtQuantile(p.q))/1e3, p.unit)
					}
					b.ReportMetric(float64(h.Max())/1e3, "max-us")
					b.ReportMetric(0, "ns/op")
				})
			}
		}
	}
}

// closedLoopRate returns the requests/s that conns connections reach in d.
func closedLoopRate(b *testing.B, do containsSys, pool int, conns int, d time.Duration) float64 {
	var (
		n    atomic.Int64
		wg   sync.WaitGroup
		fail atomic.Pointer[error]
	)
	deadline := time.Now().Add(d)
	for g := range conns {
		wg.Go(func() {
			for i := g; time.Now().Before(deadline); i += conns {
				if err := do(i % pool); err != nil {
					fail.Store(&err)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err := fail.Load(); err != nil {
		b.Fatal(*err)
	}
	return float64(n.Load()) / d.Seconds()
}

// openLoop sends requests at rate for d and returns the latency histogram
// (ns, from each request's intended start, or from its worker's wake-up if
// the worker slept until then: loadgen.WaitSlot) and the achieved rate.
func openLoop(do containsSys, pool int, rate float64, d time.Duration, workers int) (*hdrhistogram.Histogram, float64, error) {
	total := int64(rate * d.Seconds())
	interval := float64(time.Second) / rate
	start := time.Now().Add(10 * time.Millisecond)
	var (
		next int64 = -1
		mu   sync.Mutex
		all  = hdrhistogram.New(1, int64(time.Minute), 3)
		wg   sync.WaitGroup
		fail atomic.Pointer[error]
	)
	for range workers {
		wg.Go(func() {
			h := hdrhistogram.New(1, int64(time.Minute), 3)
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= total || fail.Load() != nil {
					break
				}
				// From the slot if it had passed (queueing counts), else
				// from the wake-up (the timer's lateness is the client's).
				from, _ := loadgen.WaitSlot(context.Background(), start.Add(time.Duration(float64(i)*interval)))
				if err := do(int(i % int64(pool))); err != nil {
					fail.Store(&err)
					break
				}
				h.RecordValue(int64(time.Since(from)))
			}
			mu.Lock()
			all.Merge(h)
			mu.Unlock()
		})
	}
	wg.Wait()
	if err := fail.Load(); err != nil {
		return nil, 0, *err
	}
	return all, float64(all.TotalCount()) / time.Since(start).Seconds(), nil
}

// BenchmarkMemory reports bytes per user and per algebra-cohort member of
// each system, measured while its fixture was seeded: Go heap growth for
// the in-process systems (engine also RSS growth: it is seeded first, so
// the process has no freed memory to reuse yet), used_memory for Redis.
// cohortd's memory is the engine's.
func BenchmarkMemory(b *testing.B) {
	for _, users := range Users() {
		for _, sys := range []string{"engine", "redis", "naive"} {
			b.Run(fmt.Sprintf("users_%d/%s", users, sys), func(b *testing.B) {
				b.ReportAllocs()
				var perUser, perMember, rss float64
				switch sys {
				case "engine":
					f := engineFixture(b, users)
					perUser, perMember = f.HeapPerUser, f.HeapPerMember
					rss = f.RSSPerUser
				case "naive":
					f := naiveFixtureFor(b, users)
					perUser, perMember = f.heapPerUser, f.heapPerMember
				case "redis":
					f := redisFixtureFor(b, users)
					perUser, perMember = f.bytesPerUser, f.bytesPerMember
				}
				for b.Loop() {
					// Nothing to time: the figures were taken while seeding.
				}
				if sys == "engine" {
					b.ReportMetric(rss, "rss-B/user")
				}
				b.ReportMetric(perUser, "B/user")
				b.ReportMetric(perMember, "B/member")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
