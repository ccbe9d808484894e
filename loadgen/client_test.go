package loadgen

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	apiclient "github.com/cohortd/cohortd/server/client"
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
		body: cl.codecs.Append(nil, []byte(`{}`), EncodingGzip),
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
	se, ok := errors.AsType[*apiclient.Error](err)
	if !ok || se.Status != 400 || se.Message != "nope" || calls.Load() != 1 {
		t.Fatalf("400: err %v after %d calls; want no retry", err, calls.Load())
	}
	calls.Store(0)
	retries, err := cl.do(context.Background(), &call{method: "POST", path: "/flaky"}, nil)
	if apiclient.StatusOf(err) != 500 || retries != cl.retries || calls.Load() != int32(cl.retries+1) {
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
