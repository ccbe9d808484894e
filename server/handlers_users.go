package server

import (
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// handleUpsertUsers serves POST /v1/users: records are staged as they
// stream in and upserted in one batch.
func (s *Server) handleUpsertUsers(r *request) error {
	rd, release, err := r.decodedBody(s.opts.MaxBody)
	if err != nil {
		return err
	}
	defer release()
	var b engine.UserBatch
	add := func(rec *userRecord) error {
		b.Add(rec.ExternalID, rec.DeviceID, rec.Aliases)
		return nil
	}
	if isNDJSON(r.ctx) {
		err = decodeUsersNDJSON(rd, add)
	} else {
		err = decodeUsersJSON(rd, add)
	}
	if err != nil {
		return err
	}
	res, err := r.ws.UpsertUsers(&b)
	if err != nil {
		return err
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Created    int `json:"created"`
		Identified int `json:"identified"`
		Merged     int `json:"merged"`
		Updated    int `json:"updated"`
		Unchanged  int `json:"unchanged"`
	}{res.Created, res.Identified, res.Merged, res.Updated, res.Unchanged})
}

// handleDeleteUsers serves POST /v1/users/delete.
func (s *Server) handleDeleteUsers(r *request) error {
	rd, release, err := r.decodedBody(s.opts.QueryMaxBody)
	if err != nil {
		return err
	}
	defer release()
	req, err := decodeUsersDelete(rd)
	if err != nil {
		return err
	}
	res, err := r.ws.DeleteUsers(engine.IdentifierSet{ExternalIDs: req.UserIDs, DeviceIDs: req.DeviceIDs, Aliases: req.Aliases})
	if err != nil {
		return err
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Deleted   int `json:"deleted"`
		Unmatched int `json:"unmatched"`
	}{res.Deleted, res.Unmatched})
}

const msgLookup = "lookup needs exactly one of external_id, device_id, or alias_name with alias_label"

type aliasJSON struct {
	Name  string `json:"alias_name"`
	Label string `json:"alias_label"`
}

// handleLookupUser serves GET /v1/users/lookup. A device id finds whoever
// holds it, identified or not (the anonymous-only rule is for import).
func (s *Server) handleLookupUser(r *request) error {
	args := r.ctx.QueryArgs()
	hasExt, hasDev := args.Has("external_id"), args.Has("device_id")
	hasName, hasLabel := args.Has("alias_name"), args.Has("alias_label")
	alias := hasName || hasLabel
	var (
		k   engine.Kind
		key []byte
	)
	check := func(field string) ([]byte, error) {
		v := args.Peek(field)
		if !validID(v) {
			return nil, ruleError(field)
		}
		return v, nil
	}
	var err error
	switch {
	case hasExt && !hasDev && !alias:
		k = engine.KindExternal
		key, err = check("external_id")
	case hasDev && !hasExt && !alias:
		k = engine.KindDevice
		key, err = check("device_id")
	case hasName && hasLabel && !hasExt && !hasDev:
		var n, l []byte
		if n, err = check("alias_name"); err == nil {
			if l, err = check("alias_label"); err == nil {
				k, key = engine.KindAlias, engine.AliasKey(nil, n, l)
			}
		}
	default:
		return errorf(fasthttp.StatusBadRequest, msgLookup)
	}
	if err != nil {
		return err
	}
	id := r.ws.Resolve(k, key)
	if id == engine.NoUser {
		return errorf(fasthttp.StatusNotFound, "user not found")
	}
	info := r.ws.UserInfo(id)
	type userJSON struct {
		ExternalID *string     `json:"external_id"`
		Aliases    []aliasJSON `json:"aliases"`
		DeviceIDs  []string    `json:"device_ids"`
		Anonymous  bool        `json:"anonymous"`
	}
	type cohortRef struct {
		Partner  string `json:"partner"`
		CohortID string `json:"cohort_id"`
		Name     string `json:"name"`
	}
	u := userJSON{Aliases: []aliasJSON{}, DeviceIDs: []string{}, Anonymous: info.Anonymous}
	if info.ExternalID != "" {
		u.ExternalID = &info.ExternalID
	}
	for _, a := range info.Aliases {
		u.Aliases = append(u.Aliases, aliasJSON{a.Name, a.Label})
	}
	u.DeviceIDs = append(u.DeviceIDs, info.DeviceIDs...)
	cohorts := []cohortRef{}
	for _, c := range r.ws.UserCohorts(id) {
		cohorts = append(cohorts, cohortRef{c.Partner, c.CohortID, c.Name})
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		User    userJSON    `json:"user"`
		Cohorts []cohortRef `json:"cohorts"`
	}{u, cohorts})
}
