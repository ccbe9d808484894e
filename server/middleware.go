package server

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// run is the middleware chain of a matched, ready route: Content-Type
// check, auth, rate limit, Idempotency-Key, handler.
func (s *Server) run(r *request) error {
	rt := r.rt
	if rt.body != bodyNone {
		if err := checkContentType(r.ctx, rt.body); err != nil {
			return err
		}
	}
	switch rt.auth {
	case authAdmin:
		if err := s.authAdmin(r); err != nil {
			return err
		}
		if err := s.limits.allow(r.ctx, "admin", ""); err != nil {
			return err
		}
		if rt.write {
			return s.withIdempotency(r, idemScope{e: r.e})
		}
	case authWorkspace:
		if err := s.authWorkspace(r); err != nil {
			return err
		}
		if err := s.limits.allow(r.ctx, "ws:", r.ws.ID()); err != nil {
			return err
		}
		if rt.write {
			return s.withIdempotency(r, idemScope{e: r.e, ws: r.ws})
		}
	}
	// authNone, and authPartner: the handler authenticates from the body
	// and calls partnerIdempotency itself.
	return s.invoke(r)
}

// checkContentType refuses a body media type the route does not read.
// Parameters (charset) are ignored; no Content-Type is JSON.
func checkContentType(ctx *fasthttp.RequestCtx, kind bodyKind) error {
	mt := mediaType(ctx)
	switch {
	case len(mt) == 0, bytes.EqualFold(mt, []byte("application/json")):
		return nil
	case kind == bodyBulk && bytes.EqualFold(mt, []byte("application/x-ndjson")):
		return nil
	}
	return errorf(fasthttp.StatusUnsupportedMediaType, "unsupported Content-Type %q", ctx.Request.Header.ContentType())
}

// mediaType is the media type of the request's Content-Type, without
// parameters (compare it case-insensitively). It aliases the header.
func mediaType(ctx *fasthttp.RequestCtx) []byte {
	ct := ctx.Request.Header.ContentType()
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return bytes.TrimSpace(ct)
}

// isNDJSON reports whether the request body is NDJSON.
func isNDJSON(ctx *fasthttp.RequestCtx) bool {
	return bytes.EqualFold(mediaType(ctx), []byte("application/x-ndjson"))
}
