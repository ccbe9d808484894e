package loadgen

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Export behaves like a real exporter: for each of Options.Cohorts cohorts
// it sends the full membership as adds, then a change set every
// Options.Interval until Options.Duration ends or Options.ChangeSets sets
// were sent, in Options.Shape, with Options.Concurrency senders. It then
// compares the server's cohort sizes with its own model. Users must have been
// seeded with the same Users and Seed. Missing credentials are created when
// Options.AdminToken is set. With ShapeMixpanelWebhook it behaves like
// Mixpanel's cohort sync instead (see webhook.go).
//
// The report is nil when the options are invalid (ErrInvalidOptions) or the
// setup failed (ErrSetup); otherwise the error is non-nil when the run failed.
func Export(ctx context.Context, o Options, log io.Writer) (*Report, error) {
	r, err := newRun(o, log)
	if err != nil {
		return nil, err
	}
	if err := r.setup(ctx, func() error { return r.ensureExportCredentials(ctx) }); err != nil {
		return nil, err
	}
	e := r.newExporter(r.o.Rate)
	e.start(ctx)
	err = e.firstLoad(ctx)
	if err == nil {
		tctx, cancel := r.timed(ctx, 0)
		e.churn(ctx, tctx)
		cancel()
	}
	e.stop()
	if err == nil {
		err = e.verify(ctx)
	}
	return r.report("export", err)
}

// cohortState is the exporter's model of one cohort. members is touched
// only by the cohort's own sync loop.
type cohortState struct {
	index     int
	id        string
	members   []uint32 // sorted user numbers the server should hold
	unmatched *unmatchedSource
	created   time.Time
	late      int    // change sets that started after their tick had passed
	stopped   string // why the webhook sender gave the cohort up; "" while it runs
}

// exportJob is one request's worth of changes.
type exportJob struct {
	c       *cohortState
	adds    []Ref
	removes []Ref
	ready   time.Time
	wg      *sync.WaitGroup
	hook    *webhookJob // a Mixpanel webhook call instead of adds and removes
}

// exporter sends cohort changes through a pool of senders.
type exporter struct {
	r       *run
	pacer   *pacer
	cohorts []*cohortState
	jobs    chan *exportJob
	wg      sync.WaitGroup
	sentIDs atomic.Int64
	sets    atomic.Int64

	// The webhook sender's state (ShapeMixpanelWebhook only).
	hook      webhookStats
	hookNonce string // prefix of this run's session ids
	hookAuth  string // the Authorization header of every call
}

func (r *run) newExporter(rate float64) *exporter {
	e := &exporter{r: r, pacer: newPacer(rate), jobs: make(chan *exportJob, r.o.Concurrency)}
	now := time.Now().UTC().Truncate(time.Second)
	for i := range r.o.Cohorts {
		e.cohorts = append(e.cohorts, &cohortState{
			index:     i,
			id:        r.cohortID(i),
			unmatched: r.u.newUnmatchedSource(i, r.o.Flavour),
			created:   now,
		})
	}
	if r.o.Shape == ShapeMixpanelWebhook {
		e.hookNonce = newWebhookNonce()
		e.hookAuth = basicAuth("loadgen", r.creds.ClientSecret)
	}
	return e
}

// start launches the senders; stop waits for them after the last job.
func (e *exporter) start(ctx context.Context) {
	for range e.r.o.Concurrency {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			var raw, body []byte
			for j := range e.jobs {
				if j.hook != nil {
					raw, body = e.sendWebhook(ctx, j, raw[:0], body[:0])
					j.wg.Done()
					continue
				}
				raw, body = e.send(ctx, j, raw[:0], body[:0])
				j.wg.Done()
			}
		}()
	}
}

func (e *exporter) stop() {
	close(e.jobs)
	e.wg.Wait()
}

// submit splits adds (first) and removes into requests, hands them to the
// senders and waits until all are done. Requests of one call run
// concurrently; they touch disjoint users, so their order does not matter.
func (e *exporter) submit(c *cohortState, adds, removes []Ref, ready time.Time) {
	per := e.r.o.PartnerMaxIDs
	if e.r.o.Shape == ShapeBulk {
		per = e.r.o.BulkIDs
	}
	var wg sync.WaitGroup
	for len(adds)+len(removes) > 0 {
		j := &exportJob{c: c, ready: ready, wg: &wg}
		n := min(per, len(adds))
		j.adds, adds = adds[:n:n], adds[n:]
		n = min(per-n, len(removes))
		j.removes, removes = removes[:n:n], removes[n:]
		wg.Add(1)
		e.jobs <- j
	}
	wg.Wait()
}

// firstLoad sends every cohort's full membership as adds, cohorts one after
// another as an exporter's first sync does.
func (e *exporter) firstLoad(ctx context.Context) error {
	o := e.r.o
	total := int64(0)
	for _, c := range e.cohorts {
		total += int64(e.r.u.CohortSize(c.index, o.Flavour))
	}
	e.r.prog.start("first load", total, e.sentIDs.Load)
	defer e.r.prog.stop()
	for _, c := range e.cohorts {
		if err := ctx.Err(); err != nil {
			return err
		}
		members := e.r.u.CohortMembers(c.index, e.r.u.CohortSize(c.index, o.Flavour), o.Flavour)
		if o.Shape == ShapeMixpanelWebhook {
			named, skipped := e.r.u.nameable(members)
			e.hook.anonymous.Add(int64(skipped))
			e.syncWebhook(ctx, c, 0, c.unmatched.withUnmatched(named), nil, named, time.Now())
			continue
		}
		c.members = members
		e.submit(c, c.unmatched.withUnmatched(c.members), nil, time.Now())
	}
	return ctx.Err()
}

// churn sends change sets until tctx ends or Options.ChangeSets sets per
// cohort were sent; with neither bound it sends none. Each cohort has its own
// loop, so one cohort's slow set never delays another's; a cohort's next set
// waits for its previous one, since a user may leave in one set and join in
// the next. Sets in flight when tctx ends are finished under ctx.
func (e *exporter) churn(ctx, tctx context.Context) {
	o := e.r.o
	if o.ChangeSets == 0 && o.Duration == 0 {
		return
	}
	start := time.Now()
	limit := time.Duration(0)
	if o.Duration > 0 {
		limit = o.Duration
	} else {
		limit = time.Duration(o.ChangeSets) * o.Interval
	}
	e.r.prog.start("sync", limit.Milliseconds(), func() int64 { return time.Since(start).Milliseconds() })
	defer e.r.prog.stop()
	var wg sync.WaitGroup
	for _, c := range e.cohorts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for set := 1; o.ChangeSets == 0 || set <= o.ChangeSets; set++ {
				tick := start.Add(time.Duration(set) * o.Interval)
				if sleepUntil(tctx, tick) != nil || ctx.Err() != nil {
					return
				}
				if c.stopped != "" {
					return
				}
				if time.Since(tick) > o.Interval/10 {
					c.late++
				}
				cs := e.r.u.Churn(c.index, set, c.members, o.ChurnLeave, o.ChurnJoin)
				if o.Shape == ShapeMixpanelWebhook {
					// Members are nameable already; joiners may not be.
					cs.Join, _ = e.r.u.nameable(cs.Join)
					e.syncWebhook(ctx, c, set, c.unmatched.withUnmatched(cs.Join), e.r.u.refsOf(cs.Leave), cs.Apply(c.members), tick)
				} else {
					e.submit(c, c.unmatched.withUnmatched(cs.Join), e.r.u.refsOf(cs.Leave), tick)
					c.members = cs.Apply(c.members)
				}
				e.sets.Add(1)
			}
		}()
	}
	wg.Wait()
	late := 0
	for _, c := range e.cohorts {
		late += c.late
	}
	if late > 0 {
		e.r.notes = append(e.r.notes, fmt.Sprintf("%d of %d change sets started late (the server or loadgen could not keep the %s cadence)", late, e.sets.Load(), o.Interval))
	}
}

// changesReply is the reply of both change endpoints; counts are pointers
// so that a reply without them is not mistaken for zeros.
type changesReply struct {
	Matched   *int64 `json:"matched"`
	Unmatched *int64 `json:"unmatched"`
}

// send builds, paces and sends one job. raw and body are the sender's
// reusable buffers, returned for the next job.
func (e *exporter) send(ctx context.Context, j *exportJob, raw, body []byte) ([]byte, []byte) {
	r := e.r
	creds := &r.creds
	ids := len(j.adds) + len(j.removes)
	var c *call
	if r.o.Shape == ShapeBulk {
		raw = r.u.appendBulkChanges(raw, j.adds, j.removes, r.o.BulkLineIDs)
		body = r.cl.codecs.Append(body, raw, EncodingZstd)
		c = &call{
			method: "POST", bearer: creds.APIKey,
			path:        "/v1/cohorts/" + url.PathEscape(creds.Partner) + "/" + url.PathEscape(j.c.id) + "/changes",
			contentType: "application/x-ndjson", encoding: EncodingZstd, body: body,
		}
	} else {
		raw = r.u.appendPartnerChanges(raw, creds, j.c.id, j.adds, j.removes)
		body = r.cl.codecs.Append(body, raw, EncodingGzip)
		c = &call{
			method: "POST", path: "/partners/" + url.PathEscape(creds.Partner) + "/cohorts/users",
			contentType: "application/json", encoding: EncodingGzip, body: body,
		}
	}
	from, err := WaitSlot(ctx, e.pacer.next(time.Now(), j.ready))
	if err != nil {
		r.rec.op(opName(r.o.Shape)).record(from, time.Now(), ids, 0, true)
		r.rec.fail(fmt.Errorf("%s %s: %w", c.method, c.path, err))
		return raw, body
	}
	sendAt := from
	if r.o.Shape == ShapePartner {
		// Real senders upsert the cohort before every batch.
		up := appendCohortUpsert(nil, creds, j.c.id, j.c.created)
		retries, err := r.cl.do(ctx, &call{
			method: "POST", path: "/partners/" + url.PathEscape(creds.Partner) + "/cohorts",
			contentType: "application/json", body: up,
		}, nil)
		now := time.Now()
		r.rec.op("upsert").record(from, now, 0, retries, err != nil)
		if err != nil {
			r.rec.fail(err)
		}
		sendAt = now
	}
	var reply changesReply
	retries, err := r.cl.do(ctx, c, &reply)
	r.rec.op(opName(r.o.Shape)).record(sendAt, time.Now(), ids, retries, err != nil)
	if err != nil {
		r.rec.fail(err)
		return raw, body
	}
	e.sentIDs.Add(int64(len(j.adds)))
	e.checkCounts(j, &reply)
	return raw, body
}

func opName(s Shape) string {
	if s == ShapeBulk {
		return "bulk_changes"
	}
	return "partner_changes"
}

// checkCounts compares a reply's matched and unmatched counts with the
// model: every member identifier matches, unknown ids and device ids of
// identified users do not.
func (e *exporter) checkCounts(j *exportJob, reply *changesReply) {
	if reply.Matched == nil || reply.Unmatched == nil {
		return
	}
	var matched, unmatched int64
	for _, refs := range [][]Ref{j.adds, j.removes} {
		for _, ref := range refs {
			if e.r.u.Matches(ref) {
				matched++
			} else {
				unmatched++
			}
		}
	}
	msg := ""
	if *reply.Matched != matched || *reply.Unmatched != unmatched {
		msg = fmt.Sprintf("cohort %s: reply matched %d unmatched %d, expected %d and %d",
			j.c.id, *reply.Matched, *reply.Unmatched, matched, unmatched)
	}
	e.r.rec.verified(msg)
}

// verify compares every cohort's size on the server with the model.
func (e *exporter) verify(ctx context.Context) error {
	r := e.r
	stats := r.rec.op("verify")
	if r.o.Shape == ShapeMixpanelWebhook {
		e.webhookNotes()
	}
	// Every node of a group is checked, once it has applied every write
	// of the run (a consistent read).
	for _, base := range r.cl.bases {
		node := ""
		if len(r.cl.bases) > 1 {
			node = " on " + base
		}
		for _, c := range e.cohorts {
			if c.stopped != "" {
				continue // its errors fail the run already
			}
			var reply struct {
				Size *int64 `json:"size"`
			}
			start := time.Now()
			path := "/v1/cohorts/" + url.PathEscape(r.creds.Partner) + "/" + url.PathEscape(c.id)
			retries, err := r.cl.do(ctx, &call{method: "GET", path: path, bearer: r.creds.APIKey, consistent: true, base: base}, &reply)
			stats.record(start, time.Now(), 0, retries, err != nil)
			switch {
			case err != nil:
				r.rec.fail(err)
				r.rec.verified(fmt.Sprintf("cohort %s%s: size unknown: %v", c.id, node, err))
			case reply.Size == nil:
				r.rec.verified(fmt.Sprintf("cohort %s%s: reply without size", c.id, node))
			case *reply.Size != int64(len(c.members)):
				r.rec.verified(fmt.Sprintf("cohort %s%s: server size %d, expected %d", c.id, node, *reply.Size, len(c.members)))
			default:
				r.rec.verified("")
			}
		}
	}
	return nil
}
