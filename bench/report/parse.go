package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/perf/benchfmt"
	"golang.org/x/perf/benchmath"
)

// confidence is the level of the intervals the report prints, benchstat's.
const confidence = 0.95

// Result is one benchmark's samples: every value of every unit over the
// runs (-count) found in the raw outputs.
type Result struct {
	Pkg   string // import path from the "pkg:" line above it
	Name  string // full name without "Benchmark" and the -procs suffix
	Procs int    // GOMAXPROCS of the run (1 when go test printed no suffix)
	// Units maps a unit as the benchmark printed it (ns/op, p99-us, …:
	// benchfmt's untidied unit, so that the tables keep the benchmarks'
	// own units) to its samples, one a run.
	Units map[string][]float64
}

// Summary returns the median of unit's samples with its 95% confidence
// interval, as benchstat computes them (benchmath.AssumeNothing: no
// assumption about the distribution), and whether the result has the
// unit. With fewer than 6 samples the interval is infinite: too few runs
// to bound the median at that level, and the report prints the median
// alone.
func (r *Result) Summary(unit string) (benchmath.Summary, bool) {
	v := r.Units[unit]
	if len(v) == 0 {
		return benchmath.Summary{}, false
	}
	// NewSample sorts its argument in place; keep the runs in order.
	s := benchmath.NewSample(slices.Clone(v), &benchmath.DefaultThresholds)
	return benchmath.AssumeNothing.Summary(s, confidence), true
}

// Median returns the median sample of unit and whether there is one.
func (r *Result) Median(unit string) (float64, bool) {
	s, ok := r.Summary(unit)
	return s.Center, ok
}

// Runs returns how many samples the result has (of its ns/op or first unit).
func (r *Result) Runs() int {
	n := 0
	for _, v := range r.Units {
		n = max(n, len(v))
	}
	return n
}

// Set is the parsed results of one variant, in order of first appearance.
type Set struct {
	Results []*Result
	CPU     string // the "cpu:" line of go test
	// Skipped are the lines that start like a result but are not one
	// (a value without a unit, a count that is not a number), with file
	// and line: they give no figure, and the report says so on stderr
	// rather than guess.
	Skipped []error
	byKey   map[string]*Result
}

// Parse reads go-bench output (go test -bench, any number of packages and
// runs) from r, named file in messages, into s with benchfmt. Lines that
// are not benchmark results are skipped, so raw outputs with logs and PASS
// lines parse as they are; malformed result lines go to s.Skipped.
func (s *Set) Parse(r io.Reader, file string) error {
	if s.byKey == nil {
		s.byKey = map[string]*Result{}
	}
	br := benchfmt.NewReader(r, file)
	for br.Scan() {
		var res *benchfmt.Result
		switch rec := br.Result().(type) {
		case *benchfmt.SyntaxError:
			s.Skipped = append(s.Skipped, rec)
			continue
		case *benchfmt.Result:
			res = rec
		default:
			continue // unit metadata: the report has no use for it
		}
		if s.CPU == "" {
			s.CPU = strings.TrimSpace(res.GetConfig("cpu"))
		}
		name, procs := splitProcs(res.Name)
		pkg := res.GetConfig("pkg")
		key := fmt.Sprintf("%s\x00%s\x00%d", pkg, name, procs)
		out := s.byKey[key]
		if out == nil {
			out = &Result{Pkg: pkg, Name: name, Procs: procs, Units: map[string][]float64{}}
			s.byKey[key] = out
			s.Results = append(s.Results, out)
		}
		for _, v := range res.Values {
			unit, val := v.Unit, v.Value
			if v.OrigUnit != "" { // benchfmt tidied ns/op to sec/op: keep the unit as printed
				unit, val = v.OrigUnit, v.OrigValue
			}
			out.Units[unit] = append(out.Units[unit], val)
		}
	}
	return br.Err()
}

// splitProcs returns a benchmark name without its -procs suffix, and the
// GOMAXPROCS it names (1 without one, as go test prints at -cpu 1).
func splitProcs(n benchfmt.Name) (string, int) {
	base, parts := n.Parts()
	procs := 1
	if len(parts) > 0 {
		if p, ok := strings.CutPrefix(string(parts[len(parts)-1]), "-"); ok {
			if v, err := strconv.Atoi(p); err == nil {
				procs, parts = v, parts[:len(parts)-1]
			}
		}
	}
	var b strings.Builder
	b.Write(base)
	for _, p := range parts {
		b.Write(p)
	}
	return b.String(), procs
}

// Macro is a result of the bench package split by its name layout
// Op/users_N/system/rest.
type Macro struct {
	*Result
	Op     string
	Users  int
	System string
	Rest   string // the shape: everything after the system
}

// Macros returns the results whose names follow the bench layout.
func (s *Set) Macros() []Macro {
	var out []Macro
	for _, r := range s.Results {
		parts := strings.SplitN(r.Name, "/", 4)
		if len(parts) < 3 {
			continue
		}
		n, ok := strings.CutPrefix(parts[1], "users_")
		if !ok {
			continue
		}
		users, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		m := Macro{Result: r, Op: parts[0], Users: users, System: parts[2]}
		if len(parts) == 4 {
			m.Rest = parts[3]
		}
		out = append(out, m)
	}
	return out
}

// Find returns the result named name (any package, first procs seen).
func (s *Set) Find(name string) *Result {
	for _, r := range s.Results {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// field returns the value of a "key_value" element of a slash-separated
// name, e.g. field("a/ids_1000", "ids") = 1000.
func field(name, key string) (int, bool) {
	for _, p := range strings.Split(name, "/") {
		if v, ok := strings.CutPrefix(p, key+"_"); ok {
			n, err := strconv.Atoi(v)
			return n, err == nil
		}
	}
	return 0, false
}
