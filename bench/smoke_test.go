package bench

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/cohortd/cohortd/loadgen"
	"github.com/cohortd/cohortd/server/segment"
)

// TestMacroSmoke starts the in-process server over a small universe and
// sends one request of each benchmarked shape, checking the replies, so
// that a broken benchmark shows up in `go test -short` rather than in a
// long benchmark run. With REDIS_ADDR set it does the same against Redis.
func TestMacroSmoke(t *testing.T) {
	const users = 2_000
	s := serverFixtureFor(t, users)
	u := universe(users)

	type changes struct {
		Matched, Unmatched, Added, Removed int
	}
	check := func(name string, got changes, want changes) {
		t.Helper()
		if got != want {
			t.Errorf("%s: reply %+v, want %+v", name, got, want)
		}
	}
	plan := NewImportPlan(u, loadgen.FlavourUniform, 1000, 1, 1)
	if len(plan.Requests) != 2 {
		t.Fatalf("plan has %d requests, want 2", len(plan.Requests))
	}
	members := plan.Members / len(plan.Requests) // matched ids a request names

	// Partner shape: /cohorts upsert, then prime (adds Y) and request A
	// (adds X, removes Y), gzip JSON.
	if err := s.post("/partners/"+Partner+"/cohorts", "", "application/json", "gzip",
		Gzip(CohortUpsertBody(s.PartnerKey, s.Secret, "smoke-p")), 201); err != nil {
		t.Fatal(err)
	}
	var got changes
	if err := s.postReply("/partners/"+Partner+"/cohorts/users", "", "application/json", "gzip",
		Gzip(PartnerBody(s.PartnerKey, s.Secret, "smoke-p", plan.Prime[0])), 201, &got); err != nil {
		t.Fatal(err)
	}
	check("partner prime", got, changes{Matched: members / 2, Added: members / 2})
	got = changes{}
	if err := s.postReply("/partners/"+Partner+"/cohorts/users", "", "application/json", "gzip",
		Gzip(PartnerBody(s.PartnerKey, s.Secret, "smoke-p", plan.Requests[0])), 201, &got); err != nil {
		t.Fatal(err)
	}
	check("partner", got, changes{Matched: members, Unmatched: 1000 - members, Added: members / 2, Removed: members / 2})

	// Bulk shape: zstd NDJSON.
	got = changes{}
	if err := s.postReply("/v1/cohorts/"+Partner+"/smoke-b/changes", s.APIKey, "application/x-ndjson", "zstd",
		Zstd(BulkNDJSON(plan.Requests[0], 100)), 200, &got); err != nil {
		t.Fatal(err)
	}
	check("bulk", got, changes{Matched: members, Unmatched: 1000 - members, Added: members / 2})

	// Contains and count against the algebra cohorts, checked against the
	// engine and the naive peer.
	n := naiveFixtureFor(t, users)
	pool := QueryUsers(u, 50, 3)
	for _, q := range ContainsQueries {
		expr := q.Expr(loadgen.FlavourUniform)
		var reply struct{ Results []bool }
		if err := s.postReply("/v1/segments/contains", s.APIKey, "application/json", "",
			ContainsBody(expr, pool), 200, &reply); err != nil {
			t.Fatal(err)
		}
		e, err := ParseExpr([]byte(expr))
		if err != nil {
			t.Fatal(err)
		}
		if want := n.Contains(&e, pool, nil); !slices.Equal(reply.Results, want) {
			t.Errorf("contains %s: cohortd %v, naive %v", q.Name, reply.Results, want)
		}
	}
	for _, q := range CountQueries {
		expr := q.Expr(loadgen.FlavourClustered)
		var reply struct{ Count uint64 }
		if err := s.postReply("/v1/segments/count", s.APIKey, "application/json", "", CountBody(expr), 200, &reply); err != nil {
			t.Fatal(err)
		}
		seg, err := segment.Parse([]byte(expr))
		if err != nil {
			t.Fatal(err)
		}
		e, _ := ParseExpr([]byte(expr))
		if want, naive := s.W.Bind(seg).Count(), n.Count(&e); reply.Count != want || uint64(naive) != want || q.Name == "or_or" && want == 0 {
			t.Errorf("count %s: cohortd %d, engine %d, naive %d", q.Name, reply.Count, want, naive)
		}
	}

	t.Run("redis", func(t *testing.T) {
		if os.Getenv("REDIS_ADDR") == "" {
			t.Skip("REDIS_ADDR is unset")
		}
		ctx := context.Background()
		r := redisFixtureFor(t, users)
		if err := RedisApply(ctx, r.c, "smoke", plan.Requests[0], "smoke"); err != nil {
			t.Fatal(err)
		}
		keys, neg := RedisClauses(loadgen.FlavourUniform, 3)
		ms := make([]any, len(pool))
		for i, id := range pool {
			ms[i] = redisMember(id)
		}
		batch, err := RedisContainsBatch(ctx, r.c, keys, neg, ms, nil)
		if err != nil {
			t.Fatal(err)
		}
		e, _ := ParseExpr([]byte(ContainsQueries[2].Expr(loadgen.FlavourUniform)))
		if want := n.Contains(&e, pool, nil); !slices.Equal(batch, want) {
			t.Errorf("redis batch contains %v, naive %v", batch, want)
		}
		for i, id := range pool[:5] {
			one, err := RedisContains(ctx, r.c, keys, neg, redisMember(id))
			if err != nil || one != batch[i] {
				t.Errorf("redis contains %v: %v, %v; batch says %v", id, one, err, batch[i])
			}
		}
		for _, q := range CountQueries {
			got, err := RedisCount(ctx, r.c, loadgen.FlavourClustered, q.Name, "tmp:smoke")
			seg, _ := segment.Parse([]byte(q.Expr(loadgen.FlavourClustered)))
			if want := s.W.Bind(seg).Count(); err != nil || uint64(got) != want {
				t.Errorf("redis count %s = %d, %v; engine %d", q.Name, got, err, want)
			}
		}
	})
}
