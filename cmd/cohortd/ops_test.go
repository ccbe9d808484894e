package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"github.com/redis/go-redis/v9"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runBin runs the cohortd binary to completion and returns its exit code,
// stdout and stderr.
func runBin(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := newCmd(append(cleanEnv(), env...), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("cohortd %v did not exit", args)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// metricValue returns the value of the first sample whose line starts with
// prefix, or -1.
func metricValue(t *testing.T, body, prefix string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v
		}
	}
	return -1
}

// TestVersionAndOpsMetrics: -version, cohortd_build_info, the fsync
// histogram and the snapshot gauges through the real binary.
func TestVersionAndOpsMetrics(t *testing.T) {
	t.Parallel()
	code, out, _ := runBin(t, nil, "-version")
	if code != 0 || !strings.HasPrefix(out, "cohortd "+testVersion+" ") || !strings.Contains(out, "go1.") {
		t.Fatalf("-version: exit %d, %q", code, out)
	}
	// COHORTD_VERSION has no effect: it would turn a server into a print.
	d := startDaemon(t, t.TempDir(), startOpts{env: []string{"COHORTD_VERSION=true"}})
	admin := d.adminToken()
	m := string(d.must(req{method: "GET", path: "/metrics"}, 200).body)
	if !strings.Contains(m, `cohortd_build_info{version="`+testVersion+`",revision="`) || metricValue(t, m, "cohortd_build_info{") != 1 {
		t.Fatalf("no cohortd_build_info:\n%s", m)
	}
	if v := metricValue(t, m, "cohortd_snapshot_last_success_timestamp_seconds"); v != 0 {
		t.Fatalf("fresh dir: last snapshot timestamp %v, want 0", v)
	}
	if v := metricValue(t, m, "cohortd_snapshot_age_seconds"); v < 0 {
		t.Fatalf("no snapshot age:\n%s", m)
	}
	setupTenant(d, admin, "acme", "amplitude") // durable writes: fsyncs
	snap := d.must(req{method: "POST", path: "/v1/admin/snapshot", token: admin}, 201).json(t)
	m = string(d.must(req{method: "GET", path: "/metrics"}, 200).body)
	if n := metricValue(t, m, "cohortd_wal_fsync_duration_seconds_count"); n < 3 {
		t.Fatalf("fsync histogram count %v after three durable writes:\n%s", n, m)
	}
	if !strings.Contains(m, `cohortd_wal_fsync_duration_seconds_bucket{le="`) {
		t.Fatal("fsync histogram has no buckets")
	}
	ts := metricValue(t, m, "cohortd_snapshot_last_success_timestamp_seconds")
	if now := float64(time.Now().Unix()); ts < now-60 || ts > now+1 {
		t.Fatalf("last snapshot timestamp %v, now %v", ts, now)
	}
	if age := metricValue(t, m, "cohortd_snapshot_age_seconds"); age < 0 || age > 60 {
		t.Fatalf("snapshot age %v", age)
	}
	if v := metricValue(t, m, "cohortd_snapshot_failures_total"); v != 0 {
		t.Fatalf("snapshot failures %v", v)
	}
	if fi, err := os.Stat(filepath.Join(d.dataDir, str(t, snap, "file"))); err != nil || fi.Size() != int64(num(t, snap, "bytes")) {
		t.Fatalf("snapshot file: %v %v vs %v", fi, err, snap)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
}

func TestBuildInfoFrom(t *testing.T) {
	rev := []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}
	for _, tc := range []struct {
		stamped string
		info    *debug.BuildInfo
		ok      bool
		want    string
	}{
		{"v1.2.3-4-gabc", &debug.BuildInfo{Settings: rev}, true, "v1.2.3-4-gabc"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, true, "v1.4.0"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: rev}, true, "devel-0123456789ab-dirty"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, true, "devel"},
		{"", nil, false, "devel"},
	} {
		bi := buildInfoFrom(tc.stamped, tc.info, tc.ok)
		if bi.Version != tc.want {
			t.Errorf("%q %+v: version %q, want %q", tc.stamped, tc.info, bi.Version, tc.want)
		}
	}
}

// TestAdminTokenFile: the token comes from a file (not the command line),
// nothing is generated, and bad combinations fail clearly.
func TestAdminTokenFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("file-admin-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, dir, startOpts{args: []string{"-admin-token-file", tokFile}})
	d.must(req{method: "GET", path: "/v1/workspaces", token: "file-admin-token"}, 200)
	if _, err := os.Stat(filepath.Join(dir, adminTokenFile)); err == nil {
		t.Fatal("a token was generated although -admin-token-file was given")
	}
	if strings.Contains(d.stdout.String(), "admin token") || strings.Contains(d.stderr.String(), "readable by others") {
		t.Fatalf("unexpected output:\n%s\n%s", d.stdout, d.stderr)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)

	// Through the environment; a file others can read is logged.
	if err := os.Chmod(tokFile, 0o644); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, dir, startOpts{env: []string{"COHORTD_ADMIN_TOKEN_FILE=" + tokFile}})
	d.must(req{method: "GET", path: "/v1/partners", token: "file-admin-token"}, 200)
	if !strings.Contains(d.stderr.String(), "readable by others") {
		t.Errorf("no warning for a 0644 token file:\n%s", d.stderr)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)

	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-admin-token-file", tokFile, "-admin-token", "x"}, 2, "exclude each other"},
		{[]string{"-admin-token-file", filepath.Join(dir, "missing")}, 1, "-admin-token-file"},
		{[]string{"-admin-token-file", empty}, 1, "holds no token"},
	} {
		code, _, stderr := runBin(t, nil, append([]string{"-data-dir", t.TempDir(), "-addr", "127.0.0.1:0"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

var textListenRe = regexp.MustCompile(`msg=listening addr=(\S+)`)

// TestLogFormat: JSON when stderr is not a terminal, text on request.
func TestLogFormat(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{}) // stderr is a pipe: JSON
	for _, line := range strings.Split(strings.TrimSpace(d.stderr.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("not a JSON log line: %q", line)
		}
	}
	d.stop(syscall.SIGTERM, 30*time.Second)

	cmd := newCmd(cleanEnv(), "-data-dir", dir, "-addr", "127.0.0.1:0", "-log-format", "text")
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "msg=\"recovery done\"") {
		if time.Now().After(deadline) {
			t.Fatalf("no text log lines:\n%s", stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !textListenRe.MatchString(stderr.String()) || strings.Contains(stderr.String(), `{"time"`) {
		t.Fatalf("-log-format text:\n%s", stderr)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}

	if code, _, se := runBin(t, nil, "-data-dir", dir, "-log-format", "xml"); code != 2 || !strings.Contains(se, "-log-format") {
		t.Fatalf("-log-format xml: exit %d %q", code, se)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// into dir and returns their paths and a pool that trusts it.
func selfSigned(t *testing.T, dir, name string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS serves HTTPS with a certificate generated here; the demo seeds
// over it, and plain HTTP to the port is refused.
func TestTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, t.TempDir(), "cohortd-test")
	respAddr := freePort(t)
	d := startDaemon(t, dir, startOpts{args: []string{"-tls-cert", certFile, "-tls-key", keyFile, "-demo", "-resp-addr", respAddr}, noWait: true})
	if !strings.Contains(d.stderr.String(), `"tls":true`) {
		t.Fatalf("listening line without tls:true:\n%s", d.stderr)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + d.addr
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 || resp.TLS.PeerCertificates[0].Subject.CommonName != "cohortd-test" {
					t.Fatalf("TLS state %+v", resp.TLS)
				}
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("https /readyz: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The demo seeds through the TLS listener and prints https commands.
	for !strings.Contains(d.stdout.String(), "Metrics:") {
		if time.Now().After(deadline) {
			t.Fatalf("demo over TLS did not finish:\n%s\n%s", d.stdout, tail(d.stderr.String(), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(d.stdout.String(), "curl -sS "+base+"/metrics") {
		t.Fatalf("demo commands are not https:\n%s", d.stdout)
	}
	req, _ := http.NewRequest("GET", base+"/v1/workspaces", nil)
	req.Header.Set("Authorization", "Bearer "+d.adminToken())
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"id":"demo","created_at":"`) || !strings.Contains(string(body), `"users":100000`) {
		t.Fatalf("GET /v1/workspaces over TLS: %d %s", resp.StatusCode, body)
	}
	// The Redis-protocol listener serves the same certificate.
	apiKey := demoAPIKeyRe.FindStringSubmatch(d.stdout.String())
	if apiKey == nil {
		t.Fatalf("no demo API key in:\n%s", d.stdout)
	}
	rdb := redis.NewClient(&redis.Options{Addr: respAddr, Password: apiKey[1], TLSConfig: &tls.Config{RootCAs: pool}, MaxRetries: -1})
	defer rdb.Close()
	if n, err := rdb.SCard(context.Background(), "amplitude/power_users").Result(); err != nil || n == 0 {
		t.Fatalf("SCARD over TLS: %d %v", n, err)
	}
	plain := redis.NewClient(&redis.Options{Addr: respAddr, Password: apiKey[1], MaxRetries: -1, DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second})
	defer plain.Close()
	if err := plain.Ping(context.Background()).Err(); err == nil {
		t.Fatal("plain RESP answered on the TLS port")
	}
	// Plain HTTP gets no HTTP answer from the TLS port.
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + d.addr + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP answered 200 on the TLS port")
		}
	}
	d.stop(syscall.SIGTERM, 30*time.Second)

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-tls-cert", certFile}, 2, "go together"},
		{[]string{"-tls-cert", certFile, "-tls-key", certFile}, 1, "-tls-cert/-tls-key"},
		{[]string{"-tls-cert", filepath.Join(dir, "nope.crt"), "-tls-key", keyFile}, 1, "-tls-cert/-tls-key"},
	} {
		code, _, stderr := runBin(t, nil, append([]string{"-data-dir", t.TempDir(), "-addr", "127.0.0.1:0"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

// TestCertReload: a renewed certificate is served without a restart; one
// that does not load keeps the previous one.
func TestCertReload(t *testing.T) {
	dir := t.TempDir()
	certA, keyA, _ := selfSigned(t, dir, "a")
	certB, keyB, _ := selfSigned(t, dir, "b")
	live, liveKey := filepath.Join(dir, "live.crt"), filepath.Join(dir, "live.key")
	cp := func(src, dst string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cp(certA, live)
	cp(keyA, liveKey)
	now := time.Unix(1000, 0)
	cr := &certReloader{certFile: live, keyFile: liveKey, log: slog.New(slog.NewTextHandler(io.Discard, nil)), now: func() time.Time { return now }}
	if err := cr.load(); err != nil {
		t.Fatal(err)
	}
	cn := func() string {
		c, err := cr.get(nil)
		if err != nil {
			t.Fatal(err)
		}
		x, _ := x509.ParseCertificate(c.Certificate[0])
		return x.Subject.CommonName
	}
	if cn() != "a" {
		t.Fatal("not serving a")
	}
	cp(certB, live)
	cp(keyB, liveKey)
	if cn() != "a" {
		t.Fatal("reloaded before the check interval")
	}
	now = now.Add(11 * time.Second)
	if cn() != "b" {
		t.Fatal("renewed certificate not served")
	}
	os.WriteFile(live, []byte("garbage"), 0o600)
	now = now.Add(11 * time.Second)
	if cn() != "b" {
		t.Fatal("a broken certificate replaced the good one")
	}
}

// TestAdminSurvivesKill9: rotations and deletions are durable, and their
// created_at values come back from the log, not the clock.
func TestAdminSurvivesKill9(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	a := setupTenant(d, admin, "a", "p")
	b := d.must(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "b"}}, 201).json(t)
	q := d.must(req{method: "POST", path: "/v1/partners", token: admin, body: map[string]string{"slug": "q"}}, 201).json(t)
	qk := d.must(req{method: "POST", path: "/v1/workspaces/a/partners/q/keys", token: admin}, 201).json(t)
	d.must(req{method: "POST", path: "/v1/users", token: a.apiKey, body: map[string]any{"users": usersJSON(userIDs("u", 0, 10))}}, 200)
	d.must(req{method: "POST", path: "/partners/p/cohorts/users", body: a.changes("c", userIDs("u", 0, 5), false)}, 201)
	newA := str(t, d.must(req{method: "POST", path: "/v1/workspaces/a/api-key", token: admin}, 201).json(t), "api_key")
	newP := str(t, d.must(req{method: "POST", path: "/v1/partners/p/api-key", token: admin}, 201).json(t), "partner_api_key")
	d.must(req{method: "DELETE", path: "/v1/workspaces/b", token: admin}, 204)
	d.must(req{method: "DELETE", path: "/v1/partners/q", token: admin}, 204)
	wantWS := string(d.must(req{method: "GET", path: "/v1/workspaces", token: admin}, 200).body)
	wantPT := string(d.must(req{method: "GET", path: "/v1/partners", token: admin}, 200).body)

	check := func(d *daemon) {
		t.Helper()
		if got := string(d.must(req{method: "GET", path: "/v1/workspaces", token: admin}, 200).body); got != wantWS {
			t.Fatalf("workspaces after restart:\n%s\nwant\n%s", got, wantWS)
		}
		if got := string(d.must(req{method: "GET", path: "/v1/partners", token: admin}, 200).body); got != wantPT {
			t.Fatalf("partners after restart:\n%s\nwant\n%s", got, wantPT)
		}
		d.must(req{method: "GET", path: "/v1/usage", token: a.apiKey}, 401)
		d.must(req{method: "GET", path: "/v1/usage", token: newA}, 200)
		d.must(req{method: "GET", path: "/v1/usage", token: str(t, b, "api_key")}, 401)
		old := a.changes("c", userIDs("u", 5, 6), false)
		d.must(req{method: "POST", path: "/partners/p/cohorts/users", body: old}, 401)
		old["partner_api_key"] = newP
		d.must(req{method: "POST", path: "/partners/p/cohorts/users", body: old}, 201)
		viaQ := map[string]any{"partner_api_key": str(t, q, "partner_api_key"), "client_secret": str(t, qk, "client_secret"),
			"cohort_id": "x", "cohort_changes": []any{}}
		d.must(req{method: "POST", path: "/partners/q/cohorts/users", body: viaQ}, 401)
	}
	check(d)
	d.stop(syscall.SIGKILL, 10*time.Second)
	d = startDaemon(t, dir, startOpts{})
	check(d)
	if code := d.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	d = startDaemon(t, dir, startOpts{}) // from the shutdown snapshot
	check(d)
	d.stop(syscall.SIGTERM, 30*time.Second)
}

// TestCheckAndWALDump runs the offline tools on a data dir left by kill -9
// and by a clean shutdown, and on a damaged copy.
func TestCheckAndWALDump(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON(userIDs("u", 0, 50))}}, 200)
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", 0, 20), false)}, 201)
	d.must(req{method: "POST", path: "/v1/workspaces/acme/api-key", token: admin}, 201)
	d.must(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "tmp"}}, 201)
	d.must(req{method: "DELETE", path: "/v1/workspaces/tmp", token: admin}, 204)

	if code, out, se := runBin(t, nil, "check", "-data-dir", dir); code != 2 || !strings.Contains(se, "in use") {
		t.Fatalf("check of a running server's dir: exit %d\n%s%s", code, out, se)
	}
	d.stop(syscall.SIGKILL, 10*time.Second)

	code, out, se := runBin(t, nil, "wal", "dump", "-data-dir", dir)
	if code != 0 {
		t.Fatalf("wal dump: exit %d: %s", code, se)
	}
	types := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<22)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("dump line %q: %v", sc.Bytes(), err)
		}
		types[m["type"].(string)]++
		if m["type"] == "members" && (m["workspace"] != "acme" || m["added"] != 20.0 || m["cohort_id"] != "c1") {
			t.Fatalf("members record %v", m)
		}
	}
	for _, typ := range []string{"workspace_create", "partner_create", "import_key", "users", "cohort_upsert", "members", "workspace_key", "workspace_delete"} {
		if types[typ] == 0 {
			t.Errorf("wal dump has no %s record: %v", typ, types)
		}
	}
	if code, out, _ := runBin(t, nil, "wal", "dump", "-data-dir", dir, "-from", "3", "-ids"); code != 0 || !strings.HasPrefix(out, `{"lsn":3,`) || !strings.Contains(out, `"added_ids":[`) {
		t.Fatalf("wal dump -from 3 -ids: %d %.300s", code, out)
	}

	code, out, se = runBin(t, nil, "check", "-data-dir", dir)
	if code != 0 || !strings.Contains(out, "result: OK") || !strings.Contains(out, "1 workspaces, 50 users, 1 cohorts, 20 memberships") {
		t.Fatalf("check after kill -9: exit %d\n%s%s", code, out, se)
	}
	// COHORTD_DATA_DIR names the dir too; -json is machine-readable.
	code, out, _ = runBin(t, []string{"COHORTD_DATA_DIR=" + dir}, "check", "-json")
	var rep struct {
		OK    bool           `json:"ok"`
		State map[string]int `json:"state"`
		WAL   struct {
			Records int `json:"records"`
		} `json:"wal"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 || !rep.OK || rep.State["users"] != 50 || rep.WAL.Records == 0 {
		t.Fatalf("check -json: exit %d, %v: %s", code, err, out)
	}

	// A clean shutdown leaves a snapshot; the check reads it.
	d = startDaemon(t, dir, startOpts{})
	d.stop(syscall.SIGTERM, 30*time.Second)
	code, out, _ = runBin(t, nil, "check", "-data-dir", dir)
	if code != 0 || !regexp.MustCompile(`snapshot snapshot-\d+\.snap \(newest, \d+ bytes, covers lsn ≤ \d+\): ok: 1 partners, 1 workspaces, 50 users`).MatchString(out) {
		t.Fatalf("check after shutdown: exit %d\n%s", code, out)
	}

	// Damage: one flipped byte in the snapshot.
	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshot-*.snap"))
	if len(snaps) != 1 {
		t.Fatalf("snapshots %v", snaps)
	}
	b, _ := os.ReadFile(snaps[0])
	b[len(b)/2] ^= 0x10
	os.WriteFile(snaps[0], b, 0o644)
	code, out, _ = runBin(t, nil, "check", "-data-dir", dir)
	// The WAL still starts at record 1: start-up would set the snapshot
	// aside and rebuild from the WAL alone.
	if code != 1 || !strings.Contains(out, "CORRUPT") || !strings.Contains(out, filepath.Base(snaps[0])) ||
		!strings.Contains(out, "rebuild from the WAL alone") || !strings.Contains(out, "result: CORRUPT, but recoverable") {
		t.Fatalf("check of a damaged snapshot: exit %d\n%s", code, out)
	}
	if code, _, se := runBin(t, nil, "check", "-data-dir", filepath.Join(dir, "nope")); code != 2 || se == "" {
		t.Fatalf("check of a missing dir: exit %d %q", code, se)
	}
	if code, _, _ := runBin(t, nil, "wal", "frobnicate"); code != 2 {
		t.Fatalf("wal frobnicate: exit %d", code)
	}
}

// TestBackupRestore: the file POST /v1/admin/snapshot names, copied into an
// empty data dir, starts a server with the state of that moment.
func TestBackupRestore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON(userIDs("u", 0, 30))}}, 200)
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", 0, 10), false)}, 201)
	snap := d.must(req{method: "POST", path: "/v1/admin/snapshot", token: admin}, 201).json(t)
	// Written after the backup point: not in the backup.
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", 10, 20), false)}, 201)

	backup := t.TempDir()
	b, err := os.ReadFile(filepath.Join(dir, str(t, snap, "file")))
	if err != nil {
		t.Fatal(err)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
	if err := os.WriteFile(filepath.Join(backup, str(t, snap, "file")), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := runBin(t, nil, "check", "-data-dir", backup); code != 0 {
		t.Fatalf("check of the backup: %d\n%s", code, out)
	}
	r := startDaemon(t, backup, startOpts{})
	co := r.must(req{method: "GET", path: "/v1/cohorts/amplitude/c1", token: tn.apiKey}, 200).json(t)
	if num(t, co, "size") != 10 {
		t.Fatalf("restored cohort %v, want the 10 members of the backup point", co)
	}
	r.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", 10, 12), false)}, 201)
	r.stop(syscall.SIGTERM, 30*time.Second)
}
