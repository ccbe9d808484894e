package loadgen

import (
	"bytes"
	"errors"
	"strconv"
)

// Framers for the raw client (RawLoad.Frame): each returns the length of
// the first complete reply at the start of p, 0 if p holds only part of
// one, and whether that reply is a failure. They parse no more than framing
// needs; the raw client counts replies, it does not read them.

// errFrame reports a reply the framer cannot parse; the raw client drops the
// connection's run with it.
var errFrame = errors.New("loadgen: malformed reply")

// maxFrameDepth bounds the nesting of RESP aggregates a framer follows.
const maxFrameDepth = 16

// FrameRESP frames one RESP2 or RESP3 reply; an error reply ('-' or '!')
// is a failure.
func FrameRESP(p []byte) (n int, failed bool, err error) {
	if len(p) > 0 && (p[0] == '-' || p[0] == '!') {
		failed = true
	}
	n, err = frameRESP(p, 0)
	return n, failed, err
}

func frameRESP(p []byte, depth int) (int, error) {
	if depth > maxFrameDepth {
		return 0, errFrame
	}
	i := bytes.Index(p, []byte("\r\n"))
	if i < 0 {
		return 0, nil
	}
	if i == 0 {
		return 0, errFrame
	}
	line, n := p[1:i], i+2
	switch p[0] {
	case '+', '-', ':', '_', ',', '#', '(':
		return n, nil
	case '$', '=', '!':
		size, err := frameCount(line)
		if err != nil {
			return 0, err
		}
		if size < 0 { // RESP2 null bulk string
			return n, nil
		}
		if len(p)-n < size+2 {
			return 0, nil
		}
		if p[n+size] != '\r' || p[n+size+1] != '\n' {
			return 0, errFrame
		}
		return n + size + 2, nil
	case '*', '~', '>', '%', '|':
		count, err := frameCount(line)
		if err != nil {
			return 0, err
		}
		if p[0] == '%' || p[0] == '|' {
			count *= 2 // key and value
		}
		if p[0] == '|' {
			count++ // attributes precede the reply they describe
		}
		for range count {
			m, err := frameRESP(p[n:], depth+1)
			if m == 0 || err != nil {
				return 0, err
			}
			n += m
		}
		return n, nil
	}
	return 0, errFrame
}

// frameCount parses a RESP length: -1 (null) or a count below 1<<31.
func frameCount(b []byte) (int, error) {
	v, err := strconv.Atoi(string(b))
	if err != nil || v < -1 || v >= 1<<31 {
		return 0, errFrame
	}
	return v, nil
}

// FrameHTTP frames one HTTP/1.1 response with a Content-Length (what
// cohortd and every keep-alive JSON API send); a status other than 2xx is a
// failure. Chunked or length-less responses are errors: they cannot be
// framed without reading to the end of the connection.
func FrameHTTP(p []byte) (n int, failed bool, err error) {
	end := bytes.Index(p, []byte("\r\n\r\n"))
	if end < 0 {
		if len(p) > 64<<10 {
			return 0, false, errFrame
		}
		return 0, false, nil
	}
	head := p[:end]
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, false, errFrame
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil || status < 100 {
		return 0, false, errFrame
	}
	size := -1
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(h, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Content-Length")) {
			v, err := strconv.Atoi(string(bytes.TrimSpace(value)))
			if err != nil || v < 0 || v >= 1<<31 {
				return 0, false, errFrame
			}
			size = v
		}
	}
	if size < 0 {
		return 0, false, errFrame
	}
	n = end + 4 + size
	if len(p) < n {
		return 0, false, nil
	}
	return n, status/100 != 2, nil
}
