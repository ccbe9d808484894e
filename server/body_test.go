package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/cohortd/cohortd/server/client"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
)

func TestWriteError(t *testing.T) {
	cases := []struct {
		err  error
		code int
		body string
	}{
		{errorf(413, "too %s", "big"), 413, `{"message":"too big","errors":[]}`},
		{fmt.Errorf("wrapped: %w", badRequest("bad", "line 2: x")), 400, `{"message":"bad","errors":["line 2: x"]}`},
		{badRequest("quote \"\xff\""), 400, `{"message":"quote \"\ufffd\"","errors":[]}`},
		{errors.New("secret detail"), 500, `{"message":"internal error","errors":[]}`},
	}
	for _, tc := range cases {
		var ctx fasthttp.RequestCtx
		writeError(&ctx, tc.err)
		if ctx.Response.StatusCode() != tc.code || string(ctx.Response.Body()) != tc.body ||
			string(ctx.Response.Header.ContentType()) != "application/json" {
			t.Errorf("%v: %d %s", tc.err, ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
	if got := badRequest("m", "a", "b").Error(); got != `m ["a" "b"]` {
		t.Errorf("Error() = %q", got)
	}
}

// readAllBody decodes raw through decodeBody and reads everything.
func readAllBody(encoding string, raw []byte, limit int64) ([]byte, error) {
	r, release, err := decodeBody([]byte(encoding), bytes.NewReader(raw), limit)
	defer release()
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

func TestParseContentEncoding(t *testing.T) {
	for v, want := range map[string]contentCoding{"": codingIdentity, "identity": codingIdentity, " IDENTITY ": codingIdentity,
		"gzip": codingGzip, "GZip": codingGzip, "\tgzip ": codingGzip, "zstd": codingZstd, "ZSTD": codingZstd} {
		got, err := parseContentEncoding([]byte(v))
		if err != nil || got != want {
			t.Errorf("%q: %v %v", v, got, err)
		}
	}
	for _, v := range []string{"br", "deflate", "gzip, zstd", "x-gzip", "gzip;q=1", "zst d"} {
		_, err := parseContentEncoding([]byte(v))
		wantErr(t, err, 415, `unsupported Content-Encoding "`+v+`"`, "")
	}
}

func TestDecodeBody(t *testing.T) {
	plain := []byte(strings.Repeat(`{"user_ids":["user-00000000000001"]}`+"\n", 1000))
	encoded := map[string][]byte{"": plain, "identity": plain, "gzip": client.Compress(plain, client.EncodingGzip), "zstd": client.Compress(plain, client.EncodingZstd)}
	for enc, raw := range encoded {
		t.Run("enc="+enc, func(t *testing.T) {
			// At the limit: everything; one under: 413.
			got, err := readAllBody(enc, raw, int64(len(plain)))
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("at limit: %d bytes, %v", len(got), err)
			}
			got, err = readAllBody(enc, raw, int64(len(plain))-1)
			wantErr(t, err, 413, "request body too large: decoded size exceeds 36999 bytes", "")
			if len(got) > len(plain)-1 {
				t.Fatalf("returned %d bytes past the limit", len(got))
			}
			// readBody agrees.
			got, err = readBody([]byte(enc), raw, int64(len(plain)), nil)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("readBody: %d bytes, %v", len(got), err)
			}
			_, err = readBody([]byte(enc), raw, int64(len(plain))-1, make([]byte, 0, 10))
			wantErr(t, err, 413, "decoded size exceeds", "")
			// One byte per read changes nothing.
			r, release, err := decodeBody([]byte(enc), iotest.OneByteReader(bytes.NewReader(raw)), 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			got, err = io.ReadAll(r)
			release()
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("one byte reads: %v", err)
			}
		})
	}
}

func TestReadBodyIdentityNoCopy(t *testing.T) {
	raw := []byte(`{"a":1}`)
	got, err := readBody(nil, raw, 7, nil)
	if err != nil || &got[0] != &raw[0] {
		t.Fatalf("identity must return raw itself: %v", err)
	}
	_, err = readBody([]byte("identity"), raw, 6, nil)
	wantErr(t, err, 413, "decoded size exceeds 6 bytes", "")
	_, err = readBody([]byte("br"), raw, 100, nil)
	wantErr(t, err, 415, "unsupported Content-Encoding", "")
}

func TestDecodeBodyBomb(t *testing.T) {
	// 16 MiB of zeros compress to a few KiB; decoding must stop at the limit
	// without producing (or buffering) the rest.
	zeros := make([]byte, 16<<20)
	for _, enc := range []string{"gzip", "zstd"} {
		var raw []byte
		if enc == "gzip" {
			raw = client.Compress(zeros, client.EncodingGzip)
		} else {
			raw = client.Compress(zeros, client.EncodingZstd)
		}
		r, release, err := decodeBody([]byte(enc), bytes.NewReader(raw), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, r)
		release()
		wantErr(t, err, 413, "decoded size exceeds 1048576 bytes", "")
		if n != 1<<20 {
			t.Fatalf("%s: %d bytes came out", enc, n)
		}
	}
}

func TestDecodeBodyCorrupt(t *testing.T) {
	plain := []byte(strings.Repeat("hello world ", 1000))
	gz := client.Compress(plain, client.EncodingGzip)
	zs := client.Compress(plain, client.EncodingZstd)
	cases := []struct {
		enc string
		raw []byte
		msg string
	}{
		{"gzip", []byte("not gzip at all"), "malformed gzip body"},
		{"gzip", nil, "malformed gzip body"},
		{"gzip", gz[:len(gz)/2], "malformed gzip body"},
		{"gzip", append(bytes.Clone(gz[:len(gz)-8]), 0, 0, 0, 0, 0, 0, 0, 0), "malformed gzip body"}, // bad CRC
		{"zstd", []byte("not zstd at all"), "malformed zstd body"},
		{"zstd", zs[:len(zs)/2], "malformed zstd body"},
	}
	for _, tc := range cases {
		_, err := readAllBody(tc.enc, tc.raw, 1<<20)
		wantErr(t, err, 400, tc.msg, "")
	}
	// A read error of the body itself is not "malformed": it passes through.
	boom := errors.New("boom")
	for _, enc := range []string{"", "gzip", "zstd"} {
		raw := map[string][]byte{"": plain, "gzip": gz, "zstd": zs}[enc]
		r, release, err := decodeBody([]byte(enc), &failAfter{data: raw[:len(raw)/2], err: boom}, 1<<20)
		if err == nil {
			_, err = io.ReadAll(r)
		}
		release()
		if !errors.Is(err, boom) {
			t.Fatalf("enc %q: err = %v, want boom", enc, err)
		}
	}
}

func TestDecodeBodyZstdWindow(t *testing.T) {
	// A frame that asks for a window above RFC 9659's 8 MB is refused.
	w, err := zstd.NewWriter(nil, zstd.WithWindowSize(16<<20), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	raw := w.EncodeAll(make([]byte, 9<<20), nil)
	w.Close()
	_, err = readAllBody("zstd", raw, 1<<30)
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != 413 || !strings.Contains(ae.message, "window") {
		t.Fatalf("err = %v", err)
	}
}

// FuzzDecodeBody: random bytes as each coding with a small limit never
// panic, never yield more than limit bytes, and fail only with 400/413.
func FuzzDecodeBody(f *testing.F) {
	plain := []byte(`{"cohort_changes":[{"user_ids":["a","b"]}]}`)
	for enc, raw := range map[uint8][]byte{0: plain, 1: client.Compress(plain, client.EncodingGzip), 2: client.Compress(plain, client.EncodingZstd)} {
		f.Add(raw, enc, uint16(10))
		f.Add(raw, enc, uint16(1000))
	}
	f.Add(client.Compress(make([]byte, 100000), client.EncodingGzip), uint8(1), uint16(500))
	f.Add(client.Compress(make([]byte, 100000), client.EncodingZstd), uint8(2), uint16(500))
	f.Fuzz(func(t *testing.T, raw []byte, enc uint8, limit uint16) {
		encoding := []byte([]string{"", "gzip", "zstd", "identity", "br"}[enc%5])
		for _, oneByte := range []bool{false, true} {
			var src io.Reader = bytes.NewReader(raw)
			if oneByte {
				src = iotest.OneByteReader(src)
			}
			r, release, err := decodeBody(encoding, src, int64(limit))
			if err == nil {
				var out []byte
				out, err = io.ReadAll(r)
				if len(out) > int(limit) {
					t.Fatalf("%d bytes out, limit %d", len(out), limit)
				}
			}
			release()
			if err != nil {
				var ae *apiError
				if !errors.As(err, &ae) || (ae.status != 400 && ae.status != 413 && ae.status != 415) {
					t.Fatalf("err = %v", err)
				}
			}
		}
		out, err := readBody(encoding, raw, int64(limit), nil)
		if err == nil && len(out) > int(limit) {
			t.Fatalf("readBody: %d bytes out, limit %d", len(out), limit)
		}
	})
}
