//go:build !amd64

package index

import "unsafe"

// prefetch does nothing here: only amd64 has the assembly (prefetch_amd64.s).
func prefetch(unsafe.Pointer) {}
