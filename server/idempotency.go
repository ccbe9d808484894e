package server

import (
	"crypto/sha256"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// The Idempotency-Key protocol (docs/API.md §4 "Write endpoints").
//
// # Design
//
// A key is scoped to the caller's workspace (the engine's admin scope for
// admin endpoints), so two tenants never see each other's keys. The
// request is identified by SHA-256 of method, path and the body bytes as
// received (still compressed: a client that retries sends the same bytes).
// Streamed /v1 bodies are hashed as they stream (the raw reader is teed
// through the hasher), so nothing is buffered for idempotency; partner
// bodies are buffered anyway and hashed whole.
//
// Completed replies live in the engine (engine/idempotency.go): they are
// records of the log, so they survive a restart, and each scope has its
// own bounded store. This file coordinates requests in flight: the first
// request with a key owns it (a pending entry) until it finishes, and a
// concurrent duplicate waits for the owner (at most idemWaitMax, then
// 409). If the owner succeeds (2xx), its reply is recorded durably before
// it is sent, and later requests with the key get that reply back
// (Idempotent-Replayed: true) without anything being applied, or 422 when
// their body differs. If the owner fails, the key is released: a failed
// request applied nothing, so its retry runs afresh.

const (
	maxIdemKeyLen = 255
	idemWaitMax   = 60 * time.Second
)

// idemScope is where a request's keys live: a workspace, or the admin
// scope (ws nil).
type idemScope struct {
	e  *engine.Engine
	ws *engine.Workspace
}

func (sc idemScope) name() string {
	if sc.ws == nil {
		return ""
	}
	return sc.ws.ID()
}

func (sc idemScope) lookup(key string) (engine.IdempotentReply, bool) {
	if sc.ws == nil {
		return sc.e.IdempotentReply(key)
	}
	return sc.ws.IdempotentReply(key)
}

func (sc idemScope) remember(key string, r engine.IdempotentReply) error {
	if sc.ws == nil {
		return sc.e.RememberReply(key, r)
	}
	return sc.ws.RememberReply(key, r)
}

// idemEntry is a key owned by a request in flight.
type idemEntry struct {
	scope idemScope
	key   string // the Idempotency-Key
	id    string // scope name NUL key: the pending map's key
	done  chan struct{}
}

// idemStore holds the keys owned by requests in flight.
type idemStore struct {
	mu struct {
		sync.Mutex
		pending map[string]*idemEntry
	}
}

func newIdemStore() *idemStore {
	st := &idemStore{}
	st.mu.pending = make(map[string]*idemEntry)
	return st
}

// acquire returns the stored reply of key in sc (owner nil), or a new
// pending entry that the caller owns and must complete or abandon. It
// waits while another request owns the key.
func (st *idemStore) acquire(sc idemScope, key string, wait time.Duration) (engine.IdempotentReply, *idemEntry, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	id := sc.name() + "\x00" + key
	for {
		if r, ok := sc.lookup(key); ok {
			return r, nil, nil
		}
		st.mu.Lock()
		e := st.mu.pending[id]
		if e == nil {
			// Check again under the lock: an owner may have completed
			// between the lookup and here.
			if r, ok := sc.lookup(key); ok {
				st.mu.Unlock()
				return r, nil, nil
			}
			e = &idemEntry{scope: sc, key: key, id: id, done: make(chan struct{})}
			st.mu.pending[id] = e
			st.mu.Unlock()
			return engine.IdempotentReply{}, e, nil
		}
		st.mu.Unlock()
		select {
		case <-e.done:
		case <-deadline.C:
			return engine.IdempotentReply{}, nil, errorf(fasthttp.StatusConflict, "a request with this Idempotency-Key is still in progress")
		}
	}
}

// complete records the reply of an owned entry durably, then releases the
// key (waiters find the reply in the engine).
func (st *idemStore) complete(e *idemEntry, r engine.IdempotentReply) error {
	err := e.scope.remember(e.key, r)
	st.release(e)
	return err
}

// abandon releases an owned entry: the key is free again.
func (st *idemStore) abandon(e *idemEntry) { st.release(e) }

func (st *idemStore) release(e *idemEntry) {
	st.mu.Lock()
	if st.mu.pending[e.id] == e {
		delete(st.mu.pending, e.id)
	}
	st.mu.Unlock()
	close(e.done)
}

// len is the number of keys in flight (tests).
func (st *idemStore) len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.mu.pending)
}

// bodyHasher hashes method, path and body bytes.
type bodyHasher struct{ h hash.Hash }

func newBodyHasher(ctx *fasthttp.RequestCtx) *bodyHasher {
	h := sha256.New()
	h.Write(ctx.Method())
	h.Write([]byte{0})
	h.Write(normPath(ctx))
	h.Write([]byte{0})
	return &bodyHasher{h: h}
}

func (b *bodyHasher) Write(p []byte) (int, error) { return b.h.Write(p) }

func (b *bodyHasher) sum() [32]byte {
	var s [32]byte
	b.h.Sum(s[:0])
	return s
}

// normPath is the request path without query, "//partners/" folded.
func normPath(ctx *fasthttp.RequestCtx) []byte {
	p := ctx.Request.URI().PathOriginal()
	for i, c := range p {
		if c == '?' {
			p = p[:i]
			break
		}
	}
	if len(p) > 1 && p[0] == '/' && p[1] == '/' {
		p = p[1:]
	}
	return p
}

// idemKey returns the request's Idempotency-Key (nil if none) or a 400.
func idemKey(ctx *fasthttp.RequestCtx) ([]byte, error) {
	k := ctx.Request.Header.Peek("Idempotency-Key")
	if len(k) == 0 {
		return nil, nil
	}
	if len(k) > maxIdemKeyLen {
		return nil, errorf(fasthttp.StatusBadRequest, "Idempotency-Key must be 1-%d printable ASCII characters", maxIdemKeyLen)
	}
	for _, c := range k {
		if c < 0x20 || c > 0x7e {
			return nil, errorf(fasthttp.StatusBadRequest, "Idempotency-Key must be 1-%d printable ASCII characters", maxIdemKeyLen)
		}
	}
	return k, nil
}

// withIdempotency runs a header-authenticated write under the protocol:
// the body is hashed as the handler streams it.
func (s *Server) withIdempotency(r *request, sc idemScope) error {
	key, err := idemKey(r.ctx)
	if err != nil {
		return err
	}
	if key == nil {
		return s.invoke(r)
	}
	if err := catchUpIdem(r, sc.name()); err != nil {
		return err
	}
	stored, e, err := s.idem.acquire(sc, string(key), idemWaitMax)
	if err != nil {
		return err
	}
	if e == nil {
		h := newBodyHasher(r.ctx)
		raw, err := r.rawBody(s.rawLimit())
		if err != nil {
			return err
		}
		if _, err := io.Copy(h, raw); err != nil {
			return err
		}
		return s.replay(r, stored, h.sum())
	}
	r.idemEnt = e
	r.idemHasher = newBodyHasher(r.ctx)
	return s.invoke(r)
}

// partnerIdempotency applies the protocol to a partner request whose raw
// body is already buffered; call it after authentication. replayed means
// the reply is written (or err is the 422).
func (s *Server) partnerIdempotency(r *request, sc idemScope, raw []byte) (replayed bool, err error) {
	key, err := idemKey(r.ctx)
	if err != nil || key == nil {
		return false, err
	}
	h := newBodyHasher(r.ctx)
	h.Write(raw)
	sum := h.sum()
	if err := catchUpIdem(r, sc.name()); err != nil {
		return false, err
	}
	stored, e, err := s.idem.acquire(sc, string(key), idemWaitMax)
	if err != nil {
		return false, err
	}
	if e == nil {
		return true, s.replay(r, stored, sum)
	}
	r.idemEnt, r.idemSum = e, &sum
	return false, nil
}

// replay answers with a stored reply, or 422 for another body.
func (s *Server) replay(r *request, stored engine.IdempotentReply, sum [32]byte) error {
	if sum != stored.Sum {
		return errorf(fasthttp.StatusUnprocessableEntity, "Idempotency-Key reused with a different request body")
	}
	ctx := r.ctx
	ctx.SetStatusCode(stored.Status)
	if stored.ContentType != "" {
		ctx.SetContentType(stored.ContentType)
	}
	ctx.Response.Header.Set("Idempotent-Replayed", "true")
	ctx.SetBody(stored.Body)
	return errReplied
}

// invoke runs the route's handler and settles an owned idempotency entry:
// a 2xx reply is recorded durably (before it is sent), anything else
// releases the key.
func (s *Server) invoke(r *request) error {
	err := r.rt.h(r)
	if r.idemEnt == nil {
		return err
	}
	status := r.ctx.Response.StatusCode()
	if err != nil || status < 200 || status > 299 || r.ctx.Response.IsBodyStream() {
		r.abandonIdem()
		return err
	}
	var sum [32]byte
	if r.idemSum != nil {
		sum = *r.idemSum
	} else {
		// Hash what the handler left unread (a DELETE's body, say).
		raw, rerr := r.rawBody(s.rawLimit())
		if rerr == nil {
			_, rerr = io.Copy(io.Discard, raw)
		}
		if rerr != nil {
			r.abandonIdem()
			return nil // the reply stands; it is just not remembered
		}
		sum = r.idemHasher.sum()
	}
	e := r.idemEnt
	r.idemEnt = nil
	rep := engine.IdempotentReply{Sum: sum, Status: status, ContentType: string(r.ctx.Response.Header.ContentType()),
		Body: append([]byte(nil), r.ctx.Response.Body()...)}
	if err := s.idem.complete(e, rep); err != nil {
		// The write is applied and durable; only its reply could not be
		// recorded (the engine is closing). Answer 503: the client's retry
		// then runs the write again, which every write tolerates.
		r.ctx.Response.ResetBody()
		return err
	}
	return nil
}

// abandonIdem releases an owned entry, if any (errors and panics).
func (r *request) abandonIdem() {
	if r.idemEnt != nil {
		r.s.idem.abandon(r.idemEnt)
		r.idemEnt = nil
	}
}
