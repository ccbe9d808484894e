package resp

import (
	"net"
	"strings"
	"testing"
	"time"
)

// fakeConn is a net.Conn whose Reads return the inputs in turn (the last
// one forever; an input larger than the reader's buffer over several
// reads) and whose writes go nowhere, so that a connection's loop can run
// without the network (fasthttp's allocation_test.go does the same).
type fakeConn struct {
	in      [][]byte
	rest    []byte // what the last Read left of its input
	written int
	last    []byte // the last write
}

func (c *fakeConn) Read(b []byte) (int, error) {
	if len(c.rest) == 0 {
		c.rest = c.in[0]
		if len(c.in) > 1 {
			c.in = c.in[1:]
		}
	}
	n := copy(b, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}

func (c *fakeConn) Write(b []byte) (int, error) {
	c.written += len(b)
	c.last = append(c.last[:0], b...)
	return len(b), nil
}

func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// steadyConn returns a connection, authenticated and warmed up, whose
// every further read is in.
func steadyConn(t testing.TB, f *fixture, in []byte) (*conn, *fakeConn) {
	t.Helper()
	s := New(Options{})
	s.SetEngine(f.e)
	fc := &fakeConn{in: [][]byte{encode("AUTH", f.keyA), in}}
	c := newConn(s, fc)
	for range 3 {
		if err := c.serveOnce(); err != nil {
			t.Fatal(err)
		}
	}
	return c, fc
}

// TestAllocsSISMEMBER: a SISMEMBER (read, parse, auth check, resolve,
// bitmap probe, metrics, reply, write) allocates nothing in steady state,
// alone or pipelined, and neither does an SMISMEMBER.
func TestAllocsSISMEMBER(t *testing.T) {
	f := newFixture(t)
	var pipe16 []byte
	for i := range 16 {
		pipe16 = append(pipe16, encode("SISMEMBER", "p/c", "u"+string(rune('0'+i%10)))...)
	}
	var smis = []string{"SMISMEMBER", "p/c"}
	for i := range 100 {
		smis = append(smis, "u"+string(rune('0'+i%10)))
	}
	// Larger than the read buffer: the buffer grows once and stays.
	var smisLarge = []string{"SMISMEMBER", "p/c"}
	for range 1000 {
		smisLarge = append(smisLarge, "user-00000000000000-unknown")
	}
	largeIn := encode(smisLarge...)
	if len(largeIn) <= readBufSize {
		t.Fatalf("the large SMISMEMBER is %d bytes, not more than the read buffer", len(largeIn))
	}
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"sismember":        {encode("SISMEMBER", "p/c", "u1"), ":1\r\n"},
		"sismember-x16":    {pipe16, strings.Repeat(":1\r\n", 16)},
		"smismember":       {encode(smis...), "*100\r\n" + strings.Repeat(":1\r\n", 100)},
		"scard":            {encode("SCARD", "p/c"), ":51\r\n"},
		"smismember-large": {largeIn, "*1000\r\n" + strings.Repeat(":0\r\n", 1000)},
	} {
		c, fc := steadyConn(t, f, tc.in)
		before := fc.written
		allocs := testing.AllocsPerRun(1000, func() {
			if err := c.serveOnce(); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per read", name, allocs)
		}
		if fc.written == before || string(fc.last) != tc.want {
			t.Errorf("%s: wrote %q, want %q", name, fc.last, tc.want)
		}
	}
}
