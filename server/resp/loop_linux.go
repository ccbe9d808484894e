//go:build linux

package resp

import (
	"context"
	"errors"
	"net"
	"runtime/pprof"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// # The event loop
//
// Plain TCP connections on Linux are served by epoll event loops, the way
// Redis serves them, instead of a goroutine each. Measured here, the
// goroutine path costs a read that returns EAGAIN and a park/unpark through
// the runtime's poller for every request a client waits on, on top of the
// read and write that do the work: per CPU-second of the server that is
// what keeps it behind Redis on unpipelined commands. A loop waits in
// epoll_wait for every connection at once and then does exactly one read
// and one write per ready connection.
//
// Each loop is one goroutine that owns its connections outright: it reads,
// runs the batch (conn.batch, the same code as the goroutine path) and
// writes. Sockets stay non-blocking (Go made them so); level-triggered
// epoll reports a connection again while it has unread bytes, so a read
// of at most the buffer per wake-up is enough. A reply the socket does not
// take at once is kept and the connection waits for EPOLLOUT, reading
// nothing more until it is written: a client that does not read its
// replies is not served further, and one that never reads them is dropped
// after Options.WriteTimeout.
//
// The net.Conn stays the owner of the descriptor (its Close closes it, and
// Go's own poller keeps it registered but never waits on it). Only the
// loop closes its connections, so a descriptor number is never reused
// while the loop may still act on it; Shutdown asks the loops to close
// them through an eventfd.

// eventLoop is one epoll loop.
type eventLoop struct {
	s    *Server
	epfd int
	wake int // eventfd: new connections to add, or Shutdown

	mu struct {
		sync.Mutex
		add   []*conn // accepted, not yet registered
		force bool    // Shutdown's deadline passed: close everything now
	}
	conns   map[int32]*conn // loop goroutine only
	writers int             // conns waiting for EPOLLOUT
}

// writeCheckEvery is how often a loop with stalled writers checks them
// against Options.WriteTimeout (more often if that is under 4 s).
const writeCheckEvery = time.Second

// newEventLoops starts n loops, or returns nil when epoll is unavailable.
func (s *Server) newEventLoops(n int) []*eventLoop {
	var loops []*eventLoop
	for range n {
		l, err := newEventLoop(s)
		if err != nil {
			s.log.Warn("resp: no event loop, serving a goroutine per connection", "err", err)
			for _, l := range loops {
				l.stop()
			}
			return nil
		}
		loops = append(loops, l)
	}
	return loops
}

func newEventLoop(s *Server) (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, err
	}
	l := &eventLoop{s: s, epfd: epfd, wake: wake, conns: make(map[int32]*conn)}
	go l.run()
	return l, nil
}

// rawFD returns the descriptor of a plain TCP connection, or -1.
func rawFD(nc net.Conn) int {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return -1
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	if err := rc.Control(func(p uintptr) { fd = int(p) }); err != nil {
		return -1
	}
	return fd
}

// adopt hands an accepted connection to the loop.
func (l *eventLoop) adopt(c *conn) {
	l.mu.Lock()
	l.mu.add = append(l.mu.add, c)
	l.mu.Unlock()
	l.poke()
}

// poke wakes the loop.
func (l *eventLoop) poke() {
	var one = [8]byte{1}
	_, _ = unix.Write(l.wake, one[:])
}

// stop makes the loop close its connections and end (Shutdown, out of
// time); a loop also ends by itself once the server is closing and it has
// no connection left.
func (l *eventLoop) stop() {
	l.mu.Lock()
	l.mu.force = true
	l.mu.Unlock()
	l.poke()
}

func (l *eventLoop) run() {
	defer func() {
		unix.Close(l.epfd)
		unix.Close(l.wake)
	}()
	events := make([]unix.EpollEvent, 256)
	for {
		timeout := -1
		if l.writers > 0 {
			// to drop clients that stopped reading
			timeout = int(min(writeCheckEvery, l.s.opts.WriteTimeout/4) / time.Millisecond)
		}
		n, err := unix.EpollWait(l.epfd, events, timeout)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			l.s.log.Error("resp: epoll_wait failed, closing the loop's connections", "err", err)
			l.closeAll()
			return
		}
		for i := range n {
			ev := &events[i]
			if int(ev.Fd) == l.wake {
				var buf [8]byte
				_, _ = unix.Read(l.wake, buf[:])
				continue
			}
			if c := l.conns[ev.Fd]; c != nil {
				l.handle(c, ev.Events)
			}
		}
		if l.housekeeping() {
			return
		}
	}
}

// housekeeping registers new connections and carries out Shutdown. It
// reports whether the loop is done.
func (l *eventLoop) housekeeping() bool {
	l.mu.Lock()
	add, force := l.mu.add, l.mu.force
	l.mu.add = nil
	l.mu.Unlock()
	for _, c := range add {
		c.loop.fd = rawFD(c.nc)
		err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.loop.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(c.loop.fd)})
		if c.loop.fd < 0 || err != nil {
			l.s.log.Warn("resp: cannot watch a connection", "err", err)
			c.close()
			continue
		}
		l.conns[int32(c.loop.fd)] = c
		if l.s.closing.Load() {
			// Accepted as Shutdown began: answer what it sent, then go.
			l.handle(c, unix.EPOLLIN)
		}
	}
	if force {
		l.closeAll()
		return true
	}
	if l.writers > 0 {
		for _, c := range l.conns {
			if c.loop.writing && c.writeOverdue() {
				l.drop(c)
			}
		}
	}
	if l.s.closing.Load() {
		// Connections idle between batches go now; one still writing
		// goes once its replies are out (or Shutdown's deadline passes).
		for _, c := range l.conns {
			if !c.loop.writing {
				l.drop(c)
			}
		}
		return len(l.conns) == 0
	}
	return false
}

// handle serves one connection's events.
func (l *eventLoop) handle(c *conn, events uint32) {
	if events&unix.EPOLLOUT != 0 && c.loop.writing {
		if err := l.writeOut(c); err != nil {
			l.drop(c)
			return
		}
		if c.loop.writing {
			return
		}
		if c.quit || l.s.closing.Load() {
			l.drop(c)
			return
		}
		if !c.rd.pending() {
			return // EPOLLIN brings the next request
		}
		// Commands read before the write stalled are still waiting.
		events |= unix.EPOLLIN
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) == 0 || c.loop.writing {
		return
	}
	c.labelCmd = cmdUnknown // the loop's goroutine served others since
	c.rd.compact()
	n, err := rawIO(unix.SYS_READ, c.loop.fd, c.rd.buf[c.rd.end:])
	if err == unix.EAGAIN {
		return
	}
	if n <= 0 || err != nil {
		l.drop(c)
		return
	}
	c.rd.end += n
	l.s.inflight.Add(1)
	berr := c.batch(l.s.closing.Load())
	l.s.inflight.Add(-1)
	if berr == nil && c.quit {
		berr = errClose
	}
	if err := l.writeOut(c); err != nil || (berr != nil && !c.loop.writing) {
		l.drop(c)
		return
	}
	if berr != nil {
		c.quit = true // close once the replies are out
	}
	if !c.rd.pending() {
		c.rd.shrink(readBufSize)
	}
}

// writeOut writes the replies that the socket takes now. What it does not
// take waits for EPOLLOUT, and the connection reads nothing more until then.
func (l *eventLoop) writeOut(c *conn) error {
	for c.loop.written < len(c.out) {
		n, err := rawIO(unix.SYS_WRITE, c.loop.fd, c.out[c.loop.written:])
		if n > 0 {
			c.loop.written += n
		}
		if err == unix.EAGAIN {
			if !c.loop.writing {
				c.loop.writing = true
				l.writers++
				c.pushWriteDeadline()
				return unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.loop.fd, &unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLRDHUP, Fd: int32(c.loop.fd)})
			}
			if c.writeOverdue() {
				return errWriteTimeout
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
	c.loop.written = 0
	if cap(c.out) > maxPooledOut {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	if c.loop.writing {
		c.loop.writing = false
		l.writers--
		return unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.loop.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(c.loop.fd)})
	}
	return nil
}

// errWriteTimeout ends a connection whose client stopped reading replies.
var errWriteTimeout = errors.New("resp: client does not read its replies")

// drop unregisters and closes a connection.
func (l *eventLoop) drop(c *conn) {
	if c.loop.writing {
		l.writers--
	}
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.loop.fd, nil)
	delete(l.conns, int32(c.loop.fd))
	pprof.SetGoroutineLabels(context.Background())
	c.close()
}

func (l *eventLoop) closeAll() {
	for _, c := range l.conns {
		l.drop(c)
	}
	l.mu.Lock()
	add := l.mu.add
	l.mu.add = nil
	l.mu.Unlock()
	for _, c := range add {
		c.close()
	}
}

// The loop's reads and writes go to non-blocking sockets, so they never
// block; they are made without telling the scheduler (RawSyscall). As
// ordinary calls each one put the goroutine in a system call, and with one
// P sysmon hands the P to another thread when it finds a goroutine in the
// same call on two of its 20 µs ticks; a write to a loopback socket also
// does the client's TCP receive work, and takes that long often enough. A
// profile under pipelined SISMEMBERs had the loop on four threads in turn
// and a fifth of the CPU in context switches and sysmon. What raw calls
// gained per server CPU-second is in bench/reviews/resp_rawio.md (bench/
// resp.sh's A/B mode). The epoll_wait, which does block, stays an ordinary
// call, and so do the eventfd's read and write (they are rare). Two
// variants did not pay, measured against this one: waiting on the epoll
// descriptor through Go's poller instead of in epoll_wait (5–9% fewer
// requests per server CPU-second, and a higher median latency at 30k
// requests a second), and a raw epoll_wait with no timeout before each
// blocking one (within noise).

// rawIO is read(2) or write(2) (trap) on fd, a non-blocking socket.
func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
