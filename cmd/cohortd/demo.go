package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cohortd/cohortd/server/client"
	"github.com/cohortd/cohortd/server/jsonstr"
)

// The demo (-demo, used by `make run`) seeds a workspace through the public
// HTTP API of the running server, the way a new user would, so that it
// doubles as a smoke test of the real endpoints and leaves copy-paste
// commands that work.
const (
	demoWorkspace = "demo"
	demoPartner   = "amplitude"
	demoUsers     = 100_000
	// demoBatch users per POST /v1/users body: small enough that a zstd
	// frame stays far below the server's 8 MiB window cap.
	demoBatch = 25_000
	// demoPartnerIDs is the identifiers per partner request, the wire cap.
	demoPartnerIDs = 1000
)

// demoCohorts are imported through the partner endpoint; member selects
// which demo users belong.
var demoCohorts = []struct {
	id, name string
	member   func(i int) bool
}{
	{"power_users", "Power users", func(i int) bool { return i%10 == 0 }},
	{"churn_risk", "Churn risk", func(i int) bool { return i%7 == 3 || i%20 == 0 }},
	{"newsletter", "Newsletter subscribers", func(i int) bool { return i%3 == 0 }},
}

type demoParams struct {
	addr       string // the server's listen address
	tls        bool   // the server speaks HTTPS
	adminToken string
	tokenPath  string // "" when the token came from a flag or env
	dataDir    string // where demo.keys is kept
	fresh      bool   // the data dir has no demo workspace yet
	out        io.Writer
	log        *slog.Logger
}

// demoUserID is the external id of demo user i.
func demoUserID(i int) string { return fmt.Sprintf("user-%06d", i) }

// runDemo seeds the demo on a fresh data dir and prints the commands; on
// later starts it prints them again with the keys saved in demo.keys
// (re-issuing any that no longer works).
func runDemo(ctx context.Context, p demoParams) error {
	base := "http://" + p.addr
	hc := &http.Client{Timeout: time.Minute}
	if p.tls {
		// The demo talks to its own process over loopback, whatever name
		// the certificate carries.
		base = "https://" + p.addr
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	}
	admin := client.New(base, client.Options{HTTPClient: hc, Token: p.adminToken})
	if !p.fresh {
		k, changed, err := ensureDemoKeys(ctx, admin, p)
		if err != nil {
			return fmt.Errorf("demo keys: %w", err)
		}
		fmt.Fprintf(p.out, "\nThe demo workspace %q exists already; its keys are kept in %s.\n", demoWorkspace, demoKeysPath(p.dataDir))
		if changed {
			fmt.Fprintf(p.out, "Keys that were missing or no longer worked were issued anew (the old ones are refused).\n")
		}
		printDemoKeys(p.out, k)
		printDemoCommands(p.out, base, p, k.APIKey, k.PartnerAPIKey, k.ClientSecret)
		return nil
	}
	start := time.Now()
	apiKey, err := admin.CreateWorkspace(ctx, demoWorkspace)
	if err != nil {
		return err
	}
	partnerKey, err := admin.CreatePartner(ctx, demoPartner)
	if err != nil {
		return err
	}
	ik, err := admin.CreateImportKey(ctx, demoWorkspace, demoPartner)
	if err != nil {
		return err
	}
	keys := demoKeys{APIKey: apiKey, PartnerAPIKey: partnerKey, ClientSecret: ik.ClientSecret}
	if err := saveDemoKeys(p.dataDir, keys); err != nil {
		return err
	}
	ws := admin.WithToken(apiKey)
	cred := client.PartnerCredentials{PartnerAPIKey: partnerKey, ClientSecret: ik.ClientSecret}

	// Users: NDJSON with zstd, as a bulk loader would send them. Every 10th
	// user has an email alias, every 50th a device id it was seen on.
	var (
		comp   client.Compressor
		nd, zd []byte
	)
	for lo := 0; lo < demoUsers; lo += demoBatch {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		nd = nd[:0]
		for i := lo; i < lo+demoBatch && i < demoUsers; i++ {
			nd = append(nd, `{"external_id":`...)
			nd = jsonstr.Append(nd, demoUserID(i))
			if i%10 == 0 {
				nd = fmt.Appendf(nd, `,"aliases":[{"alias_name":"email","alias_label":"user%d@example.com"}]`, i)
			}
			if i%50 == 0 {
				nd = fmt.Appendf(nd, `,"device_id":"device-%06d"`, i)
			}
			nd = append(nd, "}\n"...)
		}
		zd = comp.Append(zd[:0], nd, client.EncodingZstd)
		if _, err := ws.UpsertUsersBody(ctx, client.Body{Data: zd, NDJSON: true, Encoding: client.EncodingZstd}); err != nil {
			return fmt.Errorf("upsert users: %w", err)
		}
	}

	// Cohorts: through the partner endpoints, 1,000 ids a gzip body, the way
	// the exporter does it, a few requests in parallel.
	exporter := client.New(base, client.Options{HTTPClient: hc, Encoding: client.EncodingGzip})
	for _, ch := range demoCohorts {
		if err := exporter.UpsertPartnerCohort(ctx, demoPartner, cred, ch.id, ch.name, time.Now()); err != nil {
			return err
		}
		var ids [][]string
		var cur []string
		for i := 0; i < demoUsers; i++ {
			if !ch.member(i) {
				continue
			}
			cur = append(cur, demoUserID(i))
			if len(cur) == demoPartnerIDs {
				ids, cur = append(ids, cur), nil
			}
		}
		if len(cur) > 0 {
			ids = append(ids, cur)
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(4)
		for _, batch := range ids {
			g.Go(func() error {
				_, err := exporter.PartnerChanges(gctx, demoPartner, cred, ch.id,
					[]client.Change{{Identifiers: client.Identifiers{UserIDs: batch}}})
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return fmt.Errorf("import cohort %s: %w", ch.id, err)
		}
	}
	if err := demoSyncs(ctx, ws, exporter, cred); err != nil {
		return err
	}
	p.log.Info("demo seeded", "users", demoUsers, "cohorts", len(demoCohorts), "duration", time.Since(start).String())

	fmt.Fprintf(p.out, "\nDemo workspace %q seeded with %d users and %d cohorts in %s.\n",
		demoWorkspace, demoUsers, len(demoCohorts), time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(p.out, "cohortd stores only digests of secrets; the demo's are kept in %s (mode 0600):\n", demoKeysPath(p.dataDir))
	printDemoKeys(p.out, keys)
	printDemoCommands(p.out, base, p, apiKey, partnerKey, ik.ClientSecret)
	return nil
}

// printDemoCommands prints one ready-to-paste curl command a line (tests
// run every line that starts with "curl ").
func printDemoCommands(out io.Writer, base string, p demoParams, apiKey, partnerKey, secret string) {
	var b strings.Builder
	// Secrets go in double quotes so that the placeholders expand in a shell.
	auth := fmt.Sprintf(`-H "Authorization: Bearer %s"`, apiKey)
	imp := fmt.Sprintf(`{"partner_api_key":"%s","client_secret":"%s","cohort_id":"power_users","cohort_changes":[{"user_ids":["%s"],"device_ids":[],"aliases":[]}]}`,
		partnerKey, secret, demoUserID(7))
	fmt.Fprintf(&b, "\nImport: add %s to cohort power_users (partner endpoint):\n", demoUserID(7))
	fmt.Fprintf(&b, "curl -sS -X POST -H 'Content-Type: application/json' %s/partners/%s/cohorts/users -d \"%s\"\n",
		base, demoPartner, strings.ReplaceAll(imp, `"`, `\"`))
	fmt.Fprintf(&b, "\nLookup: a user and its cohorts:\n")
	fmt.Fprintf(&b, "curl -sS %s '%s/v1/users/lookup?external_id=%s'\n", auth, base, demoUserID(10))
	fmt.Fprintf(&b, "\nSegment count: power users who are not at churn risk:\n")
	fmt.Fprintf(&b, "curl -sS -X POST %s -H 'Content-Type: application/json' %s/v1/segments/count -d '%s'\n", auth, base,
		`{"segment":{"and":[{"cohort":"amplitude/power_users"},{"not":{"cohort":"amplitude/churn_risk"}}]}}`)
	fmt.Fprintf(&b, "\nMetrics: curl -sS %s/metrics\n", base)
	if p.tokenPath != "" {
		fmt.Fprintf(&b, "\nAdmin: list the workspaces (the admin token is in %s):\n", p.tokenPath)
		fmt.Fprintf(&b, "curl -sS -H \"Authorization: Bearer $(cat %s)\" %s/v1/workspaces\n", shellQuote(p.tokenPath), base)
	}
	_, _ = io.WriteString(out, b.String())
	printDemoPage(out, base)
}

// printDemoKeys prints the demo's secrets.
func printDemoKeys(out io.Writer, k demoKeys) {
	fmt.Fprintf(out, "  workspace API key (%s):  %s\n", demoWorkspace, k.APIKey)
	fmt.Fprintf(out, "  partner_api_key (%s):  %s\n", demoPartner, k.PartnerAPIKey)
	fmt.Fprintf(out, "  client_secret (%s/%s): %s\n", demoWorkspace, demoPartner, k.ClientSecret)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
