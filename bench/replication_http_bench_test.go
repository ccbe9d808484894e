package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/cohortd/cohortd/loadgen"
)

// cohortdBinary builds the cohortd binary once per process.
var cohortdBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "cohortd-bench-bin-")
	if err != nil {
		return "", err
	}
	tempDirs = append(tempDirs, dir)
	p := filepath.Join(dir, "cohortd")
	cmd := exec.Command("go", "build", "-o", p, "github.com/cohortd/cohortd/cmd/cohortd")
	cmd.Stderr = os.Stderr
	return p, cmd.Run()
})

var listenRe = regexp.MustCompile(`"msg":"listening","addr":"([^"]+)"`)

// startNode runs a cohortd node of the group (its own process, a temporary
// data directory) and returns its base URL once it is ready.
func startNode(b *testing.B, bin string, brokers []string, id string) string {
	b.Helper()
	var stderr lockedBuffer
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-data-dir", b.TempDir(), "-admin-token", adminToken,
		"-log", "kafka", "-kafka-brokers", strings.Join(brokers, ","), "-node-id", id, "-log-format", "json")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		m := listenRe.FindStringSubmatch(stderr.String())
		if m == nil {
			continue
		}
		base := "http://" + m[1]
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
	}
	b.Fatalf("node %s did not become ready:\n%s", id, stderr.String())
	return ""
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// BenchmarkReplicationLagHTTP is the cross-process form of the lag figure:
// three cohortd processes of one group (on a kfake cluster in the
// benchmark's process) under `loadgen mixed` spread over all three (the
// docs/WORKLOADS.md mix: change sets of the partner shape and segment
// queries, closed loop), while a prober writes a one-identifier change to
// one node every 20 ms and asks each other node for its position
// (X-Cohortd-Min-Position on a cheap read): the time from the write's reply
// to the other node's answer is the lag, HTTP round trip included. It
// reports the lag's p50, p99 and max and loadgen's operation rate.
func BenchmarkReplicationLagHTTP(b *testing.B) {
	bin, err := cohortdBinary()
	if err != nil {
		b.Fatal(err)
	}
	users := replUsers()
	b.Run(fmt.Sprintf("users_%d/nodes_3", users), func(b *testing.B) {
		g := newGroup(b, 4)
		var bases []string
		for _, id := range []string{"a", "b", "c"} {
			bases = append(bases, startNode(b, bin, g.cluster.ListenAddrs(), id))
		}
		hc := &http.Client{Timeout: 30 * time.Second}
		do := func(method, url, token string, body []byte, hdr map[string]string) (*http.Response, []byte, error) {
			req, err := http.NewRequest(method, url, bytes.NewReader(body))
			if err != nil {
				return nil, nil, err
			}
			req.Header.Set("Authorization", "Bearer "+token)
			if body != nil {
				req.Header.Set("Content-Type", "application/json")
			}
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := hc.Do(req)
			if err != nil {
				return nil, nil, err
			}
			defer resp.Body.Close()
			rb, err := io.ReadAll(resp.Body)
			return resp, rb, err
		}
		resp, body, err := do("POST", bases[0]+"/v1/workspaces", adminToken, []byte(`{"id":"probe"}`), nil)
		if err != nil || resp.StatusCode != 201 {
			b.Fatalf("probe workspace: %v %s", err, body)
		}
		var ws struct {
			APIKey string `json:"api_key"`
		}
		if err := json.Unmarshal(body, &ws); err != nil {
			b.Fatal(err)
		}
		pos := resp.Header.Get("X-Cohortd-Position")
		for b.Loop() {
			lag := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
			ctx, cancel := context.WithCancel(context.Background())
			probeDone := make(chan error, 1)
			go func() {
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for i := 0; ; i++ {
					select {
					case <-ctx.Done():
						probeDone <- nil
						return
					case <-tick.C:
					}
					src := bases[i%3]
					change := []byte(fmt.Sprintf(`{"cohort_changes":[{"user_ids":["probe-%d"]}]}`, i))
					resp, body, err := do("POST", src+"/v1/cohorts/probe/c/changes", ws.APIKey, change,
						map[string]string{"X-Cohortd-Min-Position": pos})
					if err != nil || resp.StatusCode != 200 {
						probeDone <- fmt.Errorf("probe write: %v %s", err, body)
						return
					}
					acked := time.Now()
					p := resp.Header.Get("X-Cohortd-Position")
					for j := 1; j < 3; j++ {
						resp, body, err := do("GET", bases[(i+j)%3]+"/v1/usage", ws.APIKey, nil, map[string]string{"X-Cohortd-Min-Position": p})
						if err != nil || resp.StatusCode != 200 {
							probeDone <- fmt.Errorf("probe read: %v %s", err, body)
							return
						}
						_ = lag.RecordValue(max(1, time.Since(acked).Microseconds()))
					}
				}
			}()
			o := loadgen.DefaultOptions()
			o.Addr = strings.Join(bases, ",")
			o.AdminToken = adminToken
			o.Users = users
			o.Duration = lagSeconds()
			rep, err := loadgen.Mixed(context.Background(), o, nil)
			cancel()
			if perr := <-probeDone; perr != nil {
				b.Fatal(perr)
			}
			if err != nil {
				b.Fatalf("loadgen mixed: %v", err)
			}
			var ops int64
			for _, op := range rep.Ops {
				ops += op.Count
			}
			b.ReportMetric(float64(lag.ValueAtQuantile(50)), "lag-p50-µs")
			b.ReportMetric(float64(lag.ValueAtQuantile(99)), "lag-p99-µs")
			b.ReportMetric(float64(lag.Max()), "lag-max-µs")
			b.ReportMetric(float64(ops)/(float64(rep.ElapsedNs)/1e9), "loadgen-ops/s")
		}
	})
}
