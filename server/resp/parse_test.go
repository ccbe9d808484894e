package resp

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// feed runs a reader over in, delivered in chunks of size bytes (the way
// reads arrive), and returns the commands parsed and the first error.
func feed(in []byte, chunk int, authed bool) ([][]string, error) {
	r := reader{buf: make([]byte, 64), maxCmd: 1 << 20}
	var cmds [][]string
	for off := 0; ; {
		r.compact()
		n := copy(r.buf[r.end:], in[off:min(len(in), off+chunk)])
		r.end += n
		off += n
		for {
			args, ok, err := r.next(nil, authed)
			if err != nil {
				return cmds, err
			}
			if !ok {
				break
			}
			var cmd []string
			for _, a := range args {
				cmd = append(cmd, string(a))
			}
			cmds = append(cmds, cmd)
		}
		if off == len(in) && n == 0 {
			return cmds, nil
		}
	}
}

func TestParser(t *testing.T) {
	big := strings.Repeat("x", 5000)
	for _, tc := range []struct {
		in   string
		want string // commands joined, or the error
	}{
		{"*1\r\n$4\r\nPING\r\n", "[[PING]]"},
		{"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n", "[[ECHO ] [PING]]"},
		{"*0\r\n*-1\r\n*1\r\n$1\r\nx\r\n", "[[x]]"},
		{"*2\r\n$4\r\nECHO\r\n$5000\r\n" + big + "\r\n", "[[ECHO " + big + "]]"},
		{"PING\r\n", "[[PING]]"},
		{"SISMEMBER p/c u1\n", "[[SISMEMBER p/c u1]]"},
		{"ECHO \"a b\" 'c'\r\n", "[[ECHO a b c]]"},
		{"\r\n\r\nPING\r\n", "[[PING]]"},
		{"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI", "[[PING]]"}, // incomplete: waits
		{"*x\r\n", "Protocol error: invalid multibulk length"},
		{"*1048577\r\n", "Protocol error: invalid multibulk length"},
		{"*1\r\n$-2\r\n", "Protocol error: invalid bulk length"},
		{"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"},
		{"*1\r\n$x\r\n", "Protocol error: invalid bulk length"},
		{"*1\r\n$2\r\nabc\r\n", "Protocol error: invalid bulk length"},
		{"*1\r\n$2000000\r\n", "Protocol error: invalid bulk length"},
		{"*1\r\n+PING\r\n", "Protocol error: expected '+', got '+'"},
		{"*1\r\n" + strings.Repeat("1", 40), "Protocol error: expected '$', got '1'"},
		{"*" + strings.Repeat("1", 40), "Protocol error: invalid multibulk length"},
		{"*1\r\n$" + strings.Repeat("1", 40), "Protocol error: invalid bulk length"},
		{"ECHO \"a\r\n", "Protocol error: unbalanced quotes in request"},
		{"$4\r\nPING\r\n", "Protocol error: expected '*', got '$'"},
		{strings.Repeat("a", 70_000), "Protocol error: too big inline request"},
	} {
		for _, chunk := range []int{1, 7, 100000} {
			cmds, err := feed([]byte(tc.in), chunk, true)
			got := fmt.Sprint(cmds)
			if err != nil {
				got = err.Error()
			}
			if tc.want == "Protocol error: expected '+', got '+'" {
				tc.want = "Protocol error: expected '$', got '+'"
			}
			if got != tc.want {
				t.Errorf("%.40q in chunks of %d:\n got %.80s\nwant %.80s", tc.in, chunk, got, tc.want)
			}
		}
	}
	// Before AUTH, Redis's limits for strangers.
	for in, want := range map[string]string{
		"*11\r\n":                           "Protocol error: unauthenticated multibulk length",
		"*1\r\n$16385\r\n":                  "Protocol error: unauthenticated bulk length",
		"*10\r\n$1\r\na\r\n":                "[]",
		"*1\r\n$16384\r\n" + big + big + "": "[]",
	} {
		cmds, err := feed([]byte(in), 1000, false)
		got := fmt.Sprint(cmds)
		if err != nil {
			got = err.Error()
		}
		if got != want {
			t.Errorf("unauthenticated %.20q: %s, want %s", in, got, want)
		}
	}
}

// TestParserCommandLimit: one command may not exceed MaxCommandBytes.
func TestParserCommandLimit(t *testing.T) {
	r := reader{buf: make([]byte, 64), maxCmd: 1000}
	in := encode("SMISMEMBER", "k", strings.Repeat("m", 600), strings.Repeat("m", 600))
	r.end = copy(r.buf, in)
	for {
		_, _, err := r.next(nil, true)
		if err != nil {
			if err.Error() != "Protocol error: command too large" {
				t.Fatal(err)
			}
			return
		}
		r.compact()
		if r.end == len(in) {
			t.Fatal("no error")
		}
		r.end += copy(r.buf[r.end:], in[r.end:])
	}
}

// FuzzReader feeds arbitrary bytes, in arbitrary chunks, to the request
// parser: it must never panic, and what it parses must survive a round
// trip through the RESP encoding.
func FuzzReader(f *testing.F) {
	for _, s := range []string{
		"*1\r\n$4\r\nPING\r\n", "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", "*1\r\n$-2\r\n", "PING\r\n",
		"ECHO \"a b\"\r\n", "*3\r\n$9\r\nSISMEMBER\r\n$3\r\np/c\r\n$2\r\nu1\r\n", "*0\r\n", "*1\r\n$2\r\nab",
	} {
		f.Add([]byte(s), uint8(3), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8, authed bool) {
		cmds, _ := feed(in, int(chunk)+1, authed)
		var again []byte
		for _, c := range cmds {
			if len(c) == 0 {
				t.Fatal("empty command returned")
			}
			again = append(again, encode(c...)...)
		}
		back, err := feed(again, 1<<20, true)
		if err != nil || fmt.Sprint(back) != fmt.Sprint(cmds) {
			t.Fatalf("round trip: %q → %q (%v)", cmds, back, err)
		}
	})
}

// FuzzCommandArgs runs arbitrary arguments (NUL-separated in the input)
// as a command of an authenticated connection: whatever they are, the
// connection answers exactly one well-formed reply and never panics. This
// is the fuzz target of our argument parsing (SINTERCARD's numkeys and
// LIMIT, SSCAN's cursor and COUNT, HELLO's options, segment JSON, …).
func FuzzCommandArgs(f *testing.F) {
	fx := newFixture(f)
	for _, s := range []string{
		"SINTERCARD\x002\x00p/c\x00p/d\x00LIMIT\x003", "SSCAN\x00p/c\x000\x00COUNT\x005",
		"HELLO\x003\x00AUTH\x00default\x00x\x00SETNAME\x00n", "COHORT.COUNT\x00{\"and\":[{\"cohort\":\"p/c\"}]}",
		"COHORT.CONTAINS\x00{\"not\":{\"cohort\":\"p/d\"}}\x00device_id\x00dev-a", "CLIENT\x00SETINFO\x00lib-name\x00x",
		"COMMAND\x00DOCS\x00sismember", "SMISMEMBER\x00p/c\x00u1\x00u2", "EXISTS\x00p/c\x00p/x", "PING\x00x",
		"SSCAN\x00p/c\x0018446744073709551615", "SINTERCARD\x00-1\x00p/c",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		args := strings.Split(string(in), "\x00")
		if len(args) > 64 {
			return
		}
		c, fc := steadyConn(t, fx, encode(args...))
		fc.last = fc.last[:0]
		_ = c.serveOnce()
		br := bufio.NewReader(bytes.NewReader(fc.last))
		if _, err := readReply(br); err != nil {
			t.Fatalf("%q: reply %q: %v", args, fc.last, err)
		}
		if br.Buffered() != 0 {
			t.Fatalf("%q: more than one reply: %q", args, fc.last)
		}
	})
}

// TestReaderShrink: a buffer grown for large commands stays while they keep
// coming, goes back to the initial size after shrinkAfter idle checks of
// small ones, and one grown past keepMul times the initial size goes at
// the first idle check.
func TestReaderShrink(t *testing.T) {
	const initial = 64
	feed := func(r *reader, cmd []byte) {
		t.Helper()
		for len(cmd) > 0 {
			r.compact()
			n := copy(r.buf[r.end:], cmd)
			r.end += n
			cmd = cmd[n:]
			argv, ok, err := r.next(nil, true)
			if err != nil {
				t.Fatal(err)
			}
			if ok != (len(cmd) == 0) {
				t.Fatalf("command complete = %v with %d bytes still to send (%q)", ok, len(cmd), argv)
			}
		}
		r.shrink(initial)
	}
	large := encode("SMISMEMBER", "p/c", strings.Repeat("x", 40), strings.Repeat("y", 20))
	small := encode("SISMEMBER", "p/c", "u1")
	if len(large) <= initial || len(large) > keepMul*initial || len(small) >= initial {
		t.Fatalf("sizes: large %d, small %d", len(large), len(small))
	}

	r := reader{buf: make([]byte, initial), maxCmd: 1 << 20}
	for range 3 * shrinkAfter {
		feed(&r, large)
	}
	grown := len(r.buf)
	if grown <= initial {
		t.Fatalf("buffer %d after large commands, want it grown", grown)
	}
	for i := range shrinkAfter {
		if len(r.buf) != grown {
			t.Fatalf("buffer shrank after %d small commands, want %d (%d, was %d, calm %d)", i, shrinkAfter, len(r.buf), grown, r.calm)
		}
		feed(&r, small)
	}
	if len(r.buf) != initial {
		t.Fatalf("buffer %d after %d small commands, want %d", len(r.buf), shrinkAfter, initial)
	}

	huge := encode("SMISMEMBER", "p/c", strings.Repeat("z", keepMul*initial))
	feed(&r, huge)
	if len(r.buf) != initial {
		t.Fatalf("buffer %d after a command larger than %d×, want %d at once", len(r.buf), keepMul, initial)
	}
}
