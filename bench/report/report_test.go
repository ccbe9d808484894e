package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestParse checks a go-bench line with custom metrics, a -procs suffix and
// repeated runs.
func TestParse(t *testing.T) {
	in := `pkg: example.com/p
cpu: Some CPU
BenchmarkX/users_10/cohortd/a/ids_5-2   	 100	  2000 ns/op	  10.5 ids/s	  7 req/s
BenchmarkX/users_10/cohortd/a/ids_5-2   	 100	  4000 ns/op	  30.5 ids/s	  9 req/s
    some_test.go:12: a log line
BenchmarkX/users_10/cohortd/a/ids_5-2   	 100	  3000 ns/op	  20.5 ids/s	  8 req/s
--- BENCH: BenchmarkX
BenchmarkBroken line
PASS
`
	var s Set
	if err := s.Parse(strings.NewReader(in), "in.txt"); err != nil {
		t.Fatal(err)
	}
	if len(s.Skipped) != 1 || !strings.Contains(s.Skipped[0].Error(), "in.txt:8:") {
		t.Errorf("skipped = %v, want the broken line 8 of in.txt", s.Skipped)
	}
	if len(s.Results) != 1 {
		t.Fatalf("got %d results, want 1", len(s.Results))
	}
	r := s.Results[0]
	if r.Pkg != "example.com/p" || r.Name != "X/users_10/cohortd/a/ids_5" || r.Procs != 2 || s.CPU != "Some CPU" {
		t.Fatalf("got %+v cpu %q", r, s.CPU)
	}
	if v, _ := r.Median("ids/s"); v != 20.5 {
		t.Errorf("median ids/s = %v, want 20.5", v)
	}
	if r.Runs() != 3 {
		t.Errorf("runs = %d, want 3", r.Runs())
	}
	ms := s.Macros()
	if len(ms) != 1 || ms[0].Op != "X" || ms[0].Users != 10 || ms[0].System != "cohortd" || ms[0].Rest != "a/ids_5" {
		t.Fatalf("macros = %+v", ms)
	}
}

// TestGolden renders the fixture results and compares them with
// testdata/BENCHMARKS.golden.md (go test -run TestGolden -update rewrites it).
func TestGolden(t *testing.T) {
	vs, err := LoadVariants("testdata/results")
	if err != nil {
		t.Fatal(err)
	}
	plots, err := WritePlots(vs, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	WriteMarkdown(&buf, vs, "bench/results", "bench/plots", plots)
	golden := filepath.Join("testdata", "BENCHMARKS.golden.md")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("report differs from %s (rerun with -update if the change is intended):\n%s", golden, buf.String())
	}
	// The report must carry no figure that is not in the fixture: spot
	// check that "not measured" stands where no cold-start benchmark ran.
	if !strings.Contains(buf.String(), "not measured") {
		t.Error("no cold-start benchmark in the fixture, yet the report does not say \"not measured\"")
	}
}

// TestPlots checks that every plot is a non-empty SVG.
func TestPlots(t *testing.T) {
	vs, err := LoadVariants("testdata/results")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	plots, err := WritePlots(vs, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(plots) < 3 {
		t.Fatalf("got %d plots, want throughput, latency and memory at least: %+v", len(plots), plots)
	}
	for _, p := range plots {
		b, err := os.ReadFile(filepath.Join(dir, p.File))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 1000 || !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s: %d bytes, not an SVG", p.File, len(b))
		}
	}
}

// TestRun writes a report and its plots end to end.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "BENCHMARKS.md")
	if err := run("testdata/results", out, filepath.Join(dir, "plots"), io.Discard); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("](plots/")) {
		t.Error("plot links are not relative to the report")
	}
}

// TestColdStart checks that a cold-start benchmark replaces "not measured".
func TestColdStart(t *testing.T) {
	var s Set
	in := "BenchmarkColdStart/users_1000/engine/snapshot \t 3 \t 5000000 ns/op \t 12.5 ms/start \t 11.0 recovery-ms\n"
	if err := s.Parse(strings.NewReader(in), "in.txt"); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	coldStart(&buf, &s)
	if got := buf.String(); !strings.Contains(got, "| `ColdStart/users_1000/engine/snapshot` | 12.5 ms | 11 ms |") || strings.Contains(got, "not measured") {
		t.Errorf("cold start table:\n%s", got)
	}
}

// TestSummary checks the medians and their 95% confidence intervals: six
// runs give a finite interval (benchstat's ±), one run or a few give the
// median alone, never ±∞, NaN or Inf.
func TestSummary(t *testing.T) {
	tests := []struct {
		name       string
		values     []float64
		median     float64
		lo, hi     float64
		cell       string // rate(...) as the tables print it
		noInterval bool
	}{
		{"six runs", []float64{90, 100, 110, 95, 105, 100}, 100, 90, 110, "100 ±10%", false},
		{"six equal runs", []float64{7, 7, 7, 7, 7, 7}, 7, 7, 7, "7 ±0%", false},
		{"single run", []float64{2500}, 2500, 0, 0, "2.5 k", true},
		{"three runs", []float64{3, 1, 2}, 2, 0, 0, "2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Result{Units: map[string][]float64{"req/s": slices.Clone(tt.values)}}
			s, ok := r.Summary("req/s")
			if !ok || s.Center != tt.median {
				t.Fatalf("Summary = %+v, %v; want median %v", s, ok, tt.median)
			}
			if inf := math.IsInf(s.Lo, 0) || math.IsInf(s.Hi, 0); inf != tt.noInterval {
				t.Errorf("interval [%v, %v]: infinite = %v, want %v", s.Lo, s.Hi, inf, tt.noInterval)
			}
			if !tt.noInterval && (s.Lo != tt.lo || s.Hi != tt.hi) {
				t.Errorf("interval [%v, %v], want [%v, %v]", s.Lo, s.Hi, tt.lo, tt.hi)
			}
			if got := rate(s, ok); got != tt.cell {
				t.Errorf("cell %q, want %q", got, tt.cell)
			}
			if !slices.Equal(r.Units["req/s"], tt.values) {
				t.Errorf("Summary reordered the runs: %v", r.Units["req/s"])
			}
		})
	}
	if _, ok := (&Result{Units: map[string][]float64{}}).Summary("req/s"); ok {
		t.Error("Summary of a missing unit reports one")
	}
	if got := rate((&Result{}).Summary("req/s")); got != dash {
		t.Errorf("missing unit prints %q, want %q", got, dash)
	}
}

// TestReportIntervals renders a micro benchmark run six times and another
// run once: the first carries its interval in the report, the second its
// median alone.
func TestReportIntervals(t *testing.T) {
	var in strings.Builder
	in.WriteString("pkg: github.com/cohortd/cohortd/engine\n")
	for _, v := range []string{"10", "11", "12", "9", "10", "10.5"} {
		fmt.Fprintf(&in, "BenchmarkApply/ids_1000 \t 10 \t 100 ns/op \t %s Mids/s\n", v)
	}
	in.WriteString("BenchmarkReplace/members_10 \t 1 \t 100 ns/op \t 2.5 ms/replace\n")
	var s Set
	if err := s.Parse(strings.NewReader(in.String()), "micro.txt"); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	microAll(&buf, &s)
	got := buf.String()
	for _, want := range []string{
		"| `engine` | `Apply/ids_1000` | 6 | 10.2 Mids/s ±17% |",
		"| `engine` | `Replace/members_10` | 1 | 2.5 ms/replace |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	for _, bad := range []string{"∞", "Inf", "NaN"} {
		if strings.Contains(got, bad) {
			t.Errorf("report prints %q:\n%s", bad, got)
		}
	}
}

// TestMalformed checks that result lines go test would not print (a value
// without its unit, a count that is not a number) give no figure and are
// named, with file and line, on stderr and in the report.
func TestMalformed(t *testing.T) {
	dir := t.TempDir()
	variant := filepath.Join(dir, "results", "short")
	if err := os.MkdirAll(variant, 0o755); err != nil {
		t.Fatal(err)
	}
	raw := "pkg: github.com/cohortd/cohortd/engine\n" +
		"BenchmarkApply/ids_1000 \t 10 \t 100 ns/op \t 5 Mids/s\n" +
		"BenchmarkApply/ids_1000 \t 10 \t 100 ns/op \t 7\n" +
		"BenchmarkApply/ids_1000 \t ten \t 100 ns/op\n"
	if err := os.WriteFile(filepath.Join(variant, "micro.txt"), []byte(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	var warn bytes.Buffer
	out := filepath.Join(dir, "BENCHMARKS.md")
	if err := run(filepath.Join(dir, "results"), out, filepath.Join(dir, "plots"), &warn); err != nil {
		t.Fatal(err)
	}
	report, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"micro.txt:3: missing units", "micro.txt:4: parsing iteration count"} {
		if !strings.Contains(warn.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, warn.String())
		}
		if !strings.Contains(string(report), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// The good line alone makes the figure: one run of 5 Mids/s.
	if !strings.Contains(string(report), "| `engine` | `Apply/ids_1000` | 1 | 5 Mids/s |") {
		t.Errorf("report:\n%s", report)
	}
}

// TestRelPaths checks that the commands of meta.txt reach the report
// without the absolute path of the checkout they ran in.
func TestRelPaths(t *testing.T) {
	c := checkout{root: "/home/me/cohortd", tops: []string{"bench", "cmd", "engine"}}
	tests := []struct{ in, want string }{
		{"COHORTD_BENCH_DIR=/home/me/cohortd/bench/.data go test ./bench/", "COHORTD_BENCH_DIR=<repo>/bench/.data go test ./bench/"},
		{"COHORTD_BENCH_DIR=/srv/other/checkout/bench/.data go test", "COHORTD_BENCH_DIR=<repo>/bench/.data go test"},
		{"go test -o '/home/me/cohortd/cmd/x' ./cmd/x", "go test -o '<repo>/cmd/x' ./cmd/x"},
		{"engine with a WAL on /dev/vda, -fsync=always", "engine with a WAL on /dev/vda, -fsync=always"},
		{"CPU time from /proc/<pid>/stat", "CPU time from /proc/<pid>/stat"},
		{"go test -bench . ./bench/", "go test -bench . ./bench/"},
	}
	for _, tt := range tests {
		if got := c.relPaths(tt.in); got != tt.want {
			t.Errorf("relPaths(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestGoldenPaths checks that the report of the fixture names no absolute
// path: a command of its meta.txt names the checkout it ran in.
func TestGoldenPaths(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "BENCHMARKS.golden.md"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "/srv/") {
		t.Error("the golden report names the absolute path of the fixture's checkout")
	}
	if !strings.Contains(string(b), "COHORTD_BENCH_DIR=<repo>/bench/.data") {
		t.Error("the golden report lost the fixture's COHORTD_BENCH_DIR")
	}
	if !strings.Contains(string(b), "13.8 Mids/s ±5%") {
		t.Error("the golden report gives no interval for the six runs of ResolveMany")
	}
}

// TestTicks checks that plot axes read in the report's units, not 1e+07.
func TestTicks(t *testing.T) {
	tests := []struct {
		name   string
		log    bool
		label  func(float64) string
		lo, hi float64
		want   []string
	}{
		{"log rate, many decades", true, count, 80, 2e7, []string{"100", "1 k", "10 k", "100 k", "1 M", "10 M"}},
		{"log latency, two decades", true, duration, 150, 80000, []string{"200 µs", "500 µs", "1 ms", "2 ms", "5 ms", "10 ms", "20 ms", "50 ms"}},
		{"linear rate", false, count, 0, 26000, []string{"0", "5 k", "10 k", "15 k", "20 k", "25 k"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, tk := range ticks(tt.log, tt.label).Ticks(tt.lo, tt.hi) {
				if tk.Label != "" {
					got = append(got, tk.Label)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("labels %q, want %q", got, tt.want)
			}
		})
	}
}
