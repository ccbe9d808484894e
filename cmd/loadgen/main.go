// Command loadgen drives a cohortd server with the standard workloads of
// docs/WORKLOADS.md and reports HDR latency percentiles, throughput and
// verification results.
//
// Usage:
//
//	loadgen <seed|export|query|mixed> [flags]
//
// On a fresh server, `loadgen mixed -admin-token T -duration 10s` creates its
// own workspace, partner, keys and users, then runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/cohortd/cohortd/loadgen"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, `usage: loadgen <seed|export|query|mixed> [flags]

  seed    create -users users (zstd NDJSON bodies, then the identification pass)
  export  first load of -cohorts cohorts, then change sets every -interval; verifies sizes
          (-sender partner, bulk, or mixpanel-webhook: Mixpanel's native cohort webhook)
  query   segment evaluators in the -mix for -duration or -requests (with -sender
          mixpanel-webhook they name the webhook's cohorts, mixpanel/<number>)
  mixed   setup + seed + export + queries at once; needs only -admin-token on a fresh server

run "loadgen <command> -h" for flags`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		usage(stderr)
		return 2
	}
	cmd := args[0]
	entry := map[string]func(context.Context, loadgen.Options, io.Writer) (*loadgen.Report, error){
		"seed": loadgen.Seed, "export": loadgen.Export, "query": loadgen.Query, "mixed": loadgen.Mixed,
	}[cmd]
	if entry == nil {
		fmt.Fprintf(stderr, "loadgen: unknown command %q\n", cmd)
		usage(stderr)
		return 2
	}

	var o loadgen.Options
	fs := flag.NewFlagSet("loadgen "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Addr, "addr", "http://127.0.0.1:8080", "server base URL")
	fs.StringVar(&o.AdminToken, "admin-token", "", "admin token (default $COHORTD_ADMIN_TOKEN), used to create missing credentials")
	fs.StringVar(&o.Credentials.Workspace, "workspace", "", "workspace id (default loadgen-<unix time> when created)")
	fs.StringVar(&o.Credentials.APIKey, "api-key", "", "workspace API key (default $COHORTD_API_KEY; created when empty)")
	fs.StringVar(&o.Credentials.Partner, "partner", "", "partner slug (default loadgen; lg-<random> when that exists; always mixpanel for -sender mixpanel-webhook)")
	fs.StringVar(&o.Credentials.PartnerAPIKey, "partner-api-key", "", "partner API key (created when empty)")
	fs.StringVar(&o.Credentials.ClientSecret, "client-secret", "", "data import key (created when empty)")
	fs.IntVar(&o.Users, "users", 100_000, "seeded users")
	fs.Uint64Var(&o.Seed, "seed", 1, "workload seed")
	fs.IntVar(&o.Cohorts, "cohorts", 3, "cohorts")
	flavour := fs.String("flavour", "clustered", "cohort membership: clustered or uniform")
	sender := "partner"
	senderHelp := "export sender: partner (gzip JSON, 1,000 ids), bulk (zstd NDJSON, 100k ids) or mixpanel-webhook\n" +
		"(Mixpanel's cohort webhook: paged members snapshot, then add/remove diffs, Basic auth with a data import key of\n" +
		"partner mixpanel; anonymous users cannot be named and are left out)"
	fs.StringVar(&sender, "sender", sender, senderHelp)
	fs.StringVar(&sender, "shape", sender, "alias of -sender")
	fs.DurationVar(&o.Duration, "duration", 0, "timed phase (query and mixed default 10s; export default: first load only unless -changesets)")
	fs.Float64Var(&o.Rate, "rate", 0, "offered requests/s of the main stream (export: export requests; query, mixed: queries); 0 = closed loop")
	fs.Float64Var(&o.ExportRate, "export-rate", 0, "mixed: offered export requests/s; 0 = closed loop")
	fs.IntVar(&o.Concurrency, "concurrency", 4, "concurrent export senders (and seed encoders)")
	fs.IntVar(&o.QueryConcurrency, "query-concurrency", 4, "concurrent query workers")
	fs.DurationVar(&o.Interval, "interval", time.Second, "change-set cadence (15 minutes replayed; Mixpanel's 30 for mixpanel-webhook)")
	fs.IntVar(&o.ChangeSets, "changesets", 0, "change sets per cohort (0 = until -duration)")
	fs.Float64Var(&o.ChurnLeave, "churn-leave", 0.01, "share of members leaving per change set")
	fs.Float64Var(&o.ChurnJoin, "churn-join", 0, "share of non-members joining per change set (0 = as many as leave: sizes stay level)")
	mix := fs.String("mix", loadgen.DefaultMix.String(), "query mix weights")
	fs.IntVar(&o.Requests, "requests", 0, "queries to send (0 = until -duration)")
	fs.BoolVar(&o.SkipSeed, "skip-seed", false, "mixed: users already exist")
	fs.IntVar(&o.UsersPerBody, "users-per-body", 100_000, "user records per seeding body")
	fs.IntVar(&o.PartnerMaxIDs, "partner-max-ids", 1_000, "identifiers per partner request")
	fs.IntVar(&o.BulkIDs, "bulk-ids", 100_000, "identifiers per bulk request")
	fs.IntVar(&o.BulkLineIDs, "bulk-line-ids", 1, "bulk: identifiers per NDJSON line (1 = one change object a line, the headline shape)")
	fs.IntVar(&o.ServerPID, "server-pid", 0, "process id of the server on this machine: report its CPU time and requests and ids per server CPU-second")
	fs.IntVar(&o.WebhookPageSize, "webhook-page-size", 1_000, "mixpanel-webhook: members per call")
	fs.BoolVar(&o.WebhookGzip, "webhook-gzip", false, "mixpanel-webhook: gzip bodies (Mixpanel sends plain JSON)")
	fs.Float64Var(&o.InjectFailureRate, "inject-failure-rate", 0, "mixpanel-webhook: share of syncs abandoned part-way and then re-sent whole\nwith a new session id, as Mixpanel does after failures (deterministic for -seed)")
	fs.IntVar(&o.MaxRetries, "max-retries", 8, "retries per request on 429, 5xx and connection errors (mixpanel-webhook: always 5, as Mixpanel)")
	fs.DurationVar(&o.RequestTimeout, "timeout", time.Minute, "timeout of one attempt")
	fs.DurationVar(&o.ReportEvery, "report-every", 5*time.Second, "period of progress lines when stderr is not a terminal")
	jsonOut := fs.String("json-out", "", "write the JSON report to this file")
	mdOut := fs.String("md-out", "", "write the Markdown report to this file (it is also printed)")
	benchOut := fs.String("bench-out", "", "write go-bench lines to this file (they are also printed)")
	quiet := fs.Bool("quiet", false, "no progress output")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "loadgen: unexpected arguments %q\n", fs.Args())
		return 2
	}
	// Secrets come from the environment after parsing so that -h never
	// prints them as defaults.
	if o.AdminToken == "" {
		o.AdminToken = os.Getenv("COHORTD_ADMIN_TOKEN")
	}
	if o.Credentials.APIKey == "" {
		o.Credentials.APIKey = os.Getenv("COHORTD_API_KEY")
	}
	o.Flavour, o.Shape = loadgen.Flavour(*flavour), loadgen.Shape(sender)
	var err error
	if o.Mix, err = loadgen.ParseMix(*mix); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if !*quiet {
		o.Progress = stderr
		if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			o.ProgressBar = true
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := entry(ctx, o, stderr)
	if rep == nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	rep.CommandLine = "loadgen " + strings.Join(redact(args), " ")
	if werr := writeReports(rep, stdout, *jsonOut, *mdOut, *benchOut); werr != nil {
		fmt.Fprintln(stderr, werr)
		return 1
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 1
	}
	return 0
}

// redact hides secret flag values, so that reports can be shared.
func redact(args []string) []string {
	secret := map[string]bool{"admin-token": true, "api-key": true, "partner-api-key": true, "client-secret": true}
	out := make([]string, len(args))
	copy(out, args)
	for i, a := range out {
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || !secret[name] {
			continue
		}
		if hasValue {
			out[i] = a[:strings.Index(a, "=")+1] + "REDACTED"
		} else if i+1 < len(out) {
			out[i+1] = "REDACTED"
		}
	}
	return out
}

// writeReports prints the Markdown and go-bench lines and writes the
// requested files.
func writeReports(rep *loadgen.Report, stdout io.Writer, jsonOut, mdOut, benchOut string) error {
	if err := rep.WriteMarkdown(stdout); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	if err := rep.WriteBench(stdout); err != nil {
		return err
	}
	files := []struct {
		path  string
		write func(io.Writer) error
	}{{jsonOut, rep.WriteJSON}, {mdOut, rep.WriteMarkdown}, {benchOut, rep.WriteBench}}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		if err := writeFile(f.path, f.write); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	return errors.Join(write(f), f.Close())
}
