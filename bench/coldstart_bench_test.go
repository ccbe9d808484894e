package bench

import (
	"fmt"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/engine/wal"
)

// BenchmarkColdStart measures how long a restarted engine takes to be
// ready: engine.Open on a data directory holding the snapshot that Close
// wrote for the seeded universe (users and the six algebra cohorts).
// bench/run.sh runs it in a process of its own, so that the universe is not
// held twice (the other benchmarks cache theirs). Replay of a long WAL tail after a crash is not covered: a crash cannot be
// staged in process, since the data-dir lock stays with the open engine.
func BenchmarkColdStart(b *testing.B) {
	for _, users := range Users() {
		b.Run(fmt.Sprintf("users_%d/engine/snapshot", users), func(b *testing.B) {
			opts := engine.Options{Dir: b.TempDir(), Sync: wal.SyncOff, Logger: quietLogger}
			f, err := NewEngineFixture(users, opts)
			if err != nil {
				b.Fatal(err)
			}
			if err := f.E.Close(); err != nil {
				b.Fatal(err)
			}
			var open, recovery time.Duration
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				e, err := engine.Open(opts)
				if err != nil {
					b.Fatal(err)
				}
				open += time.Since(start)
				recovery += e.RecoveryDuration()
				// Close writes a snapshot again; that is not start-up time.
				b.StopTimer()
				if err := e.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(open.Seconds()*1e3/float64(b.N), "ms/start")
			b.ReportMetric(recovery.Seconds()*1e3/float64(b.N), "recovery-ms")
		})
	}
}
