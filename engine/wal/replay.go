package wal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cohortd/cohortd/engine/codec"
)

// Replay calls fn, in lsn order, for every record with lsn >= from, and
// prepares the log for appending after the last good record. It must be
// called exactly once, before Append. The payload passed to fn aliases a read
// buffer and is valid only until fn returns.
//
// # Torn tail
//
// A crash can leave the end of the last segment half written. Replay trims
// the last segment back to its last good record, logs a warning naming the
// file and offset, and continues if what follows that record is
//   - a record cut short (its header, or its declared length, runs past EOF),
//   - a record whose checksum fails and that is followed only by zero bytes
//     (or ends exactly at EOF), or
//   - zero bytes only.
//
// A last segment whose header is cut short (a prefix of the expected header)
// or all zeros is rewritten as an empty segment. Anything else — a bad record in an older segment, a bad
// record in the last segment followed by more data, a declared length over
// MaxRecordSize, an lsn out of sequence, a bad segment header — returns a
// *codec.CorruptError naming the file and byte offset.
//
// Segments whose records all have lsn < from are not read. from must not be
// below the first lsn still on disk (those records were retired) nor above
// the lsn that follows the last record; either returns an error. If the
// directory has no segment, the log starts at from (or 1).
func (l *Log) Replay(from uint64, fn func(typ uint8, lsn uint64, payload []byte) error) error {
	l.mu.Lock()
	switch {
	case l.mu.closed:
		l.mu.Unlock()
		return ErrClosed
	case l.mu.replayed:
		l.mu.Unlock()
		return errors.New("wal: Replay called twice")
	}
	l.mu.Unlock()
	if from == 0 {
		from = 1
	}

	segs, err := listSegments(l.opts.Dir)
	if err != nil {
		return err
	}
	if len(segs) == 0 {
		f, err := createSegment(l.opts.Dir, from)
		if err != nil {
			return err
		}
		segs = []segmentInfo{{first: from, size: segmentHeaderSize}}
		l.active.f, l.active.first, l.active.size = f, from, segmentHeaderSize
		l.finishReplay(segs, from)
		return nil
	}
	if from < segs[0].first {
		return fmt.Errorf("wal: replay from lsn %d, but the oldest segment %s starts at lsn %d: records were retired", from, segmentName(segs[0].first), segs[0].first)
	}

	// Skip the segments that hold only lsns < from.
	start := 0
	for start < len(segs)-1 && segs[start+1].first <= from {
		start++
	}
	next := segs[start].first // the lsn the next record must have
	for i := start; i < len(segs); i++ {
		last := i == len(segs)-1
		if segs[i].first != next {
			return &codec.CorruptError{
				File:   segmentName(segs[i].first),
				Reason: fmt.Sprintf("segment starts at lsn %d, but the previous segment ends at lsn %d", segs[i].first, next-1),
			}
		}
		end, err := l.replaySegment(segs[i].first, last, from, &next, fn)
		if err != nil {
			return err
		}
		segs[i].size = end
	}
	if from > next {
		return fmt.Errorf("wal: replay from lsn %d, but the log ends at lsn %d", from, next-1)
	}

	lastSeg := segs[len(segs)-1]
	p := filepath.Join(l.opts.Dir, segmentName(lastSeg.first))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("wal: open segment %q: %w", p, err)
	}
	l.active.f, l.active.first, l.active.size = f, lastSeg.first, lastSeg.size
	l.finishReplay(segs, next)
	return nil
}

// FirstLSN returns the lsn of the first record of the oldest segment on
// disk (1 if no segment was ever retired), or 0 when the log has no
// segment at all. It reads the directory and may be called before Replay,
// to know how far back the log reaches.
func (l *Log) FirstLSN() (uint64, error) {
	segs, err := listSegments(l.opts.Dir)
	if err != nil || len(segs) == 0 {
		return 0, err
	}
	return segs[0].first, nil
}

// finishReplay publishes the state found by Replay.
func (l *Log) finishReplay(segs []segmentInfo, next uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.segments = segs
	l.mu.nextLSN = next
	l.mu.written = next - 1
	l.mu.synced = next - 1
	l.mu.segFirst = segs[len(segs)-1].first
	l.mu.segBytes = segs[len(segs)-1].size
	l.mu.liveBytes = 0
	for _, s := range segs {
		l.mu.liveBytes += s.size
	}
	l.mu.replayed = true
}

// replaySegment reads one segment, calls fn for its records with lsn >=
// from, advances *next past them and returns the segment's size after any
// trimming. last says whether it is the last segment, where a torn tail is
// trimmed rather than reported.
func (l *Log) replaySegment(first uint64, last bool, from uint64, next *uint64, fn func(uint8, uint64, []byte) error) (int64, error) {
	name := segmentName(first)
	p := filepath.Join(l.opts.Dir, name)
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("wal: read segment %q: %w", p, err)
	}
	end, torn, err := parseSegment(name, data, first, last, from, next, fn)
	if err != nil || torn == nil {
		return end, err
	}
	if torn.header {
		// Crash while creating the segment: rewrite the header.
		l.logger.Warn("wal: rewriting torn segment header", "file", p, "size", len(data))
		if err := rewriteHeader(p, first); err != nil {
			return 0, err
		}
		return segmentHeaderSize, nil
	}
	l.logger.Warn("wal: trimming torn tail", "file", p, "offset", end, "dropped_bytes", int64(len(data))-end, "reason", torn.reason)
	if err := truncateSegment(p, end); err != nil {
		return 0, err
	}
	return end, nil
}

// tornTail is damage at the end of the last segment that a crash explains
// and recovery repairs (see Replay).
type tornTail struct {
	header bool   // the segment header itself is torn: rewrite it
	reason string // what was found past the last good record
}

// parseSegment checks the bytes of one segment without changing anything:
// it calls fn for each record with lsn >= from, advances *next past every
// record, and returns the size of the good prefix. For the last segment a
// torn tail is returned rather than an error; any other damage is a
// *codec.CorruptError.
func parseSegment(name string, data []byte, first uint64, last bool, from uint64, next *uint64, fn func(uint8, uint64, []byte) error) (int64, *tornTail, error) {
	if len(data) < segmentHeaderSize || allZero(data[:segmentHeaderSize]) {
		torn := allZero(data) || bytes.HasPrefix(appendSegmentHeader(nil, first), data)
		if !last || !torn {
			reason := checkSegmentHeader(data, first)
			if reason == "" {
				reason = "bad segment header"
			}
			return 0, nil, &codec.CorruptError{File: name, Offset: 0, Reason: reason}
		}
		return 0, &tornTail{header: true, reason: "segment header cut short"}, nil
	}
	if reason := checkSegmentHeader(data, first); reason != "" {
		return 0, nil, &codec.CorruptError{File: name, Offset: 0, Reason: reason}
	}

	off := segmentHeaderSize
	for off < len(data) {
		rest := data[off:]
		rec, n, st := decodeRecord(rest)
		if st == decodeOK {
			if rec.lsn != *next {
				return 0, nil, &codec.CorruptError{File: name, Offset: int64(off), Reason: fmt.Sprintf("lsn %d out of sequence, expected %d", rec.lsn, *next)}
			}
			if rec.lsn >= from {
				if err := fn(rec.typ, rec.lsn, rec.payload); err != nil {
					return 0, nil, fmt.Errorf("wal: replay lsn %d: %w", rec.lsn, err)
				}
			}
			*next++
			off += n
			continue
		}
		torn := last && (allZero(rest) || st == decodeShort ||
			(st == decodeChecksum && allZero(rest[n:])))
		if !torn {
			return 0, nil, &codec.CorruptError{File: name, Offset: int64(off), Reason: st.String()}
		}
		return int64(off), &tornTail{reason: st.String()}, nil
	}
	return int64(len(data)), nil, nil
}

// truncateSegment cuts the file at p to size bytes and syncs it.
func truncateSegment(p string, size int64) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("wal: open segment %q: %w", p, err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = fdatasync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("wal: trim segment %q to %d bytes: %w", p, size, err)
	}
	return nil
}

// rewriteHeader replaces the contents of the segment at p with an empty
// segment's header, and syncs it.
func rewriteHeader(p string, first uint64) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("wal: open segment %q: %w", p, err)
	}
	_, err = f.Write(appendSegmentHeader(nil, first))
	if err == nil {
		err = fdatasync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("wal: rewrite segment header %q: %w", p, err)
	}
	return nil
}
