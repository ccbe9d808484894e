//go:build unix

package engine

import "syscall"

// processCPUNanos returns the CPU time the process has used (every thread,
// the garbage collector's too). Benchmarks report it per operation beside
// wall time: the machines we share are often busy, and wall time then
// measures the neighbours.
func processCPUNanos() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
