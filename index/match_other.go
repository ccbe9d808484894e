//go:build !amd64

package index

// matchGroup is matchGroupGeneric: only amd64 has the assembly.
func matchGroup(b []bucket, home []int32, tags []uint32, refs []keyRef, pend []uint8) int {
	return matchGroupGeneric(b, home, tags, refs, pend)
}
