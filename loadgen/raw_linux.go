package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"time"
	"unsafe"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"
)

// rawConn is one connection of the raw client.
type rawConn struct {
	fd      int
	in      []byte  // received bytes not yet framed: in[:len]
	out     []byte  // request bytes the socket did not take yet
	pending []int64 // slots (ns since the run's base) of requests awaiting replies, oldest at head
	head    int
	replies int  // replies of the oldest pending request read so far
	failed  bool // one of them failed
}

// rawRun is the state of one RunRaw.
type rawRun struct {
	l       RawLoad
	conns   []*rawConn
	base    time.Time
	res     RawResult
	next    int   // index of the next request to send
	first   int64 // first send, ns since base
	last    int64 // last completed request
	closed  bool  // closed loop
	end     int64 // closed loop: no new request after this
	flights int   // requests awaiting replies over all connections

	noPwait2 bool // the kernel has no epoll_pwait2
}

// RunRaw sends l's requests and measures their latency (see RawLoad). It
// runs on its own locked OS thread, which it keeps busy or asleep in
// epoll_pwait2 until the last reply arrives.
func RunRaw(ctx context.Context, l RawLoad) (*RawResult, error) {
	return runRaw(ctx, l, false)
}

// runRaw is RunRaw; noPwait2 makes it wait as on a kernel without
// epoll_pwait2 (tests).
func runRaw(ctx context.Context, l RawLoad, noPwait2 bool) (*RawResult, error) {
	l.setDefaults()
	if len(l.Requests) == 0 || l.Frame == nil || l.Rate < 0 {
		return nil, errors.New("loadgen: raw load needs requests, a framer and a rate ≥ 0")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// The kernel rounds sleeps up by the thread's timer slack (50 µs by
	// default): a 20 µs gap between sends would become 70.
	if old, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0); err == nil {
		_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
		defer func() { _ = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(old), 0, 0, 0) }()
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("loadgen: epoll: %w", err)
	}
	defer unix.Close(epfd)
	r := &rawRun{l: l, closed: l.Rate == 0, noPwait2: noPwait2}
	r.res.Latency = hdrhistogram.New(histMin, histMax, histSigFigs)
	r.res.SendLag = hdrhistogram.New(histMin, histMax, histSigFigs)
	defer func() {
		for _, c := range r.conns {
			unix.Close(c.fd)
		}
	}()
	for i := range l.Conns {
		c, err := dialRaw(ctx, &l)
		if err != nil {
			return nil, err
		}
		r.conns = append(r.conns, c)
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(i)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
			return nil, fmt.Errorf("loadgen: epoll: %w", err)
		}
	}
	if err := r.loop(ctx, epfd); err != nil {
		return nil, err
	}
	r.res.Start = r.base.Add(time.Duration(r.first))
	r.res.Elapsed = time.Duration(r.last - r.first)
	return &r.res, nil
}

// loop sends on schedule and reads replies until every request is answered.
func (r *rawRun) loop(ctx context.Context, epfd int) error {
	l := &r.l
	r.base = time.Now()
	start := int64(10 * time.Millisecond) // time to get into the loop
	r.first = start
	interval := float64(time.Second) / max(l.Rate, 1e-9)
	total := int64(l.Rate * l.Duration.Seconds())
	slot := func(i int64) int64 { return start + int64(float64(i)*interval) }
	r.end = start + int64(l.Duration)
	events := make([]unix.EpollEvent, len(r.conns))
	yield := int64(0)
	for {
		now := r.now()
		if r.closed {
			if r.res.Sent == 0 && now >= start {
				for _, c := range r.conns {
					if err := r.send(c, now, now); err != nil {
						return err
					}
				}
			}
		} else {
			for r.res.Sent < total && slot(r.res.Sent) <= now {
				c := r.conns[r.res.Sent%int64(len(r.conns))]
				if err := r.send(c, slot(r.res.Sent), now); err != nil {
					return err
				}
			}
		}
		sending := (r.closed && now < r.end) || (!r.closed && r.res.Sent < total)
		if !sending && r.flights == 0 {
			return nil
		}
		if !sending && now > r.end+int64(l.Drain) {
			return fmt.Errorf("loadgen: %d requests unanswered %s after the last send", r.flights, l.Drain)
		}
		// Let the rest of the process run now and then (progress,
		// signals, the context): this thread never blocks in the
		// scheduler's sight.
		if now > yield {
			if err := ctx.Err(); err != nil {
				return err
			}
			runtime.Gosched()
			yield = r.now() + int64(time.Millisecond)
		}
		wait := int64(time.Millisecond)
		switch {
		case r.closed && r.res.Sent == 0:
			wait = start - now
		case !r.closed && r.res.Sent < total:
			wait = min(wait, slot(r.res.Sent)-now)
		}
		n, err := r.wait(epfd, events, max(wait, 0))
		if err != nil {
			return fmt.Errorf("loadgen: epoll_pwait2: %w", err)
		}
		if n == 0 {
			continue
		}
		now = r.now()
		for _, ev := range events[:n] {
			c := r.conns[ev.Fd]
			if ev.Events&unix.EPOLLOUT != 0 && len(c.out) > 0 {
				if err := r.flush(c); err != nil {
					return err
				}
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
				if err := r.read(c, now); err != nil {
					return err
				}
			}
		}
	}
}

func (r *rawRun) now() int64 { return int64(time.Since(r.base)) }

// send writes the next request on c; slot is when it was due.
func (r *rawRun) send(c *rawConn, slot, now int64) error {
	req := r.l.Requests[r.next]
	r.next++
	if r.next == len(r.l.Requests) {
		r.next = 0
	}
	if c.head == len(c.pending) {
		c.pending, c.head = c.pending[:0], 0
	}
	c.pending = append(c.pending, slot)
	r.flights++
	r.res.Sent++
	if !r.closed {
		_ = r.res.SendLag.RecordValue(min(max((now-slot)/1e3, histMin), histMax))
	}
	if len(c.out) > 0 {
		c.out = append(c.out, req...)
		return nil
	}
	n, err := rawSys(unix.SYS_WRITE, c.fd, req)
	if err != nil && err != unix.EAGAIN {
		return fmt.Errorf("loadgen: write: %w", err)
	}
	if n < len(req) {
		c.out = append(c.out, req[max(n, 0):]...)
	}
	return nil
}

// flush writes what the socket did not take before.
func (r *rawRun) flush(c *rawConn) error {
	for len(c.out) > 0 {
		n, err := rawSys(unix.SYS_WRITE, c.fd, c.out)
		if err == unix.EAGAIN {
			return nil
		}
		if err != nil {
			return fmt.Errorf("loadgen: write: %w", err)
		}
		c.out = c.out[:copy(c.out, c.out[n:])]
	}
	return nil
}

// read takes every byte the socket has and completes the requests whose
// replies arrived, at now.
func (r *rawRun) read(c *rawConn, now int64) error {
	for {
		if len(c.in) == cap(c.in) {
			if cap(c.in) >= 64<<20 {
				return errors.New("loadgen: a reply above 64 MiB")
			}
			c.in = append(c.in, make([]byte, cap(c.in))...)[:len(c.in)]
		}
		n, err := rawSys(unix.SYS_READ, c.fd, c.in[len(c.in):cap(c.in)])
		if err == unix.EAGAIN {
			return nil
		}
		if err != nil {
			return fmt.Errorf("loadgen: read: %w", err)
		}
		if n == 0 {
			return errors.New("loadgen: the server closed a connection")
		}
		c.in = c.in[:len(c.in)+n]
		off := 0
		for off < len(c.in) {
			m, failed, err := r.l.Frame(c.in[off:])
			if err != nil {
				return err
			}
			if m == 0 {
				break
			}
			off += m
			if err := r.reply(c, failed, now); err != nil {
				return err
			}
		}
		c.in = c.in[:copy(c.in, c.in[off:])]
	}
}

// reply counts one reply on c.
func (r *rawRun) reply(c *rawConn, failed bool, now int64) error {
	if c.head == len(c.pending) {
		return errors.New("loadgen: a reply to no request")
	}
	c.failed = c.failed || failed
	c.replies++
	if c.replies < r.l.Replies {
		return nil
	}
	slot := c.pending[c.head]
	c.head++
	c.replies = 0
	r.flights--
	r.last = max(r.last, now)
	if c.failed {
		c.failed = false
		r.res.Failed++
	} else {
		r.res.Done++
		_ = r.res.Latency.RecordValue(min(max((now-slot)/1e3, histMin), histMax))
	}
	if r.closed && now < r.end {
		return r.send(c, now, now)
	}
	return nil
}

// dialRaw connects, runs the hello exchange in blocking mode and leaves the
// socket non-blocking.
func dialRaw(ctx context.Context, l *RawLoad) (*rawConn, error) {
	ta, err := net.ResolveTCPAddr("tcp", l.Addr)
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ip4 := ta.IP.To4(); ip4 != nil {
		a := &unix.SockaddrInet4{Port: ta.Port}
		copy(a.Addr[:], ip4)
		sa = a
	} else {
		a := &unix.SockaddrInet6{Port: ta.Port}
		copy(a.Addr[:], ta.IP.To16())
		sa, family = a, unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loadgen: socket: %w", err)
	}
	c := &rawConn{fd: fd, in: make([]byte, 0, 64<<10)}
	if err := c.handshake(ctx, sa, l); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("loadgen: %s: %w", l.Addr, err)
	}
	return c, nil
}

func (c *rawConn) handshake(ctx context.Context, sa unix.Sockaddr, l *RawLoad) error {
	if err := unix.Connect(c.fd, sa); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(c.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return err
	}
	// Bound the blocking hello exchange.
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	if d, ok := ctx.Deadline(); ok {
		tv = unix.NsecToTimeval(max(int64(time.Until(d)), int64(time.Millisecond)))
	}
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	if len(l.Hello) > 0 {
		if _, err := unix.Write(c.fd, l.Hello); err != nil {
			return err
		}
		for got := 0; got < l.HelloReplies; {
			n, err := unix.Read(c.fd, c.in[len(c.in):cap(c.in)])
			if err != nil {
				return err
			}
			if n == 0 {
				return errors.New("closed during the hello exchange")
			}
			c.in = c.in[:len(c.in)+n]
			for got < l.HelloReplies {
				m, failed, err := l.Frame(c.in)
				if err != nil {
					return err
				}
				if m == 0 {
					break
				}
				if failed {
					return fmt.Errorf("hello refused: %q", c.in[:m])
				}
				c.in = c.in[:copy(c.in, c.in[m:])]
				got++
			}
		}
		if len(c.in) > 0 {
			return errors.New("more replies than the hello asked for")
		}
	}
	return unix.SetNonblock(c.fd, true)
}

// The loop's system calls are raw: the sockets never block, and the one
// call that sleeps (epoll_pwait2) must wake on time, which an ordinary
// call would not guarantee: with one P, the scheduler hands the P to
// another thread after 20 µs in a system call, and getting it back on
// return costs a switch. Go's own netpoller cannot sleep less than a
// millisecond when idle.

// rawSys makes a read or write system call on fd without telling the
// scheduler.
func rawSys(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// wait waits up to timeout nanoseconds; EINTR (a signal, such as the
// runtime's preemption) is a wait that found nothing. Without
// epoll_pwait2 (Linux before 5.11) it falls back to epoll_wait, whose
// timeout is whole milliseconds: the send lag shows it.
func (r *rawRun) wait(epfd int, events []unix.EpollEvent, timeout int64) (int, error) {
	var n uintptr
	var e unix.Errno
	if !r.noPwait2 {
		ts := unix.NsecToTimespec(timeout)
		n, _, e = unix.RawSyscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
			uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
		if e == unix.ENOSYS {
			r.noPwait2 = true
		}
	}
	if r.noPwait2 {
		ms := (timeout + int64(time.Millisecond) - 1) / int64(time.Millisecond)
		n, _, e = unix.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
			uintptr(len(events)), uintptr(ms), 0, 0)
	}
	if e == unix.EINTR {
		return 0, nil
	}
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
