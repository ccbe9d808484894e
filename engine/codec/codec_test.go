package codec

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
)

// TestBytes pins the encoding: WAL records and snapshots written by any
// earlier release must read the same, so these bytes never change.
func TestBytes(t *testing.T) {
	var e Encoder
	e.U8(7)
	e.Uvarint(300)
	e.Varint(-3)
	e.Str("ab")
	e.Blob([]byte{1, 2})
	e.OptBlob(nil)
	e.OptBlob([]byte{})
	e.OptBlob([]byte{9})
	e.Digest([32]byte{31: 0xff})
	e.Time(time.Unix(-1, 5))
	e.Bitmap(roaring.BitmapOf(1, 2))
	e.Raw([]byte{0xaa})
	want := "07" + "ac02" + "05" + "026162" + "020102" + "00" + "01" + "0209" +
		"00000000000000000000000000000000000000000000000000000000000000ff" +
		"01" + "05" +
		"14" + "3a30000001000000000001001000000001000200" + "aa"
	if got := hex.EncodeToString(e.Bytes()); got != want {
		t.Fatalf("encoding changed:\n got %s\nwant %s", got, want)
	}
}

func TestRoundTrip(t *testing.T) {
	bm := roaring.BitmapOf(1, 5, 1<<20, 1<<31)
	at := time.Date(2026, 12, 3, 4, 5, 6, 7, time.UTC)
	var e Encoder
	e.U8(200)
	e.Uvarint(1 << 63)
	e.Varint(-1 << 62)
	e.Uvarint(1 << 31)
	e.Str("cohort")
	e.Blob([]byte("key"))
	e.OptBlob(nil)
	e.OptBlob([]byte("x"))
	e.Digest([32]byte{1, 2, 3})
	e.Time(at)
	e.Bitmap(bm)
	e.Uvarint(2)
	e.U8(1)
	e.U8(2)

	d := NewDecoder(e.Bytes())
	if v := d.U8(); v != 200 {
		t.Fatalf("U8 = %d", v)
	}
	if v := d.Uvarint(); v != 1<<63 {
		t.Fatalf("Uvarint = %d", v)
	}
	if v := d.Varint(); v != -1<<62 {
		t.Fatalf("Varint = %d", v)
	}
	if v := d.U32(); v != 1<<31 {
		t.Fatalf("U32 = %d", v)
	}
	if v := d.Str(); v != "cohort" {
		t.Fatalf("Str = %q", v)
	}
	if v := d.Blob(); string(v) != "key" {
		t.Fatalf("Blob = %q", v)
	}
	if v := d.OptBlob(); v != nil {
		t.Fatalf("OptBlob = %q, want nil", v)
	}
	if v := d.OptBlob(); string(v) != "x" {
		t.Fatalf("OptBlob = %q", v)
	}
	if v := d.Digest(); v != [32]byte{1, 2, 3} {
		t.Fatalf("Digest = %x", v)
	}
	if v := d.Time(); !v.Equal(at) || v.Location() != time.UTC {
		t.Fatalf("Time = %v", v)
	}
	if v := d.Bitmap(); v == nil || !v.Equals(bm) {
		t.Fatalf("Bitmap = %v", v)
	}
	if n := d.Count(); n != 2 {
		t.Fatalf("Count = %d", n)
	}
	d.U8()
	if d.Len() != 1 || !bytes.Equal(d.Rest(), []byte{2}) {
		t.Fatalf("Len %d, Rest %x", d.Len(), d.Rest())
	}
	if err := d.Done(); err == nil {
		t.Fatal("Done accepted a trailing byte")
	}
}

func TestTime(t *testing.T) {
	for _, tm := range []time.Time{{}, time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), time.Date(2026, 1, 2, 3, 4, 5, 999999999, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC)} {
		var e Encoder
		e.Time(tm)
		d := NewDecoder(e.Bytes())
		got := d.Time()
		if err := d.Done(); err != nil || !got.Equal(tm) || got.IsZero() != tm.IsZero() {
			t.Fatalf("%v → %v, %v", tm, got, err)
		}
	}
	d := NewDecoder([]byte{0, 0x80, 0x94, 0xeb, 0xdc, 0x03}) // 0 s, 1e9 ns
	if d.Time(); d.Err() == nil {
		t.Fatal("nanoseconds ≥ 1e9 accepted")
	}
}

// TestErrors checks that a damaged payload gives a *CorruptError at the
// offset where reading stopped, in the file for a file decoder, and that
// the first error sticks.
func TestErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		read func(d *Decoder)
		off  int64
	}{
		{"empty u8", nil, func(d *Decoder) { d.U8() }, 0},
		{"cut varint", []byte{0x80}, func(d *Decoder) { d.Uvarint() }, 0},
		{"blob past end", []byte{1, 5, 'a'}, func(d *Decoder) { d.U8(); d.Blob() }, 2},
		{"blob too large", []byte{0x80, 0x80, 0x80, 0x10}, func(d *Decoder) { d.Blob() }, 4},
		{"digest short", make([]byte, 31), func(d *Decoder) { d.Digest() }, 0},
		{"count past end", []byte{3, 0}, func(d *Decoder) { d.Count() }, 1},
		{"u32 overflow", []byte{0x80, 0x80, 0x80, 0x80, 0x10}, func(d *Decoder) { d.U32() }, 5},
		{"bad bitmap", []byte{2, 0xff, 0xff}, func(d *Decoder) { d.Bitmap() }, 1},
		{"trailing", []byte{1, 2}, func(d *Decoder) { d.U8(); d.Done() }, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := NewFileDecoder(c.in, "x.snap", 100)
			c.read(d)
			var ce *CorruptError
			if !errors.As(d.Err(), &ce) || ce.File != "x.snap" || ce.Offset != 100+c.off {
				t.Fatalf("err = %v, want a *CorruptError in x.snap at offset %d", d.Err(), 100+c.off)
			}
			first := d.Err()
			if d.Uvarint() != 0 || d.Str() != "" || d.Bitmap() != nil || d.Err() != first {
				t.Fatal("reads after an error must return zero values and keep the first error")
			}
		})
	}
}

func TestCorruptErrorMessage(t *testing.T) {
	for _, c := range []struct {
		e    CorruptError
		want string
	}{
		{CorruptError{File: "00000000000000000001.wal", Offset: 123, Reason: "checksum mismatch"}, "corrupt 00000000000000000001.wal at offset 123: checksum mismatch"},
		{CorruptError{Offset: 4, Reason: "truncated"}, "corrupt payload at byte 4: truncated"},
	} {
		if got := c.e.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
	}
}

func TestChecksum(t *testing.T) {
	// The CRC-32C check value of "123456789" (RFC 3720, appendix B.4).
	if got := Checksum([]byte("123456789")); got != 0xe3069283 {
		t.Fatalf("Checksum = %#x", got)
	}
	if got := UpdateChecksum(Checksum([]byte("1234")), []byte("56789")); got != 0xe3069283 {
		t.Fatalf("UpdateChecksum = %#x", got)
	}
}

// FuzzDecoder reads arbitrary input as a sequence of fields chosen by ops:
// it must never panic, never hand out more bytes than it was given, and
// fail only with a *CorruptError inside the input; what it reads must
// encode again.
func FuzzDecoder(f *testing.F) {
	var e Encoder
	e.Str("ws")
	e.Uvarint(3)
	e.Bitmap(roaring.BitmapOf(1, 2, 3))
	e.Time(time.Unix(1700000000, 1))
	f.Add(e.Bytes(), []byte{4, 1, 8, 7})
	f.Add([]byte{0x80}, []byte{1})
	f.Fuzz(func(t *testing.T, in, ops []byte) {
		d := NewDecoder(in)
		var out Encoder
		for _, op := range ops {
			switch op % 10 {
			case 0:
				out.U8(d.U8())
			case 1:
				out.Uvarint(d.Uvarint())
			case 2:
				out.Varint(d.Varint())
			case 3:
				out.Blob(d.Blob())
			case 4:
				out.Str(d.Str())
			case 5:
				v := d.OptBlob()
				if d.Err() == nil {
					out.OptBlob(v)
				}
			case 6:
				out.Digest(d.Digest())
			case 7:
				out.Time(d.Time())
			case 8:
				if bm := d.Bitmap(); bm != nil {
					out.Bitmap(bm)
				}
			case 9:
				out.Uvarint(uint64(d.Count()))
			}
			if d.Len() > len(in) {
				t.Fatalf("Len %d of a %d-byte input", d.Len(), len(in))
			}
		}
		if d.Err() != nil {
			var ce *CorruptError
			if !errors.As(d.Err(), &ce) || ce.Offset < 0 || ce.Offset > int64(len(in)) {
				t.Fatalf("error %v: want a *CorruptError inside the input", d.Err())
			}
		}
	})
}
