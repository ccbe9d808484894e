// Command loadgen drives a cohortd server with the standard workloads of
// docs/WORKLOADS.md and reports HDR latency percentiles, throughput and
// verification results.
//
// Usage:
//
//	loadgen <seed|export|query|mixed> [flags]
//	loadgen help [command]
//
// On a fresh server, `loadgen mixed -admin-token T -duration 10s` creates its
// own workspace, partner, keys and users, then runs. Secrets it creates are
// never printed; -credentials-file keeps them (mode 0600) for later runs.
//
// Exit status: 0 when the run succeeded, 1 when it failed (setup, errors or
// a verification mismatch), 2 for a usage error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/cohortd/cohortd/loadgen"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// command is one of loadgen's subcommands.
type command struct {
	name, summary string
	entry         func(context.Context, loadgen.Options, io.Writer) (*loadgen.Report, error)
}

// commands are loadgen's subcommands, in the order usage lists them.
var commands = []command{
	{"seed", "create -users users (zstd NDJSON bodies, then the identification pass)", loadgen.Seed},
	{"export", "first load of -cohorts cohorts, then change sets every -interval; verifies sizes\n" +
		"          (-sender partner, bulk, or mixpanel-webhook: Mixpanel's native cohort webhook)", loadgen.Export},
	{"query", "segment evaluators in the -mix for -duration or -requests (with -sender\n" +
		"          mixpanel-webhook they name the webhook's cohorts, mixpanel/<number>)", loadgen.Query},
	{"mixed", "setup + seed + export + queries at once; needs only -admin-token on a fresh server", loadgen.Mixed},
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: loadgen <seed|export|query|mixed> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, `
Run "loadgen <command> -h" (or "loadgen help <command>") for a command's flags.
Exit status: 0 success, 1 the run or its setup failed, 2 usage error.`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if args[0] == "help" && len(args) > 1 {
			return run([]string{args[1], "-h"}, stdout, stderr)
		}
		usage(stdout)
		return 0
	}
	if strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(stderr, "loadgen: a command must come first, before %s\n\n", args[0])
		usage(stderr)
		return 2
	}
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == args[0] })
	if i < 0 {
		fmt.Fprintf(stderr, "loadgen: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	cmd := commands[i]

	fs := flag.NewFlagSet("loadgen "+cmd.name, flag.ContinueOnError)
	o, out := defineFlags(fs, cmd.name)
	// Parse quietly: -h prints the usage to stdout and exits 0; a bad flag
	// gets one line on stderr.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage: loadgen %s [flags]\n\n  %s\n\nflags:\n", cmd.name, cmd.summary)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "loadgen %s: %v (see loadgen %s -h)\n", cmd.name, err, cmd.name)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "loadgen %s: unexpected arguments %q\n", cmd.name, fs.Args())
		return 2
	}
	if err := out.finish(o); err != nil {
		fmt.Fprintf(stderr, "loadgen %s: %v\n", cmd.name, err)
		return 2
	}
	if out.credFile != "" {
		if err := readCredentials(out.credFile, &o.Credentials); err != nil {
			fmt.Fprintf(stderr, "loadgen %s: %v\n", cmd.name, err)
			return 1
		}
		path := out.credFile
		o.OnCredentials = func(c loadgen.Credentials) error {
			if err := writeCredentials(path, c); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "loadgen: credentials saved in %s (mode 0600)\n", path)
			return nil
		}
	}
	if !out.quiet {
		o.Progress = stderr
		if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			o.ProgressBar = true
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := cmd.entry(ctx, *o, stderr)
	if rep == nil {
		// No measurement was made: say why and print no report.
		fmt.Fprintln(stderr, err)
		if errors.Is(err, loadgen.ErrNoAdminToken) {
			fmt.Fprintln(stderr, "  (pass -admin-token to create what is missing, or -api-key / -credentials-file)")
		}
		if errors.Is(err, loadgen.ErrInvalidOptions) {
			return 2
		}
		return 1
	}
	rep.CommandLine = "loadgen " + strings.Join(redact(args), " ")
	if werr := writeReports(rep, stdout, out.jsonOut, out.mdOut, out.benchOut); werr != nil {
		fmt.Fprintln(stderr, werr)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "loadgen %s: %v\n", cmd.name, err)
		return 1
	}
	return 0
}

// outputs holds the flags that are not Options fields.
type outputs struct {
	flavour, sender, mix     *string // nil when the command has no such flag
	jsonOut, mdOut, benchOut string
	credFile                 string
	quiet                    bool
}

// defineFlags defines on fs the flags command uses, bound to a
// loadgen.DefaultOptions (so that the defaults shown are the library's and
// an explicit zero stays zero), and returns the options and the other
// outputs of parsing.
func defineFlags(fs *flag.FlagSet, command string) (*loadgen.Options, *outputs) {
	o := loadgen.DefaultOptions()
	out := &outputs{}
	in := func(cmds ...string) bool { return slices.Contains(cmds, command) }

	// Every command: where, who, which universe, how to retry and report.
	fs.StringVar(&o.Addr, "addr", o.Addr, "server base URL, or the nodes of a replicated group joined by commas (requests spread over them; mixed verifies every node)")
	fs.StringVar(&o.AdminToken, "admin-token", "", "admin token (default $COHORTD_ADMIN_TOKEN), used to create missing credentials")
	fs.StringVar(&o.Credentials.Workspace, "workspace", "", "workspace id (default loadgen-<unix time> when created)")
	fs.StringVar(&o.Credentials.APIKey, "api-key", "", "workspace API key (default $COHORTD_API_KEY; created when empty)")
	fs.StringVar(&out.credFile, "credentials-file", "", "JSON `file` of credentials: read when it exists, and written (mode 0600) with\nwhatever this run creates; created secrets are never printed")
	fs.IntVar(&o.Users, "users", o.Users, "users in the universe (seed creates them; the others assume they exist)")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "workload seed (any value, 0 included)")
	fs.IntVar(&o.ServerPID, "server-pid", 0, "process id of the server on this machine: report its CPU time and requests and ids per server CPU-second")
	fs.IntVar(&o.MaxRetries, "max-retries", o.MaxRetries, "retries per request on 429, 5xx and connection errors; 0 = none\n(mixpanel-webhook: always 5, as Mixpanel)")
	fs.DurationVar(&o.RequestTimeout, "timeout", o.RequestTimeout, "timeout of one attempt")
	fs.DurationVar(&o.ReportEvery, "report-every", o.ReportEvery, "period of progress lines when stderr is not a terminal")
	fs.StringVar(&out.jsonOut, "json-out", "", "write the JSON report to this file")
	fs.StringVar(&out.mdOut, "md-out", "", "write the Markdown report to this file (it is also printed)")
	fs.StringVar(&out.benchOut, "bench-out", "", "write go-bench lines to this file (they are also printed)")
	fs.BoolVar(&out.quiet, "quiet", false, "no progress output")

	if in("seed", "mixed") {
		fs.IntVar(&o.UsersPerBody, "users-per-body", o.UsersPerBody, "user records per seeding body")
	}
	if in("mixed") {
		fs.BoolVar(&o.SkipSeed, "skip-seed", false, "users already exist: do not seed")
	}
	if in("export", "query", "mixed") {
		fs.StringVar(&o.Credentials.Partner, "partner", "", "partner slug (default loadgen; lg-<random> when that exists; always mixpanel for -sender mixpanel-webhook)")
		fs.IntVar(&o.Cohorts, "cohorts", o.Cohorts, "cohorts")
		out.flavour = fs.String("flavour", string(o.Flavour), "cohort membership: clustered or uniform")
		out.sender = new(string)
		*out.sender = string(o.Shape)
		help := "export sender: partner (gzip JSON, 1,000 ids), bulk (zstd NDJSON, 100k ids) or mixpanel-webhook\n" +
			"(Mixpanel's cohort webhook: paged members snapshot, then add/remove diffs, Basic auth with a data import key of\n" +
			"partner mixpanel; anonymous users cannot be named and are left out)"
		if command == "query" {
			help = "the sender the cohorts were exported with (partner, bulk or mixpanel-webhook): it decides their names"
		}
		fs.StringVar(out.sender, "sender", *out.sender, help)
		fs.StringVar(out.sender, "shape", *out.sender, "alias of -sender")
	}
	switch command {
	case "seed":
		fs.Float64Var(&o.Rate, "rate", 0, "offered user bodies/s; 0 = closed loop")
		fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "concurrent body encoders (bodies are sent one at a time, in order)")
	case "export":
		fs.Float64Var(&o.Rate, "rate", 0, "offered export requests/s; 0 = closed loop")
	case "query", "mixed":
		fs.Float64Var(&o.Rate, "rate", 0, "offered queries/s; 0 = closed loop")
	}
	if in("export", "mixed") {
		fs.StringVar(&o.Credentials.PartnerAPIKey, "partner-api-key", "", "partner API key (created when empty)")
		fs.StringVar(&o.Credentials.ClientSecret, "client-secret", "", "data import key (created when empty)")
		fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "concurrent export senders (and seed encoders)")
		fs.DurationVar(&o.Interval, "interval", o.Interval, "change-set cadence (15 minutes replayed; Mixpanel's 30 for mixpanel-webhook)")
		fs.IntVar(&o.ChangeSets, "changesets", 0, "change sets per cohort (0 = until -duration)")
		fs.Float64Var(&o.ChurnLeave, "churn-leave", o.ChurnLeave, "share of members leaving per change set (0 = none)")
		fs.Float64Var(&o.ChurnJoin, "churn-join", o.ChurnJoin, "share of non-members joining per change set (0 = as many as leave: sizes stay level)")
		fs.IntVar(&o.PartnerMaxIDs, "partner-max-ids", o.PartnerMaxIDs, "identifiers per partner request")
		fs.IntVar(&o.BulkIDs, "bulk-ids", o.BulkIDs, "identifiers per bulk request")
		fs.IntVar(&o.BulkLineIDs, "bulk-line-ids", o.BulkLineIDs, "bulk: identifiers per NDJSON line (1 = one change object a line, the headline shape)")
		fs.IntVar(&o.WebhookPageSize, "webhook-page-size", o.WebhookPageSize, "mixpanel-webhook: members per call")
		fs.BoolVar(&o.WebhookGzip, "webhook-gzip", false, "mixpanel-webhook: gzip bodies (Mixpanel sends plain JSON)")
		fs.Float64Var(&o.InjectFailureRate, "inject-failure-rate", 0, "mixpanel-webhook: share of syncs abandoned part-way and then re-sent whole\nwith a new session id, as Mixpanel does after failures (deterministic for -seed)")
	}
	if in("mixed") {
		fs.Float64Var(&o.ExportRate, "export-rate", 0, "offered export requests/s; 0 = closed loop")
	}
	switch command {
	case "export":
		fs.DurationVar(&o.Duration, "duration", 0, "timed phase of change sets (default: the first load only unless -changesets)")
	case "query", "mixed":
		fs.DurationVar(&o.Duration, "duration", 0, "timed phase (default 10s; mixed: unless -changesets bounds it)")
	}
	if in("query") {
		fs.StringVar(&o.Protocol, "protocol", "http", "http (the /v1 segment endpoints) or resp (the Redis protocol at -resp-addr:\n"+
			"contains = SISMEMBER, -pipeline at a time; batch = SMISMEMBER of 1,000; count = COHORT.COUNT of two cohorts' and\n"+
			"(SINTERCARD against a redis-server); page = SSCAN COUNT 1000)")
		fs.StringVar(&o.RESPAddr, "resp-addr", "127.0.0.1:6380", "-protocol resp: host:port of cohortd's -resp-addr or of a redis-server with the same sets")
		fs.IntVar(&o.Pipeline, "pipeline", 1, "-protocol resp: SISMEMBERs per pipeline")
		fs.StringVar(&o.Client, "client", loadgen.ClientGo, "go (go-redis or the HTTP client, every query kind) or raw (-mix contains=1, or\n"+
			"-mix batch=1 over RESP: SMISMEMBER of 1,000; from one epoll thread sending pre-encoded\n"+
			"requests on time: the client for latency, and one that saturates a server; Linux)")
	}
	if in("query", "mixed") {
		fs.IntVar(&o.QueryConcurrency, "query-concurrency", o.QueryConcurrency, "concurrent query workers")
		out.mix = fs.String("mix", o.Mix.String(), "query mix weights")
		fs.IntVar(&o.Requests, "requests", 0, "queries to send (0 = until -duration)")
	}
	return &o, out
}

// finish turns the string flags into options and fills the secrets from
// the environment (after parsing, so that -h never shows them).
func (out *outputs) finish(o *loadgen.Options) error {
	if o.AdminToken == "" {
		o.AdminToken = os.Getenv("COHORTD_ADMIN_TOKEN")
	}
	if o.Credentials.APIKey == "" {
		o.Credentials.APIKey = os.Getenv("COHORTD_API_KEY")
	}
	if out.flavour != nil {
		o.Flavour = loadgen.Flavour(*out.flavour)
	}
	if out.sender != nil {
		o.Shape = loadgen.Shape(*out.sender)
		if o.Shape == loadgen.ShapeMixpanelWebhook && o.Credentials.Partner == "" {
			o.Credentials.Partner = "mixpanel"
		}
	}
	if out.mix != nil {
		m, err := loadgen.ParseMix(*out.mix)
		if err != nil {
			return err
		}
		o.Mix = m
	}
	return nil
}

// readCredentials fills the empty fields of c from the JSON file path; a
// missing file is no error (the run creates what it needs and writes it).
func readCredentials(path string, c *loadgen.Credentials) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read credentials: %w", err)
	}
	var f loadgen.Credentials
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("read credentials %s: %w", path, err)
	}
	for _, p := range []struct {
		dst *string
		v   string
	}{
		{&c.Workspace, f.Workspace}, {&c.APIKey, f.APIKey}, {&c.Partner, f.Partner},
		{&c.PartnerAPIKey, f.PartnerAPIKey}, {&c.ClientSecret, f.ClientSecret},
	} {
		if *p.dst == "" {
			*p.dst = p.v
		}
	}
	return nil
}

// writeCredentials writes c to path as JSON, mode 0600, atomically.
func writeCredentials(path string, c loadgen.Credentials) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".credentials-*")
	if err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	err = errors.Join(err, tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write credentials %s: %w", path, err)
	}
	return nil
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
