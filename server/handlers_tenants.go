package server

import (
	"errors"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// Tenant administration (admin token only; docs/API.md §4 "Admin"):
//
//	GET    /v1/workspaces                    → 200 {"workspaces":[{"id","created_at","users","cohorts"}]}
//	DELETE /v1/workspaces/{ws}[?force=true]  → 204; 409 if it holds users or cohorts without force
//	POST   /v1/workspaces/{ws}/api-key       → 201 {"id","api_key"} (the old key fails at once)
//	GET    /v1/partners                      → 200 {"partners":[{"slug","created_at"}]}
//	DELETE /v1/partners/{slug}               → 204 (its import keys fail; cohorts stay)
//	POST   /v1/partners/{slug}/api-key       → 201 {"slug","partner_api_key"}
//	POST   /v1/admin/snapshot                → 201 {"file","bytes","lsn"}
//
// created_at is RFC 3339, or null for a workspace or partner created by a
// version that did not record the time. Unknown workspace or partner: 404.

// nullableTime is t in RFC 3339, or nil for the zero time.
func nullableTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := formatTime(t)
	return &s
}

type workspaceJSON struct {
	ID        string  `json:"id"`
	CreatedAt *string `json:"created_at"`
	Users     int     `json:"users"`
	Cohorts   int     `json:"cohorts"`
}

// handleListWorkspaces serves GET /v1/workspaces.
func (s *Server) handleListWorkspaces(r *request) error {
	out := []workspaceJSON{}
	for _, w := range r.e.ListWorkspaces() {
		out = append(out, workspaceJSON{ID: w.ID, CreatedAt: nullableTime(w.CreatedAt), Users: w.Users, Cohorts: w.Cohorts})
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Workspaces []workspaceJSON `json:"workspaces"`
	}{out})
}

// forceParam reads ?force=true|false (absent: false).
func forceParam(r *request) (bool, error) {
	v := r.ctx.QueryArgs().Peek("force")
	switch string(v) {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	}
	return false, errorf(fasthttp.StatusBadRequest, "force must be true or false")
}

// handleDeleteWorkspace serves DELETE /v1/workspaces/{ws}.
func (s *Server) handleDeleteWorkspace(r *request) error {
	force, err := forceParam(r)
	if err != nil {
		return err
	}
	err = r.e.DeleteWorkspace(r.params[0], force)
	var ne *engine.NotEmptyError
	switch {
	case errors.As(err, &ne):
		return errorf(fasthttp.StatusConflict, "workspace %q holds %d users and %d cohorts; delete it with ?force=true to remove them too", ne.Workspace, ne.Users, ne.Cohorts)
	case errors.Is(err, engine.ErrNotFound):
		return errorf(fasthttp.StatusNotFound, "workspace %q not found", r.params[0])
	case err != nil:
		return err
	}
	r.ctx.SetStatusCode(fasthttp.StatusNoContent)
	return nil
}

// handleRotateWorkspaceKey serves POST /v1/workspaces/{ws}/api-key.
func (s *Server) handleRotateWorkspaceKey(r *request) error {
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	if _, err := s.adminObject(r, p, true); err != nil {
		return err
	}
	key, err := r.e.RotateWorkspaceKey(r.params[0])
	if errors.Is(err, engine.ErrNotFound) {
		return errorf(fasthttp.StatusNotFound, "workspace %q not found", r.params[0])
	}
	if err != nil {
		return err
	}
	return writeJSON(r.ctx, fasthttp.StatusCreated, struct {
		ID     string `json:"id"`
		APIKey string `json:"api_key"`
	}{r.params[0], key})
}

type partnerJSON struct {
	Slug      string  `json:"slug"`
	CreatedAt *string `json:"created_at"`
}

// handleListPartners serves GET /v1/partners.
func (s *Server) handleListPartners(r *request) error {
	out := []partnerJSON{}
	for _, p := range r.e.ListPartners() {
		out = append(out, partnerJSON{Slug: p.Slug, CreatedAt: nullableTime(p.CreatedAt)})
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Partners []partnerJSON `json:"partners"`
	}{out})
}

// handleDeletePartner serves DELETE /v1/partners/{slug}.
func (s *Server) handleDeletePartner(r *request) error {
	err := r.e.DeletePartner(r.params[0])
	if errors.Is(err, engine.ErrNotFound) {
		return errorf(fasthttp.StatusNotFound, "partner %q not found", r.params[0])
	}
	if err != nil {
		return err
	}
	r.ctx.SetStatusCode(fasthttp.StatusNoContent)
	return nil
}

// handleRotatePartnerKey serves POST /v1/partners/{slug}/api-key.
func (s *Server) handleRotatePartnerKey(r *request) error {
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	if _, err := s.adminObject(r, p, true); err != nil {
		return err
	}
	key, err := r.e.RotatePartnerKey(r.params[0])
	if errors.Is(err, engine.ErrNotFound) {
		return errorf(fasthttp.StatusNotFound, "partner %q not found", r.params[0])
	}
	if err != nil {
		return err
	}
	return writeJSON(r.ctx, fasthttp.StatusCreated, struct {
		Slug          string `json:"slug"`
		PartnerAPIKey string `json:"partner_api_key"`
	}{r.params[0], key})
}

// handleAdminSnapshot serves POST /v1/admin/snapshot: a snapshot now, whose
// file is a consistent point to copy for a backup.
func (s *Server) handleAdminSnapshot(r *request) error {
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	if _, err := s.adminObject(r, p, true); err != nil {
		return err
	}
	info, err := r.e.SnapshotNow()
	if errors.Is(err, engine.ErrNoDataDir) {
		return errorf(fasthttp.StatusConflict, "cohortd runs without a data directory: nothing to snapshot")
	}
	if err != nil {
		return err
	}
	return writeJSON(r.ctx, fasthttp.StatusCreated, struct {
		File  string `json:"file"`
		Bytes int64  `json:"bytes"`
		LSN   uint64 `json:"lsn"`
	}{info.File, info.Bytes, info.LSN})
}
