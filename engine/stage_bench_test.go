package engine

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cohortd/cohortd/index"
)

// BenchmarkStageLines measures a bulk request of 100k identifiers staged
// and applied, as the decoder hands it over: one identifier per AddMany
// call (an NDJSON body of one identifier a line, the headline bulk shape)
// or 1,000 per call (100 lines of 1,000). Requests alternate between adding
// a set of users and removing it, so each one changes every member it
// names. Users are 1M external ids; clustered requests name runs of users
// in arrival order, uniform ones random users.
func BenchmarkStageLines(b *testing.B) {
	const users, ids = 1_000_000, 100_000
	for _, flavour := range []string{"clustered", "uniform"} {
		for _, perLine := range []int{1, 1000} {
			b.Run(fmt.Sprintf("users_%d/%s/ids_%d/lines_of_%d", users, flavour, ids, perLine), func(b *testing.B) {
				w := benchWorkspace(b, users)
				r := rand.New(rand.NewPCG(7, 8))
				var keys [][]byte
				if flavour == "clustered" {
					start := 1 + r.IntN(users-ids)
					for i := range ids {
						keys = append(keys, extID(start+i))
					}
				} else {
					for range ids {
						keys = append(keys, extID(1+r.IntN(users)))
					}
				}
				cohort := fmt.Sprintf("stage-%s-%d", flavour, perLine)
				b.SetBytes(ids) // MB/s reads as M identifiers/s
				b.ReportAllocs()
				i := 0
				cpu0 := processCPUNanos()
				for b.Loop() {
					cs := w.NewChangeSet()
					remove := i%2 == 1
					i++
					for off := 0; off < len(keys); off += perLine {
						cs.AddMany(index.KindExternal, keys[off:off+perLine], remove)
					}
					if _, err := w.ApplyChanges("p", cohort, cs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(processCPUNanos()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// BenchmarkLastWins compares the ways to find each user's last change in a
// batch of 100k changes (ops as a ChangeSet holds them, in arrival order:
// clustered requests add a run of users in order, then remove another;
// two_runs adds and removes users of one range, each in order, as a
// partner batch does):
// a radix sort on the user id, slices.Sort (pdqsort) on the whole op (what
// finalSets did before), and sortOps, which picks between the two and is
// what finalSets does now.
func BenchmarkLastWins(b *testing.B) {
	const n = 100_000
	for _, universe := range []int{1_000_000, 10_000_000, 100_000_000} {
		for _, flavour := range []string{"clustered", "uniform", "two_runs"} {
			r := rand.New(rand.NewPCG(1, uint64(universe)))
			ops := make([]uint64, n)
			start := r.IntN(universe - n)
			var maxUID uint32
			for i := range ops {
				uid := uint32(start + i%(n/2)) // adds of a run, then removes of another
				if i >= n/2 {
					uid += uint32(n)
				}
				switch flavour {
				case "uniform":
					uid = uint32(r.IntN(universe))
				case "two_runs": // adds, then removes, each in order, over one range
					uid = uint32(start + (i%(n/2))*2 + i/(n/2))
				}
				maxUID = max(maxUID, uid)
				ops[i] = uint64(uid)<<32 | uint64(i)<<1 | uint64(r.IntN(2))
			}
			name := fmt.Sprintf("users_%d/%s/ops_%d", universe, flavour, n)
			for _, impl := range []struct {
				name string
				sort func(ops, scratch []uint64, maxUID uint32) ([]uint64, []uint64)
			}{
				{"radix", sortByUser},
				{"pdqsort", func(ops, scratch []uint64, _ uint32) ([]uint64, []uint64) { slices.Sort(ops); return ops, scratch }},
				{"sortOps", sortOps},
			} {
				b.Run(name+"/impl="+impl.name, func(b *testing.B) {
					work, scratch := make([]uint64, n), make([]uint64, n)
					b.SetBytes(n)
					for b.Loop() {
						copy(work, ops)
						sorted, spare := impl.sort(work, scratch, maxUID)
						work, scratch = spare, sorted
					}
				})
			}
		}
	}
}
