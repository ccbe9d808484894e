package resp

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/tidwall/redcon"
)

// Limits of the request parser. Before AUTH they are Redis's own for
// unauthenticated clients, so that a stranger cannot make a connection
// buffer much; after it they bound one command, not the connection's life.
const (
	maxInline         = 64 << 10  // an inline (telnet) command line
	maxHeaderLine     = 32        // "*<n>\r\n" or "$<n>\r\n" with any sane n
	maxArgs           = 1 << 20   // arguments of one command (Redis: 1024*1024)
	unauthMaxArgs     = 10        // Redis's limit before AUTH
	unauthMaxBulk     = 16 << 10  // Redis's limit before AUTH
	defaultMaxCommand = 128 << 20 // bytes of one command; Options.MaxCommandBytes
)

// protocolError is a malformed request: the connection answers
// "-ERR Protocol error: <msg>" and closes, as Redis does.
type protocolError string

func (e protocolError) Error() string { return "Protocol error: " + string(e) }

// reader is a connection's input buffer and the state of the request
// parser (RESP multibulk arrays, and inline commands for telnet users).
//
// # Why not redcon's reader
//
// redcon.Server's reader copies every command (Raw) and allocates its
// argument slice, and grows its buffer without bound before AUTH;
// redcon.ReadNextCommand allocates nothing but panics on a negative bulk
// length ("*1\r\n$-2\r\n", found by the fuzz target). This parser
// allocates nothing in steady state (arguments are slices of buf), resumes
// a large command where it stopped instead of rescanning it on every read,
// and bounds what a client can make it buffer. BenchmarkParse compares it
// with redcon's reader. Inline commands, rare and small, still go through
// redcon.ReadNextCommand.
//
// # Ownership
//
// buf[pos:end] is unparsed input. Arguments returned by next are slices of
// buf, valid until compact; the connection executes a batch of commands
// before compacting.
type reader struct {
	buf      []byte
	pos, end int
	maxCmd   int // Options.MaxCommandBytes

	// State of a multibulk command whose arguments are still arriving,
	// in offsets so that compact can move the bytes.
	nargs int     // arguments announced; 0 = no command in progress
	scan  int     // where the next argument's "$" header starts
	offs  []int32 // start, end of each complete argument
	want  int     // bytes of buf (from pos) the command needs, when known

	lastEmpty bool // inline just consumed an empty line

	// calm counts the idle checks in a row (shrink) whose input fitted
	// the initial buffer size.
	calm int
}

// next parses the next complete command into argv (which it appends to and
// returns). ok is false when more input is needed. authed selects the
// limits.
func (r *reader) next(argv [][]byte, authed bool) (out [][]byte, ok bool, err error) {
	for r.nargs == 0 {
		if r.pos == r.end {
			return argv, false, nil
		}
		if r.buf[r.pos] != '*' {
			out, ok, err := r.inline(argv)
			if r.lastEmpty {
				r.lastEmpty = false
				continue // an empty line: Redis answers nothing
			}
			return out, ok, err
		}
		nl := bytes.IndexByte(r.buf[r.pos:min(r.end, r.pos+maxHeaderLine)], '\n')
		if nl < 0 {
			if r.end-r.pos >= maxHeaderLine {
				return argv, false, protocolError("invalid multibulk length")
			}
			return argv, false, nil
		}
		line := r.buf[r.pos : r.pos+nl+1]
		n, ok := parseLen(line[1:])
		if !ok || n > maxArgs {
			return argv, false, protocolError("invalid multibulk length")
		}
		if !authed && n > unauthMaxArgs {
			return argv, false, protocolError("unauthenticated multibulk length")
		}
		r.pos += len(line)
		if n <= 0 {
			continue // "*0" and "*-1" are empty commands: Redis skips them.
		}
		r.nargs, r.scan, r.offs, r.want = n, r.pos, r.offs[:0], 0
		r.pos -= len(line) // the command starts at its header
	}
	for len(r.offs)/2 < r.nargs {
		if r.scan == r.end {
			return argv, false, nil
		}
		if c := r.buf[r.scan]; c != '$' {
			return argv, false, protocolError("expected '$', got '" + printable(c) + "'")
		}
		// Fast path: "$", 1–10 digits, CRLF, all buffered (every
		// well-formed argument). Anything else takes the general path
		// below, which also finds the errors.
		size, nl := 0, -1
		for p := r.scan + 1; p < r.end && p <= r.scan+11; p++ {
			c := r.buf[p]
			if c >= '0' && c <= '9' {
				size = size*10 + int(c-'0')
				continue
			}
			if c == '\r' && p > r.scan+1 && p+1 < r.end && r.buf[p+1] == '\n' {
				nl = p + 1 - r.scan
			}
			break
		}
		if nl < 0 {
			nl = bytes.IndexByte(r.buf[r.scan:min(r.end, r.scan+maxHeaderLine)], '\n')
			if nl < 0 {
				if r.end-r.scan >= maxHeaderLine {
					return argv, false, protocolError("invalid bulk length")
				}
				return argv, false, nil
			}
			var ok bool
			if size, ok = parseLen(r.buf[r.scan+1 : r.scan+nl+1]); !ok {
				size = -1
			}
		}
		if size < 0 || size > r.maxCmd {
			return argv, false, protocolError("invalid bulk length")
		}
		if !authed && size > unauthMaxBulk {
			return argv, false, protocolError("unauthenticated bulk length")
		}
		start := r.scan + nl + 1
		stop := start + size
		if stop-r.pos+2 > r.maxCmd {
			return argv, false, protocolError("command too large")
		}
		if r.end < stop+2 {
			r.want = stop + 2 - r.pos
			return argv, false, nil
		}
		if r.buf[stop] != '\r' || r.buf[stop+1] != '\n' {
			return argv, false, protocolError("invalid bulk length")
		}
		r.offs = append(r.offs, int32(start), int32(stop))
		r.scan = stop + 2
	}
	for i := 0; i < len(r.offs); i += 2 {
		argv = append(argv, r.buf[r.offs[i]:r.offs[i+1]:r.offs[i+1]])
	}
	r.pos, r.nargs, r.want = r.scan, 0, 0
	return argv, true, nil
}

// inline parses a telnet-style command line with redcon's parser (quotes
// and escapes as redis-cli sends none, but people at a terminal do).
func (r *reader) inline(argv [][]byte) ([][]byte, bool, error) {
	nl := bytes.IndexByte(r.buf[r.pos:min(r.end, r.pos+maxInline)], '\n')
	if nl < 0 {
		if r.end-r.pos >= maxInline {
			return argv, false, protocolError("too big inline request")
		}
		return argv, false, nil
	}
	line := r.buf[r.pos : r.pos+nl+1]
	r.pos += len(line)
	if line[0] == '$' {
		// redcon would read a Tile38 command; Redis treats it as inline.
		return argv, false, protocolError("expected '*', got '$'")
	}
	complete, args, _, _, err := redcon.ReadNextCommand(line, nil)
	if err != nil {
		return argv, false, protocolError(strings.TrimPrefix(err.Error(), "Protocol error: "))
	}
	if !complete {
		return argv, false, protocolError("invalid inline request")
	}
	if len(args) == 0 {
		r.lastEmpty = true
		return argv, false, nil
	}
	return append(argv, args...), true, nil
}

// parseLen parses the decimal of a "*<n>\r\n" or "$<n>\r\n" line (without
// the type byte): digits with an optional minus, then CRLF.
func parseLen(b []byte) (int, bool) {
	if len(b) < 3 || b[len(b)-2] != '\r' {
		return 0, false
	}
	b = b[:len(b)-2]
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 10 { // more digits than any accepted length
		return 0, false
	}
	n := 0
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int(d-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// pending reports whether a command is partly buffered.
func (r *reader) pending() bool { return r.nargs > 0 || r.pos < r.end }

// compact moves the unparsed bytes to the front of buf, so that the next
// read has room; then it grows buf when a command in progress needs more
// than its capacity. It invalidates every argument returned before.
func (r *reader) compact() {
	if r.pos > 0 {
		n := copy(r.buf, r.buf[r.pos:r.end])
		shift := r.pos
		if r.nargs > 0 {
			r.scan -= shift
			for i := range r.offs {
				r.offs[i] -= int32(shift)
			}
		}
		r.pos, r.end = 0, n
	}
	need := r.end + 1
	if r.want > need {
		need = r.want
	}
	if need > len(r.buf) {
		size := max(need, 2*len(r.buf))
		nb := make([]byte, min(size, r.maxCmd+64))
		copy(nb, r.buf[:r.end])
		r.buf = nb
	}
}

// shrink drops a buffer grown for large commands once they stop coming,
// so that a connection does not hold its largest command's memory
// forever. A buffer of up to keepMul times the initial size survives until
// shrinkAfter idle checks in a row have needed no more than the initial
// size: dropping it at every idle moment cost a client that sends one
// large command after another (SMISMEMBER of 1,000 ids is 30 KB) two
// allocations and their GC work per command. A larger buffer goes at the
// first idle moment, so an idle connection holds at most keepMul times the
// initial size.
func (r *reader) shrink(initial int) {
	if len(r.buf) <= initial || r.pos != r.end || r.nargs != 0 {
		return
	}
	if len(r.buf) <= keepMul*initial {
		// Idle, buf[:end] is what the reads since the last compact
		// brought: the last command, whole, and any before it.
		if r.end > initial {
			r.calm = 0
			return
		}
		if r.calm++; r.calm < shrinkAfter {
			return
		}
	}
	r.buf = make([]byte, initial)
	r.pos, r.end, r.calm = 0, 0, 0
}

const (
	keepMul     = 4  // a grown buffer up to 4× the initial size is kept…
	shrinkAfter = 16 // …until this many idle checks in a row fit the initial size
)

// printable returns c as Redis quotes it in a protocol error.
func printable(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return string(rune(c))
	}
	return "\\x" + strconv.FormatUint(uint64(c), 16)
}
