package server

import (
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/index"
)

// Partner endpoints (docs/API.md §3), wire-compatible with the partner cohort
// import API. Order of checks, as the partner API has it: the body must be
// a JSON object (400), then the credentials (401), then the rate limit
// (429), the Idempotency-Key (422), then the fields (400), then the engine.
//
//	POST /partners/{partner}/cohorts        → 201 {"message":"success"}
//	POST /partners/{partner}/cohorts/users  → 201 {"message":"success","matched":N,"unmatched":N,
//	    "unmatched_by_reason":{"unknown":N,"device_id_identified":N},"added":N,"removed":N,
//	    "dropped_before_floor":N,"data_points":N}

var successReply = []byte(`{"message":"success"}`)

// partnerAuth authenticates a partner body's credentials, applies the
// rate limit of the client secret and the Idempotency-Key protocol.
// replayed means the reply is already written.
func (s *Server) partnerAuth(r *request, partnerKey, secret string, raw []byte) (replayed bool, err error) {
	w, err := r.e.AuthPartner(r.params[0], []byte(partnerKey), []byte(secret))
	if err != nil {
		return false, err
	}
	r.ws = w
	d := digest([]byte(secret))
	if err := s.limits.allow(r.ctx, "cs:"+string(d[:])); err != nil {
		return false, err
	}
	return s.partnerIdempotency(r, "ws:"+w.Scope(), raw)
}

// handlePartnerCohort serves POST /partners/{partner}/cohorts: create or
// rename a cohort (a cheap idempotent upsert: senders call it before
// every batch).
func (s *Server) handlePartnerCohort(r *request) error {
	body, raw, err := r.smallBody(s.opts.PartnerMaxBody)
	if err != nil {
		return err
	}
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	req, err := parsePartnerCohort(p, body)
	if err != nil {
		return err
	}
	if replayed, err := s.partnerAuth(r, req.PartnerAPIKey, req.ClientSecret, raw); replayed || err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	if err := r.ws.UpsertCohort(r.params[0], req.CohortID, req.Name, req.CreatedAt); err != nil {
		return err
	}
	writeRawJSON(r.ctx, fasthttp.StatusCreated, successReply)
	return nil
}

// handlePartnerUsers serves POST /partners/{partner}/cohorts/users: a
// batch of membership changes, applied whole or not at all.
func (s *Server) handlePartnerUsers(r *request) error {
	body, raw, err := r.smallBody(s.opts.PartnerMaxBody)
	if err != nil {
		return err
	}
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	req, err := parsePartnerUsers(p, body, s.opts.PartnerMaxIDs)
	if err != nil {
		return err
	}
	if replayed, err := s.partnerAuth(r, req.PartnerAPIKey, req.ClientSecret, raw); replayed || err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	cs := r.ws.NewChangeSet()
	floor := r.e.RetentionFloor()
	_ = req.eachChange(func(c *changeObject) error {
		stageChange(cs, floor, c)
		return nil
	})
	res, err := r.ws.ApplyChanges(r.params[0], req.CohortID, cs)
	if err != nil {
		return err
	}
	var buf [256]byte // SetBody copies
	writeRawJSON(r.ctx, fasthttp.StatusCreated, appendApplyResult(buf[:0], &res))
	return nil
}

// stageChange stages one change object: dropped whole when it is stamped
// before the retention floor (docs/API.md §2 rule 8), else its identifiers in
// order (adds and removes alike; the last change of a user wins).
func stageChange(cs *engine.ChangeSet, floor time.Time, c *changeObject) {
	if c.HasTime && c.Time.Before(floor) {
		cs.Drop(len(c.UserIDs) + len(c.DeviceIDs) + len(c.Aliases))
		return
	}
	cs.AddMany(index.KindExternal, c.UserIDs, c.Remove)
	cs.AddMany(index.KindDevice, c.DeviceIDs, c.Remove)
	cs.AddMany(index.KindAlias, c.Aliases, c.Remove)
}

// appendApplyResult appends the reply of a change batch (partner and
// /v1 …/changes alike).
func appendApplyResult(dst []byte, res *engine.ApplyResult) []byte {
	dst = append(dst, `{"message":"success","matched":`...)
	dst = strconv.AppendInt(dst, int64(res.Matched), 10)
	dst = append(dst, `,"unmatched":`...)
	dst = strconv.AppendInt(dst, int64(res.Unmatched), 10)
	dst = append(dst, `,"unmatched_by_reason":{"unknown":`...)
	dst = strconv.AppendInt(dst, int64(res.Unknown), 10)
	dst = append(dst, `,"device_id_identified":`...)
	dst = strconv.AppendInt(dst, int64(res.DeviceIdentified), 10)
	dst = append(dst, `},"added":`...)
	dst = strconv.AppendInt(dst, int64(res.Added), 10)
	dst = append(dst, `,"removed":`...)
	dst = strconv.AppendInt(dst, int64(res.Removed), 10)
	dst = append(dst, `,"dropped_before_floor":`...)
	dst = strconv.AppendInt(dst, int64(res.DroppedBeforeFloor), 10)
	dst = append(dst, `,"data_points":`...)
	dst = strconv.AppendInt(dst, int64(res.DataPoints), 10)
	return append(dst, '}')
}
