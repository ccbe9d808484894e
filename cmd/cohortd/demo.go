package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
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
	c := &demoClient{base: base, hc: &fasthttp.Client{MaxConnsPerHost: 16, ReadTimeout: time.Minute, WriteTimeout: time.Minute}}
	if p.tls {
		// The demo talks to its own process over loopback, whatever name
		// the certificate carries.
		base = "https://" + p.addr
		c.base = base
		c.hc.TLSConfig = &tls.Config{InsecureSkipVerify: true}
	}
	if !p.fresh {
		k, changed, err := ensureDemoKeys(c, p)
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
	var ws struct {
		APIKey string `json:"api_key"`
	}
	if err := c.json("POST", "/v1/workspaces", p.adminToken, map[string]string{"id": demoWorkspace}, 201, &ws); err != nil {
		return err
	}
	var pt struct {
		Key string `json:"partner_api_key"`
	}
	if err := c.json("POST", "/v1/partners", p.adminToken, map[string]string{"slug": demoPartner}, 201, &pt); err != nil {
		return err
	}
	var key struct {
		Secret string `json:"client_secret"`
	}
	if err := c.json("POST", "/v1/workspaces/"+demoWorkspace+"/partners/"+demoPartner+"/keys", p.adminToken, struct{}{}, 201, &key); err != nil {
		return err
	}
	keys := demoKeys{APIKey: ws.APIKey, PartnerAPIKey: pt.Key, ClientSecret: key.Secret}
	if err := saveDemoKeys(p.dataDir, keys); err != nil {
		return err
	}

	// Users: NDJSON with zstd, as a bulk loader would send them. Every 10th
	// user has an email alias, every 50th a device id it was seen on.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(1<<20))
	if err != nil {
		return err
	}
	defer enc.Close()
	var nd []byte
	for lo := 0; lo < demoUsers; lo += demoBatch {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		nd = nd[:0]
		for i := lo; i < lo+demoBatch && i < demoUsers; i++ {
			nd = fmt.Appendf(nd, `{"external_id":%q`, demoUserID(i))
			if i%10 == 0 {
				nd = fmt.Appendf(nd, `,"aliases":[{"alias_name":"email","alias_label":"user%d@example.com"}]`, i)
			}
			if i%50 == 0 {
				nd = fmt.Appendf(nd, `,"device_id":"device-%06d"`, i)
			}
			nd = append(nd, "}\n"...)
		}
		body := enc.EncodeAll(nd, nil)
		if _, err := c.do("POST", "/v1/users", ws.APIKey, "application/x-ndjson", "zstd", body, 200); err != nil {
			return fmt.Errorf("upsert users: %w", err)
		}
	}

	// Cohorts: through the partner endpoints, 1,000 ids a gzip body, the way
	// the exporter does it, a few requests in parallel.
	for _, ch := range demoCohorts {
		err := c.json("POST", "/partners/"+demoPartner+"/cohorts", "", map[string]string{
			"partner_api_key": pt.Key, "client_secret": key.Secret,
			"cohort_id": ch.id, "name": ch.name, "created_at": time.Now().UTC().Format(time.RFC3339),
		}, 201, nil)
		if err != nil {
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
		if err := c.parallel(ctx, 4, len(ids), func(n int) error {
			b, err := json.Marshal(map[string]any{
				"partner_api_key": pt.Key, "client_secret": key.Secret, "cohort_id": ch.id,
				"cohort_changes": []map[string]any{{"user_ids": ids[n], "device_ids": []string{}, "aliases": []any{}}},
			})
			if err != nil {
				return err
			}
			_, err = c.do("POST", "/partners/"+demoPartner+"/cohorts/users", "", "application/json", "gzip", gzipBytes(b), 201)
			return err
		}); err != nil {
			return fmt.Errorf("import cohort %s: %w", ch.id, err)
		}
	}
	if err := demoSyncs(ctx, c, ws.APIKey, pt.Key, key.Secret); err != nil {
		return err
	}
	p.log.Info("demo seeded", "users", demoUsers, "cohorts", len(demoCohorts), "duration", time.Since(start).String())

	fmt.Fprintf(p.out, "\nDemo workspace %q seeded with %d users and %d cohorts in %s.\n",
		demoWorkspace, demoUsers, len(demoCohorts), time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(p.out, "cohortd stores only digests of secrets; the demo's are kept in %s (mode 0600):\n", demoKeysPath(p.dataDir))
	printDemoKeys(p.out, keys)
	printDemoCommands(p.out, base, p, ws.APIKey, pt.Key, key.Secret)
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

func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// demoClient talks to the server over loopback HTTP.
type demoClient struct {
	base string
	hc   *fasthttp.Client
}

// do sends one request and checks the status; it returns the reply body.
func (c *demoClient) do(method, path, token, ctype, encoding string, body []byte, want int) ([]byte, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(c.base + path)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.SetContentType(ctype)
	}
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	req.SetBodyRaw(body)
	if err := c.hc.DoTimeout(req, resp, time.Minute); err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode() != want {
		return nil, fmt.Errorf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode(), want, resp.Body())
	}
	return append([]byte(nil), resp.Body()...), nil
}

// json sends v as a JSON body and decodes the reply into out (if not nil).
func (c *demoClient) json(method, path, token string, v any, want int, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	reply, err := c.do(method, path, token, "application/json", "", b, want)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(reply, out); err != nil {
		return fmt.Errorf("%s %s: decode reply: %w", method, path, err)
	}
	return nil
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func (c *demoClient) parallel(ctx context.Context, workers, n int, f func(int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  int
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil || i >= n || ctx.Err() != nil
				mu.Unlock()
				if stop {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}
