package server

import (
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine"
)

// TestMetricsScrapeCostIndependentOfCohorts: a /metrics scrape neither
// lists nor sorts cohorts (it used to copy and sort every workspace's
// cohort list on each scrape): the bytes it allocates do not grow with the
// number of cohorts.
func TestMetricsScrapeCostIndependentOfCohorts(t *testing.T) {
	allocs := func(cohorts int) uint64 {
		e, err := engine.Open(engine.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.CreateWorkspace("ws"); err != nil {
			t.Fatal(err)
		}
		w := e.Workspace("ws")
		for i := range cohorts {
			if err := w.UpsertCohort("p", fmt.Sprint("c", i), "c", time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		writeEngineMetrics(io.Discard, e) // warm the per-version caches
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 20 {
			writeEngineMetrics(io.Discard, e)
		}
		runtime.ReadMemStats(&after)
		return (after.TotalAlloc - before.TotalAlloc) / 20
	}
	few, many := allocs(10), allocs(2000)
	// 2,000 cohorts listed would cost at least 16 KB (a pointer each).
	if many > few+4<<10 {
		t.Fatalf("a scrape allocates %d bytes with 2,000 cohorts, %d with 10", many, few)
	}
}
