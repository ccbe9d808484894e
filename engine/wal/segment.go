package wal

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const segmentSuffix = ".wal"

// segmentName returns the file name of the segment whose first record has
// lsn first: 20 decimal digits, so lexical order is numeric order.
func segmentName(first uint64) string {
	return fmt.Sprintf("%020d%s", first, segmentSuffix)
}

// parseSegmentName is the inverse of segmentName.
func parseSegmentName(name string) (uint64, bool) {
	base, ok := strings.CutSuffix(name, segmentSuffix)
	if !ok || len(base) != 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(base, 10, 64)
	if err != nil || v == 0 {
		return 0, false
	}
	return v, true
}

// segmentInfo describes one segment file on disk.
type segmentInfo struct {
	first uint64 // lsn of the first record it holds (or would hold)
	size  int64  // bytes, header included
}

// listSegments returns the segments in dir sorted by first lsn. Files that
// do not look like segments are ignored.
func listSegments(dir string) ([]segmentInfo, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: list %q: %w", dir, err)
	}
	var segs []segmentInfo
	for _, e := range ents {
		first, ok := parseSegmentName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("wal: stat segment %q: %w", e.Name(), err)
		}
		segs = append(segs, segmentInfo{first: first, size: fi.Size()})
	}
	slices.SortFunc(segs, func(a, b segmentInfo) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	return segs, nil
}

// createSegment creates a new segment file starting at first, writes and
// syncs its header and syncs the directory. The file is returned open for
// appending.
func createSegment(dir string, first uint64) (*os.File, error) {
	p := filepath.Join(dir, segmentName(first))
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("wal: create segment %q: %w", p, err)
	}
	if _, err := f.Write(appendSegmentHeader(nil, first)); err != nil {
		f.Close()
		return nil, fmt.Errorf("wal: write segment header %q: %w", p, err)
	}
	if err := fdatasync(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("wal: sync segment %q: %w", p, err)
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// syncDir fsyncs a directory so that file creations and removals in it are
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("wal: open dir %q: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("wal: sync dir %q: %w", dir, err)
	}
	return nil
}
