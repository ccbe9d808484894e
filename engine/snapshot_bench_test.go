package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// snapBenchSizes are the user counts of the snapshot benchmarks: 1M;
// COHORTD_BENCH_LARGE=1 adds 10M and COHORTD_BENCH_HUGE=1 100M (~15 GiB of
// memory and ~10 GB of disk); COHORTD_BENCH_USERS=n,… replaces the list (the
// make test smoke uses a small one).
func snapBenchSizes() []int {
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
	sizes := []int{1_000_000}
	if large() {
		sizes = append(sizes, 10_000_000)
	}
	if os.Getenv("COHORTD_BENCH_HUGE") == "1" {
		sizes = append(sizes, 100_000_000)
	}
	return sizes
}

// BenchmarkSnapshotLoad reads the snapshot file of N users and 100 cohorts
// (the cold-start data dir without its WAL tail) into an empty engine: the
// identity tables' arrays go straight into new regions. MB/s is the file's
// bytes over the load time (the page cache holds the file: this is the
// decoding speed, what a disk must beat to be the limit).
func BenchmarkSnapshotLoad(b *testing.B) {
	for _, users := range snapBenchSizes() {
		b.Run(fmt.Sprintf("users_%d/cohorts_100", users), func(b *testing.B) {
			dir := b.TempDir()
			buildColdStartDir(b, dir, users)
			snaps, err := listSnapshots(dir)
			if err != nil || len(snaps) == 0 {
				b.Fatalf("no snapshot: %v", err)
			}
			p := filepath.Join(dir, snaps[0].name)
			fi, err := os.Stat(p)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(fi.Size())
			b.ReportAllocs()
			for b.Loop() {
				e, _ := Open(Options{Logger: quietLogger()})
				if err := e.loadSnapshot(p); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if got := e.Workspace("cold").users.Len(); got != users {
					b.Fatalf("loaded %d users, want %d", got, users)
				}
				e.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(fi.Size())/float64(users), "snapshot-B/user")
		})
	}
}
