package server

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// BenchmarkListMembers streams a cohort's members through Handler (no
// network, no compression): the path that writes the most JSON strings,
// one object of identifiers a member. Users have an external id, every
// third an alias and every fifth a device id, and one in seven an external
// id with a quote and a control byte, so the escaper's slow branch runs too.
// cpu-ns/op is the process's CPU time (the reply is written by a second
// goroutine), steadier than wall time on a shared machine.
func BenchmarkListMembers(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("ids_%d", n), func(b *testing.B) {
			s, key := membersServer(b, n)
			var ctx fasthttp.RequestCtx
			auth := "Bearer " + key
			b.ReportAllocs()
			var size int
			cpu0 := processCPUNanos()
			for b.Loop() {
				ctx.Request.Reset()
				ctx.Response.Reset()
				ctx.Request.Header.SetMethod("GET")
				ctx.Request.SetRequestURI("/v1/cohorts/p/all/members")
				ctx.Request.Header.Set("Authorization", auth)
				s.Handler(&ctx)
				if ctx.Response.StatusCode() != 200 {
					b.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
				size = len(ctx.Response.Body())
			}
			b.ReportMetric(float64(processCPUNanos()-cpu0)/float64(b.N), "cpu-ns/op")
			b.SetBytes(int64(size))
		})
	}
}

// membersServer is a ready server with a workspace of n users, all members
// of cohort p/all, and its API key.
func membersServer(b *testing.B, n int) (*Server, string) {
	b.Helper()
	s := New(Options{AdminToken: "admin", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	e, err := engine.Open(engine.Options{})
	if err != nil {
		b.Fatal(err)
	}
	s.SetEngine(e)
	key, err := e.CreateWorkspace("ws")
	if err != nil {
		b.Fatal(err)
	}
	var users, members []byte
	members = append(members, `{"user_ids":[`...)
	for i := range n {
		ext := fmt.Sprintf("user-%08d", i)
		if i%7 == 0 {
			ext = fmt.Sprintf(`user "%d"\t`, i)
		}
		q := fmt.Sprintf("%q", ext)
		users = fmt.Appendf(users, `{"external_id":%s`, q)
		if i%3 == 0 {
			users = fmt.Appendf(users, `,"aliases":[{"alias_name":"email","alias_label":"user%d@example.com"}]`, i)
		}
		if i%5 == 0 {
			users = fmt.Appendf(users, `,"device_id":"device-%08d"`, i)
		}
		users = append(users, "}\n"...)
		if i > 0 {
			members = append(members, ',')
		}
		members = append(members, q...)
	}
	members = append(members, `],"device_ids":[],"aliases":[]}`...)
	for _, c := range []struct {
		method, path, ctype string
		body                []byte
	}{
		{"POST", "/v1/users", "application/x-ndjson", users},
		{"PUT", "/v1/cohorts/p/all/members", "application/json", members},
	} {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod(c.method)
		ctx.Request.SetRequestURI(c.path)
		ctx.Request.Header.Set("Authorization", "Bearer "+key)
		ctx.Request.Header.SetContentType(c.ctype)
		ctx.Request.SetBody(c.body)
		s.Handler(&ctx)
		if st := ctx.Response.StatusCode(); st != 200 {
			b.Fatalf("%s %s: %d %s", c.method, c.path, st, ctx.Response.Body())
		}
	}
	return s, key
}
