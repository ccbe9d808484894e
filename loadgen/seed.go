package loadgen

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// Seed creates Options.Users users through POST /v1/users as docs/WORKLOADS.md
// says: in arrival order, in zstd NDJSON bodies of Options.UsersPerBody
// records, then a second pass that identifies a third of the anonymous
// users. A workspace is created first when Options.Credentials has no API
// key and Options.AdminToken is set. Informational lines go to log.
//
// The report is nil when the options are invalid (ErrInvalidOptions) or the
// setup failed (ErrSetup); otherwise the error is non-nil when the run failed.
func Seed(ctx context.Context, o Options, log io.Writer) (*Report, error) {
	r, err := newRun(o, log)
	if err != nil {
		return nil, err
	}
	if err := r.setup(ctx, func() error {
		return ensureCredentials(ctx, r.cl, r.o.AdminToken, &r.creds, true, false, r.log)
	}); err != nil {
		return nil, err
	}
	return r.report("seed", r.seedUsers(ctx))
}

// seedUsers runs both seeding passes.
func (r *run) seedUsers(ctx context.Context) error {
	o := r.o
	r.seed = &SeedCounts{}
	var sent atomic.Int64
	r.prog.start("seed users", int64(o.Users)+int64(o.Users/blockUsers), sent.Load)
	defer r.prog.stop()
	per := o.UsersPerBody
	bodies := (o.Users + per - 1) / per
	err := r.sendUserBodies(ctx, "users", bodies, &sent, func(dst []byte, i int) ([]byte, int) {
		from := 1 + i*per
		to := min(from+per, o.Users+1)
		return r.u.appendUserRecords(dst, from, to), to - from
	})
	if err != nil {
		return err
	}
	// One user in 20 is identified later, so a body of the second pass
	// covers 20 times as many users to hold about as many records.
	span := per * blockUsers
	bodies = (o.Users + span - 1) / span
	err = r.sendUserBodies(ctx, "identify", bodies, &sent, func(dst []byte, i int) ([]byte, int) {
		from := 1 + i*span
		to := min(from+span, o.Users+1)
		return r.u.appendIdentifyRecords(dst, from, to)
	})
	if err != nil {
		return err
	}
	s := r.seed
	if got := s.Created + s.Identified + s.Merged + s.Updated + s.Unchanged; got != s.Records {
		r.notes = append(r.notes, fmt.Sprintf("users upsert replies account for %d of %d records", got, s.Records))
	}
	return nil
}

// sendUserBodies encodes bodies on Options.Concurrency goroutines but sends
// them one at a time in order, so that the server sees users in arrival
// order (dense ids follow it, and clustered cohorts rely on that).
func (r *run) sendUserBodies(ctx context.Context, op string, bodies int, sent *atomic.Int64, build func(dst []byte, i int) ([]byte, int)) error {
	type encoded struct {
		body    []byte
		records int
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	futures := make(chan chan encoded, r.o.Concurrency)
	go func() {
		defer close(futures)
		for i := range bodies {
			f := make(chan encoded, 1)
			select {
			case futures <- f:
			case <-ctx.Done():
				return
			}
			go func() {
				raw, n := build(nil, i)
				f <- encoded{body: r.cl.codecs.Append(nil, raw, EncodingZstd), records: n}
			}()
		}
	}()
	stats := r.rec.op(op)
	p := newPacer(r.o.Rate)
	for f := range futures {
		e := <-f
		if e.records == 0 {
			continue
		}
		intended := p.next(time.Now(), time.Now())
		if err := sleepUntil(ctx, intended); err != nil {
			return err
		}
		var reply struct {
			Created, Identified, Merged, Updated, Unchanged int64
		}
		retries, err := r.cl.do(ctx, &call{
			method: "POST", path: "/v1/users", bearer: r.creds.APIKey,
			contentType: "application/x-ndjson", encoding: EncodingZstd, body: e.body,
		}, &reply)
		stats.record(intended, time.Now(), e.records, retries, err != nil)
		if err != nil {
			// Later bodies depend on earlier ones (identification needs the
			// device), so seeding stops at the first failure.
			return fmt.Errorf("seed %s: %w", op, err)
		}
		sent.Add(int64(e.records))
		s := r.seed
		s.Records += int64(e.records)
		s.Created += reply.Created
		s.Identified += reply.Identified
		s.Merged += reply.Merged
		s.Updated += reply.Updated
		s.Unchanged += reply.Unchanged
	}
	return ctx.Err()
}
