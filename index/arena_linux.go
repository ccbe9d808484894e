//go:build linux

package index

import (
	"syscall"
	"unsafe"
)

// adviseHugePages asks the kernel to back [p, p+n) with transparent huge pages. The
// identity table and the arena are read at random, so with 4 KiB pages nearly every
// lookup also misses the TLB, and under virtualization a page walk costs several memory
// reads. It is only a hint: errors (an old kernel, THP disabled) are ignored.
func adviseHugePages(p unsafe.Pointer, n int) {
	const huge = 2 << 20
	if n < huge {
		return
	}
	_ = syscall.Madvise(unsafe.Slice((*byte)(p), n), syscall.MADV_HUGEPAGE)
}
