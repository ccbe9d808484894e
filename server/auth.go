package server

import (
	"bytes"
	"crypto/subtle"
	"errors"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
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

// bearer returns the token of an "Authorization: Bearer <token>" header,
// or nil.
func bearer(ctx *fasthttp.RequestCtx) []byte {
	h := bytes.TrimSpace(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization))
	const scheme = "bearer "
	if len(h) <= len(scheme) || !bytes.EqualFold(h[:len(scheme)], []byte(scheme)) {
		return nil
	}
	return bytes.TrimSpace(h[len(scheme):])
}

// isAdmin compares tok with the admin token in constant time (as digests,
// so the time does not depend on the length either).
func (s *Server) isAdmin(tok []byte) bool {
	if len(tok) == 0 || s.opts.AdminToken == "" {
		return false
	}
	d := engine.SecretDigest(tok)
	return subtle.ConstantTimeCompare(d[:], s.adminD[:]) == 1
}

var (
	errNoToken = errorf(fasthttp.StatusUnauthorized, "missing or malformed Authorization header: want Bearer <token>")
)

// authAdmin admits the admin token only: a workspace key is valid but has
// no right here (403); anything else is 401.
func (s *Server) authAdmin(r *request) error {
	tok := bearer(r.ctx)
	if tok == nil {
		return errNoToken
	}
	if s.isAdmin(tok) {
		return nil
	}
	if r.e != nil && r.e.WorkspaceByAPIKey(tok) != nil {
		return errorf(fasthttp.StatusForbidden, "admin token required: a workspace API key cannot use admin endpoints")
	}
	return errorf(fasthttp.StatusUnauthorized, "invalid token")
}

// authWorkspace admits a workspace API key, which selects the workspace.
// The admin token is valid but has no right on workspace data (403): it
// selects no workspace, and nothing in a path or body may choose one.
func (s *Server) authWorkspace(r *request) error {
	tok := bearer(r.ctx)
	if tok == nil {
		return errNoToken
	}
	if w := r.e.WorkspaceByAPIKey(tok); w != nil {
		r.ws = w
		return nil
	}
	if s.isAdmin(tok) {
		return errorf(fasthttp.StatusForbidden, "workspace API key required: the admin token cannot use workspace endpoints")
	}
	return errorf(fasthttp.StatusUnauthorized, "invalid API key")
}

// mapError turns engine errors into API errors (docs/API.md §5). Other errors
// pass through unchanged (an apiError, or a 500 for fail to log).
func mapError(err error) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	var inv *engine.InvalidError
	var pne *engine.PartnerNotEnabledError
	switch {
	case errors.As(err, &inv):
		return errorf(fasthttp.StatusBadRequest, "%s", inv.Message)
	case errors.As(err, &pne):
		return errorf(fasthttp.StatusUnauthorized, "Partner not enabled for client with client secret: %s...", pne.Prefix)
	case errors.Is(err, engine.ErrBadPartnerKey):
		return errorf(fasthttp.StatusUnauthorized, "Invalid Partner API key")
	case errors.Is(err, engine.ErrBadClientSecret):
		return errorf(fasthttp.StatusUnauthorized, "Invalid client secret")
	case errors.Is(err, engine.ErrNotFound):
		return errorf(fasthttp.StatusNotFound, "not found")
	case errors.Is(err, engine.ErrExists):
		return errorf(fasthttp.StatusConflict, "already exists")
	case errors.Is(err, engine.ErrCapacity):
		return errorf(fasthttp.StatusInsufficientStorage, "the workspace's identity tables are full (8 GiB of identifier bytes, or 4 billion users): delete users or split the workspace")
	case errors.Is(err, engine.ErrClosed):
		return errorf(fasthttp.StatusServiceUnavailable, "shutting down")
	case errors.Is(err, engine.ErrRecordTooLarge):
		return errorf(fasthttp.StatusRequestEntityTooLarge, "the request does not fit in one record of the replicated log (-kafka-max-record): send it in smaller requests")
	case errors.Is(err, engine.ErrUnavailable):
		// The outcome is unknown: the record may still be applied. A retry
		// with the same Idempotency-Key is safe (docs/API.md §7).
		return errorf(fasthttp.StatusServiceUnavailable, "the replicated log is unavailable; the write may or may not be applied: retry, with the same Idempotency-Key to be safe")
	case errors.Is(err, engine.ErrPositionTimeout):
		return errorf(fasthttp.StatusServiceUnavailable, "this node is behind the log; retry")
	case errors.Is(err, engine.ErrUsersChanged):
		return errorf(fasthttp.StatusServiceUnavailable, "users changed while the request was being resolved (nothing was applied): send it again")
	}
	return err
}
