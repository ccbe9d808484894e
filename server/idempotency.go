package server

import (
	"container/list"
	"crypto/sha256"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// The Idempotency-Key protocol (docs/API.md §4 "Write endpoints").
//
// # Design
//
// A key is scoped to the caller's workspace ("admin" for admin endpoints),
// so two tenants never see each other's keys. The request is identified by
// SHA-256 of method, path and the body bytes as received (still
// compressed: a client that retries sends the same bytes). Streamed /v1
// bodies are hashed as they stream (the raw reader is teed through the
// hasher), so nothing is buffered for idempotency; partner bodies are
// buffered anyway and hashed whole.
//
// The first request with a key owns it (a pending entry) until it
// finishes. A concurrent duplicate waits for the owner (at most
// idemWaitMax, then 409). If the owner succeeds (2xx), its reply (status,
// body, Content-Type) is kept for the TTL and later requests with the key
// get that reply back (Idempotent-Replayed: true) without anything being
// applied, or 422 when their body differs. If the owner fails, the key is
// released: a failed request applied nothing, so its retry runs afresh.
//
// Memory is bounded: expired entries are evicted, and at most maxEntries
// completed entries are kept (oldest evicted first). Replies of write
// endpoints are small JSON documents.

const (
	defaultIdemEntries = 100_000
	maxIdemKeyLen      = 255
	idemWaitMax        = 60 * time.Second
)

// idemEntry is one key's state. Fields other than done are under
// idemStore.mu until done is closed; afterwards they are immutable.
type idemEntry struct {
	key       string
	done      chan struct{} // closed when completed or abandoned
	completed bool
	sum       [32]byte
	status    int
	body      []byte
	ctype     string
	expires   time.Time
	elem      *list.Element // in idemStore.mu.order once completed
}

// idemStore holds the entries of every scope.
type idemStore struct {
	ttl        time.Duration
	maxEntries int
	now        func() time.Time

	mu struct {
		sync.Mutex
		m     map[string]*idemEntry
		order *list.List // completed entries, oldest first (= expiry order)
	}
}

func newIdemStore(ttl time.Duration, maxEntries int, now func() time.Time) *idemStore {
	st := &idemStore{ttl: ttl, maxEntries: maxEntries, now: now}
	st.mu.m = make(map[string]*idemEntry)
	st.mu.order = list.New()
	return st
}

// acquire returns the completed entry of key (owner false), or a new
// pending entry that the caller owns and must complete or abandon. It waits
// while another request owns the key.
func (st *idemStore) acquire(key string, wait time.Duration) (*idemEntry, bool, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		st.mu.Lock()
		st.evictLocked()
		e := st.mu.m[key]
		if e == nil {
			e = &idemEntry{key: key, done: make(chan struct{})}
			st.mu.m[key] = e
			st.mu.Unlock()
			return e, true, nil
		}
		if e.completed {
			st.mu.Unlock()
			return e, false, nil
		}
		st.mu.Unlock()
		select {
		case <-e.done:
		case <-deadline.C:
			return nil, false, errorf(fasthttp.StatusConflict, "a request with this Idempotency-Key is still in progress")
		}
	}
}

// evictLocked drops expired entries and, past maxEntries, the oldest.
func (st *idemStore) evictLocked() {
	now := st.now()
	for f := st.mu.order.Front(); f != nil; f = st.mu.order.Front() {
		e := f.Value.(*idemEntry)
		if now.Before(e.expires) && st.mu.order.Len() < st.maxEntries {
			break
		}
		st.mu.order.Remove(f)
		delete(st.mu.m, e.key)
	}
}

// complete stores the reply of an owned entry and wakes its waiters.
func (st *idemStore) complete(e *idemEntry, sum [32]byte, status int, body []byte, ctype string) {
	st.mu.Lock()
	e.completed, e.sum, e.status, e.body, e.ctype = true, sum, status, body, ctype
	e.expires = st.now().Add(st.ttl)
	e.elem = st.mu.order.PushBack(e)
	st.mu.Unlock()
	close(e.done)
}

// abandon releases an owned entry: the key is free again.
func (st *idemStore) abandon(e *idemEntry) {
	st.mu.Lock()
	if st.mu.m[e.key] == e {
		delete(st.mu.m, e.key)
	}
	st.mu.Unlock()
	close(e.done)
}

// len is the number of entries (tests).
func (st *idemStore) len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.mu.m)
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
func (s *Server) withIdempotency(r *request, scope string) error {
	key, err := idemKey(r.ctx)
	if err != nil {
		return err
	}
	if key == nil {
		return s.invoke(r)
	}
	e, owner, err := s.idem.acquire(scope+"\x00"+string(key), idemWaitMax)
	if err != nil {
		return err
	}
	if !owner {
		h := newBodyHasher(r.ctx)
		raw, err := r.rawBody(s.rawLimit())
		if err != nil {
			return err
		}
		if _, err := io.Copy(h, raw); err != nil {
			return err
		}
		return s.replay(r, e, h.sum())
	}
	r.idemEnt = e
	r.idemHasher = newBodyHasher(r.ctx)
	return s.invoke(r)
}

// partnerIdempotency applies the protocol to a partner request whose raw
// body is already buffered; call it after authentication. replayed means
// the reply is written (or err is the 422).
func (s *Server) partnerIdempotency(r *request, scope string, raw []byte) (replayed bool, err error) {
	key, err := idemKey(r.ctx)
	if err != nil || key == nil {
		return false, err
	}
	h := newBodyHasher(r.ctx)
	h.Write(raw)
	sum := h.sum()
	e, owner, err := s.idem.acquire(scope+"\x00"+string(key), idemWaitMax)
	if err != nil {
		return false, err
	}
	if !owner {
		return true, s.replay(r, e, sum)
	}
	r.idemEnt, r.idemSum = e, &sum
	return false, nil
}

// replay answers with a completed entry's reply, or 422 for another body.
func (s *Server) replay(r *request, e *idemEntry, sum [32]byte) error {
	if sum != e.sum {
		return errorf(fasthttp.StatusUnprocessableEntity, "Idempotency-Key reused with a different request body")
	}
	ctx := r.ctx
	ctx.SetStatusCode(e.status)
	if e.ctype != "" {
		ctx.SetContentType(e.ctype)
	}
	ctx.Response.Header.Set("Idempotent-Replayed", "true")
	ctx.SetBody(e.body)
	return errReplied
}

// invoke runs the route's handler and settles an owned idempotency entry:
// a 2xx reply is stored, anything else releases the key.
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
	body := append([]byte(nil), r.ctx.Response.Body()...)
	s.idem.complete(e, sum, status, body, string(r.ctx.Response.Header.ContentType()))
	return nil
}

// abandonIdem releases an owned entry, if any (errors and panics).
func (r *request) abandonIdem() {
	if r.idemEnt != nil {
		r.s.idem.abandon(r.idemEnt)
		r.idemEnt = nil
	}
}
