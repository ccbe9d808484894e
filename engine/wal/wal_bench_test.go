package wal

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkCommit measures Commit throughput with concurrent writers. One
// op is one record (Append + Wait); MB/s counts payload bytes, records/s is
// reported explicitly, and records/sync shows how well group commit batches.
func BenchmarkCommit(b *testing.B) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncOff} {
		for _, writers := range []int{1, 8} {
			for _, size := range []int{128, 4096} {
				name := fmt.Sprintf("%s/writers_%d/payload_%d", mode, writers, size)
				b.Run(name, func(b *testing.B) {
					benchmarkCommit(b, mode, writers, size)
				})
			}
		}
	}
}

func benchmarkCommit(b *testing.B, mode SyncMode, writers, size int) {
	l, err := Open(Options{Dir: b.TempDir(), Sync: mode, Logger: quietLogger(),
		OnFatal: func(err error) { b.Errorf("OnFatal: %v", err) }})
	if err != nil {
		b.Fatal(err)
	}
	if err := l.Replay(1, func(uint8, uint64, []byte) error { return nil }); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(size))
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}

	start := time.Now()
	b.ResetTimer()
	if writers == 1 {
		for b.Loop() {
			if _, err := l.Commit(1, payload); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// Split b.N over exactly `writers` goroutines, as the engine's
		// request handlers would.
		var wg sync.WaitGroup
		per := (b.N + writers - 1) / writers
		for w := range writers {
			n := min(per, b.N-w*per)
			wg.Go(func() {
				for range n {
					if _, err := l.Commit(1, payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	b.StopTimer()
	elapsed := time.Since(start)
	st := l.Stats()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(b.N)/float64(max(st.Syncs, 1)), "records/sync")
	b.ReportMetric(float64(b.N)/float64(max(st.Writes, 1)), "records/write")
}
