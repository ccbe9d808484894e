package codec

import (
	"fmt"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
)

// benchIDs returns n ids spread over 10n, the shape of a change batch.
func benchIDs(n int) *roaring.Bitmap {
	bm := roaring.New()
	for i := range n {
		bm.Add(uint32(i*10 + i%7))
	}
	return bm
}

// BenchmarkMembersRecord encodes and decodes a payload shaped like a
// members record: three strings, a time and two bitmaps.
func BenchmarkMembersRecord(b *testing.B) {
	added, removed := benchIDs(1000), benchIDs(100)
	at := time.Unix(1_700_000_000, 0)
	var e Encoder
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e.Reset()
			e.Str("workspace")
			e.Str("partner")
			e.Str("cohort-42")
			e.Varint(at.UnixNano())
			e.Bitmap(added)
			e.Bitmap(removed)
		}
		b.SetBytes(int64(e.Len()))
	})
	payload := e.Bytes()
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			d := NewDecoder(payload)
			d.Str()
			d.Str()
			d.Str()
			d.Varint()
			d.Bitmap()
			d.Bitmap()
			if err := d.Done(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkUsersRecord encodes and decodes a payload shaped like a users
// record: per user an op byte, an id and an identifier.
func BenchmarkUsersRecord(b *testing.B) {
	keys := make([][]byte, 1000)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "external-user-%08d", i)
	}
	var e Encoder
	b.Run("ops_1000/encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e.Reset()
			e.Str("workspace")
			for i, k := range keys {
				e.U8(2)
				e.Uvarint(uint64(i) + 1<<20)
				e.U8(1)
				e.Blob(k)
			}
		}
		b.SetBytes(int64(e.Len()))
	})
	payload := e.Bytes()
	b.Run("ops_1000/decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			d := NewDecoder(payload)
			d.Str()
			for d.Len() > 0 {
				d.U8()
				d.U32()
				d.U8()
				d.Blob()
			}
			if err := d.Done(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
