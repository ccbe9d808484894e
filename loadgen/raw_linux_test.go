package loadgen

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestQueryRaw sends single contains through the raw client over both
// protocols, and SMISMEMBERs of 1,000 over RESP, open and closed loop:
// every request scheduled is answered, and the report counts requests and
// identifiers as the Go clients' runs do.
func TestQueryRaw(t *testing.T) {
	base, respAddr := queryServers(t, 2_000)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, tc := range []struct {
		protocol string
		pipeline int
		rate     float64
		op       string
	}{
		{ProtocolRESP, 1, 2_000, opSISMEMBER},
		{ProtocolRESP, 4, 500, opSISMEMBER},
		{ProtocolRESP, 1, 0, opSISMEMBER},
		{ProtocolRESP, 1, 200, opSMISMEMBER},
		{ProtocolRESP, 1, 0, opSMISMEMBER},
		{ProtocolHTTP, 1, 1_000, opContains},
		{ProtocolHTTP, 1, 0, opContains},
	} {
		o := base
		o.Client, o.Protocol, o.RESPAddr, o.Pipeline, o.Rate = ClientRaw, tc.protocol, respAddr, tc.pipeline, tc.rate
		o.Mix, o.QueryConcurrency, o.Duration = Mix{Contains: 1}, 8, 500*time.Millisecond
		perRequest := int64(tc.pipeline)
		if tc.op == opSMISMEMBER {
			o.Mix, perRequest = Mix{Batch: 1}, batchUsers
		}
		var log bytes.Buffer
		rep, err := Query(ctx, o, &log)
		if err != nil {
			t.Fatalf("%s pipeline %d rate %v: %v\n%s", tc.protocol, tc.pipeline, tc.rate, err, log.String())
		}
		if len(rep.Ops) != 1 || rep.Ops[0].Name != tc.op || rep.Errors != 0 {
			t.Fatalf("%s: ops %+v, errors %d %v", tc.protocol, rep.Ops, rep.Errors, rep.ErrorSamples)
		}
		op := rep.Ops[0]
		want := int64(tc.rate*o.Duration.Seconds()) * int64(tc.pipeline)
		if tc.rate == 0 {
			want = op.Count // closed loop: as many as the time allowed
			if op.Count < int64(o.QueryConcurrency) {
				t.Errorf("%s closed loop: %d requests", tc.protocol, op.Count)
			}
		}
		wantIDs := want / int64(tc.pipeline) * perRequest
		if op.Count != want || op.IDs != wantIDs || op.P50Us <= 0 || op.P99Us < op.P50Us {
			t.Errorf("%s %s pipeline %d rate %v: %+v, want %d requests, %d ids", tc.protocol, tc.op, tc.pipeline, tc.rate, op, want, wantIDs)
		}
		if lag := strings.Join(rep.Notes, "; "); tc.rate > 0 && !strings.Contains(lag, "sends late by") {
			t.Errorf("%s: no send lag in the notes %q", tc.protocol, lag)
		}
	}
}

// TestRunRawFailures: a refused hello fails the run before it starts;
// error replies are counted as failures, not latencies.
func TestRunRawFailures(t *testing.T) {
	base, respAddr := queryServers(t, 2_000)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sis := AppendRESPCommand(nil, "SISMEMBER", "nope", "x")
	_, err := RunRaw(ctx, RawLoad{Addr: respAddr, Hello: AppendRESPCommand(nil, "AUTH", "wrong"),
		Requests: [][]byte{sis}, Frame: FrameRESP, Duration: 100 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "hello refused") {
		t.Fatalf("wrong key: %v", err)
	}
	// Unauthenticated, every SISMEMBER gets NOAUTH.
	res, err := RunRaw(ctx, RawLoad{Addr: respAddr, Conns: 2, Rate: 1_000, Requests: [][]byte{sis}, Frame: FrameRESP,
		Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 100 || res.Failed != 100 || res.Done != 0 || res.Latency.TotalCount() != 0 {
		t.Errorf("NOAUTH run: sent %d, failed %d, done %d", res.Sent, res.Failed, res.Done)
	}
	// The same on a kernel without epoll_pwait2: millisecond waits.
	res, err = runRaw(ctx, RawLoad{Addr: respAddr, Conns: 2, Rate: 1_000, Requests: [][]byte{sis}, Frame: FrameRESP,
		Duration: 100 * time.Millisecond}, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 100 || res.Failed != 100 {
		t.Errorf("NOAUTH run with epoll_wait: sent %d, failed %d, done %d", res.Sent, res.Failed, res.Done)
	}
	// HTTP with a wrong key: 401s.
	host := strings.TrimPrefix(base.Addr, "http://")
	req := AppendHTTPPost(nil, host, "/v1/segments/contains", "wrong", []byte(`{"segment":{"cohort":"a/b"},"users":[{"external_id":"x"}]}`))
	res, err = RunRaw(ctx, RawLoad{Addr: host, Rate: 500, Requests: [][]byte{req}, Frame: FrameHTTP, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 50 || res.Failed != 50 {
		t.Errorf("HTTP 401 run: sent %d, failed %d, done %d", res.Sent, res.Failed, res.Done)
	}
	// Nothing listening.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := RunRaw(ctx, RawLoad{Addr: addr, Requests: [][]byte{sis}, Frame: FrameRESP}); err == nil {
		t.Error("no server: no error")
	}
}
