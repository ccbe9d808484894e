package index

import "unsafe"

// matchGroup is matchGroupGeneric in SSE2 assembly (match_amd64.s): the eight
// tags of a bucket compared in two instructions instead of matchMask's word
// arithmetic, and one call per group instead of one per key. Measured with
// BenchmarkResolveMany, test binaries alternated (cpu-ns/id, benchstat): −11%
// at 10k users, where resolving is compute-bound (p=0.003, n=12); −7% at 1M
// (p=0.09, n=10, within this host's noise); unchanged at 10M, where the misses
// set the pace.
//
// It also prefetches each matched entry of arena as it finds it (the generic
// version does not: off amd64 prefetch does nothing): an entry's miss then starts
// as soon as its ref is known, and a group costs no Go loop of prefetch calls.
// With the hash and key-compare changes of the same commit, BenchmarkResolveMany
// with test binaries alternated 8 times: −13% CPU a key at 10k users (p=0.000),
// within noise at 10M.
func matchGroup(b []bucket, home []int32, tags []uint32, refs []keyRef, pend []uint8, keys [][]byte, arena []byte) int {
	if len(home) == 0 {
		return 0
	}
	_, _, _, _ = tags[len(home)-1], refs[len(home)-1], pend[len(home)-1], keys[len(home)-1] // lengths the assembly relies on
	return matchGroupAsm(&b[0], &home[0], &tags[0], &refs[0], &pend[0], len(home), &keys[0], unsafe.SliceData(arena), len(arena))
}

//go:noescape
func matchGroupAsm(b *bucket, home *int32, tags *uint32, refs *keyRef, pend *uint8, n int, keys *[]byte, arena *byte, arenaLen int) int
