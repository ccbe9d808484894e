package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
)

// Content codings accepted on request bodies (docs/API.md §3, §4).
type contentCoding uint8

const (
	codingIdentity contentCoding = iota
	codingGzip
	codingZstd
)

func (c contentCoding) String() string {
	switch c {
	case codingGzip:
		return "gzip"
	case codingZstd:
		return "zstd"
	}
	return "identity"
}

// parseContentEncoding maps a Content-Encoding header value to a coding:
// "", "identity", "gzip" or "zstd", case-insensitive, surrounding spaces
// allowed. Anything else (including lists such as "gzip, zstd") is a 415.
func parseContentEncoding(v []byte) (contentCoding, error) {
	t := bytes.Trim(v, " \t")
	switch {
	case len(t) == 0, bytes.EqualFold(t, []byte("identity")):
		return codingIdentity, nil
	case bytes.EqualFold(t, []byte("gzip")):
		return codingGzip, nil
	case bytes.EqualFold(t, []byte("zstd")):
		return codingZstd, nil
	}
	return 0, errorf(fasthttp.StatusUnsupportedMediaType, "unsupported Content-Encoding %q", v)
}

// zstdMaxWindow bounds the memory one zstd stream may use for its window.
// RFC 9659 (zstd in HTTP) caps the window at 8 MB for exactly this reason:
// encoders must not need more, so a larger window is refused, not allocated.
const zstdMaxWindow = 8 << 20

var (
	gzipPool sync.Pool // *gzip.Reader
	zstdPool sync.Pool // *zstd.Decoder
	srcPool  = sync.Pool{New: func() any { return new(srcReader) }}
)

func getZstd() (*zstd.Decoder, error) {
	if d, ok := zstdPool.Get().(*zstd.Decoder); ok {
		return d, nil
	}
	// Concurrency 1 decodes synchronously in the caller's goroutine: no
	// background goroutines per pooled decoder, nothing to Close.
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(zstdMaxWindow),
		zstd.WithDecoderMaxWindow(zstdMaxWindow))
}

// srcReader wraps the raw (encoded) body. It remembers the body's own read
// error so that a failing transport is not reported as a corrupt stream, and
// it hides the concrete type of the body from the zstd decoder, which would
// otherwise decode a *bytes.Buffer whole in one go without our limit.
type srcReader struct {
	r   io.Reader
	err error
}

func (s *srcReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// limitedReader yields at most limit bytes of r; if r has more, it fails with
// the 413 apiError. Errors of the decoder are classified by classify.
type limitedReader struct {
	r      io.Reader
	left   int64 // bytes that may still come out
	limit  int64
	coding contentCoding
	src    *srcReader
	err    error // sticky
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	// Ask for one byte more than allowed so that "exactly at the limit" and
	// "past the limit" can be told apart without reading further.
	if int64(len(p))-1 > l.left {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	if int64(n) > l.left {
		n = int(l.left)
		l.left = 0
		l.err = tooLarge(l.limit)
		return n, l.err
	}
	l.left -= int64(n)
	if err != nil {
		if err != io.EOF {
			err = l.classify(err)
		}
		l.err = err
	}
	return n, err
}

// classify turns a decoder error into the reply it deserves: the body's own
// read errors and apiErrors pass through, everything else is a corrupt stream.
func (l *limitedReader) classify(err error) error {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		return err
	case l.src != nil && l.src.err != nil && errors.Is(err, l.src.err):
		return err
	case l.coding == codingIdentity:
		return err
	case errors.Is(err, zstd.ErrWindowSizeExceeded), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return errorf(fasthttp.StatusRequestEntityTooLarge,
			"request body too large: zstd window exceeds %d bytes", zstdMaxWindow)
	}
	return malformed(l.coding, err)
}

func tooLarge(limit int64) *apiError {
	return errorf(fasthttp.StatusRequestEntityTooLarge,
		"request body too large: decoded size exceeds %d bytes", limit)
}

func malformed(c contentCoding, err error) *apiError {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return errorf(fasthttp.StatusBadRequest, "malformed %s body: %v", c, err)
}

// decodeBody returns a reader of the decoded bytes of body, which is encoded
// per the Content-Encoding value encoding. The size limit is enforced while
// decoding: once more than limit bytes would come out, the reader fails with
// a 413 apiError, having held at most about limit bytes (in practice one
// read buffer) in memory. A corrupt stream fails with a 400 apiError.
//
// The caller must call release exactly once when done with r (also after an
// error from r); r must not be used after that. release returns the pooled
// decoder and drops its reference to body. body must stay valid until then.
func decodeBody(encoding []byte, body io.Reader, limit int64) (r io.Reader, release func(), err error) {
	return decodeBodyInto(new(limitedReader), encoding, body, limit)
}

// noRelease is the release of an identity body (a static func value).
func noRelease() {}

// decodeBodyInto is decodeBody with the limiting reader supplied by the
// caller (a request keeps one, so that an identity body costs nothing).
func decodeBodyInto(l *limitedReader, encoding []byte, body io.Reader, limit int64) (r io.Reader, release func(), err error) {
	coding, err := parseContentEncoding(encoding)
	if err != nil {
		return nil, noRelease, err
	}
	if limit < 0 {
		limit = 0
	}
	*l = limitedReader{left: limit, limit: limit, coding: coding}
	switch coding {
	case codingIdentity:
		l.r = body
		return l, noRelease, nil
	case codingGzip:
		src := srcPool.Get().(*srcReader)
		*src = srcReader{r: body}
		zr, _ := gzipPool.Get().(*gzip.Reader)
		if zr == nil {
			zr = new(gzip.Reader)
		}
		release := func() {
			*src = srcReader{}
			srcPool.Put(src)
			gzipPool.Put(zr)
		}
		// Reset reads the gzip header, so a body that is not gzip fails here.
		if err := zr.Reset(src); err != nil {
			l.src = src
			err = l.classify(err)
			release()
			return nil, func() {}, err
		}
		l.r, l.src = zr, src
		return l, release, nil
	default: // codingZstd
		zd, err := getZstd()
		if err != nil {
			return nil, func() {}, fmt.Errorf("new zstd decoder: %w", err)
		}
		src := srcPool.Get().(*srcReader)
		*src = srcReader{r: body}
		release := func() {
			_ = zd.Reset(nil) // drops the reference to src and body
			*src = srcReader{}
			srcPool.Put(src)
			zstdPool.Put(zd)
		}
		if err := zd.Reset(src); err != nil {
			l.src = src
			err = l.classify(err)
			release()
			return nil, func() {}, err
		}
		l.r, l.src = zd, src
		return l, release, nil
	}
}

// readBody decodes raw, the whole request body encoded per the
// Content-Encoding value encoding, for small bodies (partner endpoints):
// the decoded bytes are appended to dst[:0], at most limit of them, else a
// 413 apiError. Fast path: for identity it returns raw itself (no copy)
// when len(raw) <= limit. The result aliases raw or dst, so it is valid as
// long as both are; raw is not retained after return. A caller that pools
// dst should not put back one that a large body grew past ~1 MiB.
func readBody(encoding []byte, raw []byte, limit int64, dst []byte) ([]byte, error) {
	coding, err := parseContentEncoding(encoding)
	if err != nil {
		return nil, err
	}
	if coding == codingIdentity {
		if int64(len(raw)) > limit {
			return nil, tooLarge(limit)
		}
		return raw, nil
	}
	br := bytesReaderPool.Get().(*bytes.Reader)
	br.Reset(raw)
	defer func() {
		br.Reset(nil)
		bytesReaderPool.Put(br)
	}()
	r, release, err := decodeBody(encoding, br, limit)
	if err != nil {
		return nil, err
	}
	defer release()
	dst = dst[:0]
	for {
		if len(dst) == cap(dst) {
			// Grow geometrically, but never past what limit allows (+1 so the
			// limit check can see one byte too many).
			n := max(2*cap(dst), 4096)
			if int64(n) > limit+1 {
				n = int(limit + 1)
			}
			if n <= cap(dst) {
				n = cap(dst) + 1
			}
			dst = append(dst[:cap(dst)], make([]byte, n-cap(dst))...)[:len(dst)]
		}
		n, err := r.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

var bytesReaderPool = sync.Pool{New: func() any { return new(bytes.Reader) }}
