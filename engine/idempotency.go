package engine

import (
	"fmt"
	"sync"
	"time"
)

// Idempotency records (docs/API.md §4 "Write endpoints"): the reply of a
// write that carried an Idempotency-Key, kept for the TTL so that a retry
// with the same key and body gets the same reply without anything being
// applied again — also after a restart, since the replies are records of
// the log like every other state change, and part of the snapshot.
//
// # Scope and limits
//
// Keys are scoped to a workspace (the admin scope is the engine's own
// store), so one tenant's keys never evict another's. Each store keeps at
// most MaxIdempotencyEntries replies and MaxIdempotencyBytes of reply
// bytes; past either, the oldest replies are dropped first. A reply is
// dropped when it is older than the TTL, measured against the time of the
// newest record of its store, not the wall clock, so replay and every
// replica drop exactly the same ones.
//
// # What a retry gets
//
// The server (which also coordinates concurrent duplicates of a request
// in flight) records a reply only after the write it answers is durable,
// and sends it only after the reply's record is durable too. A crash
// between the two loses the reply, not the write: the retry then runs
// again, which every write tolerates (changes and upserts are no-ops the
// second time, creations answer 409, a key creation issues a second key —
// the first was never shown to anyone).

// Limits of one idempotency store.
const (
	MaxIdempotencyEntries = 10_000
	MaxIdempotencyBytes   = 8 << 20
)

// IdempotentReply is a stored reply.
type IdempotentReply struct {
	Sum         [32]byte  // SHA-256 of the request (method, path, body as received)
	Status      int       // the HTTP status
	ContentType string    // the reply's Content-Type
	Body        []byte    // the reply body
	At          time.Time // when the reply was recorded
}

// idemStore is one scope's replies, oldest first. It is guarded by the
// writer lock of its scope (Workspace.mu, or Engine.mu for the admin
// scope) for writes and by its own read lock for lookups.
type idemStore struct {
	m     map[string]*idemEntry
	order []*idemEntry // insertion order; dropped entries are nil until compacted
	head  int          // first live index of order
	bytes int
}

type idemEntry struct {
	key string
	r   IdempotentReply
}

func (s *idemStore) get(key string, ttl time.Duration, now time.Time) (IdempotentReply, bool) {
	e := s.m[key]
	if e == nil || !e.r.At.Add(ttl).After(now) {
		return IdempotentReply{}, false
	}
	return e.r, true
}

// put stores a reply, replacing one of the same key, then drops what is
// past the TTL (relative to r.At) or the limits. It is deterministic in
// the sequence of puts.
func (s *idemStore) put(key string, r IdempotentReply, ttl time.Duration) {
	if s.m == nil {
		s.m = make(map[string]*idemEntry)
	}
	if old := s.m[key]; old != nil {
		s.remove(old)
	}
	e := &idemEntry{key: key, r: r}
	s.m[key] = e
	s.order = append(s.order, e)
	s.bytes += entryBytes(e)
	cutoff := r.At.Add(-ttl)
	for s.head < len(s.order) {
		f := s.order[s.head]
		if f == nil {
			s.head++
			continue
		}
		if len(s.m) <= MaxIdempotencyEntries && s.bytes <= MaxIdempotencyBytes && f.r.At.After(cutoff) {
			break
		}
		s.remove(f)
		s.head++
	}
	// Compact the order slice once half of it is dead.
	if s.head > 64 && s.head*2 > len(s.order) {
		live := s.order[:0]
		for _, e := range s.order[s.head:] {
			if e != nil {
				live = append(live, e)
			}
		}
		clear(s.order[len(live):])
		s.order, s.head = live, 0
	}
}

func (s *idemStore) remove(e *idemEntry) {
	delete(s.m, e.key)
	s.bytes -= entryBytes(e)
	for i := len(s.order) - 1; i >= s.head; i-- {
		if s.order[i] == e {
			s.order[i] = nil
			return
		}
	}
}

func entryBytes(e *idemEntry) int {
	return len(e.key) + len(e.r.Body) + len(e.r.ContentType) + 64
}

// each calls fn for the live entries, oldest first.
func (s *idemStore) each(fn func(key string, r IdempotentReply)) {
	for _, e := range s.order[s.head:] {
		if e != nil {
			fn(e.key, e.r)
		}
	}
}

func (s *idemStore) len() int { return len(s.m) }

// idemCapture is a scope's replies copied for a snapshot.
type idemCapture []idemEntry

// capture copies the replies, oldest first. The caller holds the scope's
// writer lock; the reply bodies are never modified, so they are shared.
func (l *idemLocked) capture() idemCapture {
	l.RLock()
	defer l.RUnlock()
	out := make(idemCapture, 0, l.s.len())
	l.s.each(func(key string, r IdempotentReply) { out = append(out, idemEntry{key, r}) })
	return out
}

// writeIdempotency writes a scope's replies as a snapshot section (none
// when the scope has none).
func writeIdempotency(sw *snapWriter, scope string, entries idemCapture) {
	if len(entries) == 0 {
		return
	}
	sw.begin(secIdem)
	sw.str(scope)
	sw.uvarint(uint64(len(entries)))
	for _, e := range entries {
		sw.str(e.key)
		sw.write(e.r.Sum[:])
		sw.uvarint(uint64(e.r.Status))
		sw.str(e.r.ContentType)
		sw.uvarint(uint64(len(e.r.Body)))
		sw.write(e.r.Body)
		sw.time(e.r.At)
	}
	sw.end()
}

// readIdempotency reads a section written by writeIdempotency into st
// (nothing with check), oldest first, as the records put them.
func readIdempotency(f *snapReader, st *idemStore, ttl time.Duration, check bool) {
	n := f.uvarint()
	for i := uint64(0); i < n && f.err == nil; i++ {
		key := f.str()
		var r IdempotentReply
		r.Sum = f.digest()
		status := f.uvarint()
		r.ContentType = f.str()
		r.Body = append([]byte(nil), f.bytes()...)
		r.At = f.time()
		if f.err == nil && (status < 100 || status > 599) {
			f.fail(fmt.Sprintf("idempotency reply with status %d", status))
		}
		r.Status = int(status)
		if f.err == nil && !check && st != nil {
			st.put(key, r, ttl)
		}
	}
}

// encodeIdempotency appends a recIdempotency payload: scope ("" for the
// admin scope, else the workspace id), key, reply.
func encodeIdempotency(enc *recordEncoder, scope, key string, r IdempotentReply) {
	enc.str(scope)
	enc.str(key)
	enc.digest(r.Sum)
	enc.uvarint(uint64(r.Status))
	enc.str(r.ContentType)
	enc.bytes(r.Body)
	enc.time(r.At)
}

func decodeIdempotency(d *recordDecoder) (key string, r IdempotentReply, err error) {
	key = d.str()
	r.Sum = d.digest()
	status := d.uvarint()
	r.ContentType = d.str()
	r.Body = append([]byte(nil), d.bytes()...)
	r.At = d.time()
	if err := d.done(); err != nil {
		return "", IdempotentReply{}, err
	}
	if status < 100 || status > 599 {
		return "", IdempotentReply{}, fmt.Errorf("idempotency record: status %d", status)
	}
	r.Status = int(status)
	return key, r, nil
}

// IdempotentReply returns the reply stored for key in the workspace's
// scope, if it is younger than the TTL.
func (w *Workspace) IdempotentReply(key string) (IdempotentReply, bool) {
	w.idem.RLock()
	defer w.idem.RUnlock()
	return w.idem.s.get(key, w.e.idemTTL(), w.e.now())
}

// RememberReply records the reply to a write that carried key, and
// returns once the record is durable. Call it only after the write itself
// was acknowledged by the engine.
func (w *Workspace) RememberReply(key string, r IdempotentReply) error {
	if w.e.repl != nil {
		var enc recordEncoder
		encodeIdemCmd(&enc, key, r)
		_, err := w.e.propose(cmdIdempotency, w.id, w.gen, enc.b)
		return err
	}
	r.At = w.e.now().UTC()
	return w.write(func() error {
		w.enc.reset()
		encodeIdempotency(&w.enc, w.id, key, r)
		_, err := w.commitLocked(recIdempotency, func(uint64) { w.applyIdempotency(key, r) })
		return err
	})
}

func (w *Workspace) applyIdempotency(key string, r IdempotentReply) {
	w.idem.Lock()
	w.idem.s.put(key, r, w.e.idemTTL())
	w.idem.Unlock()
}

// IdempotentReply returns the reply stored for key in the admin scope.
func (e *Engine) IdempotentReply(key string) (IdempotentReply, bool) {
	e.idem.RLock()
	defer e.idem.RUnlock()
	return e.idem.s.get(key, e.idemTTL(), e.now())
}

// RememberReply records the reply to an admin write that carried key (see
// Workspace.RememberReply).
func (e *Engine) RememberReply(key string, r IdempotentReply) error {
	if e.repl != nil {
		var enc recordEncoder
		encodeIdemCmd(&enc, key, r)
		_, err := e.propose(cmdIdempotency, "", 0, enc.b)
		return err
	}
	r.At = e.now().UTC()
	var enc recordEncoder
	encodeIdempotency(&enc, "", key, r)
	e.mu.Lock()
	if e.closed.Load() {
		e.mu.Unlock()
		return ErrClosed
	}
	lsn, err := e.appendRecord(recIdempotency, enc.b)
	if err != nil {
		e.mu.Unlock()
		return err
	}
	e.mu.lsn = max(e.mu.lsn, lsn)
	e.applyIdempotency(key, r)
	e.mu.Unlock()
	return e.waitDurable(lsn)
}

func (e *Engine) applyIdempotency(key string, r IdempotentReply) {
	e.idem.Lock()
	e.idem.s.put(key, r, e.idemTTL())
	e.idem.Unlock()
}

// idemLocked is a scope's store with the lock that readers take; the
// scope's writer lock serializes writers.
type idemLocked struct {
	sync.RWMutex
	s idemStore
}

// IdempotencyEntries is the number of replies stored in the workspace's
// scope (tests and metrics).
func (w *Workspace) IdempotencyEntries() int {
	w.idem.RLock()
	defer w.idem.RUnlock()
	return w.idem.s.len()
}

func (e *Engine) idemTTL() time.Duration { return e.opts.IdempotencyTTL }
