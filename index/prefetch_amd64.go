package index

import "unsafe"

// prefetch asks the CPU to bring p's cache line in, without waiting for it: unlike
// a load, the instruction retires at once, so a loop of them never fills the
// reorder window with misses in flight. Go has no prefetch intrinsic outside the
// runtime, hence the assembly (a call costs about a nanosecond).
//
//go:noescape
func prefetch(p unsafe.Pointer)
