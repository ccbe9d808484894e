package server

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/jsonstr"
)

// Mixpanel's cohort webhook (docs/API.md §3b):
//
//	POST /webhooks/mixpanel[?external_id=<property>][&alias=<property>]
//	Authorization: Basic <any>:<data import key of partner mixpanel>
//
//	200 {"action":A,"status":"success","matched":N,"unmatched":N,"added":N,"removed":N,"data_points":N
//	     [,"staged":N,"pages_received":N,"committed":bool]}   (the last three for action members)
//	4xx/5xx {"action":A|null,"status":"failure","error":{"message":"…","code":<status>}}
//
// Mixpanel pauses a customer's sync on 400/401/403/404 and retries 429 and
// 5xx, so every transient condition (not ready, shutting down, rate limit)
// answers 503 or 429 with Retry-After, never another 4xx.

// webhookPartner is the partner slug of Mixpanel's cohorts and keys.
const webhookPartner = "mixpanel"

// defaultExternalIDProp is the member property matched as the external id.
const defaultExternalIDProp = "mixpanel_distinct_id"

func (s *Server) handleMixpanel(r *request) error {
	ctx := r.ctx
	action := ""
	fail := func(err error) error {
		writeWebhookFailure(ctx, action, mapError(err))
		return errReplied
	}
	// The route is ungated so that not-ready and shutdown get this
	// endpoint's reply shape (with a retryable status).
	if s.closing.Load() {
		ctx.SetConnectionClose()
		ctx.Response.Header.Set("Retry-After", "1")
		return fail(errorf(fasthttp.StatusServiceUnavailable, "shutting down"))
	}
	if r.e = s.engine.Load(); r.e == nil {
		ctx.Response.Header.Set("Retry-After", "1")
		return fail(errorf(fasthttp.StatusServiceUnavailable, "not ready"))
	}
	if err := waitMinPosition(r); err != nil {
		return fail(err)
	}
	if mt := mediaType(ctx); len(mt) != 0 && !bytes.EqualFold(mt, []byte("application/json")) {
		return fail(errorf(fasthttp.StatusUnsupportedMediaType, "unsupported Content-Type %q", ctx.Request.Header.ContentType()))
	}
	secret, ok := basicPassword(ctx.Request.Header.Peek("Authorization"))
	if !ok {
		ctx.Response.Header.Set("WWW-Authenticate", `Basic realm="cohortd"`)
		return fail(errorf(fasthttp.StatusUnauthorized, "missing Basic credentials: the password must be a data import key of partner mixpanel"))
	}
	w, err := r.e.AuthImportKey(webhookPartner, secret)
	if err != nil {
		if errors.Is(err, engine.ErrClosed) {
			return fail(err)
		}
		return fail(errorf(fasthttp.StatusUnauthorized, "invalid credentials: the password must be a data import key of partner mixpanel"))
	}
	r.ws = w
	d := engine.SecretDigest(secret)
	if err := s.limits.allow(ctx, "cs:", string(d[:])); err != nil {
		return fail(err)
	}
	// Authenticated before the body is read; still a partner body in
	// flight.
	release, err := s.partnerSlot(r)
	if err != nil {
		return fail(err)
	}
	defer release()
	body, _, err := r.smallBody(s.opts.PartnerMaxBody)
	if err != nil {
		return fail(err)
	}
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	req, err := parseWebhook(p, body)
	action = req.Action
	if err != nil {
		return fail(err)
	}
	args := ctx.QueryArgs()
	extProp := string(args.Peek("external_id"))
	if extProp == "" {
		extProp = defaultExternalIDProp
	}
	aliasProp := string(args.Peek("alias"))
	cands := candidates(&req, extProp, aliasProp)
	// Resolved and applied up to stageAttempts times: a user change that
	// lands in between makes the batch stale (engine.ErrUsersChanged); the
	// last attempt holds user changes off (as applyStaged does). In log
	// mode the engine resolves at the record's place, never stale.
	stage := func(attempt int, apply func() error) error {
		if attempt == stageAttempts {
			defer w.HoldUsers()()
		}
		return apply()
	}
	var sres engine.StageResult
	var ares engine.ApplyResult
	for attempt := 1; ; attempt++ {
		err := stage(attempt, func() error {
			if req.Action == actionMembers {
				ms := w.NewMemberSet()
				ms.AddCandidates(cands)
				// The page renames the cohort only once it passed every
				// check (StagePage does it under the same lock).
				var err error
				sres, err = w.StagePage(webhookPartner, req.CohortID, req.CohortName, req.SessionID, req.PageCount, req.TotalPages, ms)
				return err
			}
			if req.CohortName != "" {
				if err := w.UpsertCohort(webhookPartner, req.CohortID, req.CohortName, r.e.Now()); err != nil {
					return err
				}
			}
			cs := w.NewChangeSet()
			cs.SetSource(engine.SourceWebhook)
			cs.AddCandidates(cands, req.Action == actionRemove)
			var err error
			ares, err = w.ApplyChanges(webhookPartner, req.CohortID, cs)
			return err
		})
		if errors.Is(err, engine.ErrUsersChanged) && attempt < stageAttempts {
			continue
		}
		if err != nil {
			return fail(err)
		}
		break
	}
	out := append(make([]byte, 0, 256), `{"action":`...)
	out = jsonstr.Append(out, req.Action)
	out = append(out, `,"status":"success","matched":`...)
	if req.Action == actionMembers {
		res := sres
		out = appendMatched(out, res.Matched, res.Unmatched)
		out = appendCounts(out, res.Replace.Added, res.Replace.Removed, res.Replace.DataPoints)
		out = append(out, `,"staged":`...)
		out = strconv.AppendInt(out, int64(res.Staged), 10)
		out = append(out, `,"pages_received":`...)
		out = strconv.AppendInt(out, int64(res.PagesReceived), 10)
		out = append(out, `,"committed":`...)
		out = strconv.AppendBool(out, res.Committed || res.Repeat)
	} else {
		out = appendMatched(out, ares.Matched, ares.Unmatched)
		out = appendCounts(out, ares.Added, ares.Removed, ares.DataPoints)
	}
	out = append(out, '}')
	writeRawJSON(ctx, fasthttp.StatusOK, out)
	if pos, ok := r.e.ScopePosition(w.ID()); ok {
		ctx.Response.Header.Set(headerPosition, pos.String())
	}
	return nil
}

func appendMatched(out []byte, matched, unmatched int) []byte {
	out = strconv.AppendInt(out, int64(matched), 10)
	out = append(out, `,"unmatched":`...)
	return strconv.AppendInt(out, int64(unmatched), 10)
}

func appendCounts(out []byte, added, removed, dataPoints int) []byte {
	out = append(out, `,"added":`...)
	out = strconv.AppendInt(out, int64(added), 10)
	out = append(out, `,"removed":`...)
	out = strconv.AppendInt(out, int64(removed), 10)
	out = append(out, `,"data_points":`...)
	return strconv.AppendInt(out, int64(dataPoints), 10)
}

// candidates collects the identifiers each member of a page may match:
// the external id property and, when aliasProp is set, the alias
// (aliasProp, value). The engine applies the fallback rule
// (engine.Candidates), at the record's place in log mode.
func candidates(req *webhookReq, extProp, aliasProp string) *engine.Candidates {
	var c engine.Candidates
	var buf []byte
	req.eachMember(extProp, aliasProp, func(ext, label []byte) {
		var alias []byte
		if label != nil {
			buf = engine.AliasKey(buf[:0], []byte(aliasProp), label)
			alias = buf
		}
		c.Add(ext, alias)
	})
	return &c
}

// basicPassword extracts the password of an HTTP Basic Authorization
// header; the user name is ignored.
func basicPassword(h []byte) ([]byte, bool) {
	const prefix = "basic "
	if len(h) < len(prefix) || !bytes.EqualFold(h[:len(prefix)], []byte(prefix)) {
		return nil, false
	}
	raw, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(h[len(prefix):])))
	if err != nil {
		return nil, false
	}
	i := bytes.IndexByte(raw, ':')
	if i < 0 || i == len(raw)-1 {
		return nil, false
	}
	return raw[i+1:], true
}

// writeWebhookFailure writes Mixpanel's failure shape with the status of
// err (an *apiError after mapError; anything else is a 500).
func writeWebhookFailure(ctx *fasthttp.RequestCtx, action string, err error) {
	status, msg := fasthttp.StatusInternalServerError, "internal error"
	var ae *apiError
	if errors.As(err, &ae) {
		status, msg = ae.status, ae.message
	}
	out := append(make([]byte, 0, 128), `{"action":`...)
	if action == "" {
		out = append(out, "null"...)
	} else {
		out = jsonstr.Append(out, action)
	}
	out = append(out, `,"status":"failure","error":{"message":`...)
	out = jsonstr.Append(out, msg)
	out = append(out, `,"code":`...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, "}}"...)
	if ctx.Response.IsBodyStream() {
		ctx.Response.ResetBody()
	}
	if status == fasthttp.StatusServiceUnavailable && len(ctx.Response.Header.Peek("Retry-After")) == 0 {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	writeRawJSON(ctx, status, out)
}
