//go:build linux

package index

import "syscall"

// threadCPUNanos returns the CPU time the calling OS thread has used. Benchmarks lock
// their goroutine to a thread and report it next to wall time, because the machines we
// share are often busy and wall time then measures the neighbours.
func threadCPUNanos() int64 {
	var ru syscall.Rusage
	const rusageThread = 1 // RUSAGE_THREAD
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
