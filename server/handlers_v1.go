package server

// Native API /v1, workspace endpoints (Authorization: Bearer <workspace
// API key>; the key selects the workspace, nothing in a path or body can
// widen it; the admin token gets 403 here). Response shapes, exactly:
//
//	POST   /v1/users (JSON {"users":[R…]} or NDJSON of R, R = {"external_id"?,"device_id"?,"aliases"?:[{"alias_name","alias_label"}]})
//	       → 200 {"created":N,"identified":N,"merged":N,"updated":N,"unchanged":N}
//	POST   /v1/users/delete {"user_ids"?:[…],"device_ids"?:[…],"aliases"?:[{"alias_name","alias_label"}]}
//	       → 200 {"deleted":N,"unmatched":N}
//	GET    /v1/users/lookup?external_id=… | ?device_id=… | ?alias_name=…&alias_label=…
//	       → 200 {"user":{"external_id":string|null,"aliases":[{"alias_name","alias_label"}],"device_ids":[string],"anonymous":bool},
//	              "cohorts":[{"partner","cohort_id","name"}]}
//	         (every key always present: external_id null when absent, arrays [] when empty); 404 if no user
//	GET    /v1/cohorts → 200 {"cohorts":[C…]}
//	GET    /v1/cohorts/{partner}/{cohort_id} → 200 C; 404 if unknown
//	       C = {"partner","cohort_id","name","created_at","updated_at","size":N,"health":H} (times RFC 3339, UTC;
//	       H, the sync health, in handlers_syncs.go)
//	DELETE /v1/cohorts/{partner}/{cohort_id} → 204; 404 if unknown
//	POST   /v1/cohorts/{partner}/{cohort_id}/changes (JSON {"cohort_changes":[…]} or NDJSON of change objects)
//	       → 200 {"message":"success","matched":N,"unmatched":N,"unmatched_by_reason":{"unknown":N,"device_id_identified":N},
//	              "added":N,"removed":N,"dropped_before_floor":N,"data_points":N}
//	PUT    /v1/cohorts/{partner}/{cohort_id}/members (JSON {"user_ids","device_ids","aliases"} or NDJSON lines
//	       {"external_id"} | {"device_id"} | {"alias_name","alias_label"})
//	       → 200 {"added":N,"removed":N,"unchanged":N,"unmatched":N,"data_points":N}
//	GET    /v1/cohorts/{partner}/{cohort_id}/members → 200 NDJSON of M (Content-Type application/x-ndjson;
//	       Content-Encoding gzip or zstd when Accept-Encoding asks); 404 if unknown
//	POST   /v1/segments/count {"segment":E} → 200 {"count":N} (+ "warnings":[string…] when non-empty)
//	POST   /v1/segments/contains {"segment":E,"users":[{"external_id"}|{"device_id"}|{"alias_name","alias_label"}]}
//	       → 200 {"results":[bool…]} (+ "warnings")
//	POST   /v1/segments/members {"segment":E,"limit"?:N,"cursor"?:string|null}
//	       with limit (1–10000): 200 {"members":[M…],"next_cursor":string|null} (+ "warnings")
//	       without: 200 NDJSON of M (as the member listing; no warnings)
//	GET    /v1/usage → 200 {"total":N,"partners":{"<slug>":{"total":N,"days":{"YYYY-MM-DD":N}}}}
//
// M = {"external_id"?:string,"aliases"?:[{"alias_name","alias_label"}],"device_ids"?:[string]}: a member's
// identifiers, absent keys omitted (an anonymous user has only device_ids).
//
// In paths {partner} must match [a-z0-9_-]{1,64} (need not be registered;
// else 400) and {cohort_id} is percent-encoded and follows the identifier
// rule (else 400).

import (
	"bufio"
	"errors"
	"io"
	"strconv"
	"sync"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/index"
	"github.com/cohortd/cohortd/server/jsonstr"
)

// maxPageLimit bounds the limit of a segment members page.
const maxPageLimit = 10000

// ---- users ----

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
		k   index.Kind
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
		k = index.KindExternal
		key, err = check("external_id")
	case hasDev && !hasExt && !alias:
		k = index.KindDevice
		key, err = check("device_id")
	case hasName && hasLabel && !hasExt && !hasDev:
		var n, l []byte
		if n, err = check("alias_name"); err == nil {
			if l, err = check("alias_label"); err == nil {
				k, key = index.KindAlias, index.AliasKey(nil, n, l)
			}
		}
	default:
		return errorf(fasthttp.StatusBadRequest, msgLookup)
	}
	if err != nil {
		return err
	}
	id := r.ws.Resolve(k, key)
	if id == index.NoUser {
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

// ---- cohorts ----

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
	add := func(k index.Kind, keys [][]byte) error {
		ms.AddMany(k, keys)
		return nil
	}
	if isNDJSON(r.ctx) {
		err = decodeMembersNDJSON(rd, add)
	} else {
		err = decodeMembersJSON(rd, add)
	}
	if err != nil {
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
	s.streamMembers(r, c.Members(), r.ws.Users().Live())
	return nil
}

// streamMembers streams the members of bm (an immutable bitmap: only read
// through iterators) as NDJSON of M, skipping ids not in live (nil: all),
// compressed per Accept-Encoding. The stream runs after the handler
// returns; it holds the inflight count until done so Shutdown waits for it.
func (s *Server) streamMembers(r *request, bm, live *roaring.Bitmap) {
	ctx := r.ctx
	users := r.ws.Users()
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
		it := bm.ManyIterator()
		ids := make([]uint32, 1024)
		line := make([]byte, 0, 256)
	loop:
		for {
			n := it.NextMany(ids)
			if n == 0 {
				break
			}
			for _, id := range ids[:n] {
				if live != nil && !live.Contains(id) {
					continue
				}
				line = appendMember(line[:0], users, index.UserID(id))
				line = append(line, '\n')
				if _, err := out.Write(line); err != nil {
					break loop // the client went away
				}
			}
		}
		if close != nil {
			_ = close()
		}
	})
}

// acceptEncoding picks the reply coding from Accept-Encoding: zstd, then
// gzip, then none ("" ); a coding with q=0 is refused.
func acceptEncoding(ctx *fasthttp.RequestCtx) string {
	h := ctx.Request.Header.Peek(fasthttp.HeaderAcceptEncoding)
	gz, zs := false, false
	for len(h) > 0 {
		var part []byte
		if i := indexByte(h, ','); i >= 0 {
			part, h = h[:i], h[i+1:]
		} else {
			part, h = h, nil
		}
		name, q := part, []byte(nil)
		if i := indexByte(part, ';'); i >= 0 {
			name, q = part[:i], part[i+1:]
		}
		name = trimSpace(name)
		q = trimSpace(q)
		if len(q) > 0 && (string(q) == "q=0" || string(q) == "q=0.0" || string(q) == "q=0.00" || string(q) == "q=0.000") {
			continue
		}
		switch string(toLowerASCII(name)) {
		case "gzip", "x-gzip":
			gz = true
		case "zstd":
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

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func toLowerASCII(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}

// appendMember appends M, the identifiers of user id, as one JSON object.
// Identifiers calls back external ids first, then aliases, then device ids,
// so the object is written in one pass.
func appendMember(dst []byte, users *index.Users, id index.UserID) []byte {
	const (
		none = iota
		ext
		aliases
		devices
	)
	state := none
	dst = append(dst, '{')
	users.Identifiers(id, func(k index.Kind, key []byte) {
		switch k {
		case index.KindExternal:
			if state != none {
				dst = append(dst, ',')
			}
			dst = append(dst, `"external_id":`...)
			dst = jsonstr.Append(dst, key)
			state = ext
		case index.KindAlias:
			switch state {
			case aliases:
				dst = append(dst, ',')
			case none:
				dst = append(dst, `"aliases":[`...)
			default:
				dst = append(dst, `,"aliases":[`...)
			}
			n, l := index.SplitAlias(key)
			dst = append(dst, `{"alias_name":`...)
			dst = jsonstr.Append(dst, n)
			dst = append(dst, `,"alias_label":`...)
			dst = jsonstr.Append(dst, l)
			dst = append(dst, '}')
			state = aliases
		case index.KindDevice:
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

// ---- segments ----

// segmentRequest decodes a segment query body (decode_query.go) into q,
// handing its identifiers to lk (nil: a query without users), and binds
// its expression. The caller releases the binding.
func (s *Server) segmentRequest(r *request, q *segmentQuery, lk *engine.Lookup) (*engine.BoundSegment, error) {
	rd, release, err := r.decodedBody(s.opts.QueryMaxBody)
	if err != nil {
		return nil, err
	}
	err = decodeSegmentQuery(rd, q, lk)
	release()
	if err != nil {
		return nil, err
	}
	if q.segment == nil {
		return nil, errorf(fasthttp.StatusBadRequest, "segment is required")
	}
	seg, err := r.ws.Segment(q.segment)
	if err != nil {
		return nil, err
	}
	return r.ws.Bind(seg), nil
}

// appendWarnings appends `,"warnings":[…]` when there are any.
func appendWarnings(dst []byte, ws []string) []byte {
	if len(ws) == 0 {
		return dst
	}
	dst = append(dst, `,"warnings":[`...)
	for i, w := range ws {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsonstr.Append(dst, w)
	}
	return append(dst, ']')
}

// handleSegmentCount serves POST /v1/segments/count.
func (s *Server) handleSegmentCount(r *request) error {
	q := getQuery()
	defer putQuery(q)
	b, err := s.segmentRequest(r, q, nil)
	if err != nil {
		return err
	}
	defer b.Release()
	out := r.getBuf()
	*out = append((*out)[:0], `{"count":`...)
	*out = strconv.AppendUint(*out, b.Count(), 10)
	*out = appendWarnings(*out, b.Warnings)
	*out = append(*out, '}')
	writeRawJSON(r.ctx, fasthttp.StatusOK, *out)
	return nil
}

// lookups pools the resolvers of batch contains.
var lookups sync.Pool // *engine.Lookup

// handleSegmentContains serves POST /v1/segments/contains. The users (or
// the compact external_ids / device_ids) are resolved as the body streams
// in, stageChunk at a time (engine.Lookup); a device id resolves to whoever
// holds it, identified or not. Answers come in the order sent.
func (s *Server) handleSegmentContains(r *request) error {
	q := getQuery()
	defer putQuery(q)
	lk, _ := lookups.Get().(*engine.Lookup)
	if lk == nil {
		lk = r.ws.NewLookup()
	}
	lk.Reset(r.ws)
	defer lookups.Put(lk)
	b, err := s.segmentRequest(r, q, lk)
	if err != nil {
		return err
	}
	defer b.Release()
	if q.form == formNone {
		return badRequest(msgContainsForm, "users: expected an array of user references, or external_ids / device_ids: an array of strings")
	}
	ids := lk.IDs()
	out := r.getBuf()
	*out = append((*out)[:0], `{"results":[`...)
	for i, id := range ids {
		if i > 0 {
			*out = append(*out, ',')
		}
		if b.Contains(id) {
			*out = append(*out, "true"...)
		} else {
			*out = append(*out, "false"...)
		}
	}
	*out = append(*out, ']')
	*out = appendWarnings(*out, b.Warnings)
	*out = append(*out, '}')
	writeRawJSON(r.ctx, fasthttp.StatusOK, *out)
	return nil
}

// handleSegmentMembers serves POST /v1/segments/members: a page with
// limit, else an NDJSON stream of every member.
func (s *Server) handleSegmentMembers(r *request) error {
	q := getQuery()
	defer putQuery(q)
	b, err := s.segmentRequest(r, q, nil)
	if err != nil {
		return err
	}
	defer b.Release()
	cursor := string(q.cursor)
	if q.limit == nil {
		if cursor != "" {
			return errorf(fasthttp.StatusBadRequest, "cursor needs limit")
		}
		s.streamMembers(r, b.Bitmap(), nil)
		return nil
	}
	limit, err := parseLimit(q.limit)
	if err != nil {
		return err
	}
	ids, next, err := b.Page(cursor, limit)
	if err != nil {
		return err
	}
	users := r.ws.Users()
	out := make([]byte, 0, 64+64*len(ids))
	out = append(out, `{"members":[`...)
	for i, id := range ids {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendMember(out, users, id)
	}
	out = append(out, `],"next_cursor":`...)
	if next == "" {
		out = append(out, "null"...)
	} else {
		out = jsonstr.Append(out, next)
	}
	out = appendWarnings(out, b.Warnings)
	writeRawJSON(r.ctx, fasthttp.StatusOK, append(out, '}'))
	return nil
}

// ---- usage ----

// handleUsage serves GET /v1/usage: data points per partner and UTC day.
func (s *Server) handleUsage(r *request) error {
	type partnerJSON struct {
		Total uint64            `json:"total"`
		Days  map[string]uint64 `json:"days"`
	}
	u := r.ws.Usage()
	out := struct {
		Total    uint64                 `json:"total"`
		Partners map[string]partnerJSON `json:"partners"`
	}{Total: u.Total, Partners: make(map[string]partnerJSON, len(u.Partners))}
	for slug, pu := range u.Partners {
		out.Partners[slug] = partnerJSON{pu.Total, pu.Days}
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, out)
}
