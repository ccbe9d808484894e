package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/engine/kafkalog"
	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
	"github.com/cohortd/cohortd/loadgen"
)

// Replication benchmarks (docs/API.md §7): engines of a group on an
// in-process kfake cluster (three brokers, replication factor 3, over
// loopback TCP) against a single node writing its WAL with -fsync=always.
// Everything shares the machine's cores — brokers, producers and every
// node's apply loop — so the figures are ratios measured in the same run,
// not a cluster's capacity.
//
//	COHORTD_BENCH_REPL_USERS   users seeded (default 250,000)
//	COHORTD_BENCH_LAG_SECONDS  length of the lag run (default 5)
//	COHORTD_BENCH_LAG_QPS      offered query rate of the lag run (default 5,000/s)

func replUsers() int {
	if n, err := strconv.Atoi(os.Getenv("COHORTD_BENCH_REPL_USERS")); err == nil && n > 0 {
		return n
	}
	return 250_000 // enough for two bulk requests of 100,000 members
}

func lagQPS() float64 {
	if n, err := strconv.ParseFloat(os.Getenv("COHORTD_BENCH_LAG_QPS"), 64); err == nil && n > 0 {
		return n
	}
	return 5000
}

func lagSeconds() time.Duration {
	if n, err := strconv.ParseFloat(os.Getenv("COHORTD_BENCH_LAG_SECONDS"), 64); err == nil && n > 0 {
		return time.Duration(n * float64(time.Second))
	}
	return 5 * time.Second
}

// group is a kfake cluster and the nodes of one group on it.
type group struct {
	cluster *kfake.Cluster
	nodes   []*groupNode
}

type groupNode struct {
	e      *engine.Engine
	log    *kafkalog.Log
	cancel context.CancelFunc
	done   chan error
}

func newGroup(tb testing.TB, partitions int32) *group {
	tb.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		tb.Fatal(err)
	}
	if err := kafkalog.CreateTopic(context.Background(), c.ListenAddrs(), "cohortd", partitions, 3, 0); err != nil {
		tb.Fatal(err)
	}
	g := &group{cluster: c}
	tb.Cleanup(g.close)
	return g
}

// add opens a node (in memory: the log is its durability) and waits until
// it has caught up.
func (g *group) add(tb testing.TB) *groupNode {
	tb.Helper()
	l, err := kafkalog.Open(context.Background(), kafkalog.Options{Brokers: g.cluster.ListenAddrs(), Topic: "cohortd", Logger: quietLogger})
	if err != nil {
		tb.Fatal(err)
	}
	e, err := engine.Open(engine.Options{Log: l, CursorSecret: []byte(adminToken), Logger: quietLogger})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &groupNode{e: e, log: l, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- e.RunLog(ctx) }()
	select {
	case <-e.CaughtUp():
	case err := <-n.done:
		tb.Fatalf("apply loop: %v", err)
	}
	g.nodes = append(g.nodes, n)
	return n
}

func (n *groupNode) close() {
	n.cancel()
	<-n.done
	n.e.Close()
	n.log.Close()
}

func (g *group) close() {
	for _, n := range g.nodes {
		n.close()
	}
	g.cluster.Close()
}

// synced waits until every node has applied the whole log.
func (g *group) synced(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ends, err := g.nodes[0].log.EndOffsets(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	for _, n := range g.nodes {
		for p, end := range ends {
			if end > 0 {
				if err := n.e.WaitPosition(ctx, engine.Position{Partition: int32(p), Offset: end - 1}); err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
}

// seedWorkspace creates the bench workspace, partner and key on e and
// seeds the universe's users.
func seedWorkspace(tb testing.TB, e *engine.Engine, u loadgen.Universe) *engine.Workspace {
	tb.Helper()
	if _, err := e.CreateWorkspace("bench"); err != nil {
		tb.Fatal(err)
	}
	if _, err := e.CreatePartner(Partner); err != nil {
		tb.Fatal(err)
	}
	w := e.Workspace("bench")
	if err := SeedEngine(w, u); err != nil {
		tb.Fatal(err)
	}
	return w
}

// BenchmarkReplicatedImport compares import throughput through the engine
// of a group node (produce the command record, wait for its own apply)
// with a single node writing its WAL under -fsync=always (the headline
// durability of each: acknowledged means on min.insync.replicas brokers,
// or fdatasync'ed). Shapes as docs/WORKLOADS.md: partner (a cohort upsert
// and 1,000 identifiers a batch, 8 senders) and bulk (100,000 identifiers
// a request, 2 senders), each sender on its own cohort.
func BenchmarkReplicatedImport(b *testing.B) {
	users := replUsers()
	u := universe(users)
	parent := b
	for _, mode := range []string{"local-fsync-always", "kafka"} {
		var w *engine.Workspace
		// The fixture lives as long as the parent benchmark: a
		// sub-benchmark's cleanups run after each of its rounds.
		setup := func() {
			b := parent
			if w != nil {
				return
			}
			switch mode {
			case "kafka":
				g := newGroup(b, 4)
				n := g.add(b)
				w = seedWorkspace(b, n.e, u)
			default:
				e, err := engine.Open(engine.Options{Dir: b.TempDir(), Sync: wal.SyncAlways, Logger: quietLogger})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { e.Close() })
				w = seedWorkspace(b, e, u)
			}
		}
		for _, sh := range []struct {
			name         string
			ids, senders int
		}{{"partner", 1000, 8}, {"bulk", 100_000, 2}} {
			b.Run(fmt.Sprintf("users_%d/log=%s/shape=%s", users, mode, sh.name), func(b *testing.B) {
				setup()
				plan := NewImportPlan(u, loadgen.FlavourUniform, sh.ids, 2, len(sh.name))
				if len(plan.Requests) == 0 {
					b.Skipf("%d users hold no cohort for requests of %d ids", users, sh.ids)
				}
				keyed := make([][]KeyedChange, len(plan.Requests))
				for i, r := range plan.Requests {
					keyed[i] = KeyRequest(r)
				}
				cohort := func(g int) string { return fmt.Sprintf("imp-%s-%s-g%d", mode, sh.name, g) }
				created := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
				send := func(g int, k []KeyedChange) error {
					if sh.name == "partner" {
						if err := w.UpsertCohort(Partner, cohort(g), cohort(g), created); err != nil {
							return err
						}
					}
					_, err := w.ApplyChanges(Partner, cohort(g), EngineChangeSet(w, k))
					return err
				}
				for g := range sh.senders {
					for _, r := range plan.Prime {
						if err := send(g, KeyRequest(r)); err != nil {
							b.Fatal(err)
						}
					}
				}
				next := make([]int, sh.senders)
				b.SetBytes(int64(sh.ids))
				runConcurrent(b, sh.senders, func(g int) error {
					i := next[g]
					next[g] = (i + 1) % len(keyed)
					return send(g, keyed[i])
				})
				reportRate(b, sh.ids, 1)
			})
		}
	}
}

// BenchmarkReplicationLag measures how long after a write was acknowledged
// by one node of three the two others have applied it, under the mixed
// load of docs/WORKLOADS.md: 4 partner-shape senders (a cohort upsert and
// 1,000 identifiers a batch) spread over the nodes, and 4 query workers
// (single contains) on random nodes at an offered rate (open loop,
// COHORTD_BENCH_LAG_QPS in all), for COHORTD_BENCH_LAG_SECONDS. It reports
// the lag's p50, p99 and max, and the rates. Queries are in-process
// lookups, so the rate stands for the CPU a node spends on reads, not for
// HTTP requests.
func BenchmarkReplicationLag(b *testing.B) {
	users := replUsers()
	u := universe(users)
	b.Run(fmt.Sprintf("users_%d/nodes_3", users), func(b *testing.B) {
		g := newGroup(b, 4)
		for range 3 {
			g.add(b)
		}
		seedWorkspace(b, g.nodes[0].e, u)
		g.synced(b)
		plan := NewImportPlan(u, loadgen.FlavourClustered, 1000, 4, 7)
		keyed := make([][]KeyedChange, len(plan.Requests))
		for i, r := range plan.Requests {
			keyed[i] = KeyRequest(r)
		}
		probe := make([][]byte, 0, 1024)
		for n := 1; n <= users && len(probe) < cap(probe); n += max(1, users/1024) {
			if u.Kind(n) == loadgen.KindExternal {
				probe = append(probe, []byte(loadgen.ExternalID(n)))
			}
		}
		for b.Loop() {
			lag := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
			var lagMu sync.Mutex
			var writes, queries atomic.Int64
			ctx, cancel := context.WithTimeout(context.Background(), lagSeconds())
			var wg sync.WaitGroup
			var failed atomic.Pointer[error]
			fail := func(err error) {
				if err != nil && !errors.Is(err, context.DeadlineExceeded) {
					failed.CompareAndSwap(nil, &err)
				}
			}
			for s := range 4 {
				wg.Go(func() {
					cohort := fmt.Sprintf("lag-%d", s)
					created := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
					for i := 0; ctx.Err() == nil; i++ {
						src := g.nodes[(s+i)%3]
						w := src.e.Workspace("bench")
						if err := w.UpsertCohort(Partner, cohort, cohort, created); err != nil {
							fail(err)
							return
						}
						if _, err := w.ApplyChanges(Partner, cohort, EngineChangeSet(w, keyed[i%len(keyed)])); err != nil {
							fail(err)
							return
						}
						acked := time.Now()
						pos, _ := src.e.ScopePosition("bench")
						writes.Add(1)
						for _, other := range g.nodes {
							if other == src {
								continue
							}
							wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
							err := other.e.WaitPosition(wctx, pos)
							wcancel()
							if err != nil {
								fail(err)
								return
							}
							lagMu.Lock()
							_ = lag.RecordValue(max(1, time.Since(acked).Microseconds()))
							lagMu.Unlock()
						}
					}
				})
			}
			every := time.Duration(float64(4*time.Second) / lagQPS())
			for q := range 4 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(q), 9))
					tick := time.NewTicker(every)
					defer tick.Stop()
					for ctx.Err() == nil {
						select {
						case <-tick.C:
						case <-ctx.Done():
							return
						}
						w := g.nodes[r.IntN(3)].e.Workspace("bench")
						id := w.Resolve(index.KindExternal, probe[r.IntN(len(probe))])
						if c := w.Cohort(Partner, fmt.Sprintf("lag-%d", r.IntN(4))); c != nil && id != index.NoUser {
							_ = c.Members().Contains(uint32(id))
						}
						queries.Add(1)
					}
				})
			}
			wg.Wait()
			cancel()
			if err := failed.Load(); err != nil {
				b.Fatal(*err)
			}
			secs := lagSeconds().Seconds()
			b.ReportMetric(float64(lag.ValueAtQuantile(50)), "lag-p50-µs")
			b.ReportMetric(float64(lag.ValueAtQuantile(99)), "lag-p99-µs")
			b.ReportMetric(float64(lag.Max()), "lag-max-µs")
			b.ReportMetric(float64(writes.Load())/secs, "writes/s")
			b.ReportMetric(float64(queries.Load())/secs, "queries/s")
		}
	})
}

// BenchmarkCatchUp measures a node catching up: the log holds the seeding
// of the universe's users and 2,000 partner-shape change batches of 1,000
// identifiers (partner shape); each iteration opens a fresh node and times it until it
// has applied everything (what a restarted node does past its snapshot, and
// a new node with no snapshot). It reports records/s and identifiers/s
// (users seeded plus change identifiers).
func BenchmarkCatchUp(b *testing.B) {
	users := replUsers()
	u := universe(users)
	b.Run(fmt.Sprintf("users_%d", users), func(b *testing.B) {
		g := newGroup(b, 4)
		src := g.add(b)
		w := seedWorkspace(b, src.e, u)
		plan := NewImportPlan(u, loadgen.FlavourUniform, 1000, 8, 11)
		const batches = 2000
		for i := range batches {
			if _, err := w.ApplyChanges(Partner, fmt.Sprintf("c%d", i%8), EngineChangeSet(w, KeyRequest(plan.Requests[i%len(plan.Requests)]))); err != nil {
				b.Fatal(err)
			}
		}
		ends, err := src.log.EndOffsets(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		var records int64
		for _, e := range ends {
			records += e
		}
		// Identifiers in the log: one per user in the first seeding pass,
		// two per identified-later user in the second, and the batches'.
		ids := int64(batches * 1000)
		for n := 1; n <= users; n++ {
			ids++
			if u.Kind(n) == loadgen.KindIdentifiedLater {
				ids += 2
			}
		}
		var elapsed time.Duration
		for b.Loop() {
			start := time.Now()
			l, err := kafkalog.Open(context.Background(), kafkalog.Options{Brokers: g.cluster.ListenAddrs(), Topic: "cohortd", Logger: quietLogger})
			if err != nil {
				b.Fatal(err)
			}
			e, err := engine.Open(engine.Options{Log: l, Logger: quietLogger})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- e.RunLog(ctx) }()
			select {
			case <-e.CaughtUp():
			case err := <-done:
				b.Fatal(err)
			}
			elapsed += time.Since(start)
			if got := e.Workspace("bench").UserCount(); got != src.e.Workspace("bench").UserCount() {
				b.Fatalf("caught up with %d users, the source has %d", got, src.e.Workspace("bench").UserCount())
			}
			cancel()
			<-done
			e.Close()
			l.Close()
		}
		s := elapsed.Seconds() / float64(b.N)
		b.ReportMetric(float64(records)/s, "records/s")
		b.ReportMetric(float64(ids)/s, "ids/s")
	})
}

// BenchmarkReadGroup measures single contains queries a second against one
// node and against three nodes of a group (the queries spread over them),
// each while a partner-shape writer keeps the group applying. On one
// machine the nodes share its cores: with three nodes each does a third of
// the queries and every node also applies every write, so the ratio shows
// what replication costs a node's reads, and the group's read capacity is
// that per-node rate times the nodes on their own machines.
func BenchmarkReadGroup(b *testing.B) {
	users := replUsers()
	u := universe(users)
	for _, nodes := range []int{1, 3} {
		b.Run(fmt.Sprintf("users_%d/nodes_%d", users, nodes), func(b *testing.B) {
			g := newGroup(b, 4)
			for range nodes {
				g.add(b)
			}
			w0 := seedWorkspace(b, g.nodes[0].e, u)
			plan := NewImportPlan(u, loadgen.FlavourClustered, 1000, 2, 5)
			for _, r := range plan.Prime {
				if _, err := w0.ApplyChanges(Partner, "read", EngineChangeSet(w0, KeyRequest(r))); err != nil {
					b.Fatal(err)
				}
			}
			g.synced(b)
			keyed := make([][]KeyedChange, len(plan.Requests))
			for i, r := range plan.Requests {
				keyed[i] = KeyRequest(r)
			}
			stop := make(chan struct{})
			var writer sync.WaitGroup
			writer.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := w0.ApplyChanges(Partner, "churn", EngineChangeSet(w0, keyed[i%len(keyed)])); err != nil {
						return
					}
				}
			})
			probe := make([][]byte, 0, 4096)
			for n := 1; n <= users && len(probe) < cap(probe); n += max(1, users/4096) {
				probe = append(probe, []byte(loadgen.ExternalID(n)))
			}
			var next atomic.Int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(1))
				for pb.Next() {
					w := g.nodes[i%nodes].e.Workspace("bench")
					id := w.Resolve(index.KindExternal, probe[i%len(probe)])
					if c := w.Cohort(Partner, "read"); c != nil && id != index.NoUser {
						_ = c.Members().Contains(uint32(id))
					}
					i++
				}
			})
			b.StopTimer()
			close(stop)
			writer.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		})
	}
}
