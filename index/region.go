package index

import (
	"unsafe"
)

// The identity table's buckets, the key arena, the user table and the overflow
// lists are large arrays without pointers, read at random. They live in regions:
//
//   - On Linux a region of 2 MiB or more is an anonymous private mapping outside the
//     Go heap, aligned to 2 MiB and advised MADV_HUGEPAGE before its first touch, so
//     the kernel backs it with transparent huge pages (where THP is "madvise" or
//     "always"). With 4 KiB pages nearly every random lookup also misses the TLB, and
//     the Go heap never gets huge pages; outside the heap the GC neither scans nor
//     paces on these bytes, so RSS is the live bytes instead of about twice them.
//   - Smaller regions, other systems, and builds with the cohortd_heapmem tag (which
//     forces the fallback on Linux too, so CI runs it) use ordinary heap slices behind
//     the same calls.
//
// # Ownership
//
// A region is owned by exactly one store field and released exactly once, by the
// writer, with release. A region holds no Go pointers, and no Go value may keep a
// slice into it after its release: readers take slices into regions only under
// Users.mu's read lock and drop them before unlocking (see Users). Untouched pages
// of a mapping cost no RSS, so a region may be reserved larger than it is filled.

// hugePage is the size of a transparent huge page, and the alignment and size unit
// of mapped regions.
const hugePage = 2 << 20

// region is a pointer-free byte array, mapped or on the heap.
type region struct {
	b    []byte // the usable bytes; len(b) == cap(b)
	mmap bool   // b is a mapping to unmap on release
}

// newRegion returns a zeroed region of at least n bytes (its len may be larger).
// It panics if the system refuses the memory: like a failed heap allocation,
// that is not a condition the callers can recover from.
func newRegion(n int) region {
	if n <= 0 {
		return region{}
	}
	if n >= hugePage && mapRegions {
		return mapRegion((n + hugePage - 1) &^ (hugePage - 1))
	}
	// Heap slices of at least 64 bytes are 8-byte aligned (not the tiny allocator).
	return region{b: make([]byte, max(n, 64))}
}

// release frees the region's memory. The caller guarantees that nothing can
// still read it.
func (r *region) release() {
	if r.mmap {
		unmapRegion(r.b)
	}
	*r = region{}
}

// mapped returns the bytes of r that lie outside the Go heap.
func (r *region) mapped() int {
	if r.mmap {
		return len(r.b)
	}
	return 0
}

// view returns r's bytes as a []T of n elements. T must hold no pointers.
func view[T any](r region, n int) []T {
	if n == 0 || len(r.b) == 0 {
		return nil
	}
	var z T
	if uintptr(n)*unsafe.Sizeof(z) > uintptr(len(r.b)) {
		panic("BUG: index: view past the end of a region")
	}
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(r.b))), n)
}

// bytesOf returns the memory of s as bytes (for snapshots, which write the arrays
// as they are).
func bytesOf[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	var z T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), uintptr(len(s))*unsafe.Sizeof(z))
}

// unsafePointer returns the address of b's first byte (tests check alignment).
func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
