package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"
)

// Options configure a Client. The zero value is usable.
type Options struct {
	// HTTPClient sends the requests; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Token is the bearer token: a workspace API key for the workspace
	// endpoints, the admin token for the admin ones. "" sends none.
	Token string
	// Positions, when set, makes every call read the writes recorded in
	// it so far, and records the position of every reply (see "Groups"
	// in the package documentation).
	Positions *Positions
	// MaxRetries is how many times a call is retried on 429, 5xx or a
	// connection error; 0 means never.
	MaxRetries int
	// Backoff spaces retries; the zero value means DefaultBackoff.
	Backoff Backoff
	// UserAgent is sent as User-Agent; "" means "cohortd-client".
	UserAgent string
	// Encoding compresses the bodies of the bulk calls the client encodes
	// (UpsertUsers, Changes, ReplaceMembers, PartnerChanges); "" sends
	// them plain. Bodies given whole (Body) say their own encoding.
	Encoding Encoding
}

// Client calls one cohortd server. See the package documentation.
type Client struct {
	base string
	o    Options
	comp *Compressor // shared by the copies WithToken makes
}

// New returns a client of the server at base, a URL such as
// "http://127.0.0.1:8080" (a trailing slash is dropped).
func New(base string, o Options) *Client {
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.Backoff == (Backoff{}) {
		o.Backoff = DefaultBackoff
	}
	if o.UserAgent == "" {
		o.UserAgent = "cohortd-client"
	}
	return &Client{base: strings.TrimRight(base, "/"), o: o, comp: &Compressor{}}
}

// WithToken returns a copy of c that sends token as its bearer token, for a
// program holding both the admin token and workspace keys.
func (c *Client) WithToken(token string) *Client {
	cp := *c
	cp.o.Token = token
	return &cp
}

// Base returns the server's base URL.
func (c *Client) Base() string { return c.base }

// Request is one HTTP request for Send. The zero value of each field means
// "none".
type Request struct {
	Method string
	// Path is the path and query after the base URL, such as
	// "/v1/users/lookup?external_id=u1"; path parameters must be escaped
	// already (url.PathEscape).
	Path string
	// Header holds extra headers; an Authorization set here wins over the
	// client's token.
	Header http.Header
	// Body is sent as is: already compressed when Encoding is set. It must
	// not change until Send returns. A nil Body with a BodyReader streams
	// the reader instead (never retried).
	Body       []byte
	BodyReader io.Reader
	// ContentType defaults to application/json when there is a body.
	ContentType string
	// Encoding is the Content-Encoding of Body.
	Encoding Encoding
}

// Reply is the answer to a Send, whatever its status.
type Reply struct {
	Status int
	Header http.Header
	Body   []byte
}

// Send sends r and returns the reply whatever its status (retrying 429, 5xx
// and connection errors as Options say): the raw call under every other
// method, for endpoints and headers they do not cover.
func (c *Client) Send(ctx context.Context, r *Request) (*Reply, error) {
	var rnd *rand.Rand
	for attempt := 0; ; attempt++ {
		rep, err := c.send(ctx, r)
		var retryAfter time.Duration
		switch {
		case err == nil && !Retryable(rep.Status):
			return rep, nil
		case err == nil:
			retryAfter = ParseRetryAfter(rep.Header.Get("Retry-After"), time.Now())
		case ctx.Err() != nil:
			return nil, err
		}
		if attempt >= c.o.MaxRetries || (r.Body == nil && r.BodyReader != nil) {
			return rep, err
		}
		if rnd == nil {
			rnd = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		}
		t := time.NewTimer(c.o.Backoff.Delay(attempt, retryAfter, rnd))
		select {
		case <-ctx.Done():
			t.Stop()
			if err == nil {
				return rep, nil
			}
			return nil, errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
}

// send makes one attempt.
func (c *Client) send(ctx context.Context, r *Request) (*Reply, error) {
	hr, err := c.NewHTTPRequest(ctx, r)
	if err != nil {
		return nil, err
	}
	resp, err := c.o.HTTPClient.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.Method, r.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: read reply: %w", r.Method, r.Path, err)
	}
	if c.o.Positions != nil && resp.StatusCode/100 == 2 {
		c.o.Positions.Note(resp.Header.Get(HeaderPosition))
	}
	return &Reply{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// NewHTTPRequest builds the *http.Request that Send sends for r, with the
// client's token, Content-Type and Content-Encoding set: for callers that
// inspect or send requests themselves. A BodyReader is consumed by the
// request once sent.
func (c *Client) NewHTTPRequest(ctx context.Context, r *Request) (*http.Request, error) {
	var body io.Reader
	switch {
	case r.Body != nil:
		body = bytes.NewReader(r.Body)
	case r.BodyReader != nil:
		body = r.BodyReader
	}
	hr, err := http.NewRequestWithContext(ctx, r.Method, c.base+r.Path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.Method, r.Path, err)
	}
	hr.Header.Set("User-Agent", c.o.UserAgent)
	if c.o.Token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.o.Token)
	}
	if body != nil {
		ct := r.ContentType
		if ct == "" {
			ct = "application/json"
		}
		hr.Header.Set("Content-Type", ct)
	}
	if r.Encoding != EncodingNone {
		hr.Header.Set("Content-Encoding", string(r.Encoding))
	}
	if c.o.Positions != nil {
		if mp := c.o.Positions.String(); mp != "" {
			hr.Header.Set(HeaderMinPosition, mp)
		}
	}
	for k, vs := range r.Header {
		hr.Header.Del(k)
		for _, v := range vs {
			hr.Header.Add(k, v)
		}
	}
	return hr, nil
}

// call sends r, expects status want and decodes the reply into out (when
// not nil).
func (c *Client) call(ctx context.Context, r *Request, want int, out any) error {
	rep, err := c.Send(ctx, r)
	if err != nil {
		return err
	}
	if rep.Status != want {
		return NewError(r.Method, r.Path, rep)
	}
	if out != nil {
		if err := json.Unmarshal(rep.Body, out); err != nil {
			return fmt.Errorf("%s %s: decode reply: %w", r.Method, r.Path, err)
		}
	}
	return nil
}

// Body is a request body built by the caller (docs/API.md §4, "Bodies"):
// JSON, or NDJSON with one record a line; Data is compressed already when
// Encoding is set. Data must not change until the call returns.
type Body struct {
	Data     []byte
	NDJSON   bool
	Encoding Encoding
}

// callBody sends b, expects status want and decodes the reply into out.
func (c *Client) callBody(ctx context.Context, method, path string, b Body, want int, out any) error {
	r := &Request{Method: method, Path: path, Body: b.Data, Encoding: b.Encoding}
	if r.Body == nil {
		r.Body = []byte{}
	}
	if b.NDJSON {
		r.ContentType = "application/x-ndjson"
	}
	return c.call(ctx, r, want, out)
}

// bulkJSON encodes in as the JSON body of a bulk call, compressed as
// Options.Encoding says.
func (c *Client) bulkJSON(in any) (Body, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return Body{}, fmt.Errorf("encode: %w", err)
	}
	if c.o.Encoding == EncodingNone {
		return Body{Data: b}, nil
	}
	return Body{Data: c.comp.Append(nil, b, c.o.Encoding), Encoding: c.o.Encoding}, nil
}

// callJSON sends in as a JSON body (nil: no body), expects status want and
// decodes the reply into out.
func (c *Client) callJSON(ctx context.Context, method, path string, in any, want int, out any) error {
	r := &Request{Method: method, Path: path}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode: %w", method, path, err)
		}
		r.Body = b
	}
	return c.call(ctx, r, want, out)
}

// Error is a reply with another status than the call's success status.
type Error struct {
	Method string
	Path   string
	Status int
	// Message and Errors are the JSON error body's "message" and "errors"
	// (docs/API.md §5); both empty when the body is not that shape.
	Message string
	Errors  []string
	// RetryAfter is the reply's Retry-After (429, 503), 0 when absent.
	RetryAfter time.Duration
	// Body is the start of the reply body as received (at most 512 bytes).
	Body []byte
}

// Error returns the method, path, status and message (or the start of the
// body).
func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = string(e.Body)
	}
	return fmt.Sprintf("%s %s: status %d: %s", e.Method, e.Path, e.Status, msg)
}

// StatusOf returns the status of the *Error in err's chain, 0 when there is
// none.
func StatusOf(err error) int {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Status
	}
	return 0
}

// NewError returns the *Error of a reply to method and path, for callers
// that send requests with their own transport (loadgen's load loops).
func NewError(method, path string, rep *Reply) *Error {
	e := &Error{Method: method, Path: path, Status: rep.Status,
		RetryAfter: ParseRetryAfter(rep.Header.Get("Retry-After"), time.Now())}
	var body struct {
		Message string   `json:"message"`
		Errors  []string `json:"errors"`
	}
	if json.Unmarshal(rep.Body, &body) == nil {
		e.Message, e.Errors = body.Message, body.Errors
	}
	e.Body = bytes.Clone(rep.Body[:min(len(rep.Body), 512)])
	return e
}
