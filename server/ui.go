package server

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"path"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fasthttp"
)

// The built-in page (docs/API.md §8) is plain HTML, CSS and JavaScript
// embedded in the binary: no build step, nothing loaded from elsewhere. It
// talks to the documented /v1 API with the workspace key the user pastes.
//
//go:embed ui
var uiFiles embed.FS

// uiCSP allows the page's own files and calls to its own origin only: no
// inline script or style, no other origin, no framing.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// uiFile is one embedded file with what its replies need, built once.
type uiFile struct {
	body  []byte
	gz    []byte // gzip of body, nil when it does not pay
	ctype string
	etag  string
}

// loadUI reads the embedded files into a map keyed by their path under
// /ui/ ("" is index.html).
func loadUI() map[string]*uiFile {
	out := map[string]*uiFile{}
	err := fs.WalkDir(uiFiles, "ui", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := uiFiles.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		f := &uiFile{body: body, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		f.ctype = mime.TypeByExtension(path.Ext(p))
		switch path.Ext(p) {
		case ".js":
			f.ctype = "text/javascript; charset=utf-8"
		case ".svg":
			f.ctype = "image/svg+xml"
		}
		if f.ctype == "" {
			f.ctype = "application/octet-stream"
		}
		if len(body) > 1024 {
			var b bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
			_, _ = zw.Write(body)
			_ = zw.Close()
			if b.Len() < len(body) {
				f.gz = b.Bytes()
			}
		}
		out[strings.TrimPrefix(p, "ui/")] = f
		return nil
	})
	if err != nil {
		panic("BUG: embedded ui files unreadable: " + err.Error())
	}
	out[""] = out["index.html"]
	return out
}

// handleUIRedirect sends /ui to /ui/, where the page's relative URLs work.
func (s *Server) handleUIRedirect(r *request) error {
	r.ctx.Response.Header.Set("Location", "/ui/")
	r.ctx.Response.Header.Set("Cache-Control", "no-cache")
	r.ctx.SetStatusCode(fasthttp.StatusMovedPermanently)
	return nil
}

// handleUI serves the files of the page with a strict Content-Security-
// Policy. Every reply revalidates (Cache-Control: no-cache) against a
// content ETag, so an upgraded binary is picked up at once and an unchanged
// file costs a 304.
func (s *Server) handleUI(r *request) error {
	ctx := r.ctx
	name := strings.TrimPrefix(string(ctx.Path()), "/ui/")
	f := s.ui[name]
	if f == nil {
		return errorf(fasthttp.StatusNotFound, "no such file of the page: /ui/%s", name)
	}
	hd := &ctx.Response.Header
	hd.Set("Content-Security-Policy", uiCSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", f.etag)
	hd.Set("Vary", "Accept-Encoding")
	if inm := ctx.Request.Header.Peek("If-None-Match"); len(inm) > 0 && etagMatch(inm, f.etag) {
		ctx.SetStatusCode(fasthttp.StatusNotModified)
		return nil
	}
	hd.SetContentType(f.ctype)
	ctx.SetStatusCode(fasthttp.StatusOK)
	if f.gz != nil && ctx.Request.Header.HasAcceptEncoding("gzip") {
		hd.Set("Content-Encoding", "gzip")
		ctx.SetBody(f.gz)
		return nil
	}
	ctx.SetBody(f.body)
	return nil
}

// etagMatch reports whether an If-None-Match header lists etag (or *).
func etagMatch(header []byte, etag string) bool {
	for _, v := range strings.Split(string(header), ",") {
		v = strings.TrimPrefix(strings.TrimSpace(v), "W/")
		if v == etag || v == "*" {
			return true
		}
	}
	return false
}
