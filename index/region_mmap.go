//go:build linux && !cohortd_heapmem

package index

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapRegions is true where big regions are mapped outside the Go heap.
const mapRegions = true

// mapRegion maps n bytes (a multiple of hugePage) aligned to hugePage and advises
// huge pages before anything touches them. The mapping is made one huge page
// larger and trimmed, because mmap only promises 4 KiB alignment and a huge page
// must sit on a 2 MiB boundary.
func mapRegion(n int) region {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n+hugePage), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		panic(fmt.Sprintf("index: map %d bytes: %v", n, err))
	}
	head := int((hugePage - uintptr(p)%hugePage) % hugePage)
	if head > 0 {
		mustUnmap(p, uintptr(head))
	}
	aligned := unsafe.Add(p, head)
	if tail := hugePage - head; tail > 0 {
		mustUnmap(unsafe.Add(aligned, n), uintptr(tail))
	}
	b := unsafe.Slice((*byte)(aligned), n)
	// Only a hint: an old kernel or THP "never" leaves 4 KiB pages, which work.
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	return region{b: b, mmap: true}
}

func unmapRegion(b []byte) {
	mustUnmap(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}

func mustUnmap(p unsafe.Pointer, n uintptr) {
	if err := unix.MunmapPtr(p, n); err != nil {
		panic(fmt.Sprintf("BUG: index: unmap %d bytes: %v", n, err))
	}
}
