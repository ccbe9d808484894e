package main

// The browser test of the built-in page (docs/API.md §8): a real headless
// Chromium, driven through the DevTools protocol by chromedp, against the
// real binary started with -demo, the way a new user meets cohortd.
//
// It needs Debian's chromium (.ci/run installs it). Without a browser it
// fails; COHORTD_TEST_NO_BROWSER=1 skips it instead (for machines that
// cannot install one), and COHORTD_CHROMIUM names another binary.
// `make ui-screenshots` regenerates docs/ui/*.png with -ui.screenshots.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers/legacy"
)

var uiScreenshots = flag.String("ui.screenshots", "", "write the page's screenshots to this directory (make ui-screenshots: docs/ui)")

// chromiumPath finds the browser: $COHORTD_CHROMIUM, else chromium on PATH.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("COHORTD_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("COHORTD_TEST_NO_BROWSER") == "1" {
		t.Skip("no chromium on PATH and COHORTD_TEST_NO_BROWSER=1: browser test skipped")
	}
	t.Fatal("no chromium on PATH: install it (apt-get install -y chromium, as .ci/run does), " +
		"point COHORTD_CHROMIUM at a Chromium binary, or set COHORTD_TEST_NO_BROWSER=1 to skip the browser tests")
	return ""
}

// page is a browser tab on a cohortd, recording what the tab does.
type page struct {
	t    *testing.T
	ctx  context.Context
	host string // 127.0.0.1:port of the daemon
	dir  string // screenshots

	mu       sync.Mutex
	problems []string // console errors, exceptions, error log entries
	requests []string // "METHOD URL" of every request the page sent
}

// newPage starts a headless Chromium with the flags this closed network
// needs (no background networking, no component updates, no QUIC, a fresh
// profile) and subscribes to the tab's console, exceptions, log and
// requests before anything loads.
func newPage(t *testing.T, host string) *page {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	p := &page{t: t, ctx: ctx, host: host, dir: *uiScreenshots}
	if p.dir == "" {
		p.dir = t.TempDir()
	}
	consoleEv := chromedp.Events(ctx, runtime.ConsoleAPICalled)
	exceptionEv := chromedp.Events(ctx, runtime.ExceptionThrown)
	logEv := chromedp.Events(ctx, log.EntryAdded)
	requestEv := chromedp.Events(ctx, network.RequestWillBeSent)
	go func() {
		for ev, err := range consoleEv {
			if err != nil {
				return
			}
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				p.problem("console.%s: %s", ev.Type, strings.Join(args, " "))
			}
		}
	}()
	go func() {
		for ev, err := range exceptionEv {
			if err != nil {
				return
			}
			d := ev.ExceptionDetails
			desc := d.Text
			if d.Exception != nil {
				desc += " " + d.Exception.Description
			}
			p.problem("exception at %s:%d: %s", d.URL, d.LineNumber, desc)
		}
	}()
	go func() {
		for ev, err := range logEv {
			if err != nil {
				return
			}
			if ev.Entry.Level == log.EntryLevelError {
				p.problem("log %s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
			}
		}
	}()
	go func() {
		for ev, err := range requestEv {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.requests = append(p.requests, ev.Request.Method+" "+ev.Request.URL)
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *page) problem(format string, args ...any) {
	p.mu.Lock()
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
	p.mu.Unlock()
}

// do runs steps with a deadline.
func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v (problems so far: %v)", what, err, p.problems)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits until expr is true in the page.
func (p *page) waitJS(what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(20*time.Millisecond))); err != nil {
		p.t.Fatalf("waiting for %s (%s): %v", what, expr, err)
	}
}

// shot saves a PNG of the viewport.
func (p *page) shot(name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	// Let the last paint settle (fonts, the chart) before capturing.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](`new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))`,
		chromedp.EvalAwaitPromise)); err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, name+".png"), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

const (
	tid = `[data-testid="%s"]`
	js  = `document.querySelector('[data-testid="%s"]')`
)

func byTestID(id string) chromedp.CSS { return chromedp.CSS(fmt.Sprintf(tid, id)) }

// setSelect sets the value of the n-th element with data-testid id and
// fires change, as picking an option does.
func (p *page) setSelect(id string, n int, value string) {
	p.t.Helper()
	ok := eval[bool](p, fmt.Sprintf(`(() => { const s = document.querySelectorAll('[data-testid="%s"]')[%d];
		s.value = %q; s.dispatchEvent(new Event('change', {bubbles: true})); return s.value === %q; })()`, id, n, value, value))
	if !ok {
		p.t.Fatalf("%s #%d has no option %q", id, n, value)
	}
}

// signIn pastes key into the sign-in form and waits for the cohort list.
func (p *page) signIn(key string, cohorts int) {
	p.t.Helper()
	p.do("sign in",
		chromedp.WaitVisible(byTestID("signin-key")),
		chromedp.SendKeys(byTestID("signin-key"), key),
		chromedp.Click(byTestID("signin-submit")),
		chromedp.WaitVisible(byTestID("cohort-list")))
	p.waitJS(fmt.Sprintf("%d cohort rows", cohorts), fmt.Sprintf(`document.querySelectorAll('[data-testid="cohort-row"]').length === %d`, cohorts))
	if got := eval[string](p, `sessionStorage.getItem("cohortd.apiKey")`); got != key {
		p.t.Errorf("sessionStorage holds %q, want the key", got)
	}
	if n := eval[int](p, `localStorage.length + document.cookie.length`); n != 0 {
		p.t.Errorf("the key reached localStorage or a cookie (%d)", n)
	}
}

func (p *page) signOut() {
	p.t.Helper()
	p.do("sign out", chromedp.Click(byTestID("signout")), chromedp.WaitVisible(byTestID("signin-key")))
	if n := eval[int](p, `sessionStorage.length + localStorage.length + document.cookie.length`); n != 0 {
		p.t.Errorf("storage not empty after sign-out (%d)", n)
	}
}

var (
	demoAPIKeyRe = regexp.MustCompile(`workspace API key \(demo\):\s+(cwk_\S+)`)
	demoPageRe   = regexp.MustCompile(`The page: open (http://\S+/ui/)`)
)

// TestUIBrowser walks the page as a new user after `make run`: open the
// printed address, paste the demo key, read the cohorts and their health,
// open a cohort's sync history, build a segment (its count must equal POST
// /v1/segments/count), look a user up, sign out; then a workspace of 1,000
// cohorts. No console error may appear, no request may leave 127.0.0.1,
// and every request must be a documented call (docs/openapi.yaml).
func TestUIBrowser(t *testing.T) {
	chromiumPath(t) // fail (or skip) before starting anything
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-demo"}})
	var key, pageURL string
	deadline := time.Now().Add(60 * time.Second)
	for key == "" || pageURL == "" {
		out := d.stdout.String()
		if m := demoAPIKeyRe.FindStringSubmatch(out); m != nil {
			key = m[1]
		}
		if m := demoPageRe.FindStringSubmatch(out); m != nil {
			pageURL = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo printed no key and page address:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pageURL != d.base+"/ui/" {
		t.Fatalf("the demo prints %s, the daemon is at %s", pageURL, d.base)
	}
	apiJSON := func(method, path string, body any) map[string]any {
		return d.must(req{method: method, path: path, token: key, body: body}, 200).json(t)
	}
	p := newPage(t, d.addr)

	// Sign in.
	p.do("open the page", chromedp.Navigate(pageURL), chromedp.WaitVisible(byTestID("signin-key")))
	p.shot("signin")
	// A wrong key is refused with a message and not kept. The browser logs
	// the 401 as a failed resource: the one error this test expects.
	p.do("sign in with a wrong key", chromedp.SendKeys(byTestID("signin-key"), "cwk_wrong"), chromedp.Click(byTestID("signin-submit")))
	p.waitJS("the refusal", `document.getElementById("signin-error").textContent.includes("not accepted")`)
	if n := eval[int](p, `sessionStorage.length`); n != 0 {
		t.Errorf("a refused key was kept in sessionStorage")
	}
	p.do("clear the field", chromedp.Evaluate[chromedp.Void](fmt.Sprintf(js, "signin-key")+`.value = ""`))
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		p.mu.Lock()
		n := len(p.problems)
		p.mu.Unlock()
		if n > 0 {
			break
		}
	}
	p.mu.Lock()
	for _, pr := range p.problems {
		if !strings.Contains(pr, "401") {
			t.Errorf("browser, wrong key: %s", pr)
		}
	}
	p.problems = nil
	p.mu.Unlock()
	p.signIn(key, len(demoCohorts))

	// The list: every cohort with its size and health; the shrunk one.
	cohorts := apiJSON("GET", "/v1/cohorts", nil)["cohorts"].([]any)
	for _, c := range cohorts {
		m := c.(map[string]any)
		row := eval[string](p, fmt.Sprintf(`document.querySelector('[data-testid="cohort-row"][data-key="%s/%s"]').innerText`, m["partner"], m["cohort_id"]))
		status := strings.ReplaceAll(m["health"].(map[string]any)["status"].(string), "_", " ")
		for _, want := range []string{m["name"].(string), fmt.Sprintf("%.0f", m["size"].(float64)), status} {
			if !strings.Contains(strings.ReplaceAll(row, ",", ""), want) {
				t.Errorf("row %s/%s %q lacks %q", m["partner"], m["cohort_id"], row, want)
			}
		}
	}
	if n := eval[int](p, `[...document.querySelectorAll('[data-testid="cohort-row"] .badge')].filter(b => b.textContent === "shrunk").length`); n != 1 {
		t.Errorf("%d shrunk badges, want the demo's one unhealthy cohort", n)
	}
	p.shot("cohorts")

	// A cohort: the chart has a slot per sync, the table a row per sync.
	syncs := apiJSON("GET", "/v1/cohorts/amplitude/"+demoShrunkCohort+"/syncs?limit=1000", nil)["syncs"].([]any)
	if len(syncs) < 4 {
		t.Fatalf("the demo made %d syncs of %s, want a few", len(syncs), demoShrunkCohort)
	}
	p.do("open a cohort", chromedp.Click(chromedp.CSS(`[data-testid="cohort-row"][data-key="amplitude/`+demoShrunkCohort+`"] a`)),
		chromedp.WaitVisible(byTestID("sync-chart")))
	p.waitJS("the chart", fmt.Sprintf(`document.querySelectorAll('[data-testid="sync-chart"] svg g').length === %d`, len(syncs)))
	p.waitJS("the sync table", fmt.Sprintf(`document.querySelectorAll('#sync-rows tr').length === %d`, min(len(syncs), 50)))
	for _, cls := range []string{"bar-added", "bar-removed", "bar-unmatched", "line-size"} {
		if n := eval[int](p, `document.querySelectorAll('[data-testid="sync-chart"] .`+cls+`').length`); n == 0 {
			t.Errorf("the chart draws no %s", cls)
		}
	}
	if txt := eval[string](p, `document.getElementById("cohort-reasons").innerText`); !strings.Contains(txt, "shrank the cohort by more than half") {
		t.Errorf("the cohort view does not say why it is unhealthy: %q", txt)
	}
	p.shot("cohort")

	// The segment builder: power users and not churn risk, then or. The
	// second clause is added from the keyboard.
	p.do("open the segment builder", chromedp.Click(chromedp.CSS(`#nav a[data-view="segment"]`)), chromedp.WaitVisible(byTestID("segment-builder")))
	p.waitJS("the first clause", `document.querySelectorAll('[data-testid="segment-clause"]').length === 1`)
	p.setSelect("segment-cohort", 0, "amplitude/power_users")
	p.do("add a clause with the keyboard", chromedp.Focus(byTestID("segment-add-clause")), chromedp.KeyEvent("\r"))
	p.waitJS("the second clause", `document.querySelectorAll('[data-testid="segment-clause"]').length === 2`)
	p.setSelect("segment-cohort", 1, "amplitude/churn_risk")
	p.do("negate it", chromedp.Click(chromedp.CSS(`[data-testid="segment-clause"]:nth-child(2) [data-testid="segment-negate"]`)))
	for _, op := range []string{"and", "or", "and"} {
		p.setSelect("segment-op", 0, op)
		expr := map[string]any{op: []any{map[string]any{"cohort": "amplitude/power_users"}, map[string]any{"not": map[string]any{"cohort": "amplitude/churn_risk"}}}}
		want := d.must(req{method: "POST", path: "/v1/segments/count", token: key, body: map[string]any{"segment": expr}}, 200).json(t)["count"].(float64)
		p.waitJS(fmt.Sprintf("segment count %.0f (%s)", want, op), fmt.Sprintf(`%s.textContent === "%.0f" && !%s.classList.contains("busy")`,
			fmt.Sprintf(js, "segment-count"), want, fmt.Sprintf(js, "segment-count")))
		shown := eval[string](p, `document.getElementById("segment-json").textContent`)
		var got map[string]any
		if err := json.Unmarshal([]byte(shown), &got); err != nil || fmt.Sprint(got["segment"]) != fmt.Sprint(expr) {
			t.Errorf("the page shows the expression %s, want %v", shown, expr)
		}
	}
	p.waitJS("a sample of members", `document.querySelectorAll('#segment-sample li').length === 10`)
	p.shot("segment")

	// Lookup by external id, submitted with Enter.
	p.do("open lookup", chromedp.Click(chromedp.CSS(`#nav a[data-view="lookup"]`)), chromedp.WaitVisible(byTestID("lookup-input")))
	user := demoUserID(30)
	p.do("look a user up", chromedp.SendKeys(byTestID("lookup-input"), user+"\r"))
	p.waitJS("the lookup result", fmt.Sprintf(`%s.innerText.includes("Cohorts (")`, fmt.Sprintf(js, "lookup-result")))
	res := eval[string](p, fmt.Sprintf(`%s.innerText`, fmt.Sprintf(js, "lookup-result")))
	lk := apiJSON("GET", "/v1/users/lookup?external_id="+user, nil)
	if !strings.Contains(res, user) || !strings.Contains(res, fmt.Sprintf("Cohorts (%d)", len(lk["cohorts"].([]any)))) {
		t.Errorf("lookup shows %q", res)
	}
	for _, c := range lk["cohorts"].([]any) {
		if name := c.(map[string]any)["name"].(string); !strings.Contains(res, name) {
			t.Errorf("lookup result lacks cohort %q: %q", name, res)
		}
	}
	p.shot("lookup")

	// A phone: the cohort view stays readable at 390 px.
	p.do("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Navigate(pageURL+"#/cohort/amplitude/"+demoShrunkCohort))
	p.waitJS("the chart on a phone", fmt.Sprintf(`document.querySelectorAll('[data-testid="sync-chart"] svg g').length === %d`, len(syncs)))
	if w := eval[int](p, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("the page is %d px wide on a 390 px phone", w)
	}
	p.shot("cohort-phone")
	p.do("wide again", chromedp.EmulateViewport(1280, 860))
	p.signOut()

	// 1,000 cohorts in another workspace.
	admin := d.adminToken()
	many := d.must(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "many"}}, 201).json(t)["api_key"].(string)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 1000; i += 4 {
				r := doReq(t, d.base, req{method: "PUT", path: fmt.Sprintf("/v1/cohorts/bulk/c%04d/members", i), token: many, body: map[string]any{"user_ids": []string{"nobody"}}})
				if r.status != 200 {
					t.Errorf("PUT cohort %d: %s", i, r)
					return
				}
			}
		}()
	}
	wg.Wait()
	p.signIn(many, 1000)
	t.Logf("1,000 cohort rows built in %s ms (GET /v1/cohorts to DOM)", eval[string](p, `document.documentElement.dataset.cohortRenderMs`))
	p.do("filter", chromedp.SendKeys(chromedp.ID("cohort-filter"), "c0999"))
	p.waitJS("one row left", `[...document.querySelectorAll('[data-testid="cohort-row"]')].filter(r => !r.hidden).length === 1`)
	t.Logf("filtering 1,000 rows took %s ms", eval[string](p, `document.documentElement.dataset.cohortFilterMs`))
	p.do("clear the filter", chromedp.Evaluate[chromedp.Void](`(() => { const f = document.getElementById("cohort-filter"); f.value = ""; f.dispatchEvent(new Event("input")); })()`))
	p.do("sort by id, descending", chromedp.Click(chromedp.CSS(`th[data-key="cohort_id"] button`)), chromedp.Click(chromedp.CSS(`th[data-key="cohort_id"] button`)))
	p.waitJS("c0999 first", `document.querySelector('[data-testid="cohort-row"]').dataset.key === "bulk/c0999"`)
	p.signOut()

	// What the page did.
	p.mu.Lock()
	problems, requests := append([]string(nil), p.problems...), append([]string(nil), p.requests...)
	p.mu.Unlock()
	for _, pr := range problems {
		t.Errorf("browser: %s", pr)
	}
	doc := loadOpenAPI(t)
	doc.Servers = openapi3.Servers{{URL: d.base}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]bool{}
	for _, r := range requests {
		method, raw, _ := strings.Cut(r, " ")
		u, err := url.Parse(raw)
		if err != nil || u.Host != d.addr || u.Scheme != "http" {
			t.Errorf("request to somewhere else than the daemon: %s", r)
			continue
		}
		hr, _ := http.NewRequest(method, raw, nil)
		route, _, err := router.FindRoute(hr)
		if err != nil {
			t.Errorf("request not in docs/openapi.yaml: %s (%v)", r, err)
			continue
		}
		if strings.HasPrefix(u.Path, "/v1/") {
			calls[route.Operation.OperationID] = true
		} else if !strings.HasPrefix(u.Path, "/ui/") {
			t.Errorf("the page called %s, not a /v1 call", r)
		}
	}
	for _, op := range []string{"listCohorts", "getCohort", "cohortSyncs", "segmentCount", "segmentMembers", "lookupUser"} {
		if !calls[op] {
			t.Errorf("the page never called %s (calls: %v)", op, calls)
		}
	}
	t.Logf("%d requests, /v1 operations %v; screenshots in %s", len(requests), calls, p.dir)
}
