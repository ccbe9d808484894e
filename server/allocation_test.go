package server

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// The single-user query path (contains, count) must not allocate once warm,
// in the manner of fasthttp's allocation_test.go: every request through
// Handler, from route match to the reply body.

// workspaceServer is a ready server over an in-memory engine with one empty
// workspace, "ws"; it returns the workspace and its API key.
func workspaceServer(t testing.TB) (*Server, *engine.Workspace, string) {
	t.Helper()
	s := New(Options{AdminToken: "admin", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	e, err := engine.Open(engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.CreateWorkspace("ws")
	if err != nil {
		t.Fatal(err)
	}
	s.SetEngine(e)
	return s, e.Workspace("ws"), key
}

// allocServer is a ready server with a workspace of 100 users, cohorts
// p/a (even users) and p/b (multiples of three), and its API key.
func allocServer(t testing.TB) (*Server, string) {
	t.Helper()
	s, w, key := workspaceServer(t)
	var b engine.UserBatch
	for i := range 100 {
		b.Add(fmt.Appendf(nil, "u%d", i), nil, nil)
	}
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
	for name, every := range map[string]int{"a": 2, "b": 3} {
		ms := w.NewMemberSet()
		for i := 0; i < 100; i += every {
			ms.AddMany(engine.KindExternal, [][]byte{fmt.Appendf(nil, "u%d", i)})
		}
		if _, err := w.ReplaceMembers("p", name, ms); err != nil {
			t.Fatal(err)
		}
	}
	return s, key
}

// allocsPerRequest serves the request n times through Handler and returns
// the allocations of one, after a warm-up.
func allocsPerRequest(t *testing.T, s *Server, key, path, body string) float64 {
	t.Helper()
	var ctx fasthttp.RequestCtx
	auth := "Bearer " + key
	serve := func() {
		ctx.Request.Reset()
		ctx.Response.Reset()
		ctx.Request.Header.SetMethod("POST")
		ctx.Request.SetRequestURI(path)
		ctx.Request.Header.Set("Authorization", auth)
		ctx.Request.Header.SetContentType("application/json")
		ctx.Request.SetBodyString(body)
		s.Handler(&ctx)
		if ctx.Response.StatusCode() != 200 {
			t.Fatalf("%s: %d %s", path, ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
	for range 10 {
		serve()
	}
	return testing.AllocsPerRun(200, serve)
}

func TestQueryPathAllocations(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("coverage instrumentation and the race detector (which empties sync.Pools at random) allocate")
	}
	s, key := allocServer(t)
	for _, c := range []struct{ name, path, body string }{
		{"contains", "/v1/segments/contains", `{"segment":{"and":[{"cohort":"p/a"},{"not":{"cohort":"p/b"}}]},"users":[{"external_id":"u4"}]}`},
		{"contains compact", "/v1/segments/contains", `{"segment":{"cohort":"p/a"},"external_ids":["u4","u5","nobody"]}`},
		{"count", "/v1/segments/count", `{"segment":{"and":[{"cohort":"p/a"},{"cohort":"p/b"}]}}`},
		{"count and not", "/v1/segments/count", `{"segment":{"and":[{"cohort":"p/a"},{"not":{"cohort":"p/b"}}]}}`},
	} {
		if n := allocsPerRequest(t, s, key, c.path, c.body); n != 0 {
			t.Errorf("%s: %v allocations a request, want 0", c.name, n)
		}
	}
}

// BenchmarkQueryPath serves single queries through Handler (no network):
// the server's own cost of a request, which over HTTP/1.1 adds to the
// syscalls'.
func BenchmarkQueryPath(b *testing.B) {
	s, key := allocServer(b)
	for _, c := range []struct{ name, path, body string }{
		{"contains", "/v1/segments/contains", `{"segment":{"and":[{"cohort":"p/a"},{"not":{"cohort":"p/b"}}]},"users":[{"external_id":"u4"}]}`},
		{"count", "/v1/segments/count", `{"segment":{"and":[{"cohort":"p/a"},{"cohort":"p/b"}]}}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			var ctx fasthttp.RequestCtx
			auth := "Bearer " + key
			b.ReportAllocs()
			cpu0 := processCPUNanos()
			for b.Loop() {
				ctx.Request.Reset()
				ctx.Response.Reset()
				ctx.Request.Header.SetMethod("POST")
				ctx.Request.SetRequestURI(c.path)
				ctx.Request.Header.Set("Authorization", auth)
				ctx.Request.Header.SetContentType("application/json")
				ctx.Request.SetBodyString(c.body)
				s.Handler(&ctx)
				if ctx.Response.StatusCode() != 200 {
					b.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
			b.ReportMetric(float64(processCPUNanos()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}
