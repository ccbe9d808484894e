package loadgen

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Report is the outcome of a run: the workload, per-operation latency and
// throughput, errors and the verification result. It is written as JSON
// (WriteJSON), Markdown (WriteMarkdown) and go-bench lines (WriteBench).
type Report struct {
	// Command is the subcommand: seed, export, query or mixed.
	Command string `json:"command"`
	// CommandLine is the exact command, when the caller sets it.
	CommandLine string `json:"command_line,omitempty"`
	// Workload describes what was run.
	Workload Workload `json:"workload"`
	// Env describes the machine and Go runtime of the load generator.
	Env Env `json:"env"`
	// Started is when the run began.
	Started time.Time `json:"started"`
	// ElapsedNs is the wall time of the whole run, setup included.
	ElapsedNs int64 `json:"elapsed_ns"`
	// Ops has one entry per operation, sorted by name.
	Ops []OpReport `json:"ops"`
	// Errors counts requests that failed after retries and other failures.
	Errors int64 `json:"errors"`
	// ErrorSamples holds the first few error messages.
	ErrorSamples []string `json:"error_samples,omitempty"`
	// Verification compares the server's state with loadgen's model.
	Verification Verification `json:"verification"`
	// Seed holds the totals of the users upsert replies, when users were
	// seeded.
	Seed *SeedCounts `json:"seed,omitempty"`
	// Notes holds remarks that do not fail the run.
	Notes []string `json:"notes,omitempty"`
	// Server is the server's CPU time over the run, when its process id
	// was given (Options.ServerPID).
	Server *ServerCPU `json:"server,omitempty"`
}

// ServerCPU is what the server process spent over a run, read from
// /proc/<pid>/stat (user + system time) before and after.
type ServerCPU struct {
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// Requests and IDs are every operation's, over the server's CPU time.
	RequestsPerCPUSecond float64 `json:"requests_per_cpu_second"`
	IDsPerCPUSecond      float64 `json:"ids_per_cpu_second"`
}

// Workload names the workload of a run, as docs/WORKLOADS.md asks every figure
// to.
type Workload struct {
	Workspace        string  `json:"workspace,omitempty"`
	Partner          string  `json:"partner,omitempty"`
	Users            int     `json:"users"`
	Cohorts          int     `json:"cohorts,omitempty"`
	Flavour          Flavour `json:"flavour,omitempty"`
	Shape            Shape   `json:"shape,omitempty"`
	Seed             uint64  `json:"seed"`
	Rate             float64 `json:"rate"`
	ExportRate       float64 `json:"export_rate,omitempty"`
	Concurrency      int     `json:"concurrency"`
	QueryConcurrency int     `json:"query_concurrency,omitempty"`
	DurationNs       int64   `json:"duration_ns,omitempty"`
	IntervalNs       int64   `json:"interval_ns,omitempty"`
	ChangeSets       int     `json:"change_sets,omitempty"`
	ChurnLeave       float64 `json:"churn_leave,omitempty"`
	ChurnJoin        float64 `json:"churn_join,omitempty"`
	// InjectFailureRate is the share of webhook syncs abandoned on purpose.
	InjectFailureRate float64 `json:"inject_failure_rate,omitempty"`
	Mix               string  `json:"mix,omitempty"`
}

// Env describes where loadgen ran.
type Env struct {
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
}

// OpReport summarises one operation. Latencies are in microseconds and
// measured from the intended send time.
type OpReport struct {
	Name      string  `json:"name"`
	Count     int64   `json:"count"`
	Errors    int64   `json:"errors"`
	Retries   int64   `json:"retries"`
	IDs       int64   `json:"ids"`
	ElapsedNs int64   `json:"elapsed_ns"`
	OpsPerSec float64 `json:"ops_per_sec"`
	IDsPerSec float64 `json:"ids_per_sec"`
	MeanUs    float64 `json:"mean_us"`
	P50Us     int64   `json:"p50_us"`
	P90Us     int64   `json:"p90_us"`
	P99Us     int64   `json:"p99_us"`
	P999Us    int64   `json:"p999_us"`
	MaxUs     int64   `json:"max_us"`
}

func (o *OpReport) fillRates() {
	if o.ElapsedNs <= 0 {
		return
	}
	secs := float64(o.ElapsedNs) / 1e9
	o.OpsPerSec = float64(o.Count) / secs
	o.IDsPerSec = float64(o.IDs) / secs
}

// Verification is the result of comparing the server with loadgen's model.
type Verification struct {
	// Checks counts the comparisons made.
	Checks int `json:"checks"`
	// Failures counts the comparisons that failed.
	Failures int `json:"failures"`
	// Mismatches describes the first few failed comparisons.
	Mismatches []string `json:"mismatches,omitempty"`
}

// OK reports whether every check passed.
func (v Verification) OK() bool { return v.Failures == 0 }

// SeedCounts sums the replies of POST /v1/users.
type SeedCounts struct {
	Records    int64 `json:"records"`
	Created    int64 `json:"created"`
	Identified int64 `json:"identified"`
	Merged     int64 `json:"merged"`
	Updated    int64 `json:"updated"`
	Unchanged  int64 `json:"unchanged"`
}

// ErrRunFailed is wrapped by Report.Err when a run had errors or a
// verification mismatch.
var ErrRunFailed = errors.New("loadgen: run failed")

// Err returns nil when the run had no errors and every verification passed,
// else an error wrapping ErrRunFailed that says why.
func (r *Report) Err() error {
	var why []string
	if r.Errors > 0 {
		why = append(why, fmt.Sprintf("%d errors", r.Errors))
	}
	if n := r.Verification.Failures; n > 0 {
		why = append(why, fmt.Sprintf("%d verification mismatches", n))
	}
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrRunFailed, strings.Join(why, ", "))
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func fmtUs(us int64) string {
	return (time.Duration(us) * time.Microsecond).String()
}

// WriteMarkdown writes the report as Markdown for BENCHMARKS.md and humans.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	wl := r.Workload
	fmt.Fprintf(&b, "## loadgen %s\n\n", r.Command)
	if r.CommandLine != "" {
		fmt.Fprintf(&b, "- command: `%s`\n", r.CommandLine)
	}
	fmt.Fprintf(&b, "- workload: users %d", wl.Users)
	if wl.Cohorts > 0 {
		fmt.Fprintf(&b, ", cohorts %d, flavour %s", wl.Cohorts, wl.Flavour)
		if wl.Shape != "" {
			fmt.Fprintf(&b, ", shape %s", wl.Shape)
		}
	}
	fmt.Fprintf(&b, ", seed %d\n", wl.Seed)
	if wl.Workspace != "" || wl.Partner != "" {
		fmt.Fprintf(&b, "- workspace %s, partner %s\n", orDash(wl.Workspace), orDash(wl.Partner))
	}
	fmt.Fprintf(&b, "- load: rate %s, concurrency %d", rateString(wl.Rate), wl.Concurrency)
	if wl.QueryConcurrency > 0 {
		fmt.Fprintf(&b, ", query concurrency %d", wl.QueryConcurrency)
	}
	if wl.ExportRate > 0 {
		fmt.Fprintf(&b, ", export rate %s", rateString(wl.ExportRate))
	}
	if wl.DurationNs > 0 {
		fmt.Fprintf(&b, ", duration %s", time.Duration(wl.DurationNs))
	}
	b.WriteString("\n")
	if wl.IntervalNs > 0 {
		sets := "until the duration ends"
		if wl.ChangeSets > 0 {
			sets = fmt.Sprintf("%d change sets per cohort", wl.ChangeSets)
		}
		cadence := "15 min"
		if wl.Shape == ShapeMixpanelWebhook {
			cadence = "Mixpanel's 30 min"
		}
		join := "as many non-members join (sizes stay level)"
		if wl.ChurnJoin > 0 {
			join = fmt.Sprintf("%.2g%% of non-members join", wl.ChurnJoin*100)
		}
		fmt.Fprintf(&b, "- sync: a change set every %s (%s replayed), %s, %.2g%% of members leave, %s\n",
			time.Duration(wl.IntervalNs), cadence, sets, wl.ChurnLeave*100, join)
		if wl.InjectFailureRate > 0 {
			fmt.Fprintf(&b, "- injected failures: %.2g%% of syncs abandoned part-way, then re-sent whole\n", wl.InjectFailureRate*100)
		}
	}
	if wl.Mix != "" {
		fmt.Fprintf(&b, "- query mix: %s\n", wl.Mix)
	}
	e := r.Env
	fmt.Fprintf(&b, "- machine: %s/%s, %d CPUs, GOMAXPROCS %d, %s\n", e.OS, e.Arch, e.NumCPU, e.GOMAXPROCS, e.GoVersion)
	fmt.Fprintf(&b, "- elapsed: %s, errors: %d\n", time.Duration(r.ElapsedNs).Round(time.Millisecond), r.Errors)
	switch {
	case r.Verification.Checks == 0:
		// Seed and query compare nothing; an export that got this far
		// without a check failed before its verification.
		b.WriteString("- verification: none ran\n")
	case r.Verification.OK():
		fmt.Fprintf(&b, "- verification: OK (%d checks)\n", r.Verification.Checks)
	default:
		fmt.Fprintf(&b, "- verification: FAILED (%d of %d checks)\n", r.Verification.Failures, r.Verification.Checks)
	}
	if c := r.Server; c != nil {
		fmt.Fprintf(&b, "- server (pid %d): %.2f CPU-seconds, %.0f requests and %.0f ids per server CPU-second\n",
			c.PID, c.CPUSeconds, c.RequestsPerCPUSecond, c.IDsPerCPUSecond)
	}
	if s := r.Seed; s != nil {
		fmt.Fprintf(&b, "- users upsert: %d records, created %d, identified %d, merged %d, updated %d, unchanged %d\n",
			s.Records, s.Created, s.Identified, s.Merged, s.Updated, s.Unchanged)
	}
	b.WriteString("\n| op | count | errors | retries | ops/s | ids/s | mean | p50 | p90 | p99 | p99.9 | max |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, o := range r.Ops {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %.1f | %.0f | %s | %s | %s | %s | %s | %s |\n",
			o.Name, o.Count, o.Errors, o.Retries, o.OpsPerSec, o.IDsPerSec,
			fmtUs(int64(o.MeanUs)), fmtUs(o.P50Us), fmtUs(o.P90Us), fmtUs(o.P99Us), fmtUs(o.P999Us), fmtUs(o.MaxUs))
	}
	for _, m := range r.Verification.Mismatches {
		fmt.Fprintf(&b, "\nmismatch: %s", m)
	}
	for _, s := range r.ErrorSamples {
		fmt.Fprintf(&b, "\nerror: %s", s)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "\nnote: %s", n)
	}
	if len(r.Verification.Mismatches)+len(r.ErrorSamples)+len(r.Notes) > 0 {
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteBench writes one go-bench line per operation, which benchstat reads:
// ns/op is the wall time per request (inverse throughput), ids/s the
// identifiers carried a second, and p50-ns and p99-ns the latency
// percentiles.
func (r *Report) WriteBench(w io.Writer) error {
	var b strings.Builder
	for _, o := range r.Ops {
		if o.Count == 0 {
			continue
		}
		nsPerOp := float64(o.ElapsedNs) / float64(o.Count)
		fmt.Fprintf(&b, "BenchmarkLoadgen/%s\t%d\t%.0f ns/op\t%.0f ids/s\t%d p50-ns\t%d p99-ns\n",
			o.Name, o.Count, nsPerOp, o.IDsPerSec, o.P50Us*1000, o.P99Us*1000)
	}
	if c := r.Server; c != nil && c.CPUSeconds > 0 {
		fmt.Fprintf(&b, "BenchmarkLoadgen/server\t1\t%.0f cpu-ns/op\t%.0f req/cpu-s\t%.0f ids/cpu-s\n",
			c.CPUSeconds*1e9, c.RequestsPerCPUSecond, c.IDsPerCPUSecond)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func rateString(r float64) string {
	if r <= 0 {
		return "closed loop"
	}
	return fmt.Sprintf("%g/s open loop", r)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
