package loadgen

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

func goldenReport() *Report {
	return &Report{
		Command:     "mixed",
		CommandLine: "loadgen mixed -duration 10s",
		Workload: Workload{
			Workspace: "loadgen-1", Partner: "loadgen", Users: 100000, Cohorts: 3,
			Flavour: FlavourClustered, Shape: ShapePartner, Seed: 1, Rate: 500,
			Concurrency: 4, QueryConcurrency: 4, DurationNs: int64(10 * time.Second),
			IntervalNs: int64(time.Second), ChangeSets: 0, ChurnLeave: 0.01, ChurnJoin: 0.01,
			Mix: DefaultMix.String(),
		},
		Env:       Env{GoVersion: "go1.26.0", OS: "linux", Arch: "amd64", NumCPU: 8, GOMAXPROCS: 8},
		Started:   time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC),
		ElapsedNs: int64(12345 * time.Millisecond),
		Ops: []OpReport{
			{Name: "contains", Count: 3500, IDs: 3500, ElapsedNs: int64(10 * time.Second), OpsPerSec: 350, IDsPerSec: 350,
				MeanUs: 812.5, P50Us: 700, P90Us: 1200, P99Us: 3100, P999Us: 9000, MaxUs: 12000},
			{Name: "partner_changes", Count: 40, Errors: 1, Retries: 3, IDs: 40000, ElapsedNs: int64(10 * time.Second),
				OpsPerSec: 4, IDsPerSec: 4000, MeanUs: 5000, P50Us: 4800, P90Us: 6000, P99Us: 9000, P999Us: 9000, MaxUs: 9100},
		},
		Errors:       1,
		ErrorSamples: []string{"POST /partners/loadgen/cohorts/users: status 500: boom"},
		Verification: Verification{Checks: 43, Failures: 1, Mismatches: []string{"cohort clustered-0001: server size 9, expected 10"}},
		Seed:         &SeedCounts{Records: 105000, Created: 100000, Identified: 5000},
		Server:       &ServerCPU{PID: 4242, CPUSeconds: 2.5, RequestsPerCPUSecond: 1416, IDsPerCPUSecond: 17400},
	}
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file (run with -update to accept):\n%s", name, got)
	}
}

func TestReportGolden(t *testing.T) {
	rep := goldenReport()
	for _, c := range []struct {
		name  string
		write func(*bytes.Buffer) error
	}{
		{"report.md", func(b *bytes.Buffer) error { return rep.WriteMarkdown(b) }},
		{"report.json", func(b *bytes.Buffer) error { return rep.WriteJSON(b) }},
		{"report.bench", func(b *bytes.Buffer) error { return rep.WriteBench(b) }},
	} {
		var b bytes.Buffer
		if err := c.write(&b); err != nil {
			t.Fatal(err)
		}
		checkGolden(t, c.name, b.Bytes())
	}
}

func TestReportErr(t *testing.T) {
	rep := goldenReport()
	if err := rep.Err(); !errors.Is(err, ErrRunFailed) {
		t.Fatalf("Err() = %v, want ErrRunFailed", err)
	}
	rep.Errors, rep.Verification.Failures = 0, 0
	if err := rep.Err(); err != nil {
		t.Fatalf("clean report: Err() = %v", err)
	}
}

func TestParseMix(t *testing.T) {
	m, err := ParseMix("contains=70,batch=10,compact=10,count=9,page=1")
	if err != nil || m != DefaultMix {
		t.Fatalf("ParseMix = %+v, %v", m, err)
	}
	if m, err := ParseMix("count=1"); err != nil || m != (Mix{Count: 1}) {
		t.Fatalf("count only: %+v, %v", m, err)
	}
	for _, bad := range []string{"", "contains=0", "foo=1", "contains=-1", "contains"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q) accepted", bad)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	stat := "4242 (co hort) d) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 125 0 0 20 0 7 0 100 0 0"
	if got := parseStatCPU(stat); got != 3.75 {
		t.Fatalf("parseStatCPU = %v, want 3.75", got)
	}
	if ProcessCPUSeconds(os.Getpid()) < 0 || ProcessCPUSeconds(0) != 0 {
		t.Fatal("ProcessCPUSeconds")
	}
}
