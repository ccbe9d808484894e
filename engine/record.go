package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
)

// Record types of the engine's WAL. Every state change of the engine is one
// of these; replay applies them through the same code as the live path, so a
// record means exactly one thing whether it arrives from a request or from
// the log. The byte layouts are drawn in docs/FORMATS.md.
const (
	recWorkspace    uint8 = 1  // a workspace and its API key digest
	recPartner      uint8 = 2  // a partner slug and its partner_api_key digest
	recImportKey    uint8 = 3  // a data import key (digest) for (workspace, partner)
	recRevokeKey    uint8 = 4  // revocation of a data import key
	recUsers        uint8 = 5  // a batch of user operations (create, attach, detach, merge, delete)
	recCohortUpsert uint8 = 6  // cohort created or renamed
	recCohortDelete uint8 = 7  // cohort deleted
	recMembers      uint8 = 8  // effective membership change: added and removed dense ids
	recSession      uint8 = 9  // a staged webhook page (dense ids) of a snapshot session
	recSessionDrop  uint8 = 10 // a webhook session dropped (expired or superseded)

	// Types 11–19 were added by the hardening work.

	// recCohortUpsertV2 is recCohortUpsert with times as unix seconds and
	// nanoseconds: a UnixNano cannot hold a created_at outside 1678–2262,
	// and a sender's timestamp must read back as sent. Type 6 records are
	// still replayed.
	recCohortUpsertV2 uint8 = 11
	// recIdempotency is the reply to a write that carried an
	// Idempotency-Key (idempotency.go).
	recIdempotency uint8 = 12

	// Types 40–49 are the command records of the replicated log, never
	// written to a WAL (commands.go).
)

// User operations inside a recUsers record.
const (
	opCreate uint8 = 1 // id
	opAttach uint8 = 2 // id, kind, key
	opDetach uint8 = 3 // kind, key
	opMerge  uint8 = 4 // from, into: memberships of from OR-ed into into, from deleted
	opDelete uint8 = 5 // id: every membership cleared, user deleted
)

// errShortRecord is returned by the decoder for a payload that ends early.
var errShortRecord = errors.New("engine: record payload truncated")

// maxRecordString bounds a decoded string so a corrupt length cannot ask for
// gigabytes; identifiers are at most 1,027 bytes (an alias pair) and names
// are bounded by the request size limits.
const maxRecordString = 1 << 24

// recordEncoder builds a record payload. The zero value is ready to use.
type recordEncoder struct {
	b []byte
}

func (e *recordEncoder) reset() { e.b = e.b[:0] }

func (e *recordEncoder) u8(v uint8) { e.b = append(e.b, v) }

func (e *recordEncoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }

func (e *recordEncoder) varint(v int64) { e.b = binary.AppendVarint(e.b, v) }

func (e *recordEncoder) bytes(v []byte) {
	e.uvarint(uint64(len(v)))
	e.b = append(e.b, v...)
}

func (e *recordEncoder) str(v string) {
	e.uvarint(uint64(len(v)))
	e.b = append(e.b, v...)
}

func (e *recordEncoder) digest(d [32]byte) { e.b = append(e.b, d[:]...) }

// time appends t as varint unix seconds and uvarint nanoseconds, which
// hold any time.Time the API accepts (years 0000–9999).
func (e *recordEncoder) time(t time.Time) {
	e.varint(t.Unix())
	e.uvarint(uint64(t.Nanosecond()))
}

// bitmap appends a length-prefixed roaring portable serialization.
func (e *recordEncoder) bitmap(bm *roaring.Bitmap) {
	n := bm.GetSerializedSizeInBytes()
	e.uvarint(n)
	start := len(e.b)
	e.b = append(e.b, make([]byte, n)...)
	w := sliceWriter{b: e.b[start:start]}
	if _, err := bm.WriteTo(&w); err != nil || uint64(len(w.b)) != n {
		panic(fmt.Sprintf("BUG: roaring serialization wrote %d of %d bytes: %v", len(w.b), n, err))
	}
}

// sliceWriter writes into the spare capacity of b without reallocating.
type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// recordDecoder reads a record payload. Every read is bounds-checked: the
// payload may come from a damaged file and the decoder is fuzzed.
type recordDecoder struct {
	b   []byte
	err error
}

func (d *recordDecoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *recordDecoder) u8() uint8 {
	if d.err != nil || len(d.b) < 1 {
		d.fail(errShortRecord)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *recordDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShortRecord)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errShortRecord)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) u32() uint32 {
	v := d.uvarint()
	if v > math.MaxUint32 {
		d.fail(fmt.Errorf("engine: record value %d overflows uint32", v))
		return 0
	}
	return uint32(v)
}

// bytes returns a slice of the payload itself (not a copy).
func (d *recordDecoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > maxRecordString || n > uint64(len(d.b)) {
		d.fail(errShortRecord)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) str() string { return string(d.bytes()) }

// time reads a time written by recordEncoder.time, in UTC.
func (d *recordDecoder) time() time.Time {
	sec, nsec := d.varint(), d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if nsec >= 1e9 {
		d.fail(fmt.Errorf("engine: record time has %d nanoseconds", nsec))
		return time.Time{}
	}
	// Keep times where UnixMilli cannot overflow (health arithmetic uses it).
	if sec > math.MaxInt64/1000-1 || sec < math.MinInt64/1000+1 {
		d.fail(fmt.Errorf("engine: record time %d out of range", sec))
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

func (d *recordDecoder) digest() (out [32]byte) {
	if d.err != nil || len(d.b) < 32 {
		d.fail(errShortRecord)
		return out
	}
	copy(out[:], d.b[:32])
	d.b = d.b[32:]
	return out
}

// bitmap decodes a length-prefixed roaring bitmap into a fresh bitmap (a
// copy: the record buffer is reused by the reader) and validates it.
func (d *recordDecoder) bitmap() *roaring.Bitmap {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errShortRecord)
		return nil
	}
	bm := roaring.New()
	// ReadFrom copies, so the bitmap does not alias the reader's buffer.
	if _, err := bm.ReadFrom(bytes.NewReader(d.b[:n])); err != nil {
		d.fail(fmt.Errorf("engine: record bitmap: %w", err))
		return nil
	}
	if err := bm.Validate(); err != nil {
		d.fail(fmt.Errorf("engine: record bitmap invalid: %w", err))
		return nil
	}
	d.b = d.b[n:]
	return bm
}

func (d *recordDecoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Errorf("engine: %d trailing bytes in record", len(d.b)))
	}
	return d.err
}
