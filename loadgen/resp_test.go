package loadgen

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server"
	"github.com/cohortd/cohortd/server/resp"
)

// TestQueryRESP seeds and exports a universe over HTTP, then runs the RESP
// query mix against the real Redis-protocol listener over loopback: every
// kind of query answers without error.
func TestQueryRESP(t *testing.T) {
	o, respAddr := queryServers(t, 5_000)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var log bytes.Buffer
	o.Protocol, o.RESPAddr, o.Pipeline, o.Requests = ProtocolRESP, respAddr, 16, 400
	o.Mix = Mix{Contains: 1, Batch: 1, Count: 1, Page: 1}
	rep, err := Query(ctx, o, &log)
	if err != nil {
		t.Fatalf("Query: %v\n%s", err, log.String())
	}
	seen := map[string]OpReport{}
	for _, op := range rep.Ops {
		seen[op.Name] = op
	}
	for _, name := range []string{opSISMEMBER, opSMISMEMBER, opInterCount, opSSCAN} {
		if seen[name].Count == 0 {
			t.Errorf("no %s in %+v", name, rep.Ops)
		}
	}
	if s := seen[opSISMEMBER]; s.Count%16 != 0 || s.IDs != s.Count {
		t.Errorf("pipelined SISMEMBER: %+v", s)
	}
	if s := seen[opSMISMEMBER]; s.IDs != s.Count*batchUsers {
		t.Errorf("SMISMEMBER: %+v", s)
	}
}

// queryServers runs the real HTTP and RESP listeners over loopback TCP (the
// raw client makes its own sockets) on a universe of users exported to two
// cohorts, and returns the options that reach it and the RESP address.
func queryServers(t *testing.T, users int) (Options, string) {
	t.Helper()
	const admin = "t"
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := engine.Open(engine.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	hs := server.New(server.Options{AdminToken: admin, Logger: quiet})
	hs.SetEngine(e)
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.Serve(hln) }()
	rs := resp.New(resp.Options{Logger: quiet})
	rs.SetEngine(e)
	rln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = rs.Serve(rln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rs.Shutdown(ctx)
		_ = hs.Shutdown(ctx)
	})
	var log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := Options{Addr: "http://" + hln.Addr().String(), AdminToken: admin,
		Users: users, Cohorts: 2, Flavour: FlavourUniform, Shape: ShapeBulk}
	var created Credentials
	o.OnCredentials = func(c Credentials) error { created = c; return nil }
	rep, err := Seed(ctx, o, &log)
	if err != nil {
		t.Fatalf("Seed: %v\n%s", err, log.String())
	}
	o.OnCredentials = nil
	o.Credentials = Credentials{Workspace: rep.Workload.Workspace, APIKey: created.APIKey}
	if _, err := Export(ctx, o, &log); err != nil {
		t.Fatalf("Export: %v\n%s", err, log.String())
	}
	return o, rln.Addr().String()
}
