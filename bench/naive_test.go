package bench

import (
	"slices"
	"testing"

	"github.com/cohortd/cohortd/loadgen"
)

// TestNaiveHandChecked runs the naive engine through a case small enough
// to check by hand against docs/API.md §2.
func TestNaiveHandChecked(t *testing.T) {
	n := NewNaive()
	n.Upsert("a", "", "")  // u1: identified
	n.Upsert("", "", "x")  // u2: alias only
	n.Upsert("", "d3", "") // u3: anonymous
	n.Upsert("", "d4", "") // u4: anonymous, then identified as "b"
	n.Upsert("b", "d4", "")
	if n.Users() != 4 {
		t.Fatalf("users = %d, want 4", n.Users())
	}
	ext := func(v string) Ident { return Ident{loadgen.KindExternal, v} }
	dev := func(v string) Ident { return Ident{loadgen.KindDevice, v} }
	ali := func(v string) Ident { return Ident{loadgen.KindAlias, v} }
	res := n.Apply("c", Request{
		{IDs: []Ident{ext("a"), dev("d3"), dev("d4"), ext("nobody"), ali("x")}},
		{IDs: []Ident{ext("a")}, Remove: true},
	})
	// d4 belongs to an identified user and "nobody" to no one: 2 unmatched.
	// "a" is added and removed in one request: the last change wins and
	// nothing changes for u1.
	if want := (NaiveResult{Matched: 4, Unmatched: 2, Added: 2, Removed: 0}); res != want {
		t.Fatalf("apply = %+v, want %+v", res, want)
	}
	e, err := ParseExpr([]byte(`{"cohort":"c"}`))
	if err != nil {
		t.Fatal(err)
	}
	// Queries resolve a device id to whoever holds it, identified or not.
	got := n.Contains(&e, []Ident{ext("a"), dev("d3"), ali("x"), dev("d4"), ext("b"), ext("nobody")}, nil)
	if want := []bool{false, true, true, false, false, false}; !slices.Equal(got, want) {
		t.Errorf("contains = %v, want %v", got, want)
	}
	for expr, want := range map[string]int{
		`{"cohort":"c"}`:         2,
		`{"not":{"cohort":"c"}}`: 2,
		`{"and":[{"cohort":"c"},{"not":{"cohort":"zz"}}]}`:        2,
		`{"and":[{"cohort":"c"},{"cohort":"zz"}]}`:                0,
		`{"or":[{"cohort":"c"},{"not":{"cohort":"c"}}]}`:          4,
		`{"and":[{"not":{"cohort":"c"}},{"cohort":"zz"}]}`:        0,
		`{"or":[{"cohort":"zz"},{"and":[{"cohort":"c"}]}]}`:       2,
		`{"and":[{"cohort":"c"},{"not":{"cohort":"c"}}]}`:         0,
		`{"and":[{"not":{"cohort":"zz"}},{"cohort":"c"}]}`:        2,
		`{"and":[{"cohort":"c"},{"or":[{"cohort":"zz"}]}]}`:       0,
		`{"not":{"and":[{"cohort":"c"},{"cohort":"zz"}]}}`:        4,
		`{"not":{"or":[{"cohort":"c"},{"cohort":"zz"}]}}`:         2,
		`{"and":[{"cohort":"c"},{"not":{"not":{"cohort":"c"}}}]}`: 2,
	} {
		e, err := ParseExpr([]byte(expr))
		if err != nil {
			t.Fatal(err)
		}
		if got := n.Count(&e); got != want {
			t.Errorf("count %s = %d, want %d", expr, got, want)
		}
	}
	res = n.Apply("c", Request{{IDs: []Ident{dev("d3"), dev("d3")}, Remove: true}})
	if want := (NaiveResult{Matched: 2, Removed: 1}); res != want {
		t.Errorf("remove = %+v, want %+v", res, want)
	}
}

// TestImportPlan checks the request shapes: exactly ids identifiers a
// request, 3 unmatched per 100, and a cycle that flips X and Y.
func TestImportPlan(t *testing.T) {
	u := universe(20_000)
	anon := map[string]bool{} // device ids that import matches
	for n := 1; n <= u.Users; n++ {
		if u.Kind(n) == loadgen.KindDevice {
			anon[u.DeviceID(n)] = true
		}
	}
	for _, f := range Flavours {
		plan := NewImportPlan(u, f, 1000, 2, 1)
		if len(plan.Requests) == 0 || len(plan.Requests)%2 != 0 {
			t.Fatalf("%s: %d requests", f, len(plan.Requests))
		}
		for i, r := range plan.Requests {
			if r.Len() != 1000 || r[0].Remove || !r[1].Remove {
				t.Fatalf("%s: request %d: %d ids, remove %v/%v", f, i, r.Len(), r[0].Remove, r[1].Remove)
			}
			unmatched := 0
			for _, id := range r[0].IDs {
				if id.Kind == loadgen.KindUnknown || id.Kind == loadgen.KindDevice && !anon[id.Value] {
					unmatched++
				}
			}
			if unmatched != 30 {
				t.Errorf("%s: request %d: %d unmatched, want 30", f, i, unmatched)
			}
		}
		// Request 2j adds what 2j+1 removes.
		if !slices.Equal(plan.Requests[0][0].IDs[:10], plan.Requests[1][1].IDs[:10]) {
			t.Errorf("%s: request 1 does not remove request 0's adds", f)
		}
	}
}
