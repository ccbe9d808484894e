package client

import (
	"bytes"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Encoding is a Content-Encoding of request bodies.
type Encoding string

// The encodings the server decodes (docs/API.md §4, "Bodies").
const (
	EncodingNone Encoding = ""
	EncodingGzip Encoding = "gzip"
	EncodingZstd Encoding = "zstd"
)

// Compressor compresses request bodies with pooled encoders: they are
// costly to create (zstd keeps megabytes of tables), so a program sending
// many bodies reuses them. The zero value is ready; it is safe for
// concurrent use, and an encoder is owned by one goroutine between the
// pool's Get and Put.
//
// Both encoders favour speed (gzip BestSpeed, zstd SpeedFastest): the
// server decodes any level at the same cost, and a sender should not
// become the bottleneck. zstd frames use a 1 MiB window, far below the
// server's 8 MiB cap.
type Compressor struct {
	gzip sync.Pool // *gzip.Writer
	zstd sync.Pool // *zstd.Encoder
}

// Append appends src compressed with enc to dst and returns the extended
// buffer; EncodingNone appends src as is, as does an unknown encoding.
func (c *Compressor) Append(dst, src []byte, enc Encoding) []byte {
	switch enc {
	case EncodingGzip:
		buf := bytes.NewBuffer(dst)
		w, _ := c.gzip.Get().(*gzip.Writer)
		if w == nil {
			w, _ = gzip.NewWriterLevel(buf, gzip.BestSpeed)
		} else {
			w.Reset(buf)
		}
		_, _ = w.Write(src) // writes to a bytes.Buffer cannot fail
		_ = w.Close()
		c.gzip.Put(w)
		return buf.Bytes()
	case EncodingZstd:
		e, _ := c.zstd.Get().(*zstd.Encoder)
		if e == nil {
			var err error
			e, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
				zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20))
			if err != nil {
				panic("BUG: zstd options: " + err.Error())
			}
		}
		dst = e.EncodeAll(src, dst)
		c.zstd.Put(e)
		return dst
	default:
		return append(dst, src...)
	}
}

// Compress returns src compressed with enc, with encoders made for the call:
// for a few bodies; a Compressor reuses them.
func Compress(src []byte, enc Encoding) []byte {
	var c Compressor
	return c.Append(nil, src, enc)
}
