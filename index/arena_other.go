//go:build !linux

package index

import "unsafe"

// adviseHugePages is a no-op where transparent huge pages are not available.
func adviseHugePages(p unsafe.Pointer, n int) {}
