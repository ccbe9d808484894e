package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"
)

// TestMixedSmoke is the smoke run of make test: the real cohortd binary on
// a fresh data dir (default flags: -fsync=always) and the real loadgen
// binary running `mixed` for a few seconds. It must end with zero errors
// and the server's cohort sizes equal to loadgen's model.
func TestMixedSmoke(t *testing.T) {
	if os.Getenv("COHORTD_SMOKE") == "skip" {
		t.Skip("COHORTD_SMOKE=skip")
	}
	dir := t.TempDir()
	build := func(pkg, out string) string {
		p := filepath.Join(dir, out)
		cmd := exec.Command("go", "build", "-o", p, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("build %s: %v", pkg, err)
		}
		return p
	}
	cohortd := build("github.com/cohortd/cohortd/cmd/cohortd", "cohortd")
	loadgen := build("github.com/cohortd/cohortd/cmd/loadgen", "loadgen")

	var stderr syncBuf
	srv := exec.Command(cohortd, "-addr", "127.0.0.1:0", "-data-dir", filepath.Join(dir, "data"), "-admin-token", "smoke-admin")
	srv.Stderr = &stderr
	srv.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
		if t.Failed() {
			t.Logf("cohortd stderr:\n%s", stderr.String())
		}
	}()
	re := regexp.MustCompile(`"msg":"listening","addr":"([^"]+)"`)
	var addr string
	for deadline := time.Now().Add(20 * time.Second); addr == ""; {
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatal("cohortd did not start listening")
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	report := filepath.Join(dir, "report.json")
	lg := exec.Command(loadgen, "mixed", "-addr", "http://"+addr, "-admin-token", "smoke-admin",
		"-duration", "4s", "-users", "20000", "-cohorts", "3", "-json-out", report, "-quiet")
	var out bytes.Buffer
	lg.Stdout, lg.Stderr = &out, &out
	if err := lg.Run(); err != nil {
		t.Fatalf("loadgen mixed failed: %v\n%s", err, out.String())
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Errors       int64 `json:"errors"`
		Verification struct {
			Checks   int `json:"checks"`
			Failures int `json:"failures"`
		} `json:"verification"`
		Ops []struct {
			Name  string `json:"name"`
			Count int64  `json:"count"`
		} `json:"ops"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("report: %v\n%s", err, b)
	}
	if r.Errors != 0 || r.Verification.Failures != 0 || r.Verification.Checks == 0 {
		t.Fatalf("errors %d, verification %d failures of %d checks\n%s", r.Errors, r.Verification.Failures, r.Verification.Checks, out.String())
	}
	var total int64
	for _, op := range r.Ops {
		total += op.Count
	}
	if total == 0 {
		t.Fatalf("no operation ran:\n%s", out.String())
	}
	t.Logf("%d operations, %d verification checks", total, r.Verification.Checks)
}

// syncBuf is a buffer written by the child's stderr copier and read by
// the test.
type syncBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
