package resp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/VictoriaMetrics/metrics"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/ratelimit"
)

// Options configure a Server. Zero values get the documented defaults.
type Options struct {
	// Limits are the per-credential token buckets, shared with the HTTP
	// server (one command takes one token of the workspace key's bucket).
	// Nil means no limits.
	Limits *ratelimit.Set
	// Metrics receives the listener's metrics; nil means a new set. Pass
	// the HTTP server's set so that /metrics shows both.
	Metrics *metrics.Set
	// Logger receives connection-level errors; nil means slog.Default().
	Logger *slog.Logger
	// MaxConns bounds open connections (Redis's maxclients); default 10,000.
	MaxConns int
	// MaxCommandBytes bounds one command as received; default 128 MiB
	// (an SMISMEMBER of a few million members).
	MaxCommandBytes int
	// WriteTimeout is how long a client may leave replies unread before
	// it is dropped; default 1 minute.
	WriteTimeout time.Duration
	// NoEventLoop serves every connection with a goroutine of its own,
	// also where epoll loops would serve plain TCP ones (tests of that path).
	NoEventLoop bool
}

// Server is cohortd's read-only Redis-protocol listener (docs/API.md §6).
//
// # Life cycle
//
// New returns a server that answers PING and -LOADING to everything else
// until SetEngine installs the recovered engine. Serve accepts connections
// until Shutdown, which stops accepting at once, lets every batch of
// commands being executed finish and write its replies, answers -LOADING to
// commands read after that, and closes every connection.
//
// # Connections
//
// One goroutine per connection reads what the client sent, parses every
// complete command in it (a pipeline arrives in one or a few reads),
// executes them in order and writes all the replies with one write. Runs of
// SISMEMBER and SMISMEMBER in a batch resolve all their members with one
// engine ResolveMany, so a pipeline costs one pass over the identity table.
//
// # Auth
//
// A connection authenticates with a workspace API key (AUTH or HELLO … AUTH)
// and keeps only the key's SHA-256 digest; before each batch it looks the
// digest up again, so a rotated key, or a deleted workspace, stops working
// on open connections at once.
type Server struct {
	opts   Options
	log    *slog.Logger
	engine atomic.Pointer[engine.Engine]
	met    *serverMetrics
	// workspace finds the workspace of a key digest; tests replace it to
	// revoke a key under an open connection.
	workspace func(e *engine.Engine, d [32]byte) *engine.Workspace

	closing  atomic.Bool
	inflight atomic.Int64 // batches being executed
	nextID   atomic.Int64 // CLIENT ID

	mu struct {
		sync.Mutex
		ln    net.Listener
		conns map[*conn]struct{}
	}
	wg sync.WaitGroup // open connections

	// loops serve plain TCP connections on Linux (loop_linux.go); nil
	// elsewhere, with Options.NoEventLoop, or when epoll is unavailable.
	loops    []*eventLoop
	nextLoop int
}

// New builds a server. It starts no goroutines.
func New(opts Options) *Server {
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 10_000
	}
	if opts.MaxCommandBytes <= 0 {
		opts.MaxCommandBytes = defaultMaxCommand
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = time.Minute
	}
	s := &Server{opts: opts, log: opts.Logger, met: newServerMetrics(opts.Metrics)}
	s.workspace = (*engine.Engine).WorkspaceByKeyDigest
	s.mu.conns = make(map[*conn]struct{})
	return s
}

// SetEngine installs the engine once recovery is done.
func (s *Server) SetEngine(e *engine.Engine) { s.engine.Store(e) }

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("resp: server closed")

// Serve accepts connections on ln until Shutdown (then it returns nil) or
// an accept error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.mu.ln = ln
	if _, ok := ln.(*net.TCPListener); ok && !s.opts.NoEventLoop && s.loops == nil {
		s.loops = s.newEventLoops(runtime.GOMAXPROCS(0))
	}
	s.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return fmt.Errorf("resp: accept: %w", err)
		}
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closing.Load() {
			s.mu.Unlock()
			_ = nc.Close()
			return nil
		}
		full := len(s.mu.conns) >= s.opts.MaxConns
		if !full {
			s.mu.conns[c] = struct{}{}
			s.wg.Add(1)
		}
		s.mu.Unlock()
		if full {
			s.met.rejected.Inc()
			_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = nc.Write([]byte("-ERR max number of clients reached\r\n"))
			_ = nc.Close()
			continue
		}
		s.met.conns.Inc()
		s.met.open.Add(1)
		if l := s.loopFor(nc); l != nil {
			c.inLoop = true
			l.adopt(c)
			continue
		}
		go c.serve() // c.close (deferred in serve) ends it in s.wg
	}
}

// Shutdown stops accepting, waits for the batches being executed to finish
// and write their replies (until ctx ends), and closes every connection;
// commands read meanwhile answer -LOADING. It returns ctx.Err() when ctx
// ended first (the remaining connections are closed anyway).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	ln := s.mu.ln
	conns := make([]*conn, 0, len(s.mu.conns))
	for c := range s.mu.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	// Wake connections blocked in Read: they see closing and close. The
	// loops close theirs as soon as no reply is left to write.
	for _, c := range conns {
		if !c.inLoop {
			_ = c.nc.SetReadDeadline(time.Now())
		}
	}
	s.pokeLoops(false)
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	// Out of time: a loop closes its own connections (a descriptor it may
	// still act on must not be closed, and its number reused, under it).
	s.mu.Lock()
	for c := range s.mu.conns {
		if !c.inLoop {
			_ = c.nc.Close()
		}
	}
	s.mu.Unlock()
	s.pokeLoops(true)
	<-done
	return ctx.Err()
}

// loopFor picks the event loop that serves nc, or nil for a goroutine.
func (s *Server) loopFor(nc net.Conn) *eventLoop {
	if len(s.loops) == 0 || rawFD(nc) < 0 {
		return nil
	}
	s.nextLoop = (s.nextLoop + 1) % len(s.loops)
	return s.loops[s.nextLoop]
}

// pokeLoops wakes every loop for Shutdown; force closes their
// connections at once.
func (s *Server) pokeLoops(force bool) {
	for _, l := range s.loops {
		if force {
			l.stop()
		} else {
			l.poke()
		}
	}
}

// b2s returns b as a string without copying, for map lookups and
// comparisons that do not keep it. b must not change while the string is
// in use.
func b2s(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
