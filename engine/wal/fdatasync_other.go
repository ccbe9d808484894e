//go:build !linux

package wal

import "os"

// fdatasync flushes f to stable storage. Outside Linux it is (*os.File).Sync,
// which on Darwin issues F_FULLFSYNC.
func fdatasync(f *os.File) error {
	return f.Sync()
}
