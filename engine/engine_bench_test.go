package engine

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/index"
)

// Benchmarks of the engine's hot operations. Sizes follow
// docs/WORKLOADS.md; the 10M-user variants need COHORTD_BENCH_LARGE=1
// (they take minutes to build and several GB).

func large() bool { return os.Getenv("COHORTD_BENCH_LARGE") == "1" }

func extID(n int) []byte { return fmt.Appendf(nil, "user-%014d", n) }

var benchWS struct {
	sync.Mutex
	m map[int]*Workspace
}

// seedUsers creates users 1…n with the workload's external ids, 100k
// records an upsert, as loadgen seed does.
func seedUsers(b *testing.B, w *Workspace, n int) {
	b.Helper()
	for start := 1; start <= n; start += 100_000 {
		var ub UserBatch
		for i := start; i < start+100_000 && i <= n; i++ {
			ub.Add(extID(i), nil, nil)
		}
		if _, err := w.UpsertUsers(&ub); err != nil {
			b.Fatal(err)
		}
	}
}

// benchWorkspace returns a workspace of n external-id users (cached per n).
func benchWorkspace(b *testing.B, n int) *Workspace {
	benchWS.Lock()
	defer benchWS.Unlock()
	if w := benchWS.m[n]; w != nil {
		return w
	}
	e, _ := Open(Options{})
	e.CreateWorkspace("bench")
	w := e.Workspace("bench")
	seedUsers(b, w, n)
	if benchWS.m == nil {
		benchWS.m = map[int]*Workspace{}
	}
	benchWS.m[n] = w
	return w
}

// BenchmarkApply measures a whole change batch: resolve, last-change-wins,
// bitmap diff and publish, against a cohort that already holds 10% of the
// users. Half the batch adds, half removes, random users.
func BenchmarkApply(b *testing.B) {
	sizes := []int{1_000_000}
	if large() {
		sizes = append(sizes, 10_000_000)
	}
	for _, users := range sizes {
		for _, batch := range []int{1_000, 100_000} {
			b.Run(fmt.Sprintf("users_%d/ids_%d", users, batch), func(b *testing.B) {
				w := benchWorkspace(b, users)
				r := rand.New(rand.NewPCG(1, 2))
				cohort := fmt.Sprintf("apply-%d", batch)
				// Preload 10% of users, clustered per docs/WORKLOADS.md.
				ms := w.NewMemberSet()
				var keys [][]byte
				for i := 1; i <= users; i += 10_000 {
					for j := i; j < i+1_000 && j <= users; j++ {
						keys = append(keys, extID(j))
					}
				}
				ms.AddMany(index.KindExternal, keys)
				w.ReplaceMembers("p", cohort, ms)
				batches := make([][][]byte, 16)
				for i := range batches {
					for k := 0; k < batch; k++ {
						batches[i] = append(batches[i], extID(1+r.IntN(users)))
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				i := 0
				for b.Loop() {
					ids := batches[i%len(batches)]
					i++
					cs := w.NewChangeSet()
					cs.AddMany(index.KindExternal, ids[:batch/2], false)
					cs.AddMany(index.KindExternal, ids[batch/2:], true)
					if _, err := w.ApplyChanges("p", cohort, cs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds()/1e6, "Mids/s")
			})
		}
	}
}

// BenchmarkReplace measures a snapshot sync that replaces a cohort of
// `members` members with a set differing by 2% (1% leave, 1% join), from
// resolved ids (the resolve cost is BenchmarkApply's and index's).
func BenchmarkReplace(b *testing.B) {
	members := 1_000_000
	universe := 10_000_000
	if large() {
		members, universe = 10_000_000, 100_000_000
	}
	for _, flavour := range []string{"clustered", "uniform"} {
		b.Run(fmt.Sprintf("members_%d/%s", members, flavour), func(b *testing.B) {
			w := syntheticWorkspace(universe)
			cur := cohortBitmap(flavour, members, universe, 1)
			c := w.applyCohortUpsert("p", "r", "r", time.Now(), time.Now())
			c.members.Reset(cur.Clone())
			next := churn(cur, universe, 0.01, 2)
			targets := []*roaring.Bitmap{next, cur}
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				t := targets[i%2].Clone()
				i++
				if _, err := w.replaceBitmap("p", "r", t, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/replace")
		})
	}
}

// syntheticWorkspace has `universe` live users without identifiers: the
// algebra benchmarks need bitmaps, not identity tables.
func syntheticWorkspace(universe int) *Workspace {
	e, _ := Open(Options{})
	e.CreateWorkspace("syn")
	w := e.Workspace("syn")
	w.users.CreateMany(universe)
	w.users.Publish()
	return w
}

// cohortBitmap builds a docs/WORKLOADS.md cohort: clustered = runs in arrival
// order (run length members/(universe/10_000)), uniform = random members.
func cohortBitmap(flavour string, members, universe int, seed uint64) *roaring.Bitmap {
	bm := roaring.New()
	r := rand.New(rand.NewPCG(seed, seed*7+1))
	if flavour == "clustered" {
		blocks := universe / 10_000
		run := members / blocks
		off := r.IntN(10_000 - run + 1)
		for blk := 0; blk < blocks; blk++ {
			s := uint64(blk*10_000 + off)
			bm.AddRange(s, s+uint64(run))
		}
		return bm
	}
	ids := make([]uint32, 0, members)
	for len(ids) < members {
		for k := 0; k < members-len(ids); k++ {
			ids = append(ids, uint32(r.IntN(universe)))
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
	}
	bm.AddMany(ids)
	bm.RunOptimize()
	return bm
}

// churn returns cur with share of its members removed and as many
// non-members added.
func churn(cur *roaring.Bitmap, universe int, share float64, seed uint64) *roaring.Bitmap {
	r := rand.New(rand.NewPCG(seed, seed+3))
	next := cur.Clone()
	n := int(float64(cur.GetCardinality()) * share)
	for i := 0; i < n; i++ {
		v, _ := cur.Select(uint32(r.IntN(int(cur.GetCardinality()))))
		next.Remove(v)
		next.Add(uint32(r.IntN(universe)))
	}
	return next
}

// BenchmarkSegmentCount measures a 3-clause count, A and B and not C, over
// cohorts of 10% density (10M of 100M with COHORTD_BENCH_LARGE=1, else 1M
// of 10M), and the two-clause forms counted without materialising.
func BenchmarkSegmentCount(b *testing.B) {
	members, universe := 1_000_000, 10_000_000
	if large() {
		members, universe = 10_000_000, 100_000_000
	}
	for _, flavour := range []string{"clustered", "uniform"} {
		w := syntheticWorkspace(universe)
		for i, name := range []string{"A", "B", "C"} {
			c := w.applyCohortUpsert("p", name, name, time.Now(), time.Now())
			c.members.Reset(cohortBitmap(flavour, members, universe, uint64(10+i)))
		}
		for _, q := range []struct{ name, expr string }{
			{"and_and_not", `{"and":[{"cohort":"p/A"},{"cohort":"p/B"},{"not":{"cohort":"p/C"}}]}`},
			{"or_or", `{"or":[{"cohort":"p/A"},{"cohort":"p/B"},{"cohort":"p/C"}]}`},
			{"and2", `{"and":[{"cohort":"p/A"},{"cohort":"p/B"}]}`},
		} {
			b.Run(fmt.Sprintf("members_%d/%s/%s", members, flavour, q.name), func(b *testing.B) {
				seg, err := parseSegment([]byte(q.expr))
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					w.Bind(seg).Count()
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/count")
			})
		}
	}
}

// BenchmarkBytesPerMember reports the in-memory and serialized size of
// cohorts at 10% density per member.
func BenchmarkBytesPerMember(b *testing.B) {
	members, universe := 1_000_000, 10_000_000
	if large() {
		members, universe = 10_000_000, 100_000_000
	}
	for _, flavour := range []string{"clustered", "uniform"} {
		b.Run(fmt.Sprintf("members_%d/%s", members, flavour), func(b *testing.B) {
			var bm *roaring.Bitmap
			for b.Loop() {
				bm = cohortBitmap(flavour, members, universe, 9)
			}
			b.ReportMetric(float64(bm.GetSizeInBytes())/float64(bm.GetCardinality()), "B/member")
			b.ReportMetric(float64(bm.GetSerializedSizeInBytes())/float64(bm.GetCardinality()), "serialized-B/member")
		})
	}
}
