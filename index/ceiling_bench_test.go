package index

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"runtime"
	"testing"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

// BenchmarkRandomLines is the memory system's ceiling for ResolveMany: the
// same access pattern with nothing else to do. Per key, a random line of a
// bucket-sized region is prefetched in groups of resolveGroup, read, and the
// word read picks a random line of an arena-sized region, prefetched and
// read in turn (two dependent misses a key, as a resolve has: the bucket
// names the arena entry). lines=1 stops after the bucket. Regions are sized
// as the tables of n users (12 and 28 bytes a user: /v1/admin/memory at 1M)
// and come from newRegion, so they are on huge pages where the kernel grants
// them. Like BenchmarkResolveMany it reports the thread's CPU time beside
// wall time (shared machines). Keys per CPU-second here bound what any
// probe design with a confirming second line can reach on this machine.
func BenchmarkRandomLines(b *testing.B) {
	for _, n := range benchSizes() {
		buckets := newRegion(12 * n)
		arena := newRegion(28 * n)
		// Fill both with pseudo-random words: the bucket's word is the arena
		// offset, as a slot's ref is.
		fill := func(r region) {
			w := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(r.b))), len(r.b)/8)
			for i := range w {
				w[i] = xxhash.Sum64(unsafe.Slice((*byte)(unsafe.Pointer(&i)), 8))
			}
		}
		fill(buckets)
		fill(arena)
		nb, na := uint64(len(buckets.b)/64), uint64(len(arena.b)/64)
		b.Run(fmt.Sprintf("users_%d/lines_2_pipelined", n), func(b *testing.B) {
			benchLinesPipelined(b, buckets, arena, n)
		})
		for _, lines := range []int{1, 2} {
			b.Run(fmt.Sprintf("users_%d/lines_%d", n, lines), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(uint64(n), 1))
				var (
					bi   [resolveGroup]uint64
					ai   [resolveGroup]uint64
					sink uint64
				)
				keys := 0
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				cpu := threadCPUNanos()
				for b.Loop() {
					for g := 0; g < benchBatch; g += resolveGroup {
						for j := range bi {
							hi, _ := bits.Mul64(rng.Uint64(), nb)
							bi[j] = hi * 64
							prefetch(unsafe.Pointer(&buckets.b[bi[j]]))
						}
						for j := range bi {
							ai[j] = *(*uint64)(unsafe.Pointer(&buckets.b[bi[j]]))
						}
						if lines == 2 {
							for j := range ai {
								hi, _ := bits.Mul64(ai[j], na)
								ai[j] = hi * 64
								prefetch(unsafe.Pointer(&arena.b[ai[j]]))
							}
							for j := range ai {
								sink += *(*uint64)(unsafe.Pointer(&arena.b[ai[j]]))
							}
						} else {
							for j := range ai {
								sink += ai[j]
							}
						}
						keys += resolveGroup
					}
				}
				reportLines(b, keys, threadCPUNanos()-cpu, sink)
			})
		}
		buckets.release()
		arena.release()
	}
}

// benchLinesPipelined is lines_2 with its passes pipelined across groups, as
// resolveHashedLocked goes: while group g's arena lines are read, group g+1's
// buckets are read and its arena lines prefetched, and group g+2's buckets are
// prefetched. It shows whether a deeper pipeline raises the ceiling. It does not:
// measured on the same day, 46-50 ns a key at 10M users either way, and 240-255
// against 179-192 at 100M (more misses in flight than the core tracks), which is
// why ResolveMany is not pipelined across groups (a pipelined ResolveMany measured
// the same: bench/reviews/resolve_pipelined_*).
func benchLinesPipelined(b *testing.B, buckets, arena region, n int) {
	nb, na := uint64(len(buckets.b)/64), uint64(len(arena.b)/64)
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	var (
		bi   [3][resolveGroup]uint64
		sink uint64
	)
	keys := 0
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := threadCPUNanos()
	const groups = benchBatch / resolveGroup
	for b.Loop() {
		for g := -2; g < groups; g++ {
			if m := g + 2; m < groups {
				s := &bi[m%3]
				for j := range s {
					hi, _ := bits.Mul64(rng.Uint64(), nb)
					s[j] = hi * 64
					prefetch(unsafe.Pointer(&buckets.b[s[j]]))
				}
			}
			if m := g + 1; m >= 0 && m < groups {
				s := &bi[m%3]
				for j := range s {
					hi, _ := bits.Mul64(*(*uint64)(unsafe.Pointer(&buckets.b[s[j]])), na)
					s[j] = hi * 64
					prefetch(unsafe.Pointer(&arena.b[s[j]]))
				}
			}
			if g >= 0 {
				for _, a := range bi[g%3] {
					sink += *(*uint64)(unsafe.Pointer(&arena.b[a]))
				}
				keys += resolveGroup
			}
		}
	}
	reportLines(b, keys, threadCPUNanos()-cpu, sink)
}

// reportLines reports a RandomLines run of keys keys that took cpu ns of the
// thread's CPU; sink is what the loads summed, used so that they stay.
func reportLines(b *testing.B, keys int, cpu int64, sink uint64) {
	cpuNs := float64(cpu) / float64(keys)
	b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(keys), "ns/key")
	b.ReportMetric(cpuNs, "cpu-ns/key")
	b.ReportMetric(1e3/cpuNs, "Mkeys/cpu-s")
	b.ReportMetric(0, "ns/op")
	if sink == 42 {
		b.Log("unlikely")
	}
}
