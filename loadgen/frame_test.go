package loadgen

import (
	"bytes"
	"testing"
)

// Complete replies: every strict prefix must read as incomplete, the whole
// as one reply of its length, and the whole followed by more as the same.
var respFrames = []struct {
	in     string
	failed bool
}{
	{":1\r\n", false},
	{"+OK\r\n", false},
	{"-WRONGPASS invalid username-password pair\r\n", true},
	{"$5\r\nhello\r\n", false},
	{"$0\r\n\r\n", false},
	{"$-1\r\n", false},
	{"*-1\r\n", false},
	{"*2\r\n:1\r\n$3\r\nabc\r\n", false},
	{"*2\r\n*1\r\n:0\r\n*0\r\n", false},
	{"%2\r\n+server\r\n+cohortd\r\n+proto\r\n:3\r\n", false},
	{"~1\r\n#t\r\n", false},
	{"_\r\n", false},
	{",1.5\r\n", false},
	{"(12345678901234567890\r\n", false},
	{"=7\r\ntxt:abc\r\n", false},
	{"!3\r\nERR\r\n", true},
	{">2\r\n+message\r\n:1\r\n", false},
	{"|1\r\n+ttl\r\n:3\r\n:1\r\n", false},
}

func TestFrameRESP(t *testing.T) {
	for _, f := range respFrames {
		for i := range len(f.in) {
			if n, _, err := FrameRESP([]byte(f.in[:i])); n != 0 || err != nil {
				t.Errorf("prefix %q of %q: %d, %v; want incomplete", f.in[:i], f.in, n, err)
			}
		}
		for _, tail := range []string{"", ":0\r\n", "garbage"} {
			n, failed, err := FrameRESP([]byte(f.in + tail))
			if n != len(f.in) || failed != f.failed || err != nil {
				t.Errorf("%q: %d, %v, %v; want %d, %v", f.in+tail, n, failed, err, len(f.in), f.failed)
			}
		}
	}
	for _, bad := range []string{"?x\r\n", "\r\n", "$x\r\n", "$-2\r\n", "$3\r\nabcde", "*99999999999\r\n", "*a\r\n"} {
		if _, _, err := FrameRESP([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	deep := bytes.Repeat([]byte("*1\r\n"), maxFrameDepth+2)
	if _, _, err := FrameRESP(append(deep, ":1\r\n"...)); err == nil {
		t.Error("nesting beyond maxFrameDepth: no error")
	}
}

func TestFrameHTTP(t *testing.T) {
	ok := "HTTP/1.1 200 OK\r\nServer: cohortd\r\ncontent-length: 18\r\nContent-Type: application/json\r\n\r\n{\"results\":[true]}"
	for i := range len(ok) {
		if n, _, err := FrameHTTP([]byte(ok[:i])); n != 0 || err != nil {
			t.Errorf("prefix %d: %d, %v; want incomplete", i, n, err)
		}
	}
	if n, failed, err := FrameHTTP([]byte(ok + ok)); n != len(ok) || failed || err != nil {
		t.Errorf("two responses: %d, %v, %v; want %d", n, failed, err, len(ok))
	}
	e := "HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}"
	if n, failed, err := FrameHTTP([]byte(e)); n != len(e) || !failed || err != nil {
		t.Errorf("401: %d, %v, %v", n, failed, err)
	}
	for _, bad := range []string{
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
		"SMTP 220\r\n\r\n",
	} {
		if _, _, err := FrameHTTP([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if _, _, err := FrameHTTP(bytes.Repeat([]byte("x"), 65<<10)); err == nil {
		t.Error("a head above 64 KiB: no error")
	}
}

// The framers must never panic nor claim more than they were given, and a
// frame's length must not depend on what follows it.
func FuzzFrameRESP(f *testing.F) {
	for _, fr := range respFrames {
		f.Add([]byte(fr.in))
	}
	f.Fuzz(func(t *testing.T, p []byte) { checkFramer(t, FrameRESP, p) })
}

func FuzzFrameHTTP(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
	f.Add([]byte("HTTP/1.0 404 Not Found\r\ncontent-length:0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, p []byte) { checkFramer(t, FrameHTTP, p) })
}

func checkFramer(t *testing.T, frame func([]byte) (int, bool, error), p []byte) {
	n, failed, err := frame(p)
	if err != nil {
		return
	}
	if n < 0 || n > len(p) {
		t.Fatalf("%q: length %d of %d bytes", p, n, len(p))
	}
	if n == 0 {
		return
	}
	n2, failed2, err2 := frame(append(p[:n:n], "trailing"...))
	if n2 != n || failed2 != failed || err2 != nil {
		t.Fatalf("%q: %d, %v then with a tail %d, %v, %v", p[:n], n, failed, n2, failed2, err2)
	}
}
