package engine

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/index"
)

// parseSegment builds the segment written js in the API's JSON syntax, for
// tests that state expressions as the API does. It reads well-formed
// expressions only: the syntax and its errors are server/segment's (and
// tested there).
func parseSegment(js []byte) (*Segment, error) {
	e, err := exprJSON(js)
	if err != nil {
		return nil, err
	}
	return NewSegment(e), nil
}

func exprJSON(js []byte) (*SegmentExpr, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	if len(m) != 1 {
		return nil, fmt.Errorf("%s: want one operator", js)
	}
	for op, v := range m {
		switch op {
		case "cohort":
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, err
			}
			p, id, _ := strings.Cut(s, "/")
			return CohortExpr(p, id), nil
		case "not":
			e, err := exprJSON(v)
			if err != nil {
				return nil, err
			}
			return NotExpr(e), nil
		case "and", "or":
			var raws []json.RawMessage
			if err := json.Unmarshal(v, &raws); err != nil {
				return nil, err
			}
			var kids []*SegmentExpr
			for _, r := range raws {
				e, err := exprJSON(r)
				if err != nil {
					return nil, err
				}
				kids = append(kids, e)
			}
			if op == "or" {
				return OrExpr(kids...), nil
			}
			return AndExpr(kids...), nil
		case "all":
			return AllExpr(), nil
		}
	}
	return nil, fmt.Errorf("%s: unknown operator", js)
}

func TestSegmentExprCohortSplit(t *testing.T) {
	s := NewSegment(CohortExpr("p", "x/y"))
	if s.root.partner != "p" || s.root.id != "x/y" || s.flat[0].warning != "unknown cohort p/x/y" {
		t.Fatalf("cohort expr: %+v", s.root)
	}
}

// TestSegmentCountOverDenseViews checks counts of the shapes that run over
// the cohorts' dense views against the roaring count, before and after the
// views are earned, and that the other shapes keep counting through
// roaring.
func TestSegmentCountOverDenseViews(t *testing.T) {
	const universe = 600_000 // large enough that index.DenseCountsToEarn counts earn a view
	w := syntheticWorkspace(universe)
	now := time.Now()
	for i, name := range []string{"A", "B", "C", "D", "E"} {
		c := w.applyCohortUpsert("p", name, name, now, now)
		c.members.Reset(cohortBitmap("uniform", universe/10, universe-i*1000, uint64(10+i)))
	}
	c := w.applyCohortUpsert("p", "R", "R", now, now)
	c.members.Reset(cohortBitmap("clustered", universe/10, universe, 20))

	for _, tc := range []struct {
		expr  string
		views bool // counted over dense views once they are earned
	}{
		{`{"and":[{"cohort":"p/A"},{"cohort":"p/B"},{"not":{"cohort":"p/C"}}]}`, true},
		{`{"and":[{"cohort":"p/A"},{"cohort":"p/B"},{"cohort":"p/C"}]}`, true},
		{`{"and":[{"cohort":"p/A"},{"not":{"cohort":"p/B"}},{"not":{"cohort":"p/C"}}]}`, true},
		{`{"or":[{"cohort":"p/A"},{"cohort":"p/B"},{"cohort":"p/C"}]}`, true},
		{`{"or":[{"cohort":"p/A"},{"cohort":"p/B"},{"cohort":"p/C"},{"cohort":"p/D"},{"cohort":"p/E"}]}`, true},
		{`{"and":[{"cohort":"p/E"},{"cohort":"p/A"},{"cohort":"p/D"},{"not":{"cohort":"p/B"}},{"not":{"cohort":"p/C"}}]}`, true},
		{`{"and":[{"cohort":"p/A"},{"cohort":"p/A"},{"not":{"cohort":"p/A"}}]}`, true},
		// roaring counts these: a clustered cohort, an unknown one, two
		// clauses, negations only, an or with a negation, nesting
		{`{"and":[{"cohort":"p/A"},{"cohort":"p/R"},{"not":{"cohort":"p/C"}}]}`, false},
		{`{"and":[{"cohort":"p/A"},{"cohort":"p/nope"},{"not":{"cohort":"p/C"}}]}`, false},
		{`{"and":[{"cohort":"p/A"},{"not":{"cohort":"p/C"}}]}`, false},
		{`{"and":[{"not":{"cohort":"p/A"}},{"not":{"cohort":"p/B"}},{"not":{"cohort":"p/C"}}]}`, false},
		{`{"or":[{"cohort":"p/A"},{"cohort":"p/B"},{"not":{"cohort":"p/C"}}]}`, false},
		{`{"and":[{"cohort":"p/A"},{"cohort":"p/B"},{"or":[{"cohort":"p/C"},{"cohort":"p/D"}]}]}`, false},
	} {
		seg, err := parseSegment([]byte(tc.expr))
		if err != nil {
			t.Fatal(err)
		}
		b := w.Bind(seg)
		want := b.expr.Count(b.live)
		b.Release()
		for k := range index.DenseCountsToEarn + 2 {
			b := w.Bind(seg)
			if got := b.Count(); got != want {
				t.Fatalf("%s: count %d = %d, roaring counts %d", tc.expr, k, got, want)
			}
			b.Release()
		}
		b = w.Bind(seg)
		if _, ok := b.countViews(); ok != tc.views {
			t.Fatalf("%s: counted over dense views = %v, want %v", tc.expr, ok, tc.views)
		}
		b.Release()
	}
	if w.e.dense.Views() == 0 {
		t.Fatal("no dense view was built")
	}
}

// TestSegmentCountOverDenseViewsConcurrent counts while a writer changes
// a cohort: every count must be the count of the versions it bound, over
// views or not (run with -race).
func TestSegmentCountOverDenseViewsConcurrent(t *testing.T) {
	const universe = 600_000
	w := syntheticWorkspace(universe)
	now := time.Now()
	var cs []*Cohort
	for i, name := range []string{"A", "B", "C"} {
		c := w.applyCohortUpsert("p", name, name, now, now)
		c.members.Reset(cohortBitmap("uniform", universe/10, universe, uint64(30+i)))
		cs = append(cs, c)
	}
	seg, err := parseSegment([]byte(`{"and":[{"cohort":"p/A"},{"cohort":"p/B"},{"not":{"cohort":"p/C"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			cs[0].members.Apply(roaring.BitmapOf(uint32(i*997%universe)), roaring.BitmapOf(uint32(i*7919%universe)))
			time.Sleep(500 * time.Microsecond) // long enough for counts to earn views of a version
		}
	}()
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			for k := 0; ; k++ {
				b := w.Bind(seg)
				got, want := b.Count(), b.expr.Count(b.live)
				b.Release()
				if got != want {
					errs <- fmt.Errorf("count %d = %d, roaring counts %d over the same versions", k, got, want)
					return
				}
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
			}
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
