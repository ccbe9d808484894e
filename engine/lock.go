package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrDataDirInUse is returned when another process holds the data
// directory's lock (Open, CheckDir).
var ErrDataDirInUse = errors.New("engine: data dir in use")

// lockName is the lock file inside a data directory.
const lockName = "LOCK"

// lockDir takes the data directory's lock: one process per directory, since
// two writers would interleave WAL records. The caller closes the file to
// release it.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("engine: lock data dir: %w", err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, ErrDataDirInUse) {
			return nil, fmt.Errorf("%w: %s is locked by another cohortd process", ErrDataDirInUse, dir)
		}
		return nil, fmt.Errorf("engine: lock data dir %s: %w", dir, err)
	}
	return f, nil
}
