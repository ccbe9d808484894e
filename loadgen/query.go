package loadgen

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohortd/cohortd/server/jsonstr"
)

// Query runs segment evaluators in the Options.Mix for Options.Duration
// (default 10s) or Options.Requests queries, on Options.QueryConcurrency
// workers at Options.Rate (0: closed loop). Expressions name the cohorts an
// Export with the same Cohorts, Flavour, Shape and Credentials.Partner creates;
// users are drawn from the seeded universe.
//
// The report is nil when the options are invalid (ErrInvalidOptions) or the
// setup failed (ErrSetup); otherwise the error is non-nil when the run failed.
func Query(ctx context.Context, o Options, log io.Writer) (*Report, error) {
	r, err := newRun(o, log)
	if err != nil {
		return nil, err
	}
	if err := r.setup(ctx, func() error {
		return ensureCredentials(ctx, r.cl, r.o.AdminToken, &r.creds, true, false, r.log)
	}); err != nil {
		return nil, err
	}
	tctx, cancel := r.timed(ctx, 10*time.Second)
	q := r.newQuerier(r.o.Rate)
	r.prog.start("query", -1, q.done.Load)
	switch {
	case r.o.Client == ClientRaw:
		err = q.runRaw(ctx)
	case r.o.Protocol == ProtocolRESP:
		err = q.runRESP(ctx, tctx)
	default:
		q.run(ctx, tctx)
	}
	r.prog.stop()
	cancel()
	return r.report("query", err)
}

// Query kinds, also the operation names in reports.
const (
	opContains = "contains"
	opBatch    = "batch"
	opCompact  = "batch_compact"
	opCount    = "count"
	opPage     = "page"
)

const (
	batchUsers = 1_000 // users per batch contains
	pageLimit  = 1_000 // members per page
)

// querier runs segment-evaluator workers.
type querier struct {
	r      *run
	pacer  *pacer
	refs   []string // "<partner>/<cohort_id>" of every cohort
	issued atomic.Int64
	done   atomic.Int64
}

func (r *run) newQuerier(rate float64) *querier {
	q := &querier{r: r, pacer: newPacer(rate)}
	for i := range r.o.Cohorts {
		q.refs = append(q.refs, r.creds.Partner+"/"+r.cohortID(i))
	}
	return q
}

// run issues queries until tctx ends or Options.Requests were issued;
// requests in flight (and their retries) run under ctx.
func (q *querier) run(ctx, tctx context.Context) {
	start := time.Now()
	var wg sync.WaitGroup
	for w := range q.r.o.QueryConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := newRand(q.r.o.Seed, streamQuery, uint64(w))
			var body []byte
			for {
				if n := q.r.o.Requests; n > 0 && q.issued.Add(1) > int64(n) {
					return
				}
				if tctx.Err() != nil {
					return
				}
				kind := q.r.o.Mix.pick(rng)
				var path string
				path, body = q.build(body[:0], kind, rng)
				// The schedule is fixed from the start (ready = start):
				// an open loop does not wait for the server.
				from, err := WaitSlot(tctx, q.pacer.next(time.Now(), start))
				if err != nil {
					return
				}
				q.send(ctx, kind, path, body, from)
				q.done.Add(1)
			}
		}()
	}
	wg.Wait()
}

// pick draws a query kind by weight.
func (m Mix) pick(r *rand.Rand) string {
	x := r.IntN(m.total())
	switch {
	case x < m.Contains:
		return opContains
	case x < m.Contains+m.Batch:
		return opBatch
	case x < m.Contains+m.Batch+m.Compact:
		return opCompact
	case x < m.Contains+m.Batch+m.Compact+m.Count:
		return opCount
	default:
		return opPage
	}
}

// appendExpr appends a 1–3 clause expression: cohorts, each negated with
// probability 1/4, joined by "and" or "or".
func (q *querier) appendExpr(dst []byte, r *rand.Rand) []byte {
	clause := func(dst []byte) []byte {
		neg := r.IntN(4) == 0
		if neg {
			dst = append(dst, `{"not":`...)
		}
		dst = append(dst, `{"cohort":`...)
		dst = jsonstr.Append(dst, q.refs[r.IntN(len(q.refs))])
		dst = append(dst, '}')
		if neg {
			dst = append(dst, '}')
		}
		return dst
	}
	k := 1 + r.IntN(3)
	if k == 1 {
		return clause(dst)
	}
	if r.IntN(2) == 0 {
		dst = append(dst, `{"and":[`...)
	} else {
		dst = append(dst, `{"or":[`...)
	}
	for i := range k {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = clause(dst)
	}
	return append(dst, "]}"...)
}

// appendUser appends a random seeded user as a contains argument, named as
// segment evaluators name it (identified-later users by external id).
func (q *querier) appendUser(dst []byte, r *rand.Rand) []byte {
	var tmp [64]byte
	ref := q.r.u.MemberRef(1 + r.IntN(q.r.o.Users))
	switch ref.Kind {
	case KindAlias:
		dst = append(dst, `{"alias_name":"`+aliasName+`","alias_label":`...)
	case KindDevice:
		dst = append(dst, `{"device_id":`...)
	default:
		dst = append(dst, `{"external_id":`...)
	}
	dst = jsonstr.Append(dst, q.r.u.appendValue(tmp[:0], ref))
	return append(dst, '}')
}

// externalRef draws a random seeded user that has an external id (the
// compact form names users by external id only).
func (q *querier) externalRef(r *rand.Rand) Ref {
	for {
		if ref := q.r.u.MemberRef(1 + r.IntN(q.r.o.Users)); ref.Kind == KindExternal {
			return ref
		}
	}
}

// build appends the body of a query of kind and returns its path.
func (q *querier) build(dst []byte, kind string, r *rand.Rand) (string, []byte) {
	dst = append(dst, `{"segment":`...)
	dst = q.appendExpr(dst, r)
	switch kind {
	case opContains, opBatch:
		n := 1
		if kind == opBatch {
			n = batchUsers
		}
		dst = append(dst, `,"users":[`...)
		for i := range n {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = q.appendUser(dst, r)
		}
		return "/v1/segments/contains", append(dst, "]}"...)
	case opCompact:
		dst = append(dst, `,"external_ids":[`...)
		var tmp [64]byte
		for i := range batchUsers {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsonstr.Append(dst, q.r.u.appendValue(tmp[:0], q.externalRef(r)))
		}
		return "/v1/segments/contains", append(dst, "]}"...)
	case opCount:
		return "/v1/segments/count", append(dst, '}')
	default:
		dst = append(dst, `,"limit":`...)
		dst = fmt.Appendf(dst, "%d}", pageLimit)
		return "/v1/segments/members", dst
	}
}

// queryReply holds what the query endpoints answer; send checks its shape.
type queryReply struct {
	Results []bool  `json:"results"`
	Count   *int64  `json:"count"`
	Members []any   `json:"members"`
	Next    *string `json:"next_cursor"`
}

// send sends one query and records it; a reply of the wrong shape counts as
// an error.
func (q *querier) send(ctx context.Context, kind, path string, body []byte, intended time.Time) {
	r := q.r
	var reply queryReply
	retries, err := r.cl.do(ctx, &call{
		method: "POST", path: path, bearer: r.creds.APIKey,
		contentType: "application/json", body: body,
	}, &reply)
	done := time.Now()
	ids := 0
	if err == nil {
		switch kind {
		case opContains, opBatch, opCompact:
			want := 1
			if kind != opContains {
				want = batchUsers
			}
			ids = want
			if len(reply.Results) != want {
				err = fmt.Errorf("%s: %d results for %d users", path, len(reply.Results), want)
			}
		case opCount:
			if reply.Count == nil {
				err = fmt.Errorf("%s: reply without count", path)
			}
		case opPage:
			ids = len(reply.Members)
			if len(reply.Members) > pageLimit {
				err = fmt.Errorf("%s: page of %d members, limit %d", path, len(reply.Members), pageLimit)
			}
		}
	}
	r.rec.op(kind).record(intended, done, ids, retries, err != nil)
	if err != nil {
		r.rec.fail(err)
	}
}
