// Package codec is the binary field encoding that engine's WAL record
// payloads and snapshot sections share, the CRC-32C both file formats are
// checked with, and the error for a file that fails its checks.
//
// # Fields
//
// A payload is a sequence of fields with no framing of its own (the WAL
// record or the snapshot section around it gives its length and checksum):
//
//	uvarint, varint   encoding/binary's variable-length integers
//	blob, string      uvarint length, then the bytes
//	optional blob     uvarint 0 when absent, else length+1, then the bytes
//	digest            32 bytes, as they are
//	time              varint unix seconds, uvarint nanoseconds
//	bitmap            uvarint length, then roaring's portable serialization
//
// docs/FORMATS.md draws the payloads built from them.
//
// # Errors
//
// Decoder methods never panic on bad input: the first failure is kept,
// every later read returns a zero value, and Err or Done returns it — a
// *CorruptError naming the offset (and the file, for a snapshot section),
// or the caller's own error given to FailWith. Callers check once after a
// group of fields.
//
// # Concurrency
//
// An Encoder or Decoder belongs to one goroutine.
package codec

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
)

// castagnoli is the CRC-32C table of every checksum in the WAL and in
// snapshots.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C (Castagnoli) of p.
func Checksum(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// UpdateChecksum returns crc extended by p: UpdateChecksum(Checksum(a), b)
// is Checksum of a followed by b.
func UpdateChecksum(crc uint32, p []byte) uint32 { return crc32.Update(crc, castagnoli, p) }

// CorruptError reports a WAL segment, snapshot or payload that fails its
// checks. Recovery refuses to continue past it; an operator has to look at
// the file.
type CorruptError struct {
	// File is the file's base name; empty for a payload that did not come
	// from a file (a record read from the replicated log).
	File string
	// Offset is the byte offset of the damage in File, or into the payload
	// when File is empty.
	Offset int64
	// Reason says what was wrong, e.g. "checksum mismatch".
	Reason string
}

// Error implements error.
func (e *CorruptError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("corrupt payload at byte %d: %s", e.Offset, e.Reason)
	}
	return fmt.Sprintf("corrupt %s at offset %d: %s", e.File, e.Offset, e.Reason)
}

// MaxBlob bounds a decoded blob or string so that a corrupt length cannot
// ask for gigabytes; identifiers are at most 1,027 bytes (an alias pair)
// and names are bounded by the request size limits.
const MaxBlob = 1 << 24

// Encoder appends fields to a payload. The zero value is ready to use.
type Encoder struct {
	b []byte
}

// Reset empties the payload and keeps its buffer.
func (e *Encoder) Reset() { e.b = e.b[:0] }

// Bytes returns the payload. It is the encoder's buffer: valid until the
// next Reset or write.
func (e *Encoder) Bytes() []byte { return e.b }

// Len returns the payload's length.
func (e *Encoder) Len() int { return len(e.b) }

// Cap returns the capacity of the encoder's buffer.
func (e *Encoder) Cap() int { return cap(e.b) }

// Grow makes room for n more bytes without another allocation.
func (e *Encoder) Grow(n int) { e.b = slices.Grow(e.b, n) }

// U8 appends one byte.
func (e *Encoder) U8(v uint8) { e.b = append(e.b, v) }

// Uvarint appends an unsigned varint.
func (e *Encoder) Uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }

// Varint appends a signed (zig-zag) varint.
func (e *Encoder) Varint(v int64) { e.b = binary.AppendVarint(e.b, v) }

// Raw appends p as it is, without a length: the reader must know its
// length (or, for a run of varints, find it).
func (e *Encoder) Raw(p []byte) { e.b = append(e.b, p...) }

// Blob appends a length-prefixed byte string.
func (e *Encoder) Blob(v []byte) {
	e.Uvarint(uint64(len(v)))
	e.b = append(e.b, v...)
}

// OptBlob appends an optional byte string: 0 for nil, else length+1 and
// the bytes.
func (e *Encoder) OptBlob(v []byte) {
	if v == nil {
		e.Uvarint(0)
		return
	}
	e.Uvarint(uint64(len(v)) + 1)
	e.b = append(e.b, v...)
}

// Str appends a length-prefixed string.
func (e *Encoder) Str(v string) {
	e.Uvarint(uint64(len(v)))
	e.b = append(e.b, v...)
}

// Digest appends a 32-byte digest.
func (e *Encoder) Digest(d [32]byte) { e.b = append(e.b, d[:]...) }

// Time appends t as varint unix seconds and uvarint nanoseconds, which
// hold any time.Time the API accepts (years 0000–9999).
func (e *Encoder) Time(t time.Time) {
	e.Varint(t.Unix())
	e.Uvarint(uint64(t.Nanosecond()))
}

// Bitmap appends a length-prefixed roaring portable serialization.
func (e *Encoder) Bitmap(bm *roaring.Bitmap) {
	n := bm.GetSerializedSizeInBytes()
	e.Uvarint(n)
	start := len(e.b)
	e.b = slices.Grow(e.b, int(n))
	w := appendWriter(e.b)
	if _, err := bm.WriteTo(&w); err != nil || uint64(len(w)-start) != n {
		panic(fmt.Sprintf("BUG: roaring serialization wrote %d of %d bytes: %v", len(w)-start, n, err))
	}
	e.b = w
}

// appendWriter is an io.Writer that appends to a byte slice.
type appendWriter []byte

func (w *appendWriter) Write(p []byte) (int, error) {
	*w = append(*w, p...)
	return len(p), nil
}

// Decoder reads the fields of a payload. Every read is bounds-checked:
// the payload may come from a damaged file, and the decoder is fuzzed.
// Blob and OptBlob return slices of the payload itself, not copies.
type Decoder struct {
	b    []byte // unread input
	n    int    // length of the whole input
	file string // for errors
	base int64  // offset of the input in file
	err  error
}

// NewDecoder returns a decoder over a payload that did not come from a
// file, or whose file the caller names itself; errors give offsets into
// p.
func NewDecoder(p []byte) *Decoder { return &Decoder{b: p, n: len(p)} }

// NewFileDecoder returns a decoder over p, which starts at byte offset off
// of file: errors name the file and the offset in it.
func NewFileDecoder(p []byte, file string, off int64) *Decoder {
	return &Decoder{b: p, n: len(p), file: file, base: off}
}

// Offset returns the offset of the next unread byte, in the file for a
// file decoder.
func (d *Decoder) Offset() int64 { return d.base + int64(d.n-len(d.b)) }

// Fail records a *CorruptError at the current offset unless an error is
// already recorded. Callers use it for values that decode but do not make
// sense.
func (d *Decoder) Fail(reason string) {
	if d.err == nil {
		d.err = &CorruptError{File: d.file, Offset: d.Offset(), Reason: reason}
	}
}

// FailWith records err unless an error is already recorded: a value that
// decodes but that the caller refuses with an error of its own type.
func (d *Decoder) FailWith(err error) {
	if d.err == nil {
		d.err = err
	}
}

// Err returns the first error, or nil.
func (d *Decoder) Err() error { return d.err }

// Len returns the number of unread bytes.
func (d *Decoder) Len() int { return len(d.b) }

// Rest returns the unread bytes without consuming them: a slice of the
// payload.
func (d *Decoder) Rest() []byte { return d.b }

// Done returns the first error, or an error when bytes are left unread.
func (d *Decoder) Done() error {
	if d.err == nil && len(d.b) != 0 {
		d.Fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	return d.err
}

func (d *Decoder) short() { d.Fail("truncated") }

// U8 reads one byte.
func (d *Decoder) U8() uint8 {
	if d.err != nil || len(d.b) < 1 {
		d.short()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.Fail("truncated varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// Varint reads a signed varint: a zig-zag encoded Uvarint, as
// binary.Varint reads it.
func (d *Decoder) Varint() int64 {
	u := d.Uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

// U32 reads an unsigned varint that must fit in 32 bits.
func (d *Decoder) U32() uint32 {
	v := d.Uvarint()
	if v > math.MaxUint32 {
		d.Fail(fmt.Sprintf("value %d overflows uint32", v))
		return 0
	}
	return uint32(v)
}

// Count reads a count of items that take at least one byte each, bounded
// by the bytes left, so that a corrupt count cannot make the caller
// allocate.
func (d *Decoder) Count() int {
	n := d.Uvarint()
	if n > uint64(len(d.b)) {
		d.Fail(fmt.Sprintf("count %d exceeds the %d bytes left", n, len(d.b)))
		return 0
	}
	return int(n)
}

// take consumes n bytes.
func (d *Decoder) take(n uint64) []byte {
	if n > MaxBlob {
		d.Fail(fmt.Sprintf("length %d too large", n))
		return nil
	}
	if n > uint64(len(d.b)) {
		d.short()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// Blob reads a length-prefixed byte string: a slice of the payload.
func (d *Decoder) Blob() []byte {
	n := d.Uvarint()
	if d.err != nil {
		return nil
	}
	return d.take(n)
}

// OptBlob reads what Encoder.OptBlob wrote (nil when absent).
func (d *Decoder) OptBlob() []byte {
	n := d.Uvarint()
	if d.err != nil || n == 0 {
		return nil
	}
	return d.take(n - 1)
}

// Str reads a length-prefixed string.
func (d *Decoder) Str() string { return string(d.Blob()) }

// Digest reads a 32-byte digest.
func (d *Decoder) Digest() (out [32]byte) {
	if d.err != nil || len(d.b) < 32 {
		d.short()
		return out
	}
	copy(out[:], d.b[:32])
	d.b = d.b[32:]
	return out
}

// Time reads a time written by Encoder.Time, in UTC.
func (d *Decoder) Time() time.Time {
	sec, nsec := d.Varint(), d.Uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if nsec >= 1e9 {
		d.Fail(fmt.Sprintf("time has %d nanoseconds", nsec))
		return time.Time{}
	}
	// Keep times where UnixMilli cannot overflow (health arithmetic uses it).
	if sec > math.MaxInt64/1000-1 || sec < math.MinInt64/1000+1 {
		d.Fail(fmt.Sprintf("time %d out of range", sec))
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// Bitmap decodes a length-prefixed roaring bitmap into a fresh bitmap (a
// copy: callers reuse their buffers) and validates it.
func (d *Decoder) Bitmap() *roaring.Bitmap {
	n := d.Uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.short()
		return nil
	}
	bm := roaring.New()
	// ReadFrom copies, so the bitmap does not alias the payload.
	if _, err := bm.ReadFrom(bytes.NewReader(d.b[:n])); err != nil {
		d.Fail("bitmap: " + err.Error())
		return nil
	}
	if err := bm.Validate(); err != nil {
		d.Fail("bitmap invalid: " + err.Error())
		return nil
	}
	d.b = d.b[n:]
	return bm
}
