//go:build !unix

package engine

// processCPUNanos is 0 where getrusage is missing: no cpu-ns/op figure.
func processCPUNanos() int64 { return 0 }
