package engine

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/index"
)

// BenchmarkWebhookSession replays a Mixpanel full sync of a cohort of
// `members` users in pages of 1,000 into a workspace whose cohort already
// holds the previous sync (1% different), and reports the total time per
// sync, the commit time (the last page: union → replace) and the staging
// memory per staged member at its peak (just before the commit).
// Resolution is measured by the index benchmarks; pages here carry
// resolved ids, as the server hands them to StagePage.
func BenchmarkWebhookSession(b *testing.B) {
	members, universe := 1_000_000, 10_000_000
	if large() {
		members, universe = 10_000_000, 100_000_000
	}
	for _, flavour := range []string{"clustered", "uniform"} {
		b.Run(fmt.Sprintf("members_%d/%s/pages_of_1000", members, flavour), func(b *testing.B) {
			w := syntheticWorkspace(universe)
			target := cohortBitmap(flavour, members, universe, 21)
			prev := churn(target, universe, 0.01, 22)
			c := w.applyCohortUpsert("mixpanel", "777", "777", time.Now(), time.Now())
			c.members.Reset(prev)
			// Pages in Mixpanel's order, which has nothing to do with our
			// dense ids: shuffled anew for every sync (outside the timer).
			shuffle := rand.New(rand.NewPCG(3, 4))
			order := func(bm *roaring.Bitmap) []uint32 {
				ids := bm.ToArray()
				shuffle.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
				return ids
			}
			ids := order(target)
			var commit time.Duration
			var stagingBytes float64
			round := 0
			for b.Loop() {
				round++
				sid := fmt.Sprintf("s%d", round)
				pages := (len(ids) + 999) / 1000
				for p := 0; p < pages; p++ {
					page := ids[p*1000 : min(len(ids), (p+1)*1000)]
					ms := w.NewMemberSet()
					uids := make([]index.UserID, len(page))
					for i, v := range page {
						uids[i] = index.UserID(v)
					}
					ms.AddIDs(uids)
					if p == pages-1 {
						b.StopTimer()
						stagingBytes = w.stagingBytes()
						b.StartTimer()
					}
					t0 := time.Now()
					res, err := w.StagePage("mixpanel", "777", "", sid, p+1, pages, ms)
					if err != nil {
						b.Fatal(err)
					}
					if p == pages-1 {
						commit = time.Since(t0)
						if !res.Committed {
							b.Fatal("last page did not commit")
						}
					}
				}
				// Alternate between the two versions so every sync changes 2%.
				b.StopTimer()
				target, prev = prev, target
				ids = order(target)
				b.StartTimer()
			}
			b.ReportMetric(float64(commit.Microseconds())/1000, "commit-ms")
			b.ReportMetric(stagingBytes/float64(members), "staging-B/member")
			b.ReportMetric(float64(members)/(b.Elapsed().Seconds()/float64(b.N))/1e6, "Mmembers/s")
			runtime.KeepAlive(w)
		})
	}
}
