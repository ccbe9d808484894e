package loadgen

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	apiclient "github.com/cohortd/cohortd/server/client"
	"github.com/cohortd/cohortd/server/jsonstr"
)

// Mixpanel's native cohort webhook (docs/API.md §3b), as Mixpanel sends it.
//
// # What the sender does
//
// The first sync of a cohort is a "members" snapshot in pages of
// Options.WebhookPageSize members that share one mixpanel_session_id
// (page_info.page_count 1…total_pages); the server replaces the cohort
// when every page has arrived. Each later change set (Mixpanel syncs every
// 30 minutes; replayed every Options.Interval) is an add_members /
// remove_members diff, again in calls of at most WebhookPageSize members.
// Every call carries HTTP Basic auth whose password is a data import key of
// partner mixpanel.
//
// # Failures
//
// Mixpanel retries 429 and 5xx five times within a minute (honouring
// Retry-After), and when a call still fails it drops the rest of that sync
// and later re-sends the whole cohort as a new "members" snapshot with a new
// session id. 400/401/403/404 pause the sync instead; loadgen counts them as
// errors and stops that cohort (it is then left out of verification). With
// Options.InjectFailureRate the sender abandons some syncs on purpose after a
// deterministic number of calls and re-sends the whole cohort (re-sends are
// never abandoned, so a run converges), so a run exercises abandoned
// sessions: the server must keep the last complete
// snapshot (plus later diffs), which verification checks.
//
// # Identity
//
// Mixpanel names a member by mixpanel_distinct_id, which cohortd matches as
// the external id (identified and identified-later users); alias-only users
// carry a distinct id cohortd does not know and are matched by their email
// (the request asks for ?alias=email). Still-anonymous users have no
// identifier cohortd could match, so this sender leaves them out of its
// cohorts (the report says how many).

// webhookPartner is the partner slug the server files webhook cohorts under.
const webhookPartner = "mixpanel"

// Webhook actions.
const (
	actionMembers = "members"
	actionAdd     = "add_members"
	actionRemove  = "remove_members"
)

// Webhook constants.
const (
	webhookPath = "/webhooks/mixpanel?alias=" + aliasName
	// mixpanelRetries is Mixpanel's retry budget for one call.
	mixpanelRetries = 5
	// maxResyncs bounds the whole-cohort re-sends after one failed sync.
	maxResyncs = 3
	// webhookProjectID is the mixpanel_project_id sent (the server ignores it).
	webhookProjectID = 3_141_592
	opWebhookMembers = "webhook_members"
	opWebhookDiff    = "webhook_diff"
)

// WebhookCohortID returns the numeric Mixpanel cohort id of cohort i of a
// flavour; flavours get distinct ranges so that both fit one workspace. The
// server files the cohort under its decimal string.
func WebhookCohortID(f Flavour, i int) int64 {
	if f == FlavourClustered {
		return 1_000_000 + int64(i)
	}
	return 2_000_000 + int64(i)
}

// cohortID returns the cohort id of cohort i as the server knows it.
func (r *run) cohortID(i int) string {
	if r.o.Shape == ShapeMixpanelWebhook {
		return strconv.FormatInt(WebhookCohortID(r.o.Flavour, i), 10)
	}
	return CohortID(r.o.Flavour, i)
}

// ensureExportCredentials creates what the sender needs: a workspace, and a
// partner and data import key for the partner shape or the webhook.
func (r *run) ensureExportCredentials(ctx context.Context) error {
	if r.o.Shape != ShapeMixpanelWebhook {
		return ensureCredentials(ctx, r.cl, r.o.AdminToken, &r.creds, true, r.o.Shape == ShapePartner, r.log)
	}
	return ensureWebhookCredentials(ctx, r.cl, r.o.AdminToken, &r.creds, r.log)
}

// ensureWebhookCredentials makes sure partner mixpanel exists and creds
// holds a data import key of it. Unlike the partner shape it never switches
// to a fresh slug: the webhook only serves partner mixpanel. When the partner
// already exists (409) its partner key cannot be learnt, but the webhook
// needs none, and the admin token can still issue a data import key.
func ensureWebhookCredentials(ctx context.Context, cl *client, admin string, creds *Credentials, log io.Writer) error {
	creds.Partner = webhookPartner
	if err := ensureCredentials(ctx, cl, admin, creds, true, false, log); err != nil {
		return err
	}
	if creds.ClientSecret != "" {
		return nil
	}
	if admin == "" {
		return fmt.Errorf("%w: data import key of partner %s", ErrNoAdminToken, webhookPartner)
	}
	key, err := cl.admin(admin).CreatePartner(ctx, webhookPartner)
	switch {
	case err == nil:
		creds.PartnerAPIKey = key
		fmt.Fprintf(log, "loadgen: created partner %s (its partner API key is not printed)\n", webhookPartner)
	case apiclient.StatusOf(err) == http.StatusConflict:
		fmt.Fprintf(log, "loadgen: partner %s exists; creating a data import key for it\n", webhookPartner)
	default:
		return fmt.Errorf("create partner %q: %w", webhookPartner, err)
	}
	return createImportKey(ctx, cl, admin, creds, log)
}

// basicAuth returns the Authorization header Mixpanel sends: the user name
// is free, the password is the data import key.
func basicAuth(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// nameable returns the users of users (sorted) that the webhook can name,
// that is all but the still-anonymous ones, and how many were left out.
func (u Universe) nameable(users []uint32) ([]uint32, int) {
	out := make([]uint32, 0, len(users))
	for _, n := range users {
		if u.Kind(int(n)) != KindDevice {
			out = append(out, n)
		}
	}
	return out, len(users) - len(out)
}

// webhookParams are the parameters of one webhook call besides its members.
type webhookParams struct {
	Action     string
	CohortID   int64
	CohortName string
	SessionID  string
	Page       int // page_info.page_count, from 1
	TotalPages int
}

// appendWebhookBody appends the JSON body of one webhook call with refs as
// its members, in the field order Mixpanel uses.
func (u Universe) appendWebhookBody(dst []byte, p *webhookParams, refs []Ref) []byte {
	dst = append(dst, `{"action":`...)
	dst = jsonstr.Append(dst, p.Action)
	dst = append(dst, `,"parameters":{"mixpanel_project_id":`...)
	dst = strconv.AppendInt(dst, webhookProjectID, 10)
	dst = append(dst, `,"mixpanel_cohort_id":`...)
	dst = strconv.AppendInt(dst, p.CohortID, 10)
	dst = append(dst, `,"mixpanel_cohort_name":`...)
	dst = jsonstr.Append(dst, p.CohortName)
	dst = append(dst, `,"mixpanel_cohort_description":"synced by cohortd loadgen","mixpanel_session_id":`...)
	dst = jsonstr.Append(dst, p.SessionID)
	dst = append(dst, `,"page_info":{"total_pages":`...)
	dst = strconv.AppendInt(dst, int64(p.TotalPages), 10)
	dst = append(dst, `,"page_count":`...)
	dst = strconv.AppendInt(dst, int64(p.Page), 10)
	dst = append(dst, `},"members":[`...)
	for i, r := range refs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = u.appendWebhookMember(dst, r)
	}
	return append(dst, "]}}"...)
}

// appendWebhookMember appends one member object. Identified users carry
// their external id as mixpanel_distinct_id; alias-only users a distinct id
// cohortd does not know ("$device:" and their device id, as Mixpanel names
// users it never identified), so the server falls back to their email. The
// unmatched identifiers of the workload become an unknown distinct id with
// an unknown email, and a bare device id of an identified user (which never
// matches an external id).
func (u Universe) appendWebhookMember(dst []byte, r Ref) []byte {
	var tmp [64]byte
	n := strconv.AppendUint(tmp[:0], r.N, 10)
	dst = append(dst, `{"mixpanel_distinct_id":`...)
	switch r.Kind {
	case KindExternal:
		dst = append(dst, '"')
		dst = appendExternalID(dst, int(r.N))
		dst = append(dst, '"')
		dst = append(dst, `,"email":"`...)
		dst = append(dst, n...)
		dst = append(dst, `@example.com"`...)
	case KindAlias:
		dst = append(dst, `"$device:`...)
		dst = u.appendDeviceID(dst, int(r.N))
		dst = append(dst, `","email":"`...)
		dst = append(dst, n...)
		dst = append(dst, `@example.com"`...)
	case KindDevice:
		dst = append(dst, '"')
		dst = u.appendDeviceID(dst, int(r.N))
		dst = append(dst, '"')
	default:
		dst = append(dst, `"nouser-`...)
		dst = append(dst, n...)
		dst = append(dst, `","email":"nouser-`...)
		dst = append(dst, n...)
		dst = append(dst, `@example.net"`...)
	}
	dst = append(dst, `,"first_name":"First`...)
	dst = append(dst, n...)
	dst = append(dst, `","last_name":"Last`...)
	dst = append(dst, n...)
	return append(dst, `","$country_code":"FR"}`...)
}

// injectedCut decides, from the seed alone, whether attempt set of cohort
// (0 is the first sync, then change set numbers) is abandoned on purpose
// and after how many of its calls: -1 means send all; otherwise a number in
// [0, calls), so an abandoned snapshot never completes.
func injectedCut(seed uint64, cohort int, f Flavour, set, calls int, rate float64) int {
	if rate <= 0 || calls <= 0 {
		return -1
	}
	r := newRand(seed, streamInject, (uint64(cohort)<<1|flavourBit(f))<<32|uint64(set))
	if r.Float64() >= rate {
		return -1
	}
	return r.IntN(calls)
}

// webhookCall is one call of a sync; its refs go in members.
type webhookCall struct {
	action      string
	page, total int
	refs        []Ref
}

// webhookCalls splits refs into calls of at most per members. A snapshot
// always has a page, empty for an empty cohort; a diff without members has
// no call.
func webhookCalls(action string, refs []Ref, per int) []webhookCall {
	total := (len(refs) + per - 1) / per
	if total == 0 && action == actionMembers {
		total = 1
	}
	calls := make([]webhookCall, 0, total)
	for p := 1; p <= total; p++ {
		lo := (p - 1) * per
		hi := min(lo+per, len(refs))
		calls = append(calls, webhookCall{action: action, page: p, total: total, refs: refs[lo:hi:hi]})
	}
	return calls
}

// webhookSync is the shared state of one attempt (a session): the first
// call that fails for good marks it, so that calls not yet sent are skipped
// as Mixpanel stops a sync at its first failure.
type webhookSync struct {
	session   string
	failed    atomic.Bool
	paused    atomic.Int32 // the non-retryable status that paused the sync
	committed atomic.Int32 // members pages whose reply said committed
}

// webhookJob is the webhook part of an exportJob.
type webhookJob struct {
	webhookCall
	sync *webhookSync
}

// webhookReply is a webhook success reply (failures arrive as a server/client *Error).
type webhookReply struct {
	changesReply
	Status    string `json:"status"`
	Action    string `json:"action"`
	Committed *bool  `json:"committed"`
}

// webhookStats counts what happened to syncs, for the report's notes.
type webhookStats struct {
	syncs      atomic.Int64 // attempts, re-sends included
	abandoned  atomic.Int64 // abandoned on purpose
	failed     atomic.Int64 // failed after retries and re-sent
	resyncs    atomic.Int64
	anonymous  atomic.Int64 // cohort members left out as unnameable
	sessionSeq atomic.Int64
}

// attempt sends calls as one session and waits for them. complete says
// whether calls are a whole snapshot, which must then be committed by
// exactly the page that completed it.
func (e *exporter) attempt(c *cohortState, calls []webhookCall, ready time.Time, snapshot, complete bool) *webhookSync {
	e.hook.syncs.Add(1)
	s := &webhookSync{session: e.hookNonce + "-" + strconv.FormatInt(e.hook.sessionSeq.Add(1), 10)}
	var wg sync.WaitGroup
	for _, call := range calls {
		j := &exportJob{c: c, ready: ready, wg: &wg, hook: &webhookJob{webhookCall: call, sync: s}}
		if call.action == actionRemove {
			j.removes = call.refs
		} else {
			j.adds = call.refs
		}
		wg.Add(1)
		e.jobs <- j
	}
	wg.Wait()
	if snapshot && !s.failed.Load() {
		// A retried page that arrives after the commit is answered as
		// committed again, so a complete session may see more than one.
		got := s.committed.Load()
		msg := ""
		if complete != (got > 0) {
			msg = fmt.Sprintf("cohort %s: session %s (%d of %d pages sent, complete %t) committed by %d replies",
				c.id, s.session, len(calls), callsTotal(calls), complete, got)
		}
		e.r.rec.verified(msg)
	}
	return s
}

func callsTotal(calls []webhookCall) int {
	if len(calls) == 0 {
		return 0
	}
	return calls[0].total
}

// syncWebhook sends one sync of cohort c: the whole membership refs as a
// snapshot when set is 0, else change set number set as adds and removes.
// after is the membership once the sync is applied; it becomes the model
// whatever happens, since a failed or abandoned sync is followed by a
// re-send of the whole cohort, which makes the server hold exactly after.
// Only the cohort's own loop calls it.
func (e *exporter) syncWebhook(ctx context.Context, c *cohortState, set int, adds, removes []Ref, after []uint32, ready time.Time) {
	o := e.r.o
	snapshot := set == 0
	var calls []webhookCall
	if snapshot {
		calls = webhookCalls(actionMembers, adds, o.WebhookPageSize)
	} else {
		calls = append(webhookCalls(actionAdd, adds, o.WebhookPageSize), webhookCalls(actionRemove, removes, o.WebhookPageSize)...)
	}
	cut := injectedCut(o.Seed, c.index, o.Flavour, set, len(calls), o.InjectFailureRate)
	if cut >= 0 {
		calls = calls[:cut]
	}
	s := e.attempt(c, calls, ready, snapshot, cut < 0)
	c.members = after
	switch {
	case s.paused.Load() != 0:
		c.stopped = fmt.Sprintf("sync paused by status %d", s.paused.Load())
		return
	case s.failed.Load():
		if ctx.Err() != nil {
			return
		}
		e.hook.failed.Add(1)
	case cut >= 0:
		e.hook.abandoned.Add(1)
	default:
		return
	}
	// Mixpanel re-sends the whole cohort after a failed sync, as a new
	// session; the abandoned one must not leak into the cohort.
	for range maxResyncs {
		e.hook.resyncs.Add(1)
		refs := c.unmatched.withUnmatched(c.members)
		s := e.attempt(c, webhookCalls(actionMembers, refs, o.WebhookPageSize), time.Now(), true, true)
		switch {
		case s.paused.Load() != 0:
			c.stopped = fmt.Sprintf("sync paused by status %d", s.paused.Load())
			return
		case !s.failed.Load():
			return
		case ctx.Err() != nil:
			return
		}
		e.hook.failed.Add(1)
	}
	c.stopped = fmt.Sprintf("still failing after %d whole-cohort re-sends", maxResyncs)
}

// sendWebhook builds, paces and sends one webhook call. raw and body are
// the sender's reusable buffers, returned for the next job.
func (e *exporter) sendWebhook(ctx context.Context, j *exportJob, raw, body []byte) ([]byte, []byte) {
	r := e.r
	h := j.hook
	if h.sync.failed.Load() {
		return raw, body // the sync already failed: Mixpanel sends no more of it
	}
	op := opWebhookDiff
	if h.action == actionMembers {
		op = opWebhookMembers
	}
	raw = r.u.appendWebhookBody(raw, &webhookParams{
		Action:     h.action,
		CohortID:   WebhookCohortID(r.o.Flavour, j.c.index),
		CohortName: "loadgen " + CohortID(r.o.Flavour, j.c.index),
		SessionID:  h.sync.session,
		Page:       h.page,
		TotalPages: h.total,
	}, h.refs)
	c := &call{
		method: "POST", path: webhookPath, authorization: e.hookAuth,
		contentType: "application/json", body: raw, maxRetries: mixpanelRetries,
	}
	if r.o.WebhookGzip {
		body = r.cl.codecs.Append(body, raw, EncodingGzip)
		c.body, c.encoding = body, EncodingGzip
	}
	intended := e.pacer.next(time.Now(), j.ready)
	if sleepUntil(ctx, intended) != nil {
		h.sync.failed.Store(true)
		r.rec.op(op).record(intended, time.Now(), len(h.refs), 0, true)
		r.rec.fail(fmt.Errorf("%s %s: %w", c.method, c.path, ctx.Err()))
		return raw, body
	}
	var reply webhookReply
	retries, err := r.cl.do(ctx, c, &reply)
	r.rec.op(op).record(intended, time.Now(), len(h.refs), retries, err != nil)
	if err != nil {
		h.sync.failed.Store(true)
		if st := apiclient.StatusOf(err); st != 0 && !apiclient.Retryable(st) {
			h.sync.paused.CompareAndSwap(0, int32(st))
		}
		r.rec.fail(err)
		return raw, body
	}
	if reply.Status != "success" || reply.Action != h.action {
		r.rec.verified(fmt.Sprintf("cohort %s: %s reply status %q action %q", j.c.id, h.action, reply.Status, reply.Action))
	}
	if h.action == actionMembers {
		e.sentIDs.Add(int64(len(h.refs)))
		if reply.Committed != nil && *reply.Committed {
			h.sync.committed.Add(1)
		}
	}
	e.checkCounts(j, &reply.changesReply)
	return raw, body
}

// webhookNotes reports what the webhook sender left out, abandoned and
// re-sent.
func (e *exporter) webhookNotes() {
	r := e.r
	if n := e.hook.anonymous.Load(); n > 0 {
		r.notes = append(r.notes, fmt.Sprintf("mixpanel-webhook: %d anonymous users left out of the cohorts (Mixpanel cannot name a still-anonymous user to cohortd)", n))
	}
	if n := e.hook.abandoned.Load(); n > 0 || r.o.InjectFailureRate > 0 {
		r.notes = append(r.notes, fmt.Sprintf("mixpanel-webhook: %d of %d syncs abandoned on purpose (inject failure rate %g) and re-sent whole with a new session id",
			n, e.hook.syncs.Load(), r.o.InjectFailureRate))
	}
	if n := e.hook.failed.Load(); n > 0 {
		r.notes = append(r.notes, fmt.Sprintf("mixpanel-webhook: %d syncs failed after %d retries a call and were re-sent whole", n, mixpanelRetries))
	}
	for _, c := range e.cohorts {
		if c.stopped != "" {
			r.notes = append(r.notes, fmt.Sprintf("mixpanel-webhook: cohort %s stopped (%s) and not verified", c.id, c.stopped))
		}
	}
}

// newWebhookNonce returns a per-run prefix of session ids: sessions are
// keyed by workspace, cohort and session id, and a server remembers
// committed sessions, so a rerun against the same workspace must not reuse
// one.
func newWebhookNonce() string {
	return "lg" + strconv.FormatInt(time.Now().UnixNano(), 36) + randomSuffix()
}
