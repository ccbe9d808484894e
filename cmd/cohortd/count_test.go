package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestSegmentCountsOverDenseViews drives the counts that run over dense
// views through the real binary: three-clause counts of cohorts whose
// members are spread over the whole id range earn their views after a few
// counts (GET /v1/admin/memory shows them) and stay exact, before and after
// a cohort changes; unions of clustered cohorts (run containers, counted
// through roaring) are exact too.
func TestSegmentCountsOverDenseViews(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "cnt", "amplitude")
	const n = 600_000 // enough ids that a view pays for itself within two counts
	for start := 0; start < n; start += 100_000 {
		var body bytes.Buffer
		for i := start; i < start+100_000; i++ {
			fmt.Fprintf(&body, "{\"external_id\":\"user-%014d\"}\n", i)
		}
		d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: body.Bytes(), ctype: "application/x-ndjson", encoding: "zstd"}, 200)
	}
	members := map[string][]bool{}
	put := func(id string, in []bool) {
		t.Helper()
		var body bytes.Buffer
		for i, ok := range in {
			if ok {
				fmt.Fprintf(&body, "{\"external_id\":\"user-%014d\"}\n", i)
			}
		}
		d.must(req{method: "PUT", path: "/v1/cohorts/amplitude/" + id + "/members", token: tn.apiKey, body: body.Bytes(), ctype: "application/x-ndjson", encoding: "zstd"}, 200)
		members[id] = in
	}
	r := rand.New(rand.NewPCG(7, 8))
	for _, id := range []string{"a", "b", "c"} {
		in := make([]bool, n)
		for i := range in {
			in[i] = r.IntN(10) == 0
		}
		put(id, in)
	}
	for k, id := range []string{"r1", "r2", "r3"} {
		in := make([]bool, n)
		for blk := 0; blk < n; blk += 10_000 {
			for i := blk + k*300; i < blk+k*300+1_000; i++ {
				in[i] = true
			}
		}
		put(id, in)
	}
	want := func(f func(i int) bool) int {
		c := 0
		for i := range n {
			if f(i) {
				c++
			}
		}
		return c
	}
	m := func(id string) []bool { return members[id] }
	cohort := func(id string) map[string]any { return map[string]any{"cohort": "amplitude/" + id} }
	not := func(e map[string]any) map[string]any { return map[string]any{"not": e} }
	count := func(seg map[string]any) int {
		t.Helper()
		return num(t, d.must(req{method: "POST", path: "/v1/segments/count", token: tn.apiKey, body: map[string]any{"segment": seg}}, 200).json(t), "count")
	}
	denseViews := func() int {
		t.Helper()
		ws := d.must(req{method: "GET", path: "/v1/admin/memory", token: admin}, 200).json(t)["workspaces"].([]any)[0].(map[string]any)
		return num(t, ws["bytes"].(map[string]any), "dense_views")
	}
	cases := []struct {
		name  string
		seg   map[string]any
		want  func() int
		views bool // counted over views once earned
	}{
		{"a and b and not c", map[string]any{"and": []any{cohort("a"), cohort("b"), not(cohort("c"))}},
			func() int { return want(func(i int) bool { return m("a")[i] && m("b")[i] && !m("c")[i] }) }, true},
		{"a or b or c", map[string]any{"or": []any{cohort("a"), cohort("b"), cohort("c")}},
			func() int { return want(func(i int) bool { return m("a")[i] || m("b")[i] || m("c")[i] }) }, true},
		{"r1 or r2 or r3", map[string]any{"or": []any{cohort("r1"), cohort("r2"), cohort("r3")}},
			func() int { return want(func(i int) bool { return m("r1")[i] || m("r2")[i] || m("r3")[i] }) }, false},
		{"a and r1 and not r2", map[string]any{"and": []any{cohort("a"), cohort("r1"), not(cohort("r2"))}},
			func() int { return want(func(i int) bool { return m("a")[i] && m("r1")[i] && !m("r2")[i] }) }, false},
	}
	check := func(stage string) {
		t.Helper()
		for _, c := range cases {
			w := c.want()
			for k := range 4 { // the first two earn the views
				if got := count(c.seg); got != w {
					t.Fatalf("%s: count %d of %s = %d, want %d", stage, k, c.name, got, w)
				}
			}
		}
	}
	if v := denseViews(); v != 0 {
		t.Fatalf("dense views before any count: %d bytes", v)
	}
	check("first versions")
	// a, b and c earned views: a bit per id of the range each covers.
	if v := denseViews(); v < 3*(n-64)/8 {
		t.Fatalf("dense views after the counts: %d bytes, want at least three views of %d ids", v, n)
	}
	// A change publishes new versions without views: counts stay exact
	// through roaring, then earn views of the new versions.
	in := append([]bool(nil), members["b"]...)
	for i := 0; i < n; i += 7 {
		in[i] = !in[i]
	}
	put("b", in)
	check("after b changed")
}
