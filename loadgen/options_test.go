package loadgen

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestDefaultOptionsExactZeros: DefaultOptions carries every default, and
// with Exact an explicit zero stays zero where zero means something (no
// churn, no retries, seed 0) and is refused where it does not.
func TestDefaultOptionsExactZeros(t *testing.T) {
	d := DefaultOptions()
	plain := Options{}.withDefaults()
	plain.Exact = true
	if d.Users != plain.Users || d.Seed != plain.Seed || d.ChurnLeave != plain.ChurnLeave || d.MaxRetries != plain.MaxRetries ||
		d.RequestTimeout != plain.RequestTimeout || d.Mix != plain.Mix || d.Addr != plain.Addr {
		t.Fatalf("DefaultOptions %+v differs from the defaults %+v", d, plain)
	}
	if d.Seed != 1 || d.ChurnLeave != 0.01 || d.ChurnJoin != 0 || d.MaxRetries != 8 {
		t.Fatalf("defaults changed: seed %d, churn %g/%g, retries %d", d.Seed, d.ChurnLeave, d.ChurnJoin, d.MaxRetries)
	}

	o := DefaultOptions()
	o.Seed, o.ChurnLeave, o.ChurnJoin, o.MaxRetries = 0, 0, 0, 0
	got := o.withDefaults()
	if got.Seed != 0 || got.ChurnLeave != 0 || got.ChurnJoin != 0 || got.MaxRetries != 0 {
		t.Errorf("Exact zeros replaced: seed %d, churn %g/%g, retries %d", got.Seed, got.ChurnLeave, got.ChurnJoin, got.MaxRetries)
	}
	if err := got.validate(); err != nil {
		t.Errorf("validate: %v", err)
	}

	for _, m := range []Mix{{Contains: 1}, {Batch: 1}} {
		o := DefaultOptions()
		o.Client, o.Protocol, o.Mix = ClientRaw, ProtocolRESP, m
		if err := o.withDefaults().validate(); err != nil {
			t.Errorf("raw client over RESP, mix %+v: %v", m, err)
		}
	}

	// Without Exact, a zero still means the default (the library contract
	// its callers rely on).
	if got := (Options{}).withDefaults(); got.Seed != 1 || got.ChurnLeave != 0.01 || got.MaxRetries != 8 {
		t.Errorf("plain Options: seed %d, churn %g, retries %d", got.Seed, got.ChurnLeave, got.MaxRetries)
	}

	for name, set := range map[string]func(*Options){
		"users":           func(o *Options) { o.Users = 0 },
		"cohorts":         func(o *Options) { o.Cohorts = 0 },
		"interval":        func(o *Options) { o.Interval = 0 },
		"timeout":         func(o *Options) { o.RequestTimeout = 0 },
		"report period":   func(o *Options) { o.ReportEvery = 0 },
		"users per body":  func(o *Options) { o.UsersPerBody = 0 },
		"negative retry":  func(o *Options) { o.MaxRetries = -1 },
		"churn above one": func(o *Options) { o.ChurnLeave = 1.5 },
		// The raw client sends one kind of query: contains, or SMISMEMBER over RESP.
		"raw mixed":       func(o *Options) { o.Client, o.Mix = ClientRaw, Mix{Contains: 1, Batch: 1} },
		"raw batch http":  func(o *Options) { o.Client, o.Mix = ClientRaw, Mix{Batch: 1} },
		"raw batch piped": func(o *Options) { o.Client, o.Protocol, o.Mix, o.Pipeline = ClientRaw, ProtocolRESP, Mix{Batch: 1}, 16 },
		"raw count":       func(o *Options) { o.Client, o.Protocol, o.Mix = ClientRaw, ProtocolRESP, Mix{Count: 1} },
		"raw requests":    func(o *Options) { o.Client, o.Mix, o.Requests = ClientRaw, Mix{Contains: 1}, 10 },
	} {
		o := DefaultOptions()
		set(&o)
		if err := o.withDefaults().validate(); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: validate = %v, want ErrInvalidOptions", name, err)
		}
		if _, err := Seed(context.Background(), o, io.Discard); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: Seed = %v, want ErrInvalidOptions", name, err)
		}
	}
}

// TestExactZeroRetries: MaxRetries 0 with Exact means one attempt.
func TestExactZeroRetries(t *testing.T) {
	var calls atomic.Int32
	dial := serveInmemory(t, func(ctx *fasthttp.RequestCtx) {
		calls.Add(1)
		ctx.SetStatusCode(503)
	})
	o := DefaultOptions()
	o.Dial, o.MaxRetries = dial, 0
	cl := newClient(o.withDefaults())
	retries, err := cl.do(context.Background(), &call{method: "GET", path: "/"}, nil)
	if err == nil || retries != 0 || calls.Load() != 1 {
		t.Fatalf("err %v, retries %d, calls %d: want one attempt", err, retries, calls.Load())
	}
}

// TestExactZeroChurnAndSeed exports against the real server with churn 0
// and seed 0: change sets then send nothing beyond the first load, the
// universe is seed 0's, and the sizes still verify.
func TestExactZeroChurnAndSeed(t *testing.T) {
	const admin = "t"
	dial := realServer(t, admin)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	o := DefaultOptions()
	o.Dial, o.AdminToken = dial, admin
	o.BackoffBase, o.BackoffMax = time.Millisecond, 10*time.Millisecond
	o.Users, o.UsersPerBody, o.Cohorts, o.Seed = 5_000, 2_000, 1, 0
	var creds Credentials
	o.OnCredentials = func(c Credentials) error { creds = c; return nil }
	rep, err := Seed(ctx, o, io.Discard)
	if err != nil {
		t.Fatalf("Seed: %v", err)
	}
	if rep.Workload.Seed != 0 {
		t.Fatalf("seed %d, want 0", rep.Workload.Seed)
	}
	o.OnCredentials = nil
	o.Credentials = Credentials{Workspace: creds.Workspace, APIKey: creds.APIKey}

	// The first load alone, to count its requests.
	first := o
	first.ChangeSets = 0
	rep, err = Export(ctx, first, io.Discard)
	if err != nil {
		t.Fatalf("first load: %v", err)
	}
	firstLoad := opsByName(rep)["partner_changes"].Count
	if firstLoad == 0 {
		t.Fatal("the first load sent nothing")
	}
	o.Credentials = Credentials{Workspace: creds.Workspace, APIKey: creds.APIKey,
		Partner: rep.Workload.Partner}
	o.ChurnLeave, o.ChurnJoin, o.ChangeSets, o.Interval = 0, 0, 3, 20*time.Millisecond
	o.Credentials.PartnerAPIKey, o.Credentials.ClientSecret = "", ""
	var log bytes.Buffer
	rep, err = Export(ctx, o, &log)
	if err != nil {
		t.Fatalf("Export with churn 0: %v\n%s", err, log.String())
	}
	if got := opsByName(rep)["partner_changes"].Count; got != firstLoad {
		t.Errorf("churn 0 sent %d change requests, the first load alone %d: change sets were not empty", got, firstLoad)
	}
	if rep.Workload.ChurnLeave != 0 || rep.Workload.ChurnJoin != 0 || !rep.Verification.OK() || rep.Verification.Checks == 0 {
		t.Errorf("workload %+v, verification %+v", rep.Workload, rep.Verification)
	}
}

// TestSetupFailureNoReport: without credentials, or when the admin API
// refuses to create them, a run returns no report and an ErrSetup.
func TestSetupFailureNoReport(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := realServer(t, "right-token")
	o := DefaultOptions()
	o.Dial, o.MaxRetries = dial, 0
	o.Users, o.Cohorts = 1_000, 1

	for name, tc := range map[string]struct {
		o   func(Options) Options
		run func(context.Context, Options, io.Writer) (*Report, error)
		is  error
	}{
		"seed without credentials":   {func(o Options) Options { return o }, Seed, ErrNoAdminToken},
		"query without credentials":  {func(o Options) Options { return o }, Query, ErrNoAdminToken},
		"export without partner key": {func(o Options) Options { o.Credentials.APIKey = "k"; return o }, Export, ErrNoAdminToken},
		"mixed with a wrong token":   {func(o Options) Options { o.AdminToken = "wrong"; return o }, Mixed, ErrSetup},
		"webhook with a wrong token": {func(o Options) Options { o.AdminToken = "wrong"; o.Shape = ShapeMixpanelWebhook; return o }, Export, ErrSetup},
	} {
		var log bytes.Buffer
		rep, err := tc.run(ctx, tc.o(o), &log)
		if rep != nil || !errors.Is(err, ErrSetup) || !errors.Is(err, tc.is) {
			t.Errorf("%s: report %v, err %v; want no report and %v", name, rep != nil, err, tc.is)
		}
		if err != nil && strings.Count(err.Error(), "loadgen:") != 1 {
			t.Errorf("%s: message %q repeats its prefix", name, err)
		}
	}
}

// TestSecretsNeverLogged: a run that creates a workspace, a partner and a
// data import key names them on the log but prints none of their secrets
// there or in its reports; OnCredentials receives them.
func TestSecretsNeverLogged(t *testing.T) {
	const admin = "t"
	dial := realServer(t, admin)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := DefaultOptions()
	o.Dial, o.AdminToken = dial, admin
	o.Users, o.UsersPerBody, o.Cohorts, o.ChangeSets, o.Interval, o.Requests = 3_000, 1_500, 1, 1, 20*time.Millisecond, 20
	var log bytes.Buffer
	o.Progress, o.ReportEvery = &log, 50*time.Millisecond
	var creds Credentials
	calls := 0
	o.OnCredentials = func(c Credentials) error { creds = c; calls++; return nil }
	rep, err := Mixed(ctx, o, &log)
	if err != nil {
		t.Fatalf("Mixed: %v\n%s", err, log.String())
	}
	if calls != 1 || creds.APIKey == "" || creds.PartnerAPIKey == "" || creds.ClientSecret == "" {
		t.Fatalf("OnCredentials called %d times with %+v", calls, creds)
	}
	var out bytes.Buffer
	out.Write(log.Bytes())
	_ = rep.WriteMarkdown(&out)
	_ = rep.WriteJSON(&out)
	_ = rep.WriteBench(&out)
	for what, secret := range map[string]string{"api key": creds.APIKey, "partner api key": creds.PartnerAPIKey, "client secret": creds.ClientSecret} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("the %s appears in the log or the reports", what)
		}
	}
	for _, want := range []string{"created workspace " + creds.Workspace, "created partner " + creds.Partner, "created data import key"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}
