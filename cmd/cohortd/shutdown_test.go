package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGracefulShutdown: a slow upload in flight at SIGTERM completes with
// 2xx, a new request meanwhile gets 503 (or, once the listener is closed,
// connection refused), and the process exits 0 within the timeout.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{args: []string{"-shutdown-timeout", "20s"}})
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")

	var nd bytes.Buffer
	for _, id := range userIDs("slow", 0, 20000) {
		fmt.Fprintf(&nd, "{\"external_id\":%q}\n", id)
	}
	full := nd.Bytes()
	pr, pw := io.Pipe()
	hr, err := http.NewRequest("POST", d.base+"/v1/users", pr)
	if err != nil {
		t.Fatal(err)
	}
	hr.ContentLength = int64(len(full))
	hr.Header.Set("Authorization", "Bearer "+tn.apiKey)
	hr.Header.Set("Content-Type", "application/x-ndjson")
	type result struct {
		status int
		body   string
		err    error
	}
	resc := make(chan result, 1)
	go func() {
		resp, err := httpClient.Do(hr)
		if err != nil {
			resc <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		resc <- result{status: resp.StatusCode, body: string(b)}
	}()
	half := len(full) / 2
	if _, err := pw.Write(full[:half]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the handler is now reading the body
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	// A new request (on a new connection) is refused while the upload runs.
	fresh := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := fresh.Get(d.base + "/readyz"); err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Errorf("/readyz during shutdown: %d, want 503", resp.StatusCode)
		}
	}
	if resp, err := fresh.Get(d.base + "/v1/usage"); err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Errorf("new request during shutdown: %d, want 503", resp.StatusCode)
		}
	}
	select {
	case <-d.done:
		t.Fatal("cohortd exited with a request in flight")
	default:
	}

	// Finish the slow upload: it must succeed.
	for off := half; off < len(full); off += 64 << 10 {
		end := min(off+64<<10, len(full))
		if _, err := pw.Write(full[off:end]); err != nil {
			t.Fatalf("upload: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = pw.Close()
	res := <-resc
	if res.err != nil || res.status != 200 {
		t.Fatalf("in-flight upload: status %d, err %v, body %s", res.status, res.err, res.body)
	}
	if !strings.Contains(res.body, `"created":20000`) {
		t.Errorf("in-flight upload reply: %s", res.body)
	}
	if code := d.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	// The upload was acknowledged, so it is there after a restart.
	d = startDaemon(t, dir, startOpts{})
	d.must(req{method: "GET", path: "/v1/users/lookup?external_id=slow19999", token: tn.apiKey}, 200)
	d.stop(syscall.SIGTERM, 30*time.Second)
}

// TestShutdownTimeout: an upload that never finishes does not hold the
// process beyond -shutdown-timeout; it still exits 0 and keeps what was
// acknowledged before.
func TestShutdownTimeout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{args: []string{"-shutdown-timeout", "1s"}})
	tn := setupTenant(d, d.adminToken(), "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON([]string{"kept"})}}, 200)

	pr, pw := io.Pipe()
	defer pw.Close()
	hr, err := http.NewRequest("POST", d.base+"/v1/users", pr)
	if err != nil {
		t.Fatal(err)
	}
	hr.ContentLength = 1 << 20 // promised, never delivered
	hr.Header.Set("Authorization", "Bearer "+tn.apiKey)
	hr.Header.Set("Content-Type", "application/x-ndjson")
	go func() {
		if resp, err := httpClient.Do(hr); err == nil {
			_ = resp.Body.Close()
		}
	}()
	if _, err := pw.Write([]byte("{\"external_id\":\"never\"}\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if code := d.stop(syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("exit took %s with -shutdown-timeout 1s", el)
	}

	d = startDaemon(t, dir, startOpts{})
	d.must(req{method: "GET", path: "/v1/users/lookup?external_id=kept", token: tn.apiKey}, 200)
	d.must(req{method: "GET", path: "/v1/users/lookup?external_id=never", token: tn.apiKey}, 404)
	d.stop(syscall.SIGTERM, 30*time.Second)
}
