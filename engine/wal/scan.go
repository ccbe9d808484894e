package wal

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/cohortd/cohortd/engine/codec"
)

// ScanReport summarizes a log read by Scan.
type ScanReport struct {
	// Segments is the number of segment files.
	Segments int
	// Bytes is their total size.
	Bytes int64
	// Records is the number of valid records in the segments read: all of
	// them from 1, else from the segment holding Scan's from on (records
	// below from in that segment included).
	Records int
	// FirstLSN is the first lsn the log holds (the oldest segment's name),
	// 0 without segments.
	FirstLSN uint64
	// NextLSN is the lsn the next appended record would get.
	NextLSN uint64
	// Torn is the torn tail of the last segment that Replay would trim (or
	// rewrite, for a torn header), nil if none. It is not corruption: a
	// crash in the middle of a write leaves one.
	Torn *codec.CorruptError
}

// Scan reads the log in dir without changing any file and without taking
// part in any Log: the read-only twin of Replay, for offline checks and
// dumps of a data directory. Like Replay, it skips the segments that hold
// only records below from (recovery never reads them, so damage there does
// not stop it), checks every other segment (headers, checksums, lsn
// sequence, no gap between segments) and calls fn, in lsn order, for every
// record with lsn >= from; the payload is valid only during the call. From
// 1 it checks the whole log. A torn tail of the last segment is reported in
// ScanReport.Torn; any other damage returns a *codec.CorruptError, as Replay
// would. An error from fn stops the scan and is returned wrapped.
//
// Scan reads one whole segment into memory at a time.
func Scan(dir string, from uint64, fn func(typ uint8, lsn uint64, payload []byte) error) (ScanReport, error) {
	var rep ScanReport
	segs, err := listSegments(dir)
	if err != nil {
		return rep, err
	}
	rep.Segments = len(segs)
	if len(segs) == 0 {
		return rep, nil
	}
	rep.FirstLSN = segs[0].first
	for _, sg := range segs {
		rep.Bytes += sg.size
	}
	start := 0 // as in Replay
	for start < len(segs)-1 && segs[start+1].first <= from {
		start++
	}
	next := segs[start].first
	for i := start; i < len(segs); i++ {
		sg := segs[i]
		name := segmentName(sg.first)
		if sg.first != next {
			return rep, &codec.CorruptError{File: name, Reason: fmt.Sprintf("segment starts at lsn %d, but the previous segment ends at lsn %d", sg.first, next-1)}
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return rep, fmt.Errorf("wal: read segment %q: %w", name, err)
		}
		before := next
		end, torn, err := parseSegment(name, data, sg.first, i == len(segs)-1, from, &next, fn)
		rep.Records += int(next - before)
		if err != nil {
			return rep, err
		}
		if torn != nil {
			rep.Torn = &codec.CorruptError{File: name, Offset: end, Reason: torn.reason}
		}
	}
	rep.NextLSN = next
	return rep, nil
}
