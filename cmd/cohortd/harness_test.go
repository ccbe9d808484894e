package main

// The end-to-end tests build the real binary once (TestMain) and run it as a
// child process on 127.0.0.1 with a fresh data directory, talking plain HTTP
// to it the way a user or a partner's exporter would.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cohortd/cohortd/server/client"
)

// binPath is the cohortd binary built by TestMain.
var binPath string

// testVersion is stamped into the test binary with -ldflags -X.
const testVersion = "v0.0.0-e2e"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cohortd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "cohortd")
	// The version is stamped as the Makefile does (ops_test.go checks it).
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+testVersion, "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build cohortd:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and test readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// daemon is a running cohortd process.
type daemon struct {
	t       *testing.T
	cmd     *exec.Cmd
	dataDir string
	addr    string
	base    string
	stdout  *syncBuffer
	stderr  *syncBuffer
	done    chan struct{} // closed when the process has exited
	exitErr error
}

// startOpts configure startDaemon.
type startOpts struct {
	args []string // extra flags
	env  []string // extra environment, KEY=VALUE
	// noAddr leaves -addr off the command line (the test sets COHORTD_ADDR).
	noAddr bool
	// noWait returns without waiting for /readyz.
	noWait bool
}

var listenRe = regexp.MustCompile(`"msg":"listening","addr":"([^"]+)"`)

// startDaemon starts cohortd on dataDir and waits until it is ready.
func startDaemon(t *testing.T, dataDir string, o startOpts) *daemon {
	t.Helper()
	args := []string{"-data-dir", dataDir}
	if !o.noAddr {
		args = append(args, "-addr", "127.0.0.1:0")
	}
	args = append(args, o.args...)
	d := &daemon{t: t, dataDir: dataDir, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(binPath, args...)
	d.cmd.Env = append(cleanEnv(), o.env...)
	d.cmd.Stdout, d.cmd.Stderr = d.stdout, d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start cohortd: %v", err)
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("cohortd stdout:\n%s", d.stdout)
			t.Logf("cohortd stderr (tail):\n%s", tail(d.stderr.String(), 4000))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for d.addr == "" {
		if m := listenRe.FindStringSubmatch(d.stderr.String()); m != nil {
			d.addr = m[1]
			break
		}
		select {
		case <-d.done:
			t.Fatalf("cohortd exited before listening: %v\nstderr:\n%s", d.exitErr, d.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cohortd did not log its listen address\nstderr:\n%s", d.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.base = "http://" + d.addr
	if !o.noWait {
		d.waitReady()
	}
	return d
}

// cleanEnv is the test's environment without COHORTD_* variables, so that
// a developer's shell cannot change what the tests start.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func (d *daemon) waitReady() {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(d.base + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-d.done:
			d.t.Fatalf("cohortd exited before ready: %v", d.exitErr)
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("cohortd not ready after 30s (last: %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends sig and waits up to wait for the process to exit; it returns
// the exit code (-1 when killed by a signal).
func (d *daemon) stop(sig syscall.Signal, wait time.Duration) int {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal: %v", err)
	}
	return d.wait(wait)
}

func (d *daemon) wait(wait time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(wait):
		_ = d.cmd.Process.Kill()
		<-d.done
		d.t.Fatalf("cohortd did not exit within %s", wait)
	}
	return d.cmd.ProcessState.ExitCode()
}

// adminToken reads the generated admin token from the data dir.
func (d *daemon) adminToken() string {
	d.t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dataDir, adminTokenFile))
	if err != nil {
		d.t.Fatalf("admin token: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// req is one HTTP request of a test.
type req struct {
	method, path string
	token        string // bearer token
	body         any    // []byte as is, io.Reader streamed, else JSON-encoded
	ctype        string // default application/json when there is a body
	encoding     string // "gzip" or "zstd": compress the body
	header       map[string]string
}

// reply is the answer to a req.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// json decodes the body into a generic map.
func (r reply) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("reply is not a JSON object: %v: %s", err, r.body)
	}
	return m
}

// httpClient sends no Accept-Encoding of its own, so that tests see bodies
// as the server sent them, and follows no redirect (tests check them).
var httpClient = &http.Client{
	Timeout:       60 * time.Second,
	Transport:     &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 8},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// do sends q and returns the reply.
func (d *daemon) do(q req) reply {
	d.t.Helper()
	return doReq(d.t, d.base, q)
}

// request turns q into a server/client request.
func (q req) request(t *testing.T) *client.Request {
	t.Helper()
	r := &client.Request{Method: q.method, Path: q.path, ContentType: q.ctype, Encoding: client.Encoding(q.encoding), Header: http.Header{}}
	switch b := q.body.(type) {
	case nil:
	case io.Reader:
		r.BodyReader = b
	case []byte:
		r.Body = compress(t, q.encoding, b)
	case string:
		r.Body = compress(t, q.encoding, []byte(b))
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		r.Body = compress(t, q.encoding, j)
	}
	if q.token != "" {
		r.Header.Set("Authorization", "Bearer "+q.token)
	}
	for k, v := range q.header {
		r.Header.Set(k, v)
	}
	return r
}

// build turns q into an *http.Request against base.
func (q req) build(t *testing.T, base string) *http.Request {
	t.Helper()
	hr, err := client.New(base, client.Options{HTTPClient: httpClient}).NewHTTPRequest(context.Background(), q.request(t))
	if err != nil {
		t.Fatal(err)
	}
	return hr
}

// doReq sends q to base through server/client's raw Send, whatever the
// reply's status.
func doReq(t *testing.T, base string, q req) reply {
	t.Helper()
	rep, err := client.New(base, client.Options{HTTPClient: httpClient}).Send(context.Background(), q.request(t))
	if err != nil {
		t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	return reply{status: rep.Status, header: rep.Header, body: rep.Body}
}

// must sends q and fails the test unless the status is want.
func (d *daemon) must(q req, want int) reply {
	d.t.Helper()
	r := d.do(q)
	if r.status != want {
		d.t.Fatalf("%s %s: got %s, want status %d", q.method, q.path, r, want)
	}
	return r
}

// compress compresses b as a body sent with Content-Encoding enc.
func compress(t *testing.T, enc string, b []byte) []byte {
	t.Helper()
	switch e := client.Encoding(enc); e {
	case client.EncodingNone, client.EncodingGzip, client.EncodingZstd:
		return client.Compress(b, e)
	}
	t.Fatalf("unknown encoding %q", enc)
	return nil
}

// tenant is a workspace with a partner and an import key.
type tenant struct {
	admin, apiKey, partner, partnerKey, keyID, secret string
}

// setupTenant creates workspace ws, partner slug and an import key.
func setupTenant(d *daemon, admin, ws, slug string) tenant {
	d.t.Helper()
	ctx := context.Background()
	c := client.New(d.base, client.Options{HTTPClient: httpClient, Token: admin})
	tn := tenant{admin: admin, partner: slug}
	var err error
	if tn.apiKey, err = c.CreateWorkspace(ctx, ws); err != nil {
		d.t.Fatal(err)
	}
	if tn.partnerKey, err = c.CreatePartner(ctx, slug); err != nil {
		d.t.Fatal(err)
	}
	ik, err := c.CreateImportKey(ctx, ws, slug)
	if err != nil {
		d.t.Fatal(err)
	}
	tn.keyID, tn.secret = ik.KeyID, ik.ClientSecret
	return tn
}

func str(t *testing.T, m map[string]any, k string) string {
	t.Helper()
	s, ok := m[k].(string)
	if !ok || s == "" {
		t.Fatalf("field %q is not a non-empty string in %v", k, m)
	}
	return s
}

// num returns the JSON number m[k] as an int.
func num(t *testing.T, m map[string]any, k string) int {
	t.Helper()
	f, ok := m[k].(float64)
	if !ok {
		t.Fatalf("field %q is not a number in %v", k, m)
	}
	return int(f)
}

// changes is a partner cohorts/users body.
func (tn tenant) changes(cohort string, userIDs []string, remove bool) map[string]any {
	return map[string]any{
		"partner_api_key": tn.partnerKey, "client_secret": tn.secret, "cohort_id": cohort,
		"cohort_changes": []map[string]any{{"user_ids": userIDs, "device_ids": []string{}, "aliases": []any{}, "should_remove": remove}},
	}
}

// ndjsonLines reads NDJSON into generic maps.
func ndjsonLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("NDJSON line %q: %v", sc.Bytes(), err)
		}
		out = append(out, m)
	}
	return out
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func userIDs(prefix string, lo, hi int) []string {
	var ids []string
	for i := lo; i < hi; i++ {
		ids = append(ids, fmt.Sprintf("%s%d", prefix, i))
	}
	return ids
}
