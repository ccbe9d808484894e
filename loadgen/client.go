package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	apiclient "github.com/cohortd/cohortd/server/client"
)

// call is one HTTP request. body is sent as is (already compressed with
// encoding) and must not change until do returns.
type call struct {
	method        string
	path          string
	bearer        string
	authorization string // a whole Authorization header; wins over bearer
	contentType   string
	encoding      Encoding
	body          []byte
	maxRetries    int // 0 means the client's budget
	// consistent sends X-Cohortd-Min-Position with every position this
	// client was answered so far: a node of a group answers only once it
	// has applied them (read your writes across nodes).
	consistent bool
	// base pins the call to one of the client's base URLs ("" spreads).
	base string
}

// client sends the requests of the load loops to a server, or to the nodes
// of a group in turn, with retries. It is safe for concurrent use.
//
// It is built on fasthttp rather than on server/client (which the setup
// calls use, setup.go): a load loop sends hundreds of thousands of requests
// and fasthttp's pooled requests and responses cost no allocation, so
// loadgen does not become the bottleneck of what it measures. It shares
// server/client's Error, Backoff, Positions and Compressor, so that both
// paths fail, retry, read their writes and compress the same way.
type client struct {
	hc      *fasthttp.Client
	bases   []string
	next    atomic.Uint64
	timeout time.Duration
	retries int
	backoff apiclient.Backoff
	codecs  apiclient.Compressor

	// positions holds, per partition of a group's log, the highest
	// X-Cohortd-Position of a reply (for consistent calls); the setup
	// clients share it.
	positions apiclient.Positions

	// setup is the server/client of each base, for the setup calls.
	setup []*apiclient.Client
}

func newClient(o Options) *client {
	hc := &fasthttp.Client{
		Name:                      "cohortd-loadgen",
		MaxConnsPerHost:           o.Concurrency + o.QueryConcurrency + 8,
		MaxConnWaitTimeout:        o.RequestTimeout,
		ReadTimeout:               o.RequestTimeout,
		WriteTimeout:              o.RequestTimeout,
		MaxIdemponentCallAttempts: 1, // retries are ours, with backoff
		MaxResponseBodySize:       256 << 20,
		DisablePathNormalizing:    true,
	}
	if o.Dial != nil {
		hc.Dial = o.Dial
	}
	cl := &client{
		hc:      hc,
		bases:   o.bases(),
		timeout: o.RequestTimeout,
		retries: o.MaxRetries,
		backoff: apiclient.Backoff{Base: o.BackoffBase, Max: o.BackoffMax},
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	if o.Dial != nil {
		tr.DialContext = func(_ context.Context, _, addr string) (net.Conn, error) { return o.Dial(addr) }
	}
	hcSetup := &http.Client{Transport: tr, Timeout: o.RequestTimeout}
	for _, b := range cl.bases {
		cl.setup = append(cl.setup, apiclient.New(b, apiclient.Options{
			HTTPClient: hcSetup, Positions: &cl.positions, MaxRetries: o.MaxRetries,
			Backoff: cl.backoff, UserAgent: "cohortd-loadgen",
		}))
	}
	return cl
}

// do sends c, retrying on 429, 5xx and connection errors until the retry
// budget (c.maxRetries, else the client's) or ctx runs out, and decodes a 2xx JSON answer into out when out is
// not nil. It returns the number of retries made.
func (cl *client) do(ctx context.Context, c *call, out any) (int, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	turn := cl.next.Add(1)
	base := c.base
	if base == "" {
		base = cl.bases[turn%uint64(len(cl.bases))]
	}
	req.SetRequestURI(base + c.path)
	req.Header.SetMethod(c.method)
	if c.consistent {
		if mp := cl.positions.String(); mp != "" {
			req.Header.Set(apiclient.HeaderMinPosition, mp)
		}
	}
	switch {
	case c.authorization != "":
		req.Header.Set("Authorization", c.authorization)
	case c.bearer != "":
		req.Header.Set("Authorization", "Bearer "+c.bearer)
	}
	budget := cl.retries
	if c.maxRetries > 0 {
		budget = c.maxRetries
	}
	if c.contentType != "" {
		req.Header.SetContentType(c.contentType)
	}
	if c.encoding != apiclient.EncodingNone {
		req.Header.Set("Content-Encoding", string(c.encoding))
	}
	if c.body != nil {
		req.SetBodyRaw(c.body)
	}
	var r *rand.Rand
	for attempt := 0; ; attempt++ {
		err := cl.hc.DoTimeout(req, resp, cl.timeout)
		var retryAfter time.Duration
		if err == nil {
			status := resp.StatusCode()
			if status >= 200 && status < 300 {
				cl.positions.Note(string(resp.Header.Peek(apiclient.HeaderPosition)))
				if out != nil && len(resp.Body()) > 0 {
					if err := json.Unmarshal(resp.Body(), out); err != nil {
						return attempt, fmt.Errorf("%s %s: decode reply: %w", c.method, c.path, err)
					}
				}
				return attempt, nil
			}
			rep := &apiclient.Reply{Status: status, Header: http.Header{}, Body: resp.Body()}
			if ra := resp.Header.Peek("Retry-After"); len(ra) > 0 {
				rep.Header.Set("Retry-After", string(ra))
			}
			e := apiclient.NewError(c.method, c.path, rep)
			if !apiclient.Retryable(status) {
				return attempt, e
			}
			err, retryAfter = e, e.RetryAfter
		} else {
			err = fmt.Errorf("%s %s: %w", c.method, c.path, err)
		}
		if attempt >= budget {
			return attempt, err
		}
		if r == nil {
			r = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		}
		if serr := sleepCtx(ctx, cl.backoff.Delay(attempt, retryAfter, r)); serr != nil {
			return attempt, errors.Join(err, serr)
		}
		resp.Reset()
		if c.base == "" && len(cl.bases) > 1 {
			// Retry on the next node of the group: this one may be down.
			turn++
			req.SetRequestURI(cl.bases[turn%uint64(len(cl.bases))] + c.path)
		}
	}
}

// syncNodes makes every node of a group apply what this client wrote so
// far (a consistent read on each), so that credentials created through one
// node authenticate on all. A single server needs nothing.
func (cl *client) syncNodes(ctx context.Context, apiKey string) error {
	if len(cl.setup) < 2 {
		return nil
	}
	for _, c := range cl.setup {
		if _, err := c.WithToken(apiKey).Usage(ctx); err != nil {
			return fmt.Errorf("node %s: %w", c.Base(), err)
		}
	}
	return nil
}

// admin returns the server/client of the setup calls, with the admin
// token: through the first node, after every write this client saw
// (setup calls through the nodes of a group depend on each other).
func (cl *client) admin(token string) *apiclient.Client { return cl.setup[0].WithToken(token) }
