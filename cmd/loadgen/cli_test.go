package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cohortd/cohortd/loadgen"
)

// runCLI runs the command line in process with no secrets in the
// environment.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	t.Setenv("COHORTD_ADMIN_TOKEN", "")
	t.Setenv("COHORTD_API_KEY", "")
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// flagNames lists the flags a -h output shows.
func flagNames(help string) map[string]bool {
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(help, -1) {
		names[m[1]] = true
	}
	return names
}

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		code, out, _ := runCLI(t, args...)
		if code != 0 || !strings.Contains(out, "usage: loadgen <seed|export|query|mixed>") {
			t.Errorf("%q: exit %d, stdout %q", args, code, out)
		}
	}
	if code, _, errOut := runCLI(t); code != 2 || !strings.Contains(errOut, "usage:") {
		t.Errorf("no arguments: exit %d, stderr %q; want 2 and the usage", code, errOut)
	}
	if code, _, _ := runCLI(t, "nope"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
	if code, _, errOut := runCLI(t, "seed", "-no-such-flag"); code != 2 || !strings.Contains(errOut, "no-such-flag") {
		t.Errorf("unknown flag: exit %d, stderr %q", code, errOut)
	}
}

// TestPerCommandFlags: each command's -h lists its own flags only.
func TestPerCommandFlags(t *testing.T) {
	for _, tc := range []struct {
		cmd       string
		want, not []string
	}{
		{"seed", []string{"addr", "admin-token", "users", "users-per-body", "seed", "rate", "concurrency", "credentials-file", "max-retries"},
			[]string{"churn-leave", "mix", "sender", "cohorts", "client-secret", "interval", "export-rate", "query-concurrency", "duration"}},
		{"export", []string{"sender", "churn-leave", "churn-join", "changesets", "client-secret", "partner-api-key", "cohorts", "duration"},
			[]string{"mix", "query-concurrency", "users-per-body", "export-rate", "skip-seed", "requests"}},
		{"query", []string{"mix", "query-concurrency", "requests", "cohorts", "sender", "duration"},
			[]string{"churn-leave", "client-secret", "users-per-body", "interval", "export-rate", "concurrency"}},
		{"mixed", []string{"mix", "churn-leave", "export-rate", "skip-seed", "users-per-body", "client-secret", "query-concurrency"}, nil},
	} {
		for _, args := range [][]string{{tc.cmd, "-h"}, {"help", tc.cmd}} {
			code, out, _ := runCLI(t, args...)
			names := flagNames(out)
			if code != 0 || !strings.HasPrefix(out, "usage: loadgen "+tc.cmd) {
				t.Errorf("%q: exit %d, stdout %.80q", args, code, out)
			}
			for _, f := range tc.want {
				if !names[f] {
					t.Errorf("%q lacks -%s", args, f)
				}
			}
			for _, f := range tc.not {
				if names[f] {
					t.Errorf("%q lists -%s, which %s does not use", args, f, tc.cmd)
				}
			}
		}
	}
}

// TestExplicitZeroFlags: a flag set to 0 is 0, an unset flag its default.
func TestExplicitZeroFlags(t *testing.T) {
	parse := func(args ...string) loadgen.Options {
		t.Helper()
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		o, out := defineFlags(fs, "mixed")
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if err := out.finish(o); err != nil {
			t.Fatal(err)
		}
		return *o
	}
	o := parse("-churn-leave", "0", "-churn-join", "0", "-max-retries", "0", "-seed", "0")
	if !o.Exact || o.ChurnLeave != 0 || o.ChurnJoin != 0 || o.MaxRetries != 0 || o.Seed != 0 {
		t.Errorf("explicit zeros: exact %v, churn %g/%g, retries %d, seed %d", o.Exact, o.ChurnLeave, o.ChurnJoin, o.MaxRetries, o.Seed)
	}
	d := loadgen.DefaultOptions()
	o = parse()
	if o.ChurnLeave != d.ChurnLeave || o.MaxRetries != d.MaxRetries || o.Seed != d.Seed || o.Users != d.Users {
		t.Errorf("unset flags: churn %g, retries %d, seed %d, users %d; want the defaults", o.ChurnLeave, o.MaxRetries, o.Seed, o.Users)
	}
	// A zero that makes no sense is a usage error, not a silent default.
	if code, _, errOut := runCLI(t, "seed", "-users", "0", "-api-key", "k"); code != 2 || !strings.Contains(errOut, "must be positive") {
		t.Errorf("-users 0: exit %d, stderr %q", code, errOut)
	}
}

// TestSetupFailureExitsNonZero: no credentials, or an admin API that
// refuses them, exits 1 with an error and prints no report.
func TestSetupFailureExitsNonZero(t *testing.T) {
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		_, _ = w.Write([]byte(`{"message":"unauthorized","errors":[]}`))
	}))
	defer refuse.Close()
	for _, args := range [][]string{
		{"seed", "-addr", refuse.URL, "-quiet"},
		{"query", "-addr", refuse.URL, "-quiet"},
		{"mixed", "-addr", refuse.URL, "-admin-token", "wrong", "-max-retries", "0", "-quiet"},
		{"export", "-addr", refuse.URL, "-api-key", "k", "-quiet"},
	} {
		code, out, errOut := runCLI(t, args...)
		if code != 1 || out != "" || !strings.Contains(errOut, "setup failed") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 1, no report, a setup error", args, code, out, errOut)
		}
		if strings.Contains(out+errOut, "verification") {
			t.Errorf("%q printed a report", args)
		}
	}
}

// TestCredentialsFileRealServer: against the real cohortd binary, seed
// creates a workspace, keeps its key in -credentials-file (mode 0600)
// without printing it, and a later query run without any token works from
// that file alone.
func TestCredentialsFileRealServer(t *testing.T) {
	if testing.Short() && os.Getenv("COHORTD_SMOKE") == "skip" {
		t.Skip("COHORTD_SMOKE=skip")
	}
	dir := t.TempDir()
	cohortd := buildBinary(t, dir, "github.com/cohortd/cohortd/cmd/cohortd", "cohortd")
	loadgenBin := buildBinary(t, dir, "github.com/cohortd/cohortd/cmd/loadgen", "loadgen")
	addr := startCohortd(t, cohortd, filepath.Join(dir, "data"), "cred-admin")
	credFile := filepath.Join(dir, "creds.json")

	lg := func(args ...string) (int, string) {
		cmd := exec.Command(loadgenBin, args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.String()
	}
	code, out := lg("seed", "-addr", "http://"+addr, "-admin-token", "cred-admin", "-users", "3000", "-users-per-body", "1000",
		"-credentials-file", credFile, "-report-every", "100ms")
	if code != 0 {
		t.Fatalf("seed: exit %d\n%s", code, out)
	}
	st, err := os.Stat(credFile)
	if err != nil {
		t.Fatalf("credentials file: %v\n%s", err, out)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("credentials file mode %v, want 0600", st.Mode().Perm())
	}
	var c loadgen.Credentials
	b, _ := os.ReadFile(credFile)
	if err := json.Unmarshal(b, &c); err != nil || c.APIKey == "" || c.Workspace == "" {
		t.Fatalf("credentials file %s: %v", b, err)
	}
	if strings.Contains(out, c.APIKey) {
		t.Errorf("the workspace API key was printed:\n%s", out)
	}
	if !strings.Contains(out, "created workspace "+c.Workspace) || !strings.Contains(out, "credentials saved in") {
		t.Errorf("seed output does not name what it created:\n%s", out)
	}
	code, out = lg("query", "-addr", "http://"+addr, "-users", "3000", "-cohorts", "1", "-requests", "20",
		"-credentials-file", credFile, "-quiet")
	if code != 0 || !strings.Contains(out, "## loadgen query") {
		t.Fatalf("query from the credentials file: exit %d\n%s", code, out)
	}
}

func buildBinary(t *testing.T, dir, pkg, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", p, pkg)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("build %s: %v", pkg, err)
	}
	return p
}

// startCohortd starts the binary on a free port and returns its address
// once it listens; the process is killed when the test ends.
func startCohortd(t *testing.T, bin, dataDir, admin string, extra ...string) string {
	t.Helper()
	var stderr syncBuf
	srv := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0", "-data-dir", dataDir, "-admin-token", admin, "-fsync", "off"}, extra...)...)
	srv.Stderr = &stderr
	srv.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
		if t.Failed() {
			t.Logf("cohortd stderr:\n%s", stderr.String())
		}
	})
	re := regexp.MustCompile(`"msg":"listening","addr":"([^"]+)"|msg=listening addr=(\S+)`)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			addr := m[1] + m[2]
			// Wait for readiness (recovery of an empty data dir is quick).
			for time.Now().Before(deadline) {
				if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
					_ = resp.Body.Close()
					if resp.StatusCode == 200 {
						return addr
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Fatal("cohortd never became ready")
		}
		if time.Now().After(deadline) {
			t.Fatal("cohortd did not start listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
