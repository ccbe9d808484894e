package server

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
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
func (s *Server) partnerAuth(r *request, partnerKey, secret []byte, raw []byte) (replayed bool, err error) {
	w, err := r.e.AuthPartner(r.params[0], partnerKey, secret)
	if err != nil {
		return false, err
	}
	r.ws = w
	d := digest(secret)
	if err := s.limits.allow(r.ctx, "cs:", string(d[:])); err != nil {
		return false, err
	}
	return s.partnerIdempotency(r, idemScope{e: r.e, ws: w}, raw)
}

// partnerSlot takes one of the Options.PartnerMaxInflight slots for a
// partner or webhook body, or answers 503 with Retry-After when all are
// taken: bodies are read and decoded before they can be authenticated, so
// their number in flight bounds what unauthenticated senders can make the
// server hold. (503, not 429: the limit is the server's, not the sender's,
// and every partner sender and Mixpanel retry both.)
func (s *Server) partnerSlot(r *request) (release func(), err error) {
	select {
	case s.partnerSlots <- struct{}{}:
		return s.releasePartnerSlot, nil
	default:
		r.ctx.Response.Header.Set("Retry-After", "1")
		return nil, errorf(fasthttp.StatusServiceUnavailable, "too many partner requests in flight: retry shortly")
	}
}

func (s *Server) releasePartnerSlot() { <-s.partnerSlots }

// partnerMaxValues caps the JSON values of a partner body before any tree
// is built: far above what partner-max-ids identifiers need (a change
// object per identifier with every field is 7 values each), so that an
// over-cap request still gets its 400, far below what a hostile 8 MiB body
// of [0,0,…] holds (4M values).
func (s *Server) partnerMaxValues() int { return 64*s.opts.PartnerMaxIDs + 1024 }

// partnerBody reads, authenticates and size-checks a partner body: the
// credentials are pulled out with the scanner (scanPartnerCreds), so that
// nothing is parsed before they are checked. replayed means the reply is
// already written.
func (s *Server) partnerBody(r *request) (body []byte, replayed bool, err error) {
	body, raw, err := r.smallBody(s.opts.PartnerMaxBody)
	if err != nil {
		return nil, false, err
	}
	creds := credsPool.Get().(*partnerCreds)
	defer credsPool.Put(creds)
	if err := scanPartnerCreds(body, s.partnerMaxValues(), creds); err != nil {
		return nil, false, err
	}
	replayed, err = s.partnerAuth(r, creds.PartnerAPIKey, creds.ClientSecret, raw)
	return body, replayed, err
}

var credsPool = sync.Pool{New: func() any { return new(partnerCreds) }}

// handlePartnerCohort serves POST /partners/{partner}/cohorts: create or
// rename a cohort (a cheap idempotent upsert: senders call it before
// every batch).
func (s *Server) handlePartnerCohort(r *request) error {
	release, err := s.partnerSlot(r)
	if err != nil {
		return err
	}
	defer release()
	body, replayed, err := s.partnerBody(r)
	if replayed || err != nil {
		return err
	}
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	req, err := parsePartnerCohort(p, body)
	if err != nil {
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
	release, err := s.partnerSlot(r)
	if err != nil {
		return err
	}
	defer release()
	body, raw, err := r.smallBody(s.opts.PartnerMaxBody)
	if err != nil {
		return err
	}
	// One scan, no tree: the credentials are checked before anything else
	// is looked at (parsePartnerUsers).
	req, err := parsePartnerUsers(body, s.opts.PartnerMaxIDs, s.partnerMaxValues())
	if err != nil {
		return err
	}
	defer req.release()
	if replayed, err := s.partnerAuth(r, []byte(req.PartnerAPIKey), []byte(req.ClientSecret), raw); replayed || err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	floor := r.e.RetentionFloor()
	res, err := applyStaged(r.ws, r.params[0], req.CohortID, func(cs *engine.ChangeSet) {
		cs.SetSource(engine.SourcePartner)
		_ = req.eachChange(func(c *changeObject) error {
			stageChange(cs, floor, c)
			return nil
		})
	})
	if err != nil {
		return err
	}
	var buf [256]byte // SetBody copies
	writeRawJSON(r.ctx, fasthttp.StatusCreated, appendApplyResult(buf[:0], &res))
	return nil
}

// stageAttempts is how often a body held in memory is staged before the
// last attempt keeps user changes out (engine.Workspace.HoldUsers).
const stageAttempts = 3

// applyStaged stages a batch with stage and applies it; when a concurrent
// user change made it stale (engine.ErrUsersChanged) it stages it again,
// the last time with user changes held off, so the answer is always one a
// serial order gives. For bodies in memory only: stage runs up to
// stageAttempts times.
func applyStaged(w *engine.Workspace, partner, cohortID string, stage func(cs *engine.ChangeSet)) (engine.ApplyResult, error) {
	for attempt := 1; ; attempt++ {
		var release func()
		if attempt == stageAttempts {
			release = w.HoldUsers()
		}
		cs := w.NewChangeSet()
		stage(cs)
		res, err := w.ApplyChanges(partner, cohortID, cs)
		if release != nil {
			release()
		}
		if !errors.Is(err, engine.ErrUsersChanged) || attempt == stageAttempts {
			return res, err
		}
	}
}

// stageChange stages one change object: dropped whole when it is stamped
// before the retention floor (docs/API.md §2 rule 8), else its identifiers in
// order (adds and removes alike; the last change of a user wins).
func stageChange(cs *engine.ChangeSet, floor time.Time, c *changeObject) {
	if c.HasTime && c.Time.Before(floor) {
		cs.Drop(len(c.UserIDs) + len(c.DeviceIDs) + len(c.Aliases))
		return
	}
	cs.AddMany(engine.KindExternal, c.UserIDs, c.Remove)
	cs.AddMany(engine.KindDevice, c.DeviceIDs, c.Remove)
	cs.AddMany(engine.KindAlias, c.Aliases, c.Remove)
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
