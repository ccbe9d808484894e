//go:build !linux

package index

// threadCPUNanos returns 0 where thread CPU time is not available; the cpu-ns/id metric
// then reads 0.
func threadCPUNanos() int64 { return 0 }
