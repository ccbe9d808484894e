package server

import (
	"bufio"
	"bytes"
	"errors"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/jsonstr"
)

type cohortJSON struct {
	Partner   string      `json:"partner"`
	CohortID  string      `json:"cohort_id"`
	Name      string      `json:"name"`
	CreatedAt string      `json:"created_at"`
	UpdatedAt string      `json:"updated_at"`
	Size      uint64      `json:"size"`
	Health    *healthJSON `json:"health,omitempty"` // handlers_syncs.go
}

func toCohortJSON(c engine.CohortInfo) cohortJSON {
	return cohortJSON{c.Partner, c.CohortID, c.Name, formatTime(c.CreatedAt), formatTime(c.UpdatedAt), c.Size, nil}
}

// cohortTarget checks {partner} and {cohort_id} of a /v1/cohorts path.
func cohortTarget(r *request) (partner, id string, err error) {
	partner, id = r.params[0], r.params[1]
	if !engine.ValidPartnerSlug(partner) {
		return "", "", errorf(fasthttp.StatusBadRequest, "partner must match [a-z0-9_-]{1,64}")
	}
	if !validID([]byte(id)) {
		return "", "", ruleError("cohort_id")
	}
	return partner, id, nil
}

// handleListCohorts serves GET /v1/cohorts.
func (s *Server) handleListCohorts(r *request) error {
	out := []cohortJSON{}
	for _, c := range r.ws.Cohorts() {
		out = append(out, withHealth(c, r.e))
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Cohorts []cohortJSON `json:"cohorts"`
	}{out})
}

// handleGetCohort serves GET /v1/cohorts/{partner}/{cohort_id}.
func (s *Server) handleGetCohort(r *request) error {
	partner, id, err := cohortTarget(r)
	if err != nil {
		return err
	}
	c := r.ws.Cohort(partner, id)
	if c == nil {
		return errorf(fasthttp.StatusNotFound, "cohort not found")
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, withHealth(c, r.e))
}

// handleDeleteCohort serves DELETE /v1/cohorts/{partner}/{cohort_id}.
func (s *Server) handleDeleteCohort(r *request) error {
	partner, id, err := cohortTarget(r)
	if err != nil {
		return err
	}
	// The engine decides whether the cohort exists (in log mode this
	// node's state may lag the log).
	if err := r.ws.DeleteCohort(partner, id); err != nil {
		if errors.Is(err, engine.ErrNotFound) {
			return errorf(fasthttp.StatusNotFound, "cohort not found")
		}
		return err
	}
	r.ctx.SetStatusCode(fasthttp.StatusNoContent)
	return nil
}

// handleCohortChanges serves POST …/changes: bulk change objects,
// resolved as they stream in, applied whole once the body is valid.
func (s *Server) handleCohortChanges(r *request) error {
	partner, id, err := cohortTarget(r)
	if err != nil {
		return err
	}
	rd, release, err := r.decodedBody(s.opts.MaxBody)
	if err != nil {
		return err
	}
	defer release()
	cs := r.ws.NewChangeSet()
	floor := r.e.RetentionFloor()
	stage := func(c *changeObject) error {
		stageChange(cs, floor, c)
		return nil
	}
	if isNDJSON(r.ctx) {
		err = decodeChangesNDJSON(rd, stage)
	} else {
		err = decodeChangesJSON(rd, stage)
	}
	if err != nil {
		cs.Discard()
		return err
	}
	res, err := r.ws.ApplyChanges(partner, id, cs)
	if err != nil {
		return streamedStale(r, err)
	}
	var buf [256]byte
	writeRawJSON(r.ctx, fasthttp.StatusOK, appendApplyResult(buf[:0], &res))
	return nil
}

// streamedStale answers engine.ErrUsersChanged on a streamed body, which
// cannot be staged again, with 503 and Retry-After (nothing was applied;
// the sender retries). Other errors pass through.
func streamedStale(r *request, err error) error {
	if errors.Is(err, engine.ErrUsersChanged) {
		r.ctx.Response.Header.Set("Retry-After", "1")
		return errorf(fasthttp.StatusServiceUnavailable,
			"users changed while the body was being resolved (nothing was applied): send it again")
	}
	return err
}

// handleReplaceMembers serves PUT …/members: snapshot sync.
func (s *Server) handleReplaceMembers(r *request) error {
	partner, id, err := cohortTarget(r)
	if err != nil {
		return err
	}
	rd, release, err := r.decodedBody(s.opts.MaxBody)
	if err != nil {
		return err
	}
	defer release()
	ms := r.ws.NewMemberSet()
	add := func(k engine.Kind, keys [][]byte) error {
		ms.AddMany(k, keys)
		return nil
	}
	if isNDJSON(r.ctx) {
		err = decodeMembersNDJSON(rd, add)
	} else {
		err = decodeMembersJSON(rd, add)
	}
	if err != nil {
		ms.Discard()
		return err
	}
	res, err := r.ws.ReplaceMembers(partner, id, ms)
	if err != nil {
		return streamedStale(r, err)
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Added      int `json:"added"`
		Removed    int `json:"removed"`
		Unchanged  int `json:"unchanged"`
		Unmatched  int `json:"unmatched"`
		DataPoints int `json:"data_points"`
	}{res.Added, res.Removed, res.Unchanged, res.Unmatched, res.DataPoints})
}

// handleListMembers serves GET …/members as an NDJSON stream of M.
func (s *Server) handleListMembers(r *request) error {
	partner, id, err := cohortTarget(r)
	if err != nil {
		return err
	}
	c := r.ws.Cohort(partner, id)
	if c == nil {
		return errorf(fasthttp.StatusNotFound, "cohort not found")
	}
	s.streamMembers(r, c.Set(), r.ws.Live().Contains)
	return nil
}

// streamMembers streams the users of set as NDJSON of M, skipping those
// keep refuses (nil: none), compressed per Accept-Encoding. The stream runs
// after the handler returns; it holds the inflight count until done so
// Shutdown waits for it.
func (s *Server) streamMembers(r *request, set engine.Set, keep func(engine.UserID) bool) {
	ctx := r.ctx
	ws := r.ws
	coding := acceptEncoding(ctx)
	ctx.SetContentType("application/x-ndjson")
	ctx.Response.Header.Set("Vary", "Accept-Encoding")
	if coding != "" {
		ctx.Response.Header.Set("Content-Encoding", coding)
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	r.streaming = true
	ctx.SetBodyStreamWriter(func(bw *bufio.Writer) {
		defer s.inflight.Add(-1)
		var (
			out   io.Writer = bw
			close func() error
		)
		switch coding {
		case "gzip":
			zw, _ := gzip.NewWriterLevel(bw, gzip.BestSpeed)
			out, close = zw, zw.Close
		case "zstd":
			zw, err := zstd.NewWriter(bw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
			if err != nil {
				s.log.Error("zstd writer", "err", err)
				return
			}
			out, close = zw, zw.Close
		}
		line := make([]byte, 0, 256)
		set.Each(func(id engine.UserID) bool {
			if keep != nil && !keep(id) {
				return true
			}
			line = appendMember(line[:0], ws, id)
			line = append(line, '\n')
			_, err := out.Write(line)
			return err == nil // else the client went away
		})
		if close != nil {
			_ = close()
		}
	})
}

// acceptEncoding picks the reply coding from Accept-Encoding: zstd, then
// gzip, then none ("" ); a coding with q=0 is refused. Codings compare
// case-insensitively, without allocating.
func acceptEncoding(ctx *fasthttp.RequestCtx) string {
	h := ctx.Request.Header.Peek(fasthttp.HeaderAcceptEncoding)
	gz, zs := false, false
	for len(h) > 0 {
		var part []byte
		part, h, _ = bytes.Cut(h, []byte{','})
		name, q, _ := bytes.Cut(part, []byte{';'})
		name = bytes.Trim(name, jsonSpace)
		q = bytes.Trim(q, jsonSpace)
		if len(q) > 0 && (string(q) == "q=0" || string(q) == "q=0.0" || string(q) == "q=0.00" || string(q) == "q=0.000") {
			continue
		}
		switch {
		case bytes.EqualFold(name, []byte("gzip")), bytes.EqualFold(name, []byte("x-gzip")):
			gz = true
		case bytes.EqualFold(name, []byte("zstd")):
			zs = true
		}
	}
	switch {
	case zs:
		return "zstd"
	case gz:
		return "gzip"
	}
	return ""
}

// appendMember appends M, the identifiers of user id, as one JSON object.
// Identifiers calls back external ids first, then aliases, then device ids,
// so the object is written in one pass.
func appendMember(dst []byte, ws *engine.Workspace, id engine.UserID) []byte {
	const (
		none = iota
		ext
		aliases
		devices
	)
	state := none
	dst = append(dst, '{')
	ws.Identifiers(id, func(k engine.Kind, key []byte) {
		switch k {
		case engine.KindExternal:
			if state != none {
				dst = append(dst, ',')
			}
			dst = append(dst, `"external_id":`...)
			dst = jsonstr.Append(dst, key)
			state = ext
		case engine.KindAlias:
			switch state {
			case aliases:
				dst = append(dst, ',')
			case none:
				dst = append(dst, `"aliases":[`...)
			default:
				dst = append(dst, `,"aliases":[`...)
			}
			n, l := engine.SplitAlias(key)
			dst = append(dst, `{"alias_name":`...)
			dst = jsonstr.Append(dst, n)
			dst = append(dst, `,"alias_label":`...)
			dst = jsonstr.Append(dst, l)
			dst = append(dst, '}')
			state = aliases
		case engine.KindDevice:
			switch state {
			case devices:
				dst = append(dst, ',')
			case none:
				dst = append(dst, `"device_ids":[`...)
			case aliases:
				dst = append(dst, `],"device_ids":[`...)
			default:
				dst = append(dst, `,"device_ids":[`...)
			}
			dst = jsonstr.Append(dst, key)
			state = devices
		}
	})
	if state == aliases || state == devices {
		dst = append(dst, ']')
	}
	return append(dst, '}')
}
