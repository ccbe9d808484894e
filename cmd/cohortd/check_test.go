package main

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dirFiles maps every file under dir to its contents.
func dirFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = fi.Mode().String() + string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// flipByte damages one byte in the middle of a file.
func flipByte(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x10
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCheckSnapshotFallback: `cohortd check` on a data dir whose newest
// snapshot is damaged reports the damage (exit 1), says that start-up
// would set it aside and rebuild from the previous snapshot and the WAL,
// and what state that gives; the real start-up then does exactly that.
// With both snapshots damaged (and the WAL's start retired) it says the
// dir is not recoverable, and start-up indeed refuses.
func TestCheckSnapshotFallback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, startOpts{args: []string{"-snapshot-interval", "0"}})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON(userIDs("u", 0, 50))}}, 200)
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", 0, 20), false)}, 201)
	older := str(t, d.must(req{method: "POST", path: "/v1/admin/snapshot", token: admin}, 201).json(t), "file")
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", 20, 30), false)}, 201)
	newest := str(t, d.must(req{method: "POST", path: "/v1/admin/snapshot", token: admin}, 201).json(t), "file")
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c1", userIDs("u", 30, 35), false)}, 201)
	d.stop(syscall.SIGKILL, 10*time.Second)
	if older == newest {
		t.Fatalf("setup: one snapshot file %s", newest)
	}

	code, out, _ := runBin(t, nil, "check", "-data-dir", dir)
	if code != 0 || !strings.Contains(out, "recovery: start-up would load "+newest) || !strings.Contains(out, "35 memberships") {
		t.Fatalf("sound dir: exit %d\n%s", code, out)
	}

	flipByte(t, filepath.Join(dir, newest))
	before := dirFiles(t, dir)
	code, out, _ = runBin(t, nil, "check", "-data-dir", dir)
	for _, want := range []string{
		"snapshot " + newest + " (newest",
		"CORRUPT: corrupt " + newest + " at offset ",
		"recovery: start-up would set " + newest + " aside as damaged (renamed *.corrupt), then load " + older + " and replay the WAL from lsn",
		"recovered state: 1 partners, 1 workspaces, 50 users, 1 cohorts, 35 memberships",
		"result: CORRUPT, but recoverable",
	} {
		if code != 1 || !strings.Contains(out, want) {
			t.Fatalf("damaged newest snapshot: exit %d, want %q in\n%s", code, want, out)
		}
	}
	code, out, _ = runBin(t, nil, "check", "-data-dir", dir, "-json")
	var rep struct {
		OK          bool           `json:"ok"`
		Recoverable bool           `json:"recoverable"`
		RecoverFrom string         `json:"recover_from"`
		Errors      []string       `json:"errors"`
		State       map[string]int `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.OK || !rep.Recoverable || rep.RecoverFrom != older || len(rep.Errors) == 0 || rep.State["memberships"] != 35 {
		t.Fatalf("check -json: exit %d, %v, %+v\n%s", code, err, rep, out)
	}
	if !maps.Equal(before, dirFiles(t, dir)) {
		t.Fatal("check changed the data dir")
	}

	// Start-up takes the path check described.
	d = startDaemon(t, dir, startOpts{args: []string{"-snapshot-interval", "0"}})
	if co := d.must(req{method: "GET", path: "/v1/cohorts/amplitude/c1", token: tn.apiKey}, 200).json(t); num(t, co, "size") != 35 {
		t.Fatalf("recovered cohort %v, want the 35 members check announced", co)
	}
	if !strings.Contains(d.stderr.String(), "SNAPSHOT UNREADABLE") {
		t.Fatalf("no SNAPSHOT UNREADABLE in the log:\n%s", d.stderr)
	}
	d.stop(syscall.SIGTERM, 30*time.Second)
	code, out, _ = runBin(t, nil, "check", "-data-dir", dir)
	if code != 0 || !strings.Contains(out, "snapshot "+newest+".corrupt: set aside by an earlier start-up") || !strings.Contains(out, "result: OK") {
		t.Fatalf("after the fallback: exit %d\n%s", code, out)
	}

	// Both remaining snapshots damaged; the WAL no longer starts at 1.
	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshot-*.snap"))
	sort.Strings(snaps)
	if len(snaps) != 2 {
		t.Fatalf("snapshots %v", snaps)
	}
	for _, p := range snaps {
		flipByte(t, p)
	}
	code, out, _ = runBin(t, nil, "check", "-data-dir", dir)
	if code != 1 || !strings.Contains(out, "no snapshot reads back whole") || !strings.Contains(out, "result: CORRUPT, not recoverable") || strings.Contains(out, "recovered state:") {
		t.Fatalf("both snapshots damaged: exit %d\n%s", code, out)
	}
	if code, _, se := runBin(t, nil, "-data-dir", dir, "-addr", "127.0.0.1:0", "-log-format", "json"); code == 0 || !strings.Contains(se, "no usable snapshot") {
		t.Fatalf("start-up on a dir check calls unrecoverable: exit %d\n%s", code, tail(se, 2000))
	}
}
