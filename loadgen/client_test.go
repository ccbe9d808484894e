package loadgen

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// serveInmemory serves h on an in-memory listener and returns a dialer.
func serveInmemory(t *testing.T, h fasthttp.RequestHandler) func(string) (net.Conn, error) {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return func(string) (net.Conn, error) { return ln.Dial() }
}

func testClient(dial func(string) (net.Conn, error)) *client {
	o := Options{Dial: dial, BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond}.withDefaults()
	return newClient(o)
}

func TestClientRetries429Then201(t *testing.T) {
	var calls atomic.Int32
	dial := serveInmemory(t, func(ctx *fasthttp.RequestCtx) {
		switch calls.Add(1) {
		case 1:
			ctx.Response.Header.Set("Retry-After", "0")
			ctx.SetStatusCode(429)
		case 2:
			ctx.SetStatusCode(503)
		default:
			if string(ctx.Request.Header.Peek("Content-Encoding")) != "gzip" {
				ctx.SetStatusCode(415)
				return
			}
			ctx.SetStatusCode(201)
			ctx.SetBodyString(`{"matched":3}`)
		}
	})
	cl := testClient(dial)
	var out struct{ Matched int }
	retries, err := cl.do(context.Background(), &call{
		method: "POST", path: "/partners/x/cohorts/users", encoding: EncodingGzip,
		body: cl.codecs.compress(nil, []byte(`{}`), EncodingGzip),
	}, &out)
	if err != nil || retries != 2 || out.Matched != 3 {
		t.Fatalf("retries %d, err %v, out %+v", retries, err, out)
	}
}

func TestClientGivesUp(t *testing.T) {
	var calls atomic.Int32
	dial := serveInmemory(t, func(ctx *fasthttp.RequestCtx) {
		calls.Add(1)
		if string(ctx.Path()) == "/bad" {
			ctx.SetStatusCode(400)
			ctx.SetBodyString(`{"message":"nope"}`)
			return
		}
		ctx.SetStatusCode(500)
	})
	cl := testClient(dial)
	_, err := cl.do(context.Background(), &call{method: "POST", path: "/bad"}, nil)
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 400 || calls.Load() != 1 {
		t.Fatalf("400: err %v after %d calls; want no retry", err, calls.Load())
	}
	calls.Store(0)
	retries, err := cl.do(context.Background(), &call{method: "POST", path: "/flaky"}, nil)
	if !errors.As(err, &se) || se.Status != 500 || retries != cl.retries || calls.Load() != int32(cl.retries+1) {
		t.Fatalf("500: err %v, retries %d, calls %d", err, retries, calls.Load())
	}
}

func TestClientRetriesConnectionErrors(t *testing.T) {
	var dials atomic.Int32
	good := serveInmemory(t, func(ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(200) })
	cl := testClient(func(addr string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			return nil, errors.New("connection refused")
		}
		return good(addr)
	})
	retries, err := cl.do(context.Background(), &call{method: "GET", path: "/"}, nil)
	if err != nil || retries != 1 {
		t.Fatalf("retries %d err %v", retries, err)
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{base: 50 * time.Millisecond, max: time.Second}
	r := rand.New(rand.NewPCG(1, 2))
	for attempt := range 10 {
		ceiling := min(b.base<<attempt, b.max)
		for range 100 {
			if d := b.delay(attempt, 0, r); d < 0 || d > ceiling {
				t.Fatalf("attempt %d: delay %v beyond [0, %v]", attempt, d, ceiling)
			}
		}
	}
	if d := b.delay(0, 3*time.Second, r); d < 3*time.Second || d > 3*time.Second+b.base {
		t.Errorf("Retry-After 3s: delay %v", d)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Duration
	}{{"", 0}, {"2", 2 * time.Second}, {"Thu, 01 Jan 2026 00:00:05 GMT", 5 * time.Second}, {"junk", 0}} {
		if got := parseRetryAfter([]byte(c.in), now); got != c.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}
