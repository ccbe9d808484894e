package server

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"

	"github.com/valyala/fasthttp"
)

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

func digest(b []byte) [32]byte { return sha256.Sum256(b) }

// isAdmin compares tok with the admin token in constant time (as digests,
// so the time does not depend on the length either).
func (s *Server) isAdmin(tok []byte) bool {
	if len(tok) == 0 || s.opts.AdminToken == "" {
		return false
	}
	d := digest(tok)
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
