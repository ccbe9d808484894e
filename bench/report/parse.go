package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Result is one benchmark's samples: every value of every unit over the
// runs (-count) found in the raw outputs.
type Result struct {
	Pkg   string // import path from the "pkg:" line above it
	Name  string // full name without "Benchmark" and the -procs suffix
	Procs int    // GOMAXPROCS of the run (1 when go test printed no suffix)
	Units map[string][]float64
}

// Median returns the median sample of unit and whether there is one.
func (r *Result) Median(unit string) (float64, bool) {
	v := slices.Clone(r.Units[unit])
	if len(v) == 0 {
		return 0, false
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2], true
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2, true
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
	byKey   map[string]*Result
}

var procsSuffix = regexp.MustCompile(`-(\d+)$`)

// Parse reads go-bench output (go test -bench, any number of packages and
// runs) into s. Lines that are not benchmark results are skipped, so raw
// outputs with logs and PASS lines parse as they are.
func (s *Set) Parse(r io.Reader) error {
	if s.byKey == nil {
		s.byKey = map[string]*Result{}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	pkg := ""
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if v, ok := strings.CutPrefix(text, "pkg: "); ok {
			pkg = strings.TrimSpace(v)
			continue
		}
		if v, ok := strings.CutPrefix(text, "cpu: "); ok && s.CPU == "" {
			s.CPU = strings.TrimSpace(v)
			continue
		}
		if !strings.HasPrefix(text, "Benchmark") {
			continue
		}
		f := strings.Fields(text)
		// name, iterations, then value-unit pairs.
		if len(f) < 4 || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue
		}
		name, procs := strings.TrimPrefix(f[0], "Benchmark"), 1
		if m := procsSuffix.FindStringSubmatch(name); m != nil {
			procs, _ = strconv.Atoi(m[1])
			name = name[:len(name)-len(m[0])]
		}
		key := fmt.Sprintf("%s\x00%s\x00%d", pkg, name, procs)
		res := s.byKey[key]
		if res == nil {
			res = &Result{Pkg: pkg, Name: name, Procs: procs, Units: map[string][]float64{}}
			s.byKey[key] = res
			s.Results = append(s.Results, res)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("line %d: value %q: %w", line, f[i], err)
			}
			res.Units[f[i+1]] = append(res.Units[f[i+1]], v)
		}
	}
	return sc.Err()
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
