package server

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/index"
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
	d := digest(secret)
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
	// Resolved and applied up to stageAttempts times: a user change that
	// lands in between makes the batch stale (engine.ErrUsersChanged); the
	// last attempt holds user changes off (as applyStaged does).
	var ids []index.UserID
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
				ids = resolveMembers(w, &req, extProp, aliasProp)
				ms.AddIDs(ids)
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
			ids = resolveMembers(w, &req, extProp, aliasProp)
			cs.AddIDs(ids, req.Action == actionRemove)
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
	matched := 0
	for _, id := range ids {
		if id != index.NoUser {
			matched++
		}
	}
	out := append(make([]byte, 0, 256), `{"action":`...)
	out = appendJSONString(out, []byte(req.Action))
	out = append(out, `,"status":"success","matched":`...)
	out = strconv.AppendInt(out, int64(matched), 10)
	out = append(out, `,"unmatched":`...)
	out = strconv.AppendInt(out, int64(len(ids)-matched), 10)
	if req.Action == actionMembers {
		res := sres
		out = appendCounts(out, res.Replace.Added, res.Replace.Removed, res.Replace.DataPoints)
		out = append(out, `,"staged":`...)
		out = strconv.AppendInt(out, int64(res.Staged), 10)
		out = append(out, `,"pages_received":`...)
		out = strconv.AppendInt(out, int64(res.PagesReceived), 10)
		out = append(out, `,"committed":`...)
		out = strconv.AppendBool(out, res.Committed || res.Repeat)
	} else {
		out = appendCounts(out, ares.Added, ares.Removed, ares.DataPoints)
	}
	out = append(out, '}')
	writeRawJSON(ctx, fasthttp.StatusOK, out)
	return nil
}

func appendCounts(out []byte, added, removed, dataPoints int) []byte {
	out = append(out, `,"added":`...)
	out = strconv.AppendInt(out, int64(added), 10)
	out = append(out, `,"removed":`...)
	out = strconv.AppendInt(out, int64(removed), 10)
	out = append(out, `,"data_points":`...)
	return strconv.AppendInt(out, int64(dataPoints), 10)
}

// resolveMembers resolves every member of a page: by the external id
// property first and, when aliasProp is set, by the alias (aliasProp,
// value) for members whose external id is missing or matches nobody. One
// id per member, index.NoUser when neither matches. Lookups go a batch at a
// time through the identity tables.
func resolveMembers(w *engine.Workspace, req *webhookReq, extProp, aliasProp string) []index.UserID {
	n := req.Len()
	var buf []byte
	extAt := make([][2]int, n) // span of the external id in buf, -1 when none
	aliasAt := make([][2]int, n)
	i := 0
	req.eachMember(extProp, aliasProp, func(ext, label []byte) {
		extAt[i], aliasAt[i] = [2]int{-1, 0}, [2]int{-1, 0}
		if ext != nil {
			extAt[i] = [2]int{len(buf), len(buf) + len(ext)}
			buf = append(buf, ext...)
		}
		if label != nil {
			start := len(buf)
			buf = index.AliasKey(buf, []byte(aliasProp), label)
			aliasAt[i] = [2]int{start, len(buf)}
		}
		i++
	})
	ids := make([]index.UserID, n)
	var keys [][]byte
	var pos []int
	for j, sp := range extAt {
		ids[j] = index.NoUser
		if sp[0] >= 0 {
			keys = append(keys, buf[sp[0]:sp[1]])
			pos = append(pos, j)
		}
	}
	got := w.ResolveMany(index.KindExternal, keys, nil)
	for k, j := range pos {
		ids[j] = got[k]
	}
	if aliasProp == "" {
		return ids
	}
	keys, pos = keys[:0], pos[:0]
	for j, sp := range aliasAt {
		if ids[j] == index.NoUser && sp[0] >= 0 {
			keys = append(keys, buf[sp[0]:sp[1]])
			pos = append(pos, j)
		}
	}
	got = w.ResolveMany(index.KindAlias, keys, got[:0])
	for k, j := range pos {
		ids[j] = got[k]
	}
	return ids
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
		out = appendJSONString(out, []byte(action))
	}
	out = append(out, `,"status":"failure","error":{"message":`...)
	out = appendJSONString(out, []byte(msg))
	out = append(out, `,"code":`...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, "}}"...)
	if ctx.Response.IsBodyStream() {
		ctx.Response.ResetBody()
	}
	writeRawJSON(ctx, status, out)
}
