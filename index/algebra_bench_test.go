package index

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"os"
	"slices"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
)

// BenchmarkCountBound sets the 3-clause count "A and B and not C" over
// uniform cohorts of 10% density (1M of 10M users; 10M of 100M with
// COHORTD_BENCH_LARGE=1) beside the cost of one pass over the same bits
// laid out densely, with nothing built: what a count container by container
// would cost if roaring's public API let us visit containers (it does not:
// AndCardinality and OrCardinality take two bitmaps, and every k-way
// operation builds its result). The "single_pass" figure is the memory
// traffic floor of any exact count of three such cohorts.
func BenchmarkCountBound(b *testing.B) {
	members, universe := 1_000_000, 10_000_000
	if os.Getenv("COHORTD_BENCH_LARGE") == "1" {
		members, universe = 10_000_000, 100_000_000
	}
	sets := [3]*roaring.Bitmap{}
	for i := range sets {
		sets[i] = uniformBitmap(members, universe, uint64(10+i))
	}
	live := roaring.New()
	live.AddRange(0, uint64(universe))
	e := &Expr{Op: OpAnd, Kids: []*Expr{{Op: OpSet, Set: sets[0]}, {Op: OpSet, Set: sets[1]},
		{Op: OpNot, Kids: []*Expr{{Op: OpSet, Set: sets[2]}}}}}
	want := e.Count(live)
	name := fmt.Sprintf("members_%d/uniform/and_and_not", members)
	b.Run(name+"/impl=count", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if got := e.Count(live); got != want {
				b.Fatalf("count %d, want %d", got, want)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/count")
	})
	b.Run(name+"/impl=count_views", func(b *testing.B) {
		// CountAndNot over the sets' dense views: what a count does once
		// it has earned them (dense.go, "Counts").
		var views [3]*Dense
		for i, s := range sets {
			views[i] = &Dense{words: make([]uint64, s.DenseSize())}
			s.WriteDenseTo(views[i].words)
		}
		b.ReportAllocs()
		for b.Loop() {
			if got := CountAndNot(views[:2], views[2:]); got != want {
				b.Fatalf("count %d, want %d", got, want)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/count")
	})
	b.Run(name+"/impl=single_pass", func(b *testing.B) {
		var dense [3][]uint64
		for i, s := range sets {
			dense[i] = make([]uint64, universe/64+1)
			s.WriteDenseTo(dense[i])
		}
		b.ReportAllocs()
		for b.Loop() {
			n := 0
			for i, w := range dense[0] {
				n += bits.OnesCount64(w & dense[1][i] &^ dense[2][i])
			}
			if uint64(n) != want {
				b.Fatalf("count %d, want %d", n, want)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/count")
	})
}

// uniformBitmap draws members distinct users of [0, universe) at random.
func uniformBitmap(members, universe int, seed uint64) *roaring.Bitmap {
	r := rand.New(rand.NewPCG(seed, seed*7+1))
	ids := make([]uint32, 0, members)
	for len(ids) < members {
		for k := 0; k < members-len(ids); k++ {
			ids = append(ids, uint32(r.IntN(universe)))
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
	}
	bm := roaring.New()
	bm.AddMany(ids)
	bm.RunOptimize()
	return bm
}
