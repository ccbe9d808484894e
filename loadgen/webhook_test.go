package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server"
)

// realServer serves an in-memory engine over an in-memory listener and
// returns a dialer for Options.Dial. Only this test file imports the server:
// the loadgen library talks HTTP.
func realServer(t *testing.T, admin string) func(string) (net.Conn, error) {
	t.Helper()
	e, err := engine.Open(engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s := server.New(server.Options{AdminToken: admin, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s.SetEngine(e)
	ln := fasthttputil.NewInmemoryListener()
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		_ = e.Close()
	})
	return func(string) (net.Conn, error) { return ln.Dial() }
}

func webhookOptions(dial func(string) (net.Conn, error), admin string, log io.Writer) Options {
	return Options{
		Dial: dial, AdminToken: admin, Shape: ShapeMixpanelWebhook,
		BackoffBase: time.Millisecond, BackoffMax: 10 * time.Millisecond,
		Progress: log, ReportEvery: time.Second,
	}
}

// TestExportMixpanelWebhookRealServer seeds a universe, then replays
// Mixpanel's sync with injected abandonments against the real server: no
// errors, reply counts as modelled, and the final sizes match the model.
func TestExportMixpanelWebhookRealServer(t *testing.T) {
	const admin = "t"
	dial := realServer(t, admin)
	var log bytes.Buffer
	defer func() { t.Logf("log:\n%s", log.String()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	o := webhookOptions(dial, admin, &log)
	o.Users, o.Seed, o.UsersPerBody = 20_000, 5, 7_000
	var created Credentials
	o.OnCredentials = func(c Credentials) error { created = c; return nil }
	rep, err := Seed(ctx, o, &log)
	if err != nil {
		t.Fatalf("Seed: %v", err)
	}
	if created.APIKey == "" || created.Workspace != rep.Workload.Workspace {
		t.Fatalf("OnCredentials got %+v for workspace %q", created, rep.Workload.Workspace)
	}
	o.OnCredentials = nil
	o.Credentials = Credentials{Workspace: created.Workspace, APIKey: created.APIKey}
	for _, f := range []Flavour{FlavourClustered, FlavourUniform} {
		o := o
		o.Flavour, o.Cohorts, o.ChangeSets, o.Interval = f, 2, 4, 30*time.Millisecond
		o.WebhookPageSize, o.InjectFailureRate, o.WebhookGzip = 300, 0.3, f == FlavourUniform
		rep, err := Export(ctx, o, &log)
		var md bytes.Buffer
		if rep != nil {
			_ = rep.WriteMarkdown(&md)
		}
		t.Logf("\n%s", md.String())
		if err != nil {
			t.Fatalf("%s: Export: %v", f, err)
		}
		ops := opsByName(rep)
		if ops[opWebhookMembers].Count == 0 || ops[opWebhookDiff].Count == 0 || ops["verify"].Count != 2 {
			t.Errorf("%s: ops %+v", f, ops)
		}
		if rep.Workload.Partner != webhookPartner {
			t.Errorf("%s: partner %q", f, rep.Workload.Partner)
		}
		notes := strings.Join(rep.Notes, "\n")
		m := regexp.MustCompile(`(\d+) of (\d+) syncs abandoned`).FindStringSubmatch(notes)
		if m == nil {
			t.Fatalf("%s: no abandonment note in %q", f, notes)
		}
		if n, _ := strconv.Atoi(m[1]); n < 1 {
			t.Errorf("%s: no sync was abandoned (notes %q); raise the rate or change the seed", f, notes)
		}
		if !strings.Contains(notes, "anonymous users left out") {
			t.Errorf("%s: anonymous users not reported: %q", f, notes)
		}
		// Checks: one per call reply, one per snapshot session, one per cohort size.
		if int64(rep.Verification.Checks) < ops[opWebhookMembers].Count+2 || !rep.Verification.OK() {
			t.Errorf("%s: verification %+v", f, rep.Verification)
		}
	}
}

// TestMixedMixpanelWebhookRealServer runs setup, seeding, the webhook
// sender and queries at once, with partner mixpanel already registered (the
// 409 path: only a data import key is created).
func TestMixedMixpanelWebhookRealServer(t *testing.T) {
	const admin = "t"
	dial := realServer(t, admin)
	o := webhookOptions(dial, admin, io.Discard)
	cl := newClient(o.withDefaults())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cl.admin(admin).CreatePartner(ctx, webhookPartner); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	o.Users, o.Cohorts, o.ChangeSets, o.Interval = 6_000, 2, 3, 50*time.Millisecond
	o.Requests, o.InjectFailureRate, o.WebhookPageSize = 60, 0.2, 200
	rep, err := Mixed(ctx, o, &log)
	t.Logf("log:\n%s", log.String())
	if err != nil {
		t.Fatalf("Mixed: %v", err)
	}
	if !strings.Contains(log.String(), "partner mixpanel exists") {
		t.Error("the 409 path was not taken")
	}
	ops := opsByName(rep)
	if ops[opWebhookMembers].Count == 0 || ops[opContains].Count == 0 {
		t.Errorf("ops %+v", ops)
	}
	for _, o := range rep.Ops {
		if o.Errors > 0 {
			t.Errorf("op %s: %d errors", o.Name, o.Errors)
		}
	}
}

// TestWebhookPausesOn401 checks that a refused key stops the cohorts (no
// endless re-sends) and fails the run.
func TestWebhookPausesOn401(t *testing.T) {
	const admin = "t"
	dial := realServer(t, admin)
	o := webhookOptions(dial, admin, io.Discard)
	o.Users, o.Cohorts, o.ChangeSets, o.Interval = 2_000, 2, 2, 10*time.Millisecond
	o.WebhookPageSize = 100
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := Seed(ctx, o, io.Discard); err != nil {
		t.Fatal(err)
	}
	// Mixpanel would have been configured with a wrong password.
	var log bytes.Buffer
	o.Credentials = Credentials{ClientSecret: "not-a-key"}
	rep, err := Export(ctx, o, &log)
	if !errors.Is(err, ErrRunFailed) || rep == nil {
		t.Fatalf("err %v: want a failed run", err)
	}
	ops := opsByName(rep)
	// One call per cohort is refused (a few more when they were already in
	// flight on the 4 default senders); the rest of the sync is skipped and
	// no change set follows.
	if got := ops[opWebhookMembers].Count + ops[opWebhookMembers].Errors; got < 1 || got > 2*4 || ops[opWebhookDiff].Count != 0 {
		t.Errorf("ops %+v: want the sync stopped at the 401", ops)
	}
	if ops[opWebhookMembers].Retries != 0 {
		t.Errorf("a 401 was retried")
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "paused by status 401") {
		t.Errorf("notes %q", rep.Notes)
	}
}

func TestAppendWebhookBody(t *testing.T) {
	u := Universe{Users: 100, Seed: 1}
	var ext, alias, dev int
	for n := 1; n <= 100; n++ {
		switch u.Kind(n) {
		case KindExternal:
			ext = n
		case KindAlias:
			alias = n
		case KindIdentifiedLater:
			dev = n
		}
	}
	refs := []Ref{{KindExternal, uint64(ext)}, {KindAlias, uint64(alias)}, {KindUnknown, 7}, {KindDevice, uint64(dev)}}
	p := &webhookParams{Action: actionMembers, CohortID: 1_000_003, CohortName: `loadgen "q"`, SessionID: "s-1", Page: 2, TotalPages: 3}
	got := string(u.appendWebhookBody(nil, p, refs))
	member := func(n int, distinct, email string) string {
		s := `{"mixpanel_distinct_id":"` + distinct + `"`
		if email != "" {
			s += `,"email":"` + email + `"`
		}
		ns := strconv.Itoa(n)
		return s + `,"first_name":"First` + ns + `","last_name":"Last` + ns + `","$country_code":"FR"}`
	}
	want := `{"action":"members","parameters":{"mixpanel_project_id":3141592,"mixpanel_cohort_id":1000003,` +
		`"mixpanel_cohort_name":"loadgen \"q\"","mixpanel_cohort_description":"synced by cohortd loadgen",` +
		`"mixpanel_session_id":"s-1","page_info":{"total_pages":3,"page_count":2},"members":[` +
		member(ext, ExternalID(ext), strconv.Itoa(ext)+"@example.com") + "," +
		member(alias, "$device:"+u.DeviceID(alias), AliasLabel(alias)) + "," +
		member(7, "nouser-7", "nouser-7@example.net") + "," +
		member(dev, u.DeviceID(dev), "") + "]}}"
	if got != want {
		t.Fatalf("body\n got %s\nwant %s", got, want)
	}
	if !json.Valid([]byte(got)) {
		t.Fatal("invalid JSON")
	}

	p = &webhookParams{Action: actionRemove, CohortID: 2_000_000, CohortName: "c", SessionID: "s", Page: 1, TotalPages: 1}
	got = string(u.appendWebhookBody(nil, p, nil))
	want = `{"action":"remove_members","parameters":{"mixpanel_project_id":3141592,"mixpanel_cohort_id":2000000,` +
		`"mixpanel_cohort_name":"c","mixpanel_cohort_description":"synced by cohortd loadgen",` +
		`"mixpanel_session_id":"s","page_info":{"total_pages":1,"page_count":1},"members":[]}}`
	if got != want {
		t.Fatalf("empty body\n got %s\nwant %s", got, want)
	}
}

func TestWebhookCalls(t *testing.T) {
	refs := make([]Ref, 2_500)
	for i := range refs {
		refs[i] = Ref{KindExternal, uint64(i + 1)}
	}
	calls := webhookCalls(actionMembers, refs, 1_000)
	if len(calls) != 3 {
		t.Fatalf("%d calls", len(calls))
	}
	for i, c := range calls {
		if c.page != i+1 || c.total != 3 || c.action != actionMembers {
			t.Errorf("call %d: %+v", i, c)
		}
	}
	if len(calls[0].refs) != 1_000 || len(calls[2].refs) != 500 || calls[2].refs[0].N != 2_001 {
		t.Errorf("split %d/%d", len(calls[0].refs), len(calls[2].refs))
	}
	if c := webhookCalls(actionMembers, nil, 1_000); len(c) != 1 || c[0].total != 1 || len(c[0].refs) != 0 {
		t.Errorf("empty snapshot: %+v, want one empty page", c)
	}
	if c := webhookCalls(actionAdd, nil, 1_000); len(c) != 0 {
		t.Errorf("empty diff: %+v, want no call", c)
	}
}

func TestInjectedCut(t *testing.T) {
	const n = 20_000
	cut := 0
	for set := range n {
		a := injectedCut(9, 3, FlavourUniform, set, 5, 0.05)
		if b := injectedCut(9, 3, FlavourUniform, set, 5, 0.05); a != b {
			t.Fatalf("set %d: %d then %d for the same seed", set, a, b)
		}
		if a < -1 || a >= 5 {
			t.Fatalf("set %d: cut %d outside [-1, 5)", set, a)
		}
		if a >= 0 {
			cut++
		}
	}
	if share := float64(cut) / n; share < 0.04 || share > 0.06 {
		t.Errorf("share %.3f, want about 0.05", share)
	}
	differ := false
	for set := range 200 {
		if injectedCut(9, 3, FlavourUniform, set, 5, 0.5) != injectedCut(10, 3, FlavourUniform, set, 5, 0.5) {
			differ = true
		}
	}
	if !differ {
		t.Error("seeds 9 and 10 inject the same failures")
	}
	if injectedCut(9, 3, FlavourUniform, 1, 5, 0) != -1 || injectedCut(9, 3, FlavourUniform, 1, 0, 0.99) != -1 {
		t.Error("rate 0 or no calls must inject nothing")
	}
	if injectedCut(9, 3, FlavourUniform, 1, 1, 0.999999) != 0 {
		t.Error("a one-page sync can only be abandoned before its page")
	}
}

func TestWebhookOptions(t *testing.T) {
	for _, tc := range []struct {
		o  Options
		ok bool
	}{
		{Options{Shape: ShapeMixpanelWebhook, InjectFailureRate: 0.05}, true},
		{Options{Shape: ShapeMixpanelWebhook, InjectFailureRate: 1}, false},
		{Options{Shape: ShapeMixpanelWebhook, Credentials: Credentials{Partner: "other"}}, false},
		{Options{Shape: ShapePartner, InjectFailureRate: 0.1}, false},
		{Options{Shape: "nope"}, false},
	} {
		o := tc.o.withDefaults()
		if err := o.validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: err %v", tc.o, err)
		}
		if tc.ok && o.Credentials.Partner != webhookPartner {
			t.Errorf("partner %q", o.Credentials.Partner)
		}
	}
}
