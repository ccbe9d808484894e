package loadgen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Protocols of Options.Protocol.
const (
	ProtocolHTTP = "http"
	ProtocolRESP = "resp"
)

// RESP query kinds, also the operation names in reports. The Mix's
// weights choose them: Contains is SISMEMBER (Options.Pipeline commands
// at a time), Batch SMISMEMBER of 1,000 users, Count the size of the
// intersection of two cohorts, Page one SSCAN step of COUNT 1,000.
const (
	opSISMEMBER  = "sismember"
	opSMISMEMBER = "smismember"
	opInterCount = "intercount"
	opSSCAN      = "sscan"
)

// runRESP is Query over the Redis protocol (docs/API.md §6) against
// Options.RESPAddr, authenticated with the workspace API key. The same run
// works against a redis-server holding the same sets under the same keys
// ("<partner>/<cohort_id>", members the users' external ids) with
// requirepass set to the key: then the intersection count is SINTERCARD 2,
// while cohortd gets COHORT.COUNT of the two cohorts' "and" (the server's
// HELLO reply tells which it is).
func (q *querier) runRESP(ctx, tctx context.Context) error {
	o := q.r.o
	rc := redis.NewClient(&redis.Options{
		Addr: o.RESPAddr, Password: q.r.creds.APIKey,
		PoolSize: o.QueryConcurrency, MinIdleConns: o.QueryConcurrency,
		ReadTimeout: o.RequestTimeout, WriteTimeout: o.RequestTimeout, MaxRetries: -1,
	})
	defer rc.Close()
	hello, err := rc.Do(ctx, "HELLO", "3").Result()
	if err != nil {
		return fmt.Errorf("resp %s: %w", o.RESPAddr, err)
	}
	cohortd := strings.Contains(fmt.Sprint(hello), "cohortd")
	server := "redis-server"
	if cohortd {
		server = "cohortd"
	}
	q.r.notes = append(q.r.notes, fmt.Sprintf("protocol resp: %s at %s, %d SISMEMBERs a pipeline", server, o.RESPAddr, o.Pipeline))
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.QueryConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := newRand(o.Seed, streamQuery, uint64(w))
			args := make([]any, 0, 2+batchUsers)
			for {
				if n := o.Requests; n > 0 && q.issued.Add(1) > int64(n) {
					return
				}
				if tctx.Err() != nil {
					return
				}
				kind := o.Mix.pick(rng)
				from, err := WaitSlot(tctx, q.pacer.next(time.Now(), start))
				if err != nil {
					return
				}
				args = q.sendRESP(ctx, rc, cohortd, kind, rng, args[:0], from)
				q.done.Add(1)
			}
		}()
	}
	wg.Wait()
	return nil
}

// sendRESP sends one query (a pipeline of Options.Pipeline SISMEMBERs for
// a contains) and records it.
func (q *querier) sendRESP(ctx context.Context, rc *redis.Client, cohortd bool, kind string, r *rand.Rand, args []any, intended time.Time) []any {
	o := q.r.o
	key := q.refs[r.IntN(len(q.refs))]
	user := func() string { return ExternalID(1 + r.IntN(o.Users)) }
	var op string
	var err error
	n, ids := 1, 1
	switch kind {
	case opContains:
		op, n, ids = opSISMEMBER, o.Pipeline, o.Pipeline
		if n == 1 {
			err = rc.SIsMember(ctx, key, user()).Err()
			break
		}
		p := rc.Pipeline()
		for range n {
			p.SIsMember(ctx, key, user())
		}
		_, err = p.Exec(ctx)
	case opBatch:
		op, ids = opSMISMEMBER, batchUsers
		for range batchUsers {
			args = append(args, user())
		}
		var res []bool
		res, err = rc.SMIsMember(ctx, key, args...).Result()
		if err == nil && len(res) != batchUsers {
			err = fmt.Errorf("SMISMEMBER: %d results for %d members", len(res), batchUsers)
		}
	case opCount:
		op, ids = opInterCount, 0
		other := q.refs[r.IntN(len(q.refs))]
		if cohortd {
			expr := fmt.Sprintf(`{"and":[{"cohort":%q},{"cohort":%q}]}`, key, other)
			err = rc.Do(ctx, "COHORT.COUNT", expr).Err()
		} else {
			err = rc.SInterCard(ctx, 0, key, other).Err()
		}
	default:
		op = opSSCAN
		var page []string
		page, _, err = rc.SScan(ctx, key, 0, "", pageLimit).Result()
		ids = len(page)
	}
	done := time.Now()
	st := q.r.rec.op(op)
	if err != nil {
		st.record(intended, done, 0, 0, true)
		q.r.rec.fail(fmt.Errorf("%s %s: %w", op, key, err))
		return args
	}
	st.recordMany(intended, done, n, ids)
	return args
}

// recordMany adds n successful operations that finished together (the
// commands of one pipeline) carrying ids identifiers in all.
func (s *opStats) recordMany(intended, done time.Time, n, ids int) {
	us := min(max(latency(intended, done).Microseconds(), histMin), histMax)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spanLocked(intended, done)
	s.mu.count += int64(n)
	s.mu.ids += int64(ids)
	_ = s.mu.h.RecordValues(us, int64(n))
}
