package wal

import (
	"encoding/binary"
	"fmt"

	"github.com/cohortd/cohortd/engine/codec"
)

// MaxRecordSize is the largest payload, in bytes, that a record may carry.
// Append refuses larger payloads and the decoder treats a larger declared
// length as corruption, so a damaged length field never makes Replay allocate
// or skip more than this.
const MaxRecordSize = 256<<20 + 1<<20

const (
	// recordHeaderSize is length (4) + type (1) + lsn (8).
	recordHeaderSize = 13
	// recordTrailerSize is the CRC-32C.
	recordTrailerSize = 4
	// recordOverhead is the framing added to every payload.
	recordOverhead = recordHeaderSize + recordTrailerSize

	// segmentHeaderSize is magic (4) + version (1) + reserved (3) + first lsn (8).
	segmentHeaderSize = 16
	segmentVersion    = 1
)

// segmentMagic opens every segment file.
var segmentMagic = [4]byte{'C', 'D', 'W', 'L'}

// appendRecord appends one encoded record to dst. payloadCRC must be
// codec.Checksum(payload); it is passed in so that callers can
// compute it before taking a lock.
func appendRecord(dst []byte, typ uint8, lsn uint64, payload []byte, payloadCRC uint32) []byte {
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, typ)
	dst = binary.LittleEndian.AppendUint64(dst, lsn)
	crc := codec.UpdateChecksum(payloadCRC, dst[start:])
	dst = append(dst, payload...)
	return binary.LittleEndian.AppendUint32(dst, crc)
}

// record is one decoded record. payload aliases the decoder's input.
type record struct {
	typ     uint8
	lsn     uint64
	payload []byte
}

// decodeStatus classifies the outcome of decodeRecord.
type decodeStatus uint8

const (
	decodeOK decodeStatus = iota
	// decodeShort: the input ends before the record does (cut short).
	decodeShort
	// decodeChecksum: the record is complete but its checksum does not match.
	decodeChecksum
	// decodeTooLarge: the declared length exceeds MaxRecordSize.
	decodeTooLarge
)

func (s decodeStatus) String() string {
	switch s {
	case decodeOK:
		return "ok"
	case decodeShort:
		return "record cut short"
	case decodeChecksum:
		return "checksum mismatch"
	case decodeTooLarge:
		return "declared length exceeds MaxRecordSize"
	}
	return fmt.Sprintf("decodeStatus(%d)", uint8(s))
}

// decodeRecord decodes the record at the start of b. It returns the record,
// the number of bytes it occupies (valid for decodeOK and decodeChecksum) and
// a status. It never allocates: the payload aliases b.
func decodeRecord(b []byte) (record, int, decodeStatus) {
	if len(b) < recordHeaderSize {
		return record{}, 0, decodeShort
	}
	n := binary.LittleEndian.Uint32(b[0:4])
	if n > MaxRecordSize {
		return record{}, 0, decodeTooLarge
	}
	total := recordOverhead + int(n)
	if len(b) < total {
		return record{}, 0, decodeShort
	}
	payload := b[recordHeaderSize : recordHeaderSize+int(n)]
	crc := codec.UpdateChecksum(codec.Checksum(payload), b[:recordHeaderSize])
	if crc != binary.LittleEndian.Uint32(b[recordHeaderSize+int(n):total]) {
		return record{}, total, decodeChecksum
	}
	return record{
		typ:     b[4],
		lsn:     binary.LittleEndian.Uint64(b[5:13]),
		payload: payload,
	}, total, decodeOK
}

// appendSegmentHeader appends a segment header for a segment whose first
// record has lsn first.
func appendSegmentHeader(dst []byte, first uint64) []byte {
	dst = append(dst, segmentMagic[:]...)
	dst = append(dst, segmentVersion, 0, 0, 0)
	return binary.LittleEndian.AppendUint64(dst, first)
}

// checkSegmentHeader validates a segment header and returns "" or the reason
// it is bad.
func checkSegmentHeader(b []byte, first uint64) string {
	if len(b) < segmentHeaderSize {
		return "segment header cut short"
	}
	if [4]byte(b[0:4]) != segmentMagic {
		return fmt.Sprintf("bad magic %q", b[0:4])
	}
	if b[4] != segmentVersion {
		return fmt.Sprintf("unsupported segment version %d", b[4])
	}
	if got := binary.LittleEndian.Uint64(b[8:16]); got != first {
		return fmt.Sprintf("header first lsn %d does not match file name (%d)", got, first)
	}
	return ""
}

// allZero reports whether every byte of b is zero.
func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
