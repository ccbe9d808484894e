//go:build !(linux || darwin || freebsd || openbsd || netbsd || dragonfly || windows)

package engine

import "os"

// lockFile is a no-op on platforms without flock or LockFileEx: there the
// operator must make sure only one cohortd opens a data directory.
func lockFile(*os.File) error { return nil }
