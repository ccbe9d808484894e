package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
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
	if err := s.Parse(strings.NewReader(in)); err != nil {
		t.Fatal(err)
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
	if err := run("testdata/results", out, filepath.Join(dir, "plots")); err != nil {
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
	if err := s.Parse(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	coldStart(&buf, &s)
	if got := buf.String(); !strings.Contains(got, "| `ColdStart/users_1000/engine/snapshot` | 12.5 ms | 11 ms |") || strings.Contains(got, "not measured") {
		t.Errorf("cold start table:\n%s", got)
	}
}
