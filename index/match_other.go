//go:build !amd64

package index

// matchGroup is matchGroupGeneric: only amd64 has the assembly, and only it
// prefetches (prefetch_other.go), so the entries are left alone here.
func matchGroup(b []bucket, home []int32, tags []uint32, refs []keyRef, pend []uint8, _ [][]byte, _ []byte) int {
	return matchGroupGeneric(b, home, tags, refs, pend)
}
