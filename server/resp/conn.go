package resp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"runtime/pprof"
	"time"

	"github.com/tidwall/redcon"
	"golang.org/x/time/rate"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/ratelimit"
)

const (
	readBufSize  = 16 << 10 // Redis's read chunk
	flushAt      = 64 << 10 // write replies mid-batch past this
	maxPooledOut = 1 << 20  // a larger reply buffer is dropped after use
)

// conn is one client connection. Only its goroutine touches it, except
// Shutdown, which sets a read deadline and may close nc.
type conn struct {
	s  *Server
	nc net.Conn
	id int64

	rd   reader
	argv [][]byte   // arguments of the batch's commands, slices of rd.buf
	cmds []batchCmd // the batch: ranges of argv
	out  []byte     // replies not yet written

	proto  int // 2, or 3 after HELLO 3
	name   string
	quit   bool
	authed bool
	digest [32]byte          // SHA-256 of the API key, when authed
	e      *engine.Engine    // for this batch; nil before recovery
	ws     *engine.Workspace // the key's workspace for this batch; nil if revoked

	// Rate limiting: the bucket of ws, fetched again when ws changes.
	limWS *engine.Workspace
	lim   *rate.Limiter

	// Scratch of the SISMEMBER runs, reused.
	keys [][]byte
	ids  []engine.UserID

	// pprof labels by command, for this connection's workspace.
	labelWS  *engine.Workspace
	labels   [numCmds]context.Context
	labelCmd cmdID

	wdeadline time.Time // when the write deadline needs pushing again

	// Event-loop state (loop_linux.go); inLoop conns are served by a loop,
	// the others by a goroutine of their own.
	inLoop bool
	loop   loopConn
}

// loopConn is the event-loop state of a conn.
type loopConn struct {
	fd       int
	writing  bool      // waiting for EPOLLOUT; not reading
	written  int       // bytes of out already written
	deadline time.Time // the client must have read its replies by then
}

// pushWriteDeadline starts the time a client has to read its replies.
func (c *conn) pushWriteDeadline() { c.loop.deadline = time.Now().Add(c.s.opts.WriteTimeout) }

// writeOverdue reports whether the client has not read its replies in time.
func (c *conn) writeOverdue() bool { return time.Now().After(c.loop.deadline) }

// close closes the connection and forgets it (once, by its owner: its
// goroutine or its loop).
func (c *conn) close() {
	c.s.met.open.Add(-1)
	_ = c.nc.Close()
	c.s.mu.Lock()
	delete(c.s.mu.conns, c)
	c.s.mu.Unlock()
	c.s.wg.Done()
}

// batchCmd is one command of a batch: argv[lo:hi], and its id, looked up
// once at parse time (a pipelined SISMEMBER used to look its name up four
// times).
type batchCmd struct {
	lo, hi int32
	id     cmdID
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{s: s, nc: nc, proto: 2, id: s.nextID.Add(1), labelCmd: cmdUnknown}
	c.rd.buf = make([]byte, readBufSize)
	c.rd.maxCmd = s.opts.MaxCommandBytes
	return c
}

// serve runs the connection until the client leaves, QUIT, a protocol
// error, a write error or shutdown.
func (c *conn) serve() {
	defer func() {
		pprof.SetGoroutineLabels(context.Background())
		c.close()
	}()
	for {
		if err := c.serveOnce(); err != nil {
			if !errors.Is(err, errClose) && !isDisconnect(err) {
				c.s.log.Debug("resp connection ended", "remote", c.nc.RemoteAddr().String(), "err", err)
			}
			return
		}
	}
}

// errClose ends a connection without a log line (QUIT, shutdown, EOF).
var errClose = errors.New("resp: close")

func isDisconnect(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed)
}

// serveOnce reads once, then executes and answers every complete command
// read so far. The steady state allocates nothing.
func (c *conn) serveOnce() error {
	if c.s.closing.Load() {
		return errClose
	}
	c.rd.compact()
	n, err := c.nc.Read(c.rd.buf[c.rd.end:])
	c.rd.end += n
	if n == 0 && err != nil {
		if c.s.closing.Load() {
			return errClose
		}
		return err
	}
	// In flight from here: Shutdown waits for the batch unless it began
	// after closing was set, which the batch then sees.
	c.s.inflight.Add(1)
	berr := c.batch(c.s.closing.Load())
	c.s.inflight.Add(-1)
	if berr == nil && c.quit {
		berr = errClose
	}
	if werr := c.flush(); werr != nil {
		return werr
	}
	if berr != nil {
		return berr
	}
	if !c.rd.pending() {
		c.rd.shrink(readBufSize)
	}
	return nil
}

// batch executes every complete command in the buffer, in order, parsing
// each only after the ones before it ran (an AUTH changes the parser's
// limits for what follows). A run of SISMEMBER and SMISMEMBER is parsed
// ahead and executed as one. A protocol error is answered after the
// commands before it and ends the connection.
func (c *conn) batch(draining bool) error {
	c.e = c.s.engine.Load()
	c.refreshWorkspace()
	c.argv, c.cmds = c.argv[:0], c.cmds[:0]
	for {
		if len(c.cmds) == 0 {
			ok, err := c.parseOne()
			if err != nil {
				return c.protocolError(err)
			}
			if !ok {
				return nil
			}
		}
		args, id := c.args(0), c.cmds[0].id
		if draining {
			// Read after shutdown began: the client should go elsewhere.
			c.fail(id, "LOADING", "cohortd is shutting down")
			c.drop(1)
			c.quit = true
			continue
		}
		if !isMembership(id) || !c.ready(id, args) {
			if isMembership(id) {
				c.s.met.commands[id].Inc() // refused by ready
			} else {
				c.single(id, args)
			}
			c.drop(1)
			if c.quit {
				return nil
			}
		} else {
			var perr error
			for {
				ok, err := c.parseOne()
				if err != nil {
					perr = err
					break
				}
				if !ok || !c.runnable(len(c.cmds)-1) {
					break
				}
			}
			run := len(c.cmds)
			if run > 1 && !c.runnable(run-1) {
				run-- // the command that ended the run runs next
			}
			n := c.allow(run)
			if n > 0 {
				c.membership(0, n)
			}
			for k := n; k < run; k++ {
				c.limited(c.cmds[k].id)
			}
			c.drop(run)
			if perr != nil {
				return c.protocolError(perr)
			}
		}
		// A goroutine writes large replies as it goes; a loop keeps them
		// (bounded by what one read brought) and writes once.
		if len(c.out) >= flushAt && !c.inLoop {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
}

func isMembership(id cmdID) bool { return id == cmdSISMEMBER || id == cmdSMISMEMBER }

// runnable reports whether command k can join a membership run: the first
// command of the run passed the connection-state checks, so only the name
// and arity are left to check.
func (c *conn) runnable(k int) bool {
	bc := c.cmds[k]
	return isMembership(bc.id) && arityOK(bc.id, int(bc.hi-bc.lo))
}

// parseOne parses the next complete command, if any, onto c.cmds.
func (c *conn) parseOne() (bool, error) {
	lo := len(c.argv)
	argv, ok, err := c.rd.next(c.argv, c.authed)
	c.argv = argv
	if err != nil || !ok {
		c.argv = c.argv[:lo]
		return false, err
	}
	c.cmds = append(c.cmds, batchCmd{lo: int32(lo), hi: int32(len(c.argv)), id: lookup(c.argv[lo])})
	return true, nil
}

// drop removes the first n commands of c.cmds; the arguments of those left
// move to the front of c.argv.
func (c *conn) drop(n int) {
	if n == len(c.cmds) {
		c.argv, c.cmds = c.argv[:0], c.cmds[:0]
		return
	}
	base := c.cmds[n].lo
	k := copy(c.argv, c.argv[base:])
	c.argv = c.argv[:k]
	m := copy(c.cmds, c.cmds[n:])
	c.cmds = c.cmds[:m]
	for i := range c.cmds {
		c.cmds[i].lo -= base
		c.cmds[i].hi -= base
	}
}

// protocolError answers a malformed request; the connection then closes.
func (c *conn) protocolError(err error) error {
	c.s.met.protoErrs.Inc()
	c.out = redcon.AppendError(c.out, "ERR "+err.Error())
	return errClose
}

func (c *conn) args(i int) [][]byte {
	bc := c.cmds[i]
	return c.argv[bc.lo:bc.hi]
}

// refreshWorkspace finds the authenticated key's workspace again.
func (c *conn) refreshWorkspace() {
	c.ws = nil
	if c.authed && c.e != nil {
		c.ws = c.s.workspace(c.e, c.digest)
	}
}

// ready reports whether command id may run now; if not, it writes the
// reply that says why (auth, arity, loading).
func (c *conn) ready(id cmdID, args [][]byte) bool {
	cmd := &cmdTable[id]
	if !cmd.noAuth {
		switch {
		case !c.authed:
			c.fail(id, "NOAUTH", "Authentication required.")
			return false
		case c.e == nil:
			c.fail(id, "LOADING", "cohortd is loading its data")
			return false
		case c.ws == nil:
			c.fail(id, "WRONGPASS", wrongPass)
			return false
		}
	}
	if id == cmdWrite {
		c.fail(id, "READONLY", "memberships change through the import API")
		return false
	}
	if id == cmdUnknown {
		c.fail(id, "ERR", "unknown command '"+quoteName(args[0])+"'")
		return false
	}
	if !arityOK(id, len(args)) {
		c.fail(id, "ERR", "wrong number of arguments for '"+cmd.name+"' command")
		return false
	}
	return true
}

const wrongPass = "invalid username-password pair or user is disabled."

// single runs one command that is not part of a membership run.
func (c *conn) single(id cmdID, args [][]byte) {
	start := time.Now()
	c.label(id)
	if c.ready(id, args) {
		if cmdTable[id].noAuth || c.allow(1) == 1 {
			cmdTable[id].run(c, args)
		} else {
			c.limited(id)
		}
	}
	c.s.met.commands[id].Inc()
	c.s.met.durations[id].Update(time.Since(start).Seconds())
}

// allow takes n tokens of the workspace's bucket and returns how many of
// the next n commands may run (all or a prefix).
func (c *conn) allow(n int) int {
	if c.ws == nil {
		return n // the command fails auth anyway
	}
	if c.limWS != c.ws {
		c.limWS, c.lim = c.ws, c.s.opts.Limits.Limiter("ws:"+c.ws.ID())
	}
	if c.lim == nil {
		return n
	}
	now := time.Now()
	if ratelimit.Take(c.lim, now, n) == 0 {
		return n
	}
	for k := 0; k < n; k++ {
		if ratelimit.Take(c.lim, now, 1) != 0 {
			return k
		}
	}
	return n
}

// limited answers a command refused by the rate limit. TRYAGAIN is the
// error Redis clients retry after a back-off (go-redis does), as HTTP
// clients do after a 429.
func (c *conn) limited(id cmdID) {
	c.s.met.commands[id].Inc()
	c.fail(id, "TRYAGAIN", "rate limit exceeded")
}

// membership runs commands i…j-1, all SISMEMBER or SMISMEMBER that passed
// the checks. A pipeline mostly asks one cohort: the members of each stretch
// of commands that ask the same cohort are resolved in one batch, with what
// the cohort's lookups have earned (engine.Workspace.LookupSet: a dense view
// of its members and a filter of their external ids).
func (c *conn) membership(i, j int) {
	start := time.Now()
	c.label(cmdSISMEMBER)
	c.s.met.runs.Inc()
	for k := i; k < j; {
		// Commands k…e-1 ask the same cohort.
		key := c.args(k)[1]
		e := k + 1
		for e < j && bytes.Equal(c.args(e)[1], key) {
			e++
		}
		c.keys = c.keys[:0]
		for x := k; x < e; x++ {
			c.keys = append(c.keys, c.args(x)[2:]...)
		}
		// An unknown cohort is empty: nothing to resolve.
		var set engine.Set
		c.ids = c.ids[:0]
		if co := cohortOf(c.ws, key); co != nil {
			set = c.ws.LookupSet(co, len(c.keys))
			c.ids = c.ws.ResolveIn(set, engine.KindExternal, c.keys, c.ids)
		} else {
			for range c.keys {
				c.ids = append(c.ids, engine.NoUser)
			}
		}
		ids := c.ids
		for x := k; x < e; x++ {
			n := len(c.args(x)) - 2
			if c.cmds[x].id == cmdSMISMEMBER {
				c.out = redcon.AppendArray(c.out, n)
			}
			for _, id := range ids[:n] {
				// ":0\r\n" or ":1\r\n" (an integer in RESP2 and RESP3),
				// without redcon.AppendInt's general formatting.
				v := byte('0')
				if set.Contains(id) {
					v = '1'
				}
				c.out = append(c.out, ':', v, '\r', '\n')
			}
			ids = ids[n:]
		}
		k = e
	}
	d := time.Since(start).Seconds() / float64(j-i)
	for k := i; k < j; k++ {
		id := c.cmds[k].id
		c.s.met.commands[id].Inc()
		c.s.met.durations[id].Update(d)
	}
	if cap(c.keys) > 4096 {
		c.keys, c.ids = nil, nil // one huge SMISMEMBER must not pin its scratch
	}
}

// label sets the goroutine's pprof labels to the command (and workspace),
// so that CPU profiles split RESP time by command.
func (c *conn) label(id cmdID) {
	if c.labelWS != c.ws {
		c.labelWS, c.labels = c.ws, [numCmds]context.Context{}
		c.labelCmd = cmdUnknown
	}
	if c.labelCmd == id && c.labels[id] != nil {
		return
	}
	ctx := c.labels[id]
	if ctx == nil {
		ws := ""
		if c.ws != nil {
			ws = c.ws.ID()
		}
		ctx = pprof.WithLabels(context.Background(), pprof.Labels("protocol", "resp", "command", cmdTable[id].name, "workspace", ws))
		c.labels[id] = ctx
	}
	pprof.SetGoroutineLabels(ctx)
	c.labelCmd = id
}

// fail writes an error reply "-<code> <msg>" and counts it.
func (c *conn) fail(id cmdID, code, msg string) {
	c.s.met.failed(id, code)
	c.out = append(c.out, '-')
	c.out = append(c.out, code...)
	c.out = append(c.out, ' ')
	c.out = appendLine(c.out, msg)
	c.out = append(c.out, '\r', '\n')
}

// appendLine appends s with CR and LF replaced by spaces, so that an
// error or status line can never break the framing.
func appendLine(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b == '\r' || b == '\n' {
			b = ' '
		}
		dst = append(dst, b)
	}
	return dst
}

// flush writes the pending replies.
func (c *conn) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	if now := time.Now(); now.After(c.wdeadline) {
		// Pushed forward once in a while, not per write: a client that
		// stops reading is dropped after about WriteTimeout.
		_ = c.nc.SetWriteDeadline(now.Add(c.s.opts.WriteTimeout))
		c.wdeadline = now.Add(c.s.opts.WriteTimeout / 2)
	}
	_, err := c.nc.Write(c.out)
	if cap(c.out) > maxPooledOut {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	return err
}
