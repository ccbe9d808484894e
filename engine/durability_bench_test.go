package engine

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// BenchmarkImportDurable measures change batches of 1,000 external ids
// applied by 8 concurrent writers (one cohort each, as partner senders
// do), with a data directory under each -fsync mode. Compare the modes as
// ratios to off from one run: group commit is what keeps always close.
func BenchmarkImportDurable(b *testing.B) {
	const users = 1_000_000
	for _, mode := range []wal.SyncMode{wal.SyncOff, wal.SyncInterval, wal.SyncAlways} {
		b.Run(fmt.Sprintf("fsync_%s/writers_8/ids_1000", mode), func(b *testing.B) {
			dir := b.TempDir()
			e, err := Open(Options{Dir: dir, Sync: mode, Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			e.CreateWorkspace("bench")
			w := e.Workspace("bench")
			seedUsers(b, w, users)
			batches := make([][][]byte, 64)
			r := rand.New(rand.NewPCG(5, 6))
			for i := range batches {
				for k := 0; k < 1000; k++ {
					batches[i] = append(batches[i], extID(1+r.IntN(users)))
				}
			}
			var next sync.Mutex
			n := 0
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					for {
						next.Lock()
						if n >= b.N {
							next.Unlock()
							return
						}
						i := n
						n++
						next.Unlock()
						cs := w.NewChangeSet()
						cs.AddMany(index.KindExternal, batches[i%len(batches)], i%2 == 1)
						if _, err := w.ApplyChanges("p", fmt.Sprintf("c%d", g), cs); err != nil {
							b.Error(err)
							return
						}
					}
				}(g)
			}
			wg.Wait()
			el := time.Since(start)
			b.ReportMetric(float64(b.N)*1000/el.Seconds()/1e6, "Mids/s")
			b.ReportMetric(float64(b.N)/el.Seconds(), "batches/s")
		})
	}
}

// BenchmarkColdStart measures recovery: Open on a data directory holding a
// snapshot of N users (docs/WORKLOADS.md identifiers) and 100 cohorts, plus a
// WAL tail of 1,000 change batches written after the snapshot. 1M users by
// default; COHORTD_BENCH_LARGE=1 adds 10M (and COHORTD_BENCH_HUGE=1 100M,
// which needs ~40 GB of disk and an hour to build).
func BenchmarkColdStart(b *testing.B) {
	for _, users := range snapBenchSizes() {
		b.Run(fmt.Sprintf("users_%d/cohorts_100", users), func(b *testing.B) {
			dir := b.TempDir()
			buildColdStartDir(b, dir, users)
			fi, _ := os.ReadDir(dir)
			var size int64
			for _, f := range fi {
				if info, err := f.Info(); err == nil {
					size += info.Size()
				}
			}
			b.ResetTimer()
			for b.Loop() {
				e, err := Open(Options{Dir: dir, Sync: wal.SyncOff, Logger: quietLogger()})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if got := e.Workspace("cold").users.Len(); got != users {
					b.Fatalf("recovered %d users, want %d", got, users)
				}
				crash(e) // no final snapshot: every iteration loads the same files
				e.wal.Close()
				e.releaseUsers()
				b.StartTimer()
			}
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/start")
			b.ReportMetric(float64(size)/float64(users), "snapshot-B/user")
		})
	}
}

func buildColdStartDir(b *testing.B, dir string, users int) {
	e, err := Open(Options{Dir: dir, Sync: wal.SyncOff, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	e.CreateWorkspace("cold")
	w := e.Workspace("cold")
	seedUsers(b, w, users)
	// 100 cohorts, sizes log-uniform from 1,000 to 10% of the users, half
	// clustered and half uniform.
	r := rand.New(rand.NewPCG(7, 8))
	for c := 0; c < 100; c++ {
		flavour := "clustered"
		if c%2 == 1 {
			flavour = "uniform"
		}
		members := int(1000 * math.Pow(float64(users/10)/1000, r.Float64()))
		bm := cohortBitmap(flavour, max(members, 10_000), users, uint64(c))
		if _, err := w.replaceBitmap("p", fmt.Sprintf("c%03d", c), bm, nil); err != nil {
			b.Fatal(err)
		}
	}
	if err := e.Snapshot(); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		cs := w.NewChangeSet()
		var keys [][]byte
		for k := 0; k < 1000; k++ {
			keys = append(keys, extID(1+r.IntN(users)))
		}
		cs.AddMany(index.KindExternal, keys, i%2 == 1)
		if _, err := w.ApplyChanges("p", fmt.Sprintf("c%03d", i%100), cs); err != nil {
			b.Fatal(err)
		}
	}
	crash(e)
	e.wal.Close()
	e.releaseUsers()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// BenchmarkSnapshotStall takes a snapshot of a workspace of N users while
// a writer applies 1,000-id change batches, and reports the snapshot's
// duration and the slowest import during it next to the slowest import of
// the same loop without a snapshot: imports must not wait for the user
// table to be written.
func BenchmarkSnapshotStall(b *testing.B) {
	users := 1_000_000
	if large() {
		users = 10_000_000
	}
	for _, mode := range []wal.SyncMode{wal.SyncAlways, wal.SyncOff} {
		benchSnapshotStall(b, users, mode)
	}
}

func benchSnapshotStall(b *testing.B, users int, mode wal.SyncMode) {
	b.Run(fmt.Sprintf("users_%d/fsync_%s", users, mode), func(b *testing.B) {
		dir := b.TempDir()
		e, err := Open(Options{Dir: dir, Sync: mode, Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		defer e.Close()
		e.CreateWorkspace("stall")
		w := e.Workspace("stall")
		seedUsers(b, w, users)
		r := rand.New(rand.NewPCG(9, 9))
		batch := func() time.Duration {
			var keys [][]byte
			for k := 0; k < 1000; k++ {
				keys = append(keys, extID(1+r.IntN(users)))
			}
			cs := w.NewChangeSet()
			cs.AddMany(index.KindExternal, keys, r.IntN(2) == 0)
			t0 := time.Now()
			if _, err := w.ApplyChanges("p", "c", cs); err != nil {
				b.Fatal(err)
			}
			return time.Since(t0)
		}
		var snapTime, worstDuring, worstQuiet time.Duration
		for b.Loop() {
			done := make(chan time.Duration)
			go func() {
				t0 := time.Now()
				if err := e.Snapshot(); err != nil {
					b.Error(err)
				}
				done <- time.Since(t0)
			}()
			n := 0
		loop:
			for {
				select {
				case d := <-done:
					snapTime = max(snapTime, d)
					break loop
				default:
					worstDuring = max(worstDuring, batch())
					n++
				}
			}
			for i := 0; i < max(n, 50); i++ {
				worstQuiet = max(worstQuiet, batch())
			}
		}
		b.ReportMetric(snapTime.Seconds(), "snapshot-s")
		b.ReportMetric(float64(worstDuring.Microseconds())/1000, "worst-import-ms-during")
		b.ReportMetric(float64(worstQuiet.Microseconds())/1000, "worst-import-ms-quiet")
	})
}
