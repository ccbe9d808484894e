package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cohortd/cohortd/engine/codec"
)

func encode(typ uint8, lsn uint64, payload []byte) []byte {
	return appendRecord(nil, typ, lsn, payload, codec.Checksum(payload))
}

func TestRecordLayout(t *testing.T) {
	b := encode(7, 0x0102030405060708, []byte("abc"))
	want := []byte{
		3, 0, 0, 0, // length
		7,                      // type
		8, 7, 6, 5, 4, 3, 2, 1, // lsn
		'a', 'b', 'c', // payload
	}
	if !bytes.Equal(b[:len(want)], want) {
		t.Fatalf("encoded % x, want prefix % x", b, want)
	}
	crc := codec.Checksum(append([]byte("abc"), b[:recordHeaderSize]...))
	if got := binary.LittleEndian.Uint32(b[len(want):]); got != crc {
		t.Fatalf("crc %08x, want %08x", got, crc)
	}
	// The example in docs/FORMATS.md.
	doc := encode(7, 1, []byte("abc"))
	if got := fmt.Sprintf("% x", doc); got != "03 00 00 00 07 01 00 00 00 00 00 00 00 61 62 63 86 d9 72 9f" {
		t.Fatalf("FORMATS.md example encodes as %s", got)
	}
	if len(b) != recordOverhead+3 {
		t.Fatalf("len %d", len(b))
	}
}

func TestDecodeRecord(t *testing.T) {
	good := encode(2, 42, []byte("payload"))
	rec, n, st := decodeRecord(append(bytes.Clone(good), 9, 9, 9))
	if st != decodeOK || n != len(good) || rec.typ != 2 || rec.lsn != 42 || string(rec.payload) != "payload" {
		t.Fatalf("decode good: %+v %d %v", rec, n, st)
	}
	for i := range len(good) {
		if _, _, st := decodeRecord(good[:i]); st != decodeShort {
			t.Errorf("prefix %d: %v, want short", i, st)
		}
	}
	for i := range len(good) {
		b := bytes.Clone(good)
		b[i] ^= 1
		if _, _, st := decodeRecord(b); st == decodeOK {
			t.Errorf("flip byte %d: decoded OK", i)
		}
	}
	huge := bytes.Clone(good)
	binary.LittleEndian.PutUint32(huge, MaxRecordSize+1)
	if _, _, st := decodeRecord(huge); st != decodeTooLarge {
		t.Errorf("huge length: %v", st)
	}
	empty := encode(0, 1, nil)
	if _, n, st := decodeRecord(empty); st != decodeOK || n != recordOverhead {
		t.Errorf("empty payload: %d %v", n, st)
	}
}

func TestSegmentHeader(t *testing.T) {
	h := appendSegmentHeader(nil, 99)
	if len(h) != segmentHeaderSize {
		t.Fatalf("header is %d bytes", len(h))
	}
	if r := checkSegmentHeader(h, 99); r != "" {
		t.Fatal(r)
	}
	if r := checkSegmentHeader(h, 98); r == "" {
		t.Fatal("wrong first lsn accepted")
	}
	h[4] = 2
	if r := checkSegmentHeader(h, 99); r == "" {
		t.Fatal("wrong version accepted")
	}
}

// FuzzDecodeRecord feeds arbitrary bytes to the decoder as a segment body.
// It must never panic, never report a record that extends past the input,
// and re-encoding a decoded record must give back the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encode(1, 1, []byte("hello")))
	f.Add(append(encode(1, 1, nil), encode(2, 2, bytes.Repeat([]byte{0xab}, 300))...))
	f.Add([]byte{})
	f.Add(make([]byte, 40))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		off := 0
		for off < len(b) {
			rec, n, st := decodeRecord(b[off:])
			switch st {
			case decodeOK:
				if n < recordOverhead || n > len(b)-off {
					t.Fatalf("bad size %d at %d (input %d)", n, off, len(b))
				}
				if re := encode(rec.typ, rec.lsn, rec.payload); !bytes.Equal(re, b[off:off+n]) {
					t.Fatalf("re-encode mismatch at %d", off)
				}
				off += n
			case decodeChecksum:
				if n < recordOverhead || n > len(b)-off {
					t.Fatalf("bad size %d at %d (input %d)", n, off, len(b))
				}
				return
			case decodeShort, decodeTooLarge:
				return
			default:
				t.Fatalf("unknown status %v", st)
			}
		}
	})
}

func TestDecodeRecordAllocs(t *testing.T) {
	b := append(encode(1, 1, bytes.Repeat([]byte("x"), 1000)), encode(2, 2, nil)...)
	allocs := testing.AllocsPerRun(100, func() {
		off := 0
		for off < len(b) {
			_, n, st := decodeRecord(b[off:])
			if st != decodeOK {
				panic(st)
			}
			off += n
		}
	})
	if allocs != 0 {
		t.Fatalf("decodeRecord allocates %v times", allocs)
	}
}

// FuzzReplaySegment writes arbitrary bytes after a valid header as the only
// segment and replays it: Replay must either succeed (after trimming a torn
// tail) and leave a log that appends and replays cleanly, or return a
// *codec.CorruptError; it must never panic.
func FuzzReplaySegment(f *testing.F) {
	f.Add(encode(1, 1, []byte("hello")))
	f.Add(append(encode(1, 1, nil), encode(2, 2, []byte("xyz"))[:9]...))
	f.Add(append(encode(1, 1, nil), 0, 0, 0, 0))
	f.Add(encode(1, 2, nil))
	f.Fuzz(func(t *testing.T, body []byte) {
		dir := t.TempDir()
		data := append(appendSegmentHeader(nil, 1), body...)
		if err := os.WriteFile(filepath.Join(dir, segmentName(1)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		opts := Options{Dir: dir, Sync: SyncOff, Logger: quietLogger(), OnFatal: func(err error) { t.Error(err) }}
		got, l, err := replayAll(t, opts, 1)
		if err != nil {
			var ce *codec.CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("Replay = %v, want nil or *codec.CorruptError", err)
			}
			l.Close()
			return
		}
		lsn, err := l.Commit(9, []byte("next"))
		if err != nil || lsn != uint64(len(got))+1 {
			t.Fatalf("Commit = %d, %v after %d records", lsn, err, len(got))
		}
		mustClose(t, l)
		again, l, err := replayAll(t, opts, 1)
		if err != nil || len(again) != len(got)+1 {
			t.Fatalf("second Replay: %d records, %v; want %d", len(again), err, len(got)+1)
		}
		mustClose(t, l)
	})
}
