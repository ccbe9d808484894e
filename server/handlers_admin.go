package server

import (
	"bytes"
	"errors"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/pprofhandler"
	"github.com/valyala/fastjson"

	"github.com/cohortd/cohortd/engine"
)

// Admin endpoints (admin token only) and the operational endpoints.
//
//	POST   /v1/workspaces {"id"}                                → 201 {"id","api_key"}
//	POST   /v1/partners {"slug"}                                → 201 {"slug","partner_api_key"}
//	POST   /v1/workspaces/{ws}/partners/{partner}/keys (empty or {}) → 201 {"key_id","client_secret"}
//	GET    /v1/workspaces/{ws}/partners/{partner}/keys          → 200 {"keys":[{"key_id","created_at","last_used_at"|null,"revoked"}]}
//	DELETE /v1/workspaces/{ws}/partners/{partner}/keys/{key_id} → 204
//	GET    /livez → 200 {"status":"ok"}; GET /readyz → 200 {"status":"ready"} or 503
//
// Unknown workspace, partner or key: 404. An existing workspace or
// partner: 409. A malformed id or slug: 400.

// handleLivez answers 200 while the process runs.
func (s *Server) handleLivez(r *request) error {
	writeRawJSON(r.ctx, fasthttp.StatusOK, []byte(`{"status":"ok"}`))
	return nil
}

// handleReadyz answers 200 once the engine is set and until shutdown.
func (s *Server) handleReadyz(r *request) error {
	switch {
	case s.closing.Load():
		r.ctx.Response.Header.Set("Retry-After", "1")
		return errorf(fasthttp.StatusServiceUnavailable, "shutting down")
	case s.engine.Load() == nil:
		r.ctx.Response.Header.Set("Retry-After", "1")
		return errorf(fasthttp.StatusServiceUnavailable, "not ready")
	}
	writeRawJSON(r.ctx, fasthttp.StatusOK, []byte(`{"status":"ready"}`))
	return nil
}

// handlePprof serves /debug/pprof/ (admin token).
func (s *Server) handlePprof(r *request) error {
	pprofhandler.PprofHandler(r.ctx)
	return nil
}

// adminObject parses a small admin body that must be a JSON object; an
// empty body is an empty object when allowEmpty.
func (s *Server) adminObject(r *request, p *fastjson.Parser, allowEmpty bool) (*fastjson.Object, error) {
	body, _, err := r.smallBody(s.opts.PartnerMaxBody)
	if err != nil {
		return nil, err
	}
	if allowEmpty && len(bytes.Trim(body, jsonSpace)) == 0 {
		body = []byte("{}")
	}
	return parseJSONObject(p, body)
}

// jsonSpace is JSON's whitespace (RFC 8259), also the spaces trimmed around
// header list items: bytes.TrimSpace would take \v, \f and Unicode spaces
// too.
const jsonSpace = " \t\n\r"

// stringField returns the string field name of o, or a 400.
func stringField(o *fastjson.Object, name string) (string, error) {
	v := o.Get(name)
	if v == nil || v.Type() != fastjson.TypeString {
		return "", errorf(fasthttp.StatusBadRequest, "%s must be a string", name)
	}
	b, _ := v.StringBytes()
	if !validText(b) {
		return "", errorf(fasthttp.StatusBadRequest, "%s must be valid UTF-8 without NUL", name)
	}
	return string(b), nil
}

// handleCreateWorkspace serves POST /v1/workspaces.
func (s *Server) handleCreateWorkspace(r *request) error {
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	o, err := s.adminObject(r, p, false)
	if err != nil {
		return err
	}
	id, err := stringField(o, "id")
	if err != nil {
		return err
	}
	r.posScope = id
	key, err := r.e.CreateWorkspace(id)
	if errors.Is(err, engine.ErrExists) {
		return errorf(fasthttp.StatusConflict, "workspace %q already exists", id)
	}
	if err != nil {
		return err
	}
	return writeJSON(r.ctx, fasthttp.StatusCreated, struct {
		ID     string `json:"id"`
		APIKey string `json:"api_key"`
	}{id, key})
}

// handleCreatePartner serves POST /v1/partners.
func (s *Server) handleCreatePartner(r *request) error {
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	o, err := s.adminObject(r, p, false)
	if err != nil {
		return err
	}
	slug, err := stringField(o, "slug")
	if err != nil {
		return err
	}
	key, err := r.e.CreatePartner(slug)
	if errors.Is(err, engine.ErrExists) {
		return errorf(fasthttp.StatusConflict, "partner %q already exists", slug)
	}
	if err != nil {
		return err
	}
	return writeJSON(r.ctx, fasthttp.StatusCreated, struct {
		Slug          string `json:"slug"`
		PartnerAPIKey string `json:"partner_api_key"`
	}{slug, key})
}

// keyTarget resolves {ws} and {partner} of a keys path, or 404.
func keyTarget(r *request) (*engine.Workspace, string, error) {
	w := r.e.Workspace(r.params[0])
	if w == nil {
		return nil, "", errorf(fasthttp.StatusNotFound, "workspace %q not found", r.params[0])
	}
	partner := r.params[1]
	if !r.e.PartnerExists(partner) {
		return nil, "", errorf(fasthttp.StatusNotFound, "partner %q not found", partner)
	}
	return w, partner, nil
}

// handleCreateKey serves POST /v1/workspaces/{ws}/partners/{partner}/keys.
func (s *Server) handleCreateKey(r *request) error {
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	if _, err := s.adminObject(r, p, true); err != nil {
		return err
	}
	w, partner, err := keyTarget(r)
	if err != nil {
		return err
	}
	keyID, secret, err := w.CreateImportKey(partner)
	if err != nil {
		return err
	}
	return writeJSON(r.ctx, fasthttp.StatusCreated, struct {
		KeyID        string `json:"key_id"`
		ClientSecret string `json:"client_secret"`
	}{keyID, secret})
}

// keyJSON is one entry of the key listing (never the secret).
type keyJSON struct {
	KeyID      string  `json:"key_id"`
	CreatedAt  string  `json:"created_at"`
	LastUsedAt *string `json:"last_used_at"`
	Revoked    bool    `json:"revoked"`
}

// handleListKeys serves GET /v1/workspaces/{ws}/partners/{partner}/keys.
func (s *Server) handleListKeys(r *request) error {
	w, partner, err := keyTarget(r)
	if err != nil {
		return err
	}
	keys := []keyJSON{}
	for _, k := range w.ImportKeys(partner) {
		kj := keyJSON{KeyID: k.KeyID, CreatedAt: formatTime(k.CreatedAt), Revoked: k.Revoked}
		if !k.LastUsedAt.IsZero() {
			t := formatTime(k.LastUsedAt)
			kj.LastUsedAt = &t
		}
		keys = append(keys, kj)
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Keys []keyJSON `json:"keys"`
	}{keys})
}

// handleRevokeKey serves DELETE …/keys/{key_id}: refused from the very
// next request on.
func (s *Server) handleRevokeKey(r *request) error {
	w, partner, err := keyTarget(r)
	if err != nil {
		return err
	}
	if err := w.RevokeImportKey(partner, r.params[2]); err != nil {
		if errors.Is(err, engine.ErrNotFound) {
			return errorf(fasthttp.StatusNotFound, "key %q not found", r.params[2])
		}
		return err
	}
	r.ctx.SetStatusCode(fasthttp.StatusNoContent)
	return nil
}

// formatTime formats t as RFC 3339 in UTC (fractions only when present).
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
