package index

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// benchSizes are the user counts benchmarked; 100M only with COHORTD_BENCH_LARGE=1,
// since building it takes minutes and several GiB. COHORTD_BENCH_USERS=n,m,... replaces
// the list (say 10000 to measure the in-cache cost).
func benchSizes() []int {
	if env := os.Getenv("COHORTD_BENCH_USERS"); env != "" {
		var s []int
		for f := range strings.SplitSeq(env, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				panic(fmt.Sprintf("COHORTD_BENCH_USERS: bad size %q", f))
			}
			s = append(s, n)
		}
		return s
	}
	s := []int{1_000_000, 10_000_000}
	if os.Getenv("COHORTD_BENCH_LARGE") == "1" {
		s = append(s, 100_000_000)
	}
	return s
}

// benchExternalID appends the workload's external id of user n: "user-" + 14 digits.
func benchExternalID(dst []byte, n int) []byte {
	return fmt.Appendf(dst, "user-%014d", n)
}

const (
	benchBatch   = 1000
	benchQueries = 1 << 20 // random existing keys, resolved in batches of benchBatch
)

// resolveFixture is one size's tables, built once per process (-count reruns reuse it).
type resolveFixture struct {
	n       int
	users   *Users
	gomap   map[uint64]uint32
	queries [][]byte // benchQueries random existing external ids
}

var fixtureCache struct {
	sync.Mutex
	f *resolveFixture // only the latest size is kept, to bound memory
}

func getResolveFixture(b *testing.B, n int) *resolveFixture {
	fixtureCache.Lock()
	defer fixtureCache.Unlock()
	if f := fixtureCache.f; f != nil && f.n == n {
		return f
	}
	fixtureCache.f = nil
	runtime.GC()
	f := &resolveFixture{n: n, users: NewUsers(Options{}), gomap: make(map[uint64]uint32)}
	var buf []byte
	for i := range n {
		buf = benchExternalID(buf[:0], i)
		id := f.users.Create()
		if err := f.users.Attach(id, KindExternal, buf); err != nil {
			b.Fatal(err)
		}
		f.gomap[xxhash.Sum64(buf)] = uint32(id)
	}
	f.users.Publish()
	r := rand.New(rand.NewPCG(1, 2))
	backing := make([]byte, 0, benchQueries*19)
	f.queries = make([][]byte, benchQueries)
	for i := range f.queries {
		s := len(backing)
		backing = benchExternalID(backing, r.IntN(n))
		f.queries[i] = backing[s:len(backing):len(backing)]
	}
	fixtureCache.f = f
	return f
}

// BenchmarkResolveMany resolves random existing external ids in batches of 1,000 in a
// flat table and, as the baseline in the same run, in a Go map[uint64]uint32 keyed by
// the same xxhash (which confirms nothing). Compare with
//
//	go tool benchstat -col /impl file
func BenchmarkResolveMany(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("users_%d", n), func(b *testing.B) {
			f := getResolveFixture(b, n)
			b.Run("impl=flat", func(b *testing.B) {
				b.ReportAllocs()
				dst := make([]UserID, 0, benchBatch)
				f.resolveBatches(b, func(q [][]byte) { dst = f.users.ResolveMany(KindExternal, q, dst[:0]) })
				for j, id := range dst {
					if id == NoUser {
						b.Fatalf("query %d unresolved", j)
					}
				}
			})
			b.Run("impl=gomap", func(b *testing.B) {
				b.ReportAllocs()
				dst := make([]uint32, benchBatch)
				f.resolveBatches(b, func(q [][]byte) {
					for j, k := range q {
						dst[j] = f.gomap[xxhash.Sum64(k)]
					}
				})
			})
		})
	}
}

// resolveBatches runs resolve over the fixture's queries, benchBatch at a time, on a
// locked thread, and reports wall and CPU ns an id and M ids a second. It returns the
// last batch resolved.
func (f *resolveFixture) resolveBatches(b *testing.B, resolve func(q [][]byte)) (last [][]byte) {
	nb := len(f.queries) / benchBatch
	i := 0
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := threadCPUNanos()
	for b.Loop() {
		last = f.queries[(i%nb)*benchBatch:][:benchBatch]
		resolve(last)
		i++
	}
	reportResolved(b, i, threadCPUNanos()-cpu)
	return last
}

// reportResolved reports a run of batches of benchBatch ids that took cpu ns of the
// thread's CPU: wall ns and CPU ns an id, and M ids a second.
func reportResolved(b *testing.B, batches int, cpu int64) {
	ids := float64(batches) * benchBatch
	ns := float64(b.Elapsed().Nanoseconds()) / ids
	b.ReportMetric(ns, "ns/id")
	b.ReportMetric(1e3/ns, "Mids/s")
	b.ReportMetric(float64(cpu)/ids, "cpu-ns/id")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkUsersMemory builds a table of n users, each with one workload external id
// (19 bytes), and reports bytes a user by MemoryBytes and by the Go heap's growth.
func BenchmarkUsersMemory(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("users_%d", n), func(b *testing.B) {
			fixtureCache.Lock()
			fixtureCache.f = nil // free the resolve fixture so the heap delta is clean
			fixtureCache.Unlock()
			var mem, heap float64
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				u := NewUsers(Options{})
				var buf []byte
				for i := range n {
					buf = benchExternalID(buf[:0], i)
					if err := u.Attach(u.Create(), KindExternal, buf); err != nil {
						b.Fatal(err)
					}
				}
				u.Publish()
				runtime.GC()
				runtime.ReadMemStats(&after)
				mem = float64(u.MemoryBytes()) / float64(n)
				heap = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
				runtime.KeepAlive(u)
			}
			b.ReportMetric(mem, "bytes/user")
			b.ReportMetric(heap, "heap-bytes/user")
			b.ReportMetric(0, "ns/op")
		})
	}
}
