package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// healthcheck runs `cohortd healthcheck` with args and env and checks that
// a failure says why in exactly one line of stderr and a success says
// nothing.
func healthcheck(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	code, stdout, stderr := runBin(t, env, append([]string{"healthcheck"}, args...)...)
	if stdout != "" {
		t.Errorf("healthcheck %v printed on stdout: %q", args, stdout)
	}
	switch {
	case code == 0 && stderr != "":
		t.Errorf("healthcheck %v: exit 0 but stderr %q", args, stderr)
	case code != 0 && (strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n")):
		t.Errorf("healthcheck %v: exit %d, want one line on stderr, got %q", args, code, stderr)
	}
	return code, stderr
}

// TestHealthcheck runs `cohortd healthcheck` against a real server: no
// server at the address, a server whose recovery is held (the newest
// snapshot is a FIFO that no one writes yet, as a stalled disk would hold
// it), the same server once ready, and the address taken from
// COHORTD_ADDR with an unspecified host.
func TestHealthcheck(t *testing.T) {
	t.Parallel()
	if code, stderr := healthcheck(t, nil, "-addr", freePort(t), "-timeout", "2s"); code != 1 || !strings.Contains(stderr, "/readyz") {
		t.Fatalf("no server: exit %d, %q", code, stderr)
	}
	for _, bad := range [][]string{{"-addr", "no-port"}, {"-timeout", "0s"}, {"extra"}} {
		if code, _, _ := runBin(t, nil, append([]string{"healthcheck"}, bad...)...); code != 2 {
			t.Errorf("healthcheck %v: exit %d, want 2", bad, code)
		}
	}

	// A data dir whose WAL holds a workspace, then a snapshot file that
	// blocks whoever opens it until the test writes to it.
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{})
	d.must(req{method: "POST", path: "/v1/workspaces", token: d.adminToken(), body: map[string]string{"id": "acme"}}, 201)
	d.stop(syscall.SIGKILL, 10*time.Second)
	fifo := filepath.Join(dir, "snapshot-00000000000000000001.snap")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, dir, startOpts{noWait: true})
	if code, stderr := healthcheck(t, nil, "-addr", d.addr); code != 1 || !strings.Contains(stderr, "503") || !strings.Contains(stderr, "not ready") {
		t.Fatalf("during recovery: exit %d, %q", code, stderr)
	}
	// Release the snapshot: it reads back empty, is set aside as corrupt,
	// and the WAL rebuilds the state.
	// Opened without blocking (ENXIO until the server has it open for
	// reading), so that a server that died does not hang the test.
	deadline := time.Now().Add(30 * time.Second)
	for {
		w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			_ = w.Close()
			break
		}
		select {
		case <-d.done:
			t.Fatalf("cohortd exited during recovery: %v", d.exitErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cohortd never opened the snapshot: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.waitReady()
	if code, _ := healthcheck(t, nil, "-addr", d.addr); code != 0 {
		t.Fatalf("ready server: exit %d", code)
	}
	_, port, _ := net.SplitHostPort(d.addr)
	if code, _ := healthcheck(t, []string{"COHORTD_ADDR=0.0.0.0:" + port}); code != 0 {
		t.Fatalf("COHORTD_ADDR=0.0.0.0:%s: exit %d", port, code)
	}
	if !strings.Contains(d.stderr.String(), "SNAPSHOT UNREADABLE") {
		t.Errorf("the unreadable snapshot was not logged:\n%s", d.stderr)
	}
	d.must(req{method: "GET", path: "/v1/workspaces", token: d.adminToken()}, 200)
	d.stop(syscall.SIGTERM, 30*time.Second)
	if code, _ := healthcheck(t, nil, "-addr", d.addr, "-timeout", "2s"); code != 1 {
		t.Fatalf("stopped server: exit %d", code)
	}
}

// TestHealthcheckTLS: -tls asks over HTTPS (the certificate is not for
// 127.0.0.1 and is not verified), and is on by default when
// COHORTD_TLS_CERT is set, as in a container configured for TLS.
func TestHealthcheckTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, _ := selfSigned(t, t.TempDir(), "cohortd.example.com")
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-tls-cert", certFile, "-tls-key", keyFile}, noWait: true})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if code, _, _ := runBin(t, nil, "healthcheck", "-addr", d.addr, "-tls"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("healthcheck -tls never succeeded")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := healthcheck(t, []string{"COHORTD_TLS_CERT=" + certFile, "COHORTD_ADDR=" + d.addr}); code != 0 {
		t.Fatalf("with COHORTD_TLS_CERT set: exit %d", code)
	}
	if code, _ := healthcheck(t, nil, "-addr", d.addr, "-timeout", "2s"); code != 1 {
		t.Fatalf("plain HTTP to the TLS port: exit %d", code)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
}

func TestHealthcheckURL(t *testing.T) {
	for _, tc := range []struct {
		addr string
		tls  bool
		want string
	}{
		{"127.0.0.1:8080", false, "http://127.0.0.1:8080/readyz"},
		{"0.0.0.0:8080", false, "http://127.0.0.1:8080/readyz"},
		{":9000", true, "https://127.0.0.1:9000/readyz"},
		{"[::]:8080", false, "http://[::1]:8080/readyz"},
		{"cohortd.internal:80", false, "http://cohortd.internal:80/readyz"},
	} {
		got, err := healthcheckURL(tc.addr, tc.tls)
		if err != nil || got != tc.want {
			t.Errorf("healthcheckURL(%q, %v) = %q, %v; want %q", tc.addr, tc.tls, got, err, tc.want)
		}
	}
	if _, err := healthcheckURL("8080", false); err == nil {
		t.Error("an address without a port was accepted")
	}
}
