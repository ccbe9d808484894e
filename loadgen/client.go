package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
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
}

// client sends requests to one server with retries. It is safe for
// concurrent use.
type client struct {
	hc      *fasthttp.Client
	base    string
	timeout time.Duration
	retries int
	backoff backoff
	codecs  codecs
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
		base:    o.Addr,
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
	req.SetRequestURI(cl.base + c.path)
	req.Header.SetMethod(c.method)
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
	}
}

// doJSON sends a small JSON body with a bearer token.
func (cl *client) doJSON(ctx context.Context, method, path, bearer string, in, out any) error {
	c := &call{method: method, path: path, bearer: bearer}
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
