package resp

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine"
)

// fixture is an in-memory engine with two workspaces that both have a
// cohort p/c, with different members:
//
//	a: users u0…u99 (external ids), anonymous "dev-a", alias-only (email, x@y);
//	   p/c = u0…u49 and the anonymous user; p/d = u40…u59; p/empty = {}
//	b: users u0…u9; p/c = u5…u9
type fixture struct {
	e          *engine.Engine
	keyA, keyB string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	e, err := engine.Open(engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{e: e}
	if f.keyA, err = e.CreateWorkspace("a"); err != nil {
		t.Fatal(err)
	}
	if f.keyB, err = e.CreateWorkspace("b"); err != nil {
		t.Fatal(err)
	}
	a, b := e.Workspace("a"), e.Workspace("b")
	users(t, a, 100)
	var ub engine.UserBatch
	ub.Add(nil, []byte("dev-a"), nil)
	ub.Add(nil, nil, [][]byte{engine.AliasKey(nil, []byte("email"), []byte("x@y"))})
	if _, err := a.UpsertUsers(&ub); err != nil {
		t.Fatal(err)
	}
	users(t, b, 10)
	add(t, a, "c", ids(0, 50), "dev-a")
	add(t, a, "d", ids(40, 60), "")
	add(t, a, "empty", nil, "")
	add(t, b, "c", ids(5, 10), "")
	return f
}

func users(t testing.TB, w *engine.Workspace, n int) {
	t.Helper()
	var b engine.UserBatch
	for i := range n {
		b.Add(fmt.Appendf(nil, "u%d", i), nil, nil)
	}
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
}

func ids(lo, hi int) [][]byte {
	var out [][]byte
	for i := lo; i < hi; i++ {
		out = append(out, fmt.Appendf(nil, "u%d", i))
	}
	return out
}

func add(t testing.TB, w *engine.Workspace, cohort string, ext [][]byte, device string) {
	t.Helper()
	cs := w.NewChangeSet()
	cs.AddMany(engine.KindExternal, ext, false)
	if device != "" {
		cs.AddMany(engine.KindDevice, [][]byte{[]byte(device)}, false)
	}
	if _, err := w.ApplyChanges("p", cohort, cs); err != nil {
		t.Fatal(err)
	}
}

// start serves s on a loopback port until the test ends.
// goroutinePath makes every test server use a goroutine per connection
// instead of the event loops (make test runs the package both ways).
var goroutinePath = os.Getenv("COHORTD_RESP_NOLOOP") == "1"

func start(t testing.TB, s *Server) string {
	t.Helper()
	if goroutinePath {
		s.opts.NoEventLoop = true
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func (f *fixture) server(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	s := New(opts)
	s.SetEngine(f.e)
	return s, start(t, s)
}

// rawConn speaks RESP by hand, to check replies byte for byte.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// encode returns a command as a RESP array of bulk strings.
func encode(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

func (r *rawConn) send(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// do sends a command and returns its reply, raw.
func (r *rawConn) do(args ...string) string {
	r.t.Helper()
	r.send(encode(args...))
	return r.reply()
}

// reply reads one complete reply (RESP2 or RESP3), raw.
func (r *rawConn) reply() string {
	r.t.Helper()
	s, err := readReply(r.br)
	if err != nil {
		r.t.Fatalf("read reply: %v", err)
	}
	return s
}

// readReply reads one RESP2/RESP3 value and returns its bytes.
func readReply(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return line, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return line, fmt.Errorf("bad line %q", line)
	}
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+', '-', ':', '_', '#', ',':
		return line, nil
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil {
			return line, err
		}
		if n < 0 {
			return line, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return line, err
		}
		if string(b[n:]) != "\r\n" {
			return line, fmt.Errorf("bulk without CRLF")
		}
		return line + string(b), nil
	case '*', '%', '~':
		n, err := strconv.Atoi(body)
		if err != nil {
			return line, err
		}
		if line[0] == '%' {
			n *= 2
		}
		out := line
		for range n {
			s, err := readReply(br)
			out += s
			if err != nil {
				return out, err
			}
		}
		return out, nil
	}
	return line, fmt.Errorf("unknown reply type %q", line)
}
