package engine

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// TestConcurrentReadersNeverSeeHalfABatch runs writers that always add and
// remove users in pairs (u, u+1 together) while readers check that every
// published cohort holds whole pairs only, under -race.
func TestConcurrentReadersNeverSeeHalfABatch(t *testing.T) {
	e, err := Open(Options{Dir: t.TempDir(), Sync: wal.SyncOff})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.CreateWorkspace("ws")
	w := e.Workspace("ws")
	const users = 2000
	var b UserBatch
	for i := 0; i < users; i++ {
		b.Add(fmt.Appendf(nil, "u%d", i), nil, nil)
	}
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
	w.UpsertCohort("p", "c", "c", e.now())
	w.UpsertCohort("p", "d", "d", e.now())
	var stop atomic.Bool
	var wg sync.WaitGroup
	iters := 300
	if testing.Short() {
		iters = 150
	}
	for wr := 0; wr < 3; wr++ {
		wg.Add(1)
		go func(wr int) {
			defer wg.Done()
			for i := 0; i < iters; i++ {
				cs := w.NewChangeSet()
				for k := 0; k < 20; k++ {
					u := ((wr*7919 + i*31 + k*97) % (users / 2)) * 2
					rm := (i+k)%3 == 0
					cs.AddMany(index.KindExternal, [][]byte{fmt.Appendf(nil, "u%d", u), fmt.Appendf(nil, "u%d", u+1)}, rm)
				}
				cohort := "c"
				if wr == 2 {
					cohort = "d"
				}
				if _, err := w.ApplyChanges("p", cohort, cs); err != nil {
					t.Error(err)
					return
				}
				if wr == 0 && i%50 == 0 {
					if err := e.Snapshot(); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}(wr)
	}
	// A writer of users running beside the imports.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < iters; i++ {
			var b UserBatch
			b.Add(fmt.Appendf(nil, "extra%d", i), fmt.Appendf(nil, "dev%d", i), nil)
			if _, err := w.UpsertUsers(&b); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var readers sync.WaitGroup
	seg, _ := parseSegment([]byte(`{"or":[{"cohort":"p/c"},{"and":[{"cohort":"p/d"},{"not":{"cohort":"p/c"}}]}]}`))
	for r := 0; r < 2; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for !stop.Load() {
				for _, name := range []string{"c", "d"} {
					m := w.Cohort("p", name).Members()
					arr := m.ToArray()
					for i := 0; i < len(arr); i += 2 {
						if i+1 >= len(arr) || arr[i]%2 != 0 || arr[i+1] != arr[i]+1 {
							t.Errorf("cohort %s: half a pair visible at %d", name, arr[i])
							return
						}
					}
				}
				bs := w.Bind(seg)
				if n := bs.Count(); n%2 != 0 {
					t.Errorf("segment count %d is odd: half a batch visible", n)
					return
				}
				_ = bs.Contains(index.UserID(3))
			}
		}()
	}
	wg.Wait()
	stop.Store(true)
	readers.Wait()
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}
