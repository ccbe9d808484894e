package segment

import (
	"errors"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine"
)

func workspace(t testing.TB) *engine.Workspace {
	e, err := engine.Open(engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	return e.Workspace("ws")
}

func TestParse(t *testing.T) {
	w := workspace(t)
	for _, bad := range []string{`{}`, `{"and":[]}`, `{"or":[]}`, `{"cohort":"nopartner"}`, `{"cohort":"p/"}`, `{"cohort":"P/x"}`,
		`{"all":false}`, `{"cohort":"p/a","not":{"all":true}}`, `[]`, `{"not":1}`, `{"and":{}}`, `{`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("%s parsed, want an error", bad)
		} else if !errors.As(err, new(*engine.InvalidError)) {
			t.Errorf("%s: error %T is not an InvalidError", bad, err)
		}
	}
	// The first "/" ends the partner slug; unknown fields are ignored.
	if err := w.UpsertCohort("p", "x/y", "x/y", time.Time{}); err != nil {
		t.Fatal(err)
	}
	s, err := Parse([]byte(`{"cohort":"p/x/y","extra":[1,2]}`))
	if err != nil {
		t.Fatal(err)
	}
	if b := w.Bind(s); len(b.Warnings) != 0 {
		t.Fatalf("cohort split: warnings %v", b.Warnings)
	}
	deep := `{"all":true}`
	for range maxDepth + 1 {
		deep = `{"not":` + deep + `}`
	}
	if _, err := Parse([]byte(deep)); err == nil {
		t.Fatal("an expression deeper than the limit parsed")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"cohort":"p/a"}`, `{"not":{"all":true}}`, `{"and":[{"cohort":"p/a"},{"or":[{"cohort":"q/b"},{"not":{"cohort":"p/c"}}]}]}`, `{"and":[]}`, `[`, `{"cohort":"p/a/b","x":{"y":[1,{}]}}`} {
		f.Add([]byte(s))
	}
	w := workspace(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if !errors.As(err, new(*engine.InvalidError)) {
				t.Fatalf("error %T: %v", err, err)
			}
			return
		}
		b := w.Bind(s)
		if b.Count() != b.Set().Len() {
			t.Fatal("Count and Set disagree")
		}
	})
}
