package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/ratelimit"
)

// Options configure a Server. Zero values get the documented defaults.
type Options struct {
	AdminToken     string // required: the bearer token of admin endpoints
	MaxBody        int64  // decoded /v1 body cap, default 256 MiB
	PartnerMaxBody int64  // decoded partner body cap, default 8 MiB
	PartnerMaxIDs  int    // identifiers per partner request, default 1000
	// QueryMaxBody caps the decoded body of /v1/segments/* and
	// /v1/users/delete, default 8 MiB (docs/API.md §5).
	QueryMaxBody int64
	// PartnerMaxInflight caps the partner and webhook bodies being read
	// and handled at once; one more answers 503 with Retry-After.
	// Default 16.
	PartnerMaxInflight int
	RateLimit          float64        // requests/s per credential (token bucket); 0 = off
	RateBurst          int            // bucket size; <1 means max(1, ceil(RateLimit))
	Limits             *ratelimit.Set // nil → built from RateLimit, RateBurst; a Set shared with the RESP listener shares the buckets
	Logger             *slog.Logger   // nil → slog.Default()
	Metrics            *metrics.Set   // nil → a new set; /metrics writes it and the process metrics
}

// Defaults of Options.
const (
	DefaultMaxBody        = 256 << 20
	DefaultPartnerMaxBody = 8 << 20
	DefaultPartnerMaxIDs  = 1000
	DefaultQueryMaxBody   = 8 << 20
	// DefaultPartnerMaxInflight bounds the memory of partner bodies in
	// flight to about 16 × (8 MiB raw + 8 MiB decoded + a bounded tree).
	DefaultPartnerMaxInflight = 16
)

// Server is the HTTP server of cohortd.
//
// # Life cycle
//
// New returns a server that already answers /livez and /metrics; every
// other route answers 503 {"message":"not ready"} with Retry-After: 1 until
// SetEngine installs the recovered engine. Shutdown flips the server into
// draining: /readyz and every request that arrives from then on answer 503
// {"message":"shutting down"}, while requests already running (streamed
// replies included) finish; then the listener closes.
//
// # Requests
//
// Handler normalises the path (a leading "//partners/" is "/partners/"),
// matches the route table built in New (404 / 405 with Allow), checks the
// readiness gate, then runs the route: bearer auth for /v1 (partner routes
// authenticate from their body), the rate limit of the credential, the
// Idempotency-Key protocol for writes, the handler. Handlers return errors;
// apiErrors and engine errors become JSON error replies, anything else a
// logged 500. A panic is recovered into a logged 500 and counted in
// cohortd_panics_total: no input may reach that path.
type Server struct {
	opts    Options
	log     *slog.Logger
	engine  atomic.Pointer[engine.Engine]
	routes  []*route
	static  map[string][]*route // routes of each parameterless path (staticRoutes)
	byLen   [][]*route          // routes indexed by segment count (routesByLen)
	idem    *idemStore
	limits  *rateLimits
	met     *serverMetrics
	adminD  [32]byte // SHA-256 of the admin token
	parsers fastjson.ParserPool
	bufs    sync.Pool // *[]byte body buffers; see request.getBuf
	trim    heapTrim  // returns the heap's free pages after big bodies
	closing atomic.Bool
	ui      map[string]*uiFile // the built-in page's files (ui.go), read-only

	// partnerSlots holds a token per partner or webhook body in flight
	// (partnerSlot).
	partnerSlots chan struct{}

	// inflight counts requests being handled (and streamed replies being
	// written); Shutdown waits for it to reach zero.
	inflight atomic.Int64

	mu struct {
		sync.Mutex
		srv *fasthttp.Server
	}
}

// New builds a server. It starts no goroutines.
func New(opts Options) *Server {
	if opts.MaxBody <= 0 {
		opts.MaxBody = DefaultMaxBody
	}
	if opts.PartnerMaxBody <= 0 {
		opts.PartnerMaxBody = DefaultPartnerMaxBody
	}
	if opts.PartnerMaxIDs <= 0 {
		opts.PartnerMaxIDs = DefaultPartnerMaxIDs
	}
	if opts.QueryMaxBody <= 0 {
		opts.QueryMaxBody = DefaultQueryMaxBody
	}
	if opts.PartnerMaxInflight <= 0 {
		opts.PartnerMaxInflight = DefaultPartnerMaxInflight
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.Limits == nil {
		opts.Limits = ratelimit.New(opts.RateLimit, opts.RateBurst)
	}
	s := &Server{
		opts:   opts,
		log:    opts.Logger,
		idem:   newIdemStore(),
		limits: &rateLimits{set: opts.Limits},
		adminD: engine.SecretDigest([]byte(opts.AdminToken)),
		ui:     loadUI(),

		partnerSlots: make(chan struct{}, opts.PartnerMaxInflight),
	}
	s.routes = s.buildRoutes()
	s.static, s.byLen = staticRoutes(s.routes), routesByLen(s.routes)
	s.met = newServerMetrics(opts.Metrics, s.routes, s.engine.Load)
	return s
}

// SetEngine installs the engine once recovery is done; from then on the
// server is ready.
func (s *Server) SetEngine(e *engine.Engine) { s.engine.Store(e) }

// Serve serves HTTP on ln until Shutdown. It returns nil after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	srv := &fasthttp.Server{
		Handler:           s.Handler,
		Name:              "cohortd",
		StreamRequestBody: true,
		// With StreamRequestBody a larger body is streamed, not refused:
		// the decoded-size caps of the handlers are the real limits.
		MaxRequestBodySize:           int(min(max(s.opts.MaxBody, s.opts.PartnerMaxBody), 1<<30)),
		ReadTimeout:                  5 * time.Minute, // a 256 MiB bulk body on a slow link
		WriteTimeout:                 5 * time.Minute,
		IdleTimeout:                  2 * time.Minute,
		ReadBufferSize:               16 << 10,
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		CloseOnShutdown:              true,
		Logger:                       slogPrintf{s.log},
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return errors.New("server: shutting down")
	}
	s.mu.srv = srv
	s.mu.Unlock()
	return srv.Serve(ln)
}

// Shutdown drains the server: at once /readyz and every new request answer
// 503 {"message":"shutting down"}; requests in flight finish (until ctx
// ends); then the listener closes and idle connections are dropped. It
// returns ctx.Err() when ctx ends first.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	var err error
wait:
	for s.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-t.C:
		}
	}
	s.mu.Lock()
	srv := s.mu.srv
	s.mu.Unlock()
	if srv == nil {
		return err
	}
	if err != nil {
		// Out of time: close the listener without waiting any longer.
		sctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = srv.ShutdownWithContext(sctx)
		return err
	}
	if serr := srv.ShutdownWithContext(ctx); serr != nil && !errors.Is(serr, context.Canceled) && !errors.Is(serr, context.DeadlineExceeded) {
		return fmt.Errorf("server: shutdown: %w", serr)
	} else if serr != nil {
		return serr
	}
	return nil
}

// Handler is the fasthttp request handler.
func (s *Server) Handler(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	s.inflight.Add(1)
	r := requests.Get().(*request)
	r.s, r.ctx = s, ctx
	defer func() {
		if v := recover(); v != nil {
			s.met.panics.Inc()
			s.log.Error("panic in handler", "method", string(ctx.Method()), "route", r.routeName(),
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			r.abandonIdem()
			ctx.Response.Reset()
			writeError(ctx, errorf(fasthttp.StatusInternalServerError, "internal error"))
		}
		if big := r.releaseBuffers(); big || ctx.Request.Header.ContentLength() > maxPooledBuf {
			s.trim.request()
		}
		s.met.observe(r.rt, ctx, time.Since(start))
		if s.log.Enabled(context.Background(), slog.LevelDebug) {
			s.log.Debug("request", "method", string(ctx.Method()), "route", r.routeName(),
				"status", ctx.Response.StatusCode(), "duration", time.Since(start).String(), "workspace", r.wsID())
		}
		if !r.streaming {
			s.inflight.Add(-1)
		}
		r.recycle()
	}()
	s.serve(r)
}

// requests pools request values: a query must not allocate one.
var requests = sync.Pool{New: func() any { return new(request) }}

// recycle empties r (keeping its buffers) and puts it back in the pool.
// Nothing may hold r after its Handler call: stream writers capture what
// they need, never r.
func (r *request) recycle() {
	bufs := r.buffers[:0]
	*r = request{buffers: bufs}
	requests.Put(r)
}

// serve runs one request: route match, readiness gate, the route.
func (s *Server) serve(r *request) {
	ctx := r.ctx
	rt, params, allowed, err := s.match(ctx)
	if err != nil {
		s.fail(r, err)
		return
	}
	if rt == nil {
		if allowed != "" {
			ctx.Response.Header.Set("Allow", allowed)
			s.fail(r, errorf(fasthttp.StatusMethodNotAllowed, "method %s not allowed; allowed: %s", ctx.Method(), allowed))
			return
		}
		s.fail(r, errorf(fasthttp.StatusNotFound, "no route for %s %s", ctx.Method(), ctx.Path()))
		return
	}
	r.rt, r.params = rt, params
	if !rt.ungated {
		if s.closing.Load() {
			ctx.Response.Header.Set("Retry-After", "1")
			ctx.SetConnectionClose()
			s.fail(r, errorf(fasthttp.StatusServiceUnavailable, "shutting down"))
			return
		}
		r.e = s.engine.Load()
		if r.e == nil {
			ctx.Response.Header.Set("Retry-After", "1")
			s.fail(r, errorf(fasthttp.StatusServiceUnavailable, "not ready"))
			return
		}
		if err := waitMinPosition(r); err != nil {
			s.fail(r, err)
			return
		}
	}
	if err := s.run(r); err != nil {
		s.fail(r, err)
	}
	notePosition(r)
}

// fail writes err as the reply: engine errors are mapped (errors.go), an
// unknown error is logged here and answered with a bare 500.
func (s *Server) fail(r *request, err error) {
	if errors.Is(err, errReplied) {
		return
	}
	err = mapError(err)
	var ae *apiError
	if !errors.As(err, &ae) {
		s.log.Error("internal error", "method", string(r.ctx.Method()), "route", r.routeName(), "err", err)
		err = errorf(fasthttp.StatusInternalServerError, "internal error")
	} else if ae.status >= 500 && ae.status != fasthttp.StatusServiceUnavailable {
		s.log.Error("request failed", "method", string(r.ctx.Method()), "route", r.routeName(), "err", err)
	}
	if r.ctx.Response.IsBodyStream() {
		r.ctx.Response.ResetBody()
	}
	writeError(r.ctx, err)
}

// errReplied tells fail that the reply is already written (an idempotent
// replay).
var errReplied = errors.New("server: reply already written")

// slogPrintf adapts a slog.Logger to fasthttp's Logger (connection-level
// errors: malformed requests, timeouts).
type slogPrintf struct{ l *slog.Logger }

func (p slogPrintf) Printf(format string, args ...any) {
	p.l.Warn("fasthttp: " + fmt.Sprintf(format, args...))
}

// request is the per-request state shared by the middleware and the
// handlers. It lives for one Handler call.
type request struct {
	s      *Server
	ctx    *fasthttp.RequestCtx
	rt     *route
	params [3]string // path parameters, percent-decoded, in pattern order
	e      *engine.Engine
	ws     *engine.Workspace // set by workspace (and partner) auth
	// posScope names the workspace an admin write changes when no path
	// parameter does (POST /v1/workspaces), for X-Cohortd-Position.
	posScope string

	// Idempotency (idempotency.go).
	idemEnt    *idemEntry
	idemHasher *bodyHasher
	idemSum    *[32]byte // set when the hash is known up front (partner bodies)

	raw       io.Reader // the raw body, opened once
	buffers   []*[]byte // pooled buffers released after the reply
	streaming bool      // a body stream writer owns the inflight count

	// Readers of the body, kept here so that opening one allocates nothing.
	bodyReader bytes.Reader
	rawLimited rawReader
	decoded    limitedReader
}

func (r *request) routeName() string {
	if r.rt == nil {
		return "unmatched"
	}
	return r.rt.pattern
}

func (r *request) wsID() string {
	if r.ws == nil {
		return ""
	}
	return r.ws.ID()
}

// rawLimit bounds the raw bytes read from any body. Compressed bodies are
// smaller than their decoded form, so the largest decoded cap also bounds
// the raw bytes of a legitimate request.
func (s *Server) rawLimit() int64 {
	return max(s.opts.MaxBody, s.opts.PartnerMaxBody, s.opts.QueryMaxBody)
}

// rawBody opens the request body as received (still encoded), once: the
// stream of fasthttp's StreamRequestBody, or the buffered body when the
// handler is called without it (tests). Past limit bytes it fails with 413.
// With an owned Idempotency-Key the bytes are teed through the hasher.
func (r *request) rawBody(limit int64) (io.Reader, error) {
	if r.raw != nil {
		return r.raw, nil
	}
	src := r.ctx.RequestBodyStream()
	if src == nil {
		r.bodyReader.Reset(r.ctx.Request.Body())
		src = &r.bodyReader
	}
	r.rawLimited = rawReader{r: src, left: limit, limit: limit, counter: r.s.met.bytesIn}
	var rd io.Reader = &r.rawLimited
	if r.idemHasher != nil {
		rd = io.TeeReader(rd, r.idemHasher)
	}
	r.raw = rd
	return rd, nil
}

// rawReader counts raw body bytes (cohortd_http_request_body_bytes_total)
// and fails with 413 past its limit.
type rawReader struct {
	r       io.Reader
	left    int64
	limit   int64
	counter *metrics.Counter
}

func (l *rawReader) Read(p []byte) (int, error) {
	if l.left < 0 {
		return 0, tooLarge(l.limit)
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	l.counter.Add(n)
	l.left -= int64(n)
	if l.left < 0 {
		return 0, tooLarge(l.limit)
	}
	if err != nil && err != io.EOF {
		// A truncated or broken transfer is the client's fault, not ours.
		return n, errorf(fasthttp.StatusBadRequest, "reading request body: %v", err)
	}
	return n, err
}

// maxPooledBuf is the largest body buffer kept in bufPool.
const maxPooledBuf = 1 << 20

// getBuf returns a pooled buffer released with the request.
func (r *request) getBuf() *[]byte {
	b, _ := r.s.bufs.Get().(*[]byte)
	if b == nil {
		b = new([]byte)
	}
	r.buffers = append(r.buffers, b)
	return b
}

// releaseBuffers returns the request's buffers to the pool, except
// oversized ones: one big body must not pin its memory forever. It reports
// whether it dropped one.
func (r *request) releaseBuffers() (dropped bool) {
	for _, b := range r.buffers {
		if cap(*b) <= maxPooledBuf {
			*b = (*b)[:0]
			r.s.bufs.Put(b)
		} else {
			dropped = true
		}
	}
	clear(r.buffers)
	r.buffers = r.buffers[:0]
	return dropped
}

// heapTrimInterval is the least time between two heap trims.
const heapTrimInterval = time.Second

// heapTrim returns the Go heap's free pages to the OS (debug.FreeOSMemory)
// after a request whose body did not fit the pools, at most once per
// heapTrimInterval. A big body leaves its buffers, decoded records and WAL
// copies as garbage; without a trim the runtime keeps those pages (the GC
// lets the heap reach about twice its live bytes, and the scavenger returns
// the rest slowly), so RSS after an import stays tens of MiB above what is
// live, more than the identity tables of a million users. A trim costs a
// full collection of a heap that holds no identity table (those are off
// the heap), a few milliseconds, paid by requests that took far longer.
type heapTrim struct {
	free func() // debug.FreeOSMemory when nil; tests count the calls

	mu      sync.Mutex
	last    time.Time
	pending bool // a trim is scheduled for last + heapTrimInterval
}

// request trims now if the last trim is old enough, else schedules one
// for when it will be (once, however many requests ask meanwhile), so the
// last big body of a burst is always followed by a trim. A trim now runs in
// the handler, before the response goes out: the response then reports a
// state whose RSS is already down.
func (t *heapTrim) request() {
	t.mu.Lock()
	if t.pending {
		t.mu.Unlock()
		return
	}
	if wait := time.Until(t.last.Add(heapTrimInterval)); wait > 0 {
		t.pending = true
		t.mu.Unlock()
		time.AfterFunc(wait, t.run)
		return
	}
	t.last = time.Now()
	t.mu.Unlock()
	t.freeOS()
}

func (t *heapTrim) freeOS() {
	if t.free != nil {
		t.free()
		return
	}
	debug.FreeOSMemory()
}

// run is a scheduled trim.
func (t *heapTrim) run() {
	t.freeOS()
	t.mu.Lock()
	t.last, t.pending = time.Now(), false
	t.mu.Unlock()
}

// smallBody reads the whole body into pooled buffers and decodes it
// (gzip/zstd), for bodies parsed whole: at most limit decoded bytes (else
// 413). raw is the body as received (for the idempotency hash). Both are
// valid until the request ends.
func (r *request) smallBody(limit int64) (decoded, raw []byte, err error) {
	src, err := r.rawBody(limit)
	if err != nil {
		return nil, nil, err
	}
	rb := r.getBuf()
	buf := *rb
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, rerr := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			*rb = buf
			return nil, nil, rerr
		}
	}
	*rb = buf
	db := r.getBuf()
	dec, err := readBody(r.ctx.Request.Header.ContentEncoding(), buf, limit, *db)
	if err != nil {
		return nil, nil, err
	}
	// For identity dec is buf itself; otherwise it may have grown past the
	// pooled buffer, and the grown one goes back to the pool.
	if cap(dec) > 0 && (cap(buf) == 0 || &dec[:cap(dec)][0] != &buf[:cap(buf)][0]) {
		*db = dec[:0]
	}
	return dec, buf, nil
}

// decodedBody returns the decoded body as a stream (bulk bodies), at most
// limit decoded bytes. The caller must call release when done.
func (r *request) decodedBody(limit int64) (io.Reader, func(), error) {
	src, err := r.rawBody(limit)
	if err != nil {
		return nil, func() {}, err
	}
	return decodeBodyInto(&r.decoded, r.ctx.Request.Header.ContentEncoding(), src, limit)
}

// writeJSON writes v as a JSON reply with status.
func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode reply: %w", err)
	}
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
	return nil
}

// writeRawJSON writes a JSON reply built by hand.
func writeRawJSON(ctx *fasthttp.RequestCtx, status int, b []byte) {
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
}
