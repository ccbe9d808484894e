package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// StatusError is a non-2xx answer left after retries.
type StatusError struct {
	Method string
	Path   string
	Status int
	Body   string // the start of the response body
}

// Error returns the method, path, status and the start of the body.
func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: status %d: %s", e.Method, e.Path, e.Status, e.Body)
}

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

// client sends requests to a server, or to the nodes of a group in turn,
// with retries. It is safe for concurrent use.
type client struct {
	hc      *fasthttp.Client
	bases   []string
	next    atomic.Uint64
	timeout time.Duration
	retries int
	backoff backoff
	codecs  codecs

	// positions holds, per partition of a group's log, the highest
	// X-Cohortd-Position of a reply (for consistent calls).
	positions struct {
		sync.Mutex
		m map[int32]int64
	}
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
	return &client{
		hc:      hc,
		bases:   o.bases(),
		timeout: o.RequestTimeout,
		retries: o.MaxRetries,
		backoff: backoff{base: o.BackoffBase, max: o.BackoffMax},
	}
}

// backoff computes retry delays: exponential with full jitter, as AWS
// senders do, so that many senders that failed together do not retry
// together.
type backoff struct {
	base time.Duration
	max  time.Duration
}

// delay returns the wait before retry number attempt (0-based). A
// Retry-After from the server is honoured, with a little jitter on top.
func (b backoff) delay(attempt int, retryAfter time.Duration, r *rand.Rand) time.Duration {
	ceiling := b.base << min(attempt, 30)
	if ceiling > b.max || ceiling <= 0 {
		ceiling = b.max
	}
	d := time.Duration(r.Int64N(int64(ceiling) + 1))
	if retryAfter > 0 {
		d = retryAfter + time.Duration(r.Int64N(int64(b.base)+1))
	}
	return d
}

// parseRetryAfter reads a Retry-After header: delay seconds or an HTTP date.
func parseRetryAfter(v []byte, now time.Time) time.Duration {
	if len(v) == 0 {
		return 0
	}
	if secs, err := strconv.Atoi(string(v)); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(string(v)); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

// retryable says whether a status is worth another attempt: 429 and 5xx.
func retryable(status int) bool { return status == fasthttp.StatusTooManyRequests || status >= 500 }

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
		if mp := cl.minPositions(); mp != "" {
			req.Header.Set(headerMinPosition, mp)
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
	if c.encoding != EncodingNone {
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
				cl.notePosition(resp.Header.Peek(headerPosition))
				if out != nil && len(resp.Body()) > 0 {
					if err := json.Unmarshal(resp.Body(), out); err != nil {
						return attempt, fmt.Errorf("%s %s: decode reply: %w", c.method, c.path, err)
					}
				}
				return attempt, nil
			}
			body := resp.Body()
			if len(body) > 200 {
				body = body[:200]
			}
			err = &StatusError{Method: c.method, Path: c.path, Status: status, Body: string(body)}
			if !retryable(status) {
				return attempt, err
			}
			retryAfter = parseRetryAfter(resp.Header.Peek("Retry-After"), time.Now())
		} else {
			err = fmt.Errorf("%s %s: %w", c.method, c.path, err)
		}
		if attempt >= budget {
			return attempt, err
		}
		if r == nil {
			r = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		}
		if serr := sleepCtx(ctx, cl.backoff.delay(attempt, retryAfter, r)); serr != nil {
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

// Headers of a replicated group (docs/API.md §7).
const (
	headerPosition    = "X-Cohortd-Position"
	headerMinPosition = "X-Cohortd-Min-Position"
)

// notePosition keeps the highest position per partition of the replies.
func (cl *client) notePosition(v []byte) {
	p, o, ok := strings.Cut(string(v), ":")
	if !ok {
		return
	}
	pn, err1 := strconv.ParseInt(p, 10, 32)
	on, err2 := strconv.ParseInt(o, 10, 64)
	if err1 != nil || err2 != nil {
		return
	}
	cl.positions.Lock()
	if cl.positions.m == nil {
		cl.positions.m = map[int32]int64{}
	}
	if cur, ok := cl.positions.m[int32(pn)]; !ok || on > cur {
		cl.positions.m[int32(pn)] = on
	}
	cl.positions.Unlock()
}

// minPositions is the X-Cohortd-Min-Position of a consistent call: every
// position seen ("" before the first).
func (cl *client) minPositions() string {
	cl.positions.Lock()
	defer cl.positions.Unlock()
	parts := make([]string, 0, len(cl.positions.m))
	for p, o := range cl.positions.m {
		parts = append(parts, strconv.Itoa(int(p))+":"+strconv.FormatInt(o, 10))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// syncNodes makes every node of a group apply what this client wrote so
// far (a consistent read on each), so that credentials created through one
// node authenticate on all. A single server needs nothing.
func (cl *client) syncNodes(ctx context.Context, apiKey string) error {
	if len(cl.bases) < 2 {
		return nil
	}
	for _, b := range cl.bases {
		if _, err := cl.do(ctx, &call{method: "GET", path: "/v1/usage", bearer: apiKey, consistent: true, base: b}, nil); err != nil {
			return fmt.Errorf("node %s: %w", b, err)
		}
	}
	return nil
}

// doJSON sends a small JSON body with a bearer token, after every write
// this client saw (setup calls through the nodes of a group depend on each
// other).
func (cl *client) doJSON(ctx context.Context, method, path, bearer string, in, out any) error {
	c := &call{method: method, path: path, bearer: bearer, consistent: true}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode: %w", method, path, err)
		}
		c.body = b
		c.contentType = "application/json"
	}
	_, err := cl.do(ctx, c, out)
	return err
}
