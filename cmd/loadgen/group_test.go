package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/cohortd/cohortd/engine/kafkalog"
)

// TestMixedGroupSmoke runs `loadgen mixed` against three cohortd nodes of
// one group (-log kafka on an in-process kfake cluster) with -addr naming
// all three: requests spread over the nodes, and the final cohort sizes are
// verified on every node.
func TestMixedGroupSmoke(t *testing.T) {
	if os.Getenv("COHORTD_SMOKE") == "skip" {
		t.Skip("COHORTD_SMOKE=skip")
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := kafkalog.CreateTopic(context.Background(), c.ListenAddrs(), "cohortd", 3, 3, 0); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cohortd := buildBinary(t, dir, "github.com/cohortd/cohortd/cmd/cohortd", "cohortd")
	loadgen := buildBinary(t, dir, "github.com/cohortd/cohortd/cmd/loadgen", "loadgen")
	var addrs []string
	for _, id := range []string{"a", "b", "c"} {
		addr := startCohortd(t, cohortd, filepath.Join(dir, id), "group-admin",
			"-log", "kafka", "-kafka-brokers", strings.Join(c.ListenAddrs(), ","), "-node-id", id)
		addrs = append(addrs, "http://"+addr)
	}
	report := filepath.Join(dir, "report.json")
	lg := exec.Command(loadgen, "mixed", "-addr", strings.Join(addrs, ","), "-admin-token", "group-admin",
		"-duration", "3s", "-users", "20000", "-cohorts", "3", "-json-out", report, "-quiet")
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
	// Three cohorts, their sizes checked on each of the three nodes.
	var verified int64
	for _, op := range r.Ops {
		if op.Name == "verify" {
			verified = op.Count
		}
	}
	if r.Errors != 0 || r.Verification.Failures != 0 || verified != 9 {
		t.Fatalf("errors %d, verification %d failures of %d checks, %d size checks (want 9)\n%s", r.Errors, r.Verification.Failures, r.Verification.Checks, verified, out.String())
	}
}
