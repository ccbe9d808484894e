package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"unicode/utf16"
	"unicode/utf8"
)

// scanner is a streaming JSON tokenizer: it reads its input through a fixed
// buffer refilled from an io.Reader, so a body of any size costs one buffer
// plus what the caller copies out. It validates full JSON syntax (values it
// skips included), so that it accepts exactly what encoding/json accepts in
// the shapes we decode, but it never builds a tree: callers walk objects and
// arrays with object/array and copy strings out with readString.
//
// In NDJSON mode '\n' is not whitespace: it ends a record, and a record may
// not span lines.
//
// A scanner is not safe for concurrent use. It keeps a reference to its
// reader until reset.
type scanner struct {
	r      io.Reader
	buf    []byte
	pos    int   // next unread byte in buf
	end    int   // end of valid data in buf
	base   int64 // stream offset of buf[0], for error messages
	eof    bool
	rerr   error // read error other than io.EOF; returned as is
	ndjson bool
	line   int // current line (NDJSON), 1-based
	depth  int
	key    []byte // scratch for object keys

	// values counts the values skipValue consumed; past maxValues (0: no
	// limit) it fails with errTooManyValues, so that a body of a million
	// tiny values costs a scan, never a tree (decode_query.go).
	values    int
	maxValues int
	// strict refuses a lone UTF-16 surrogate (\ud800) anywhere, as
	// checkEscapes does for fastjson bodies.
	strict bool
	// While capturing, the bytes consumed are copied to cap from capFrom on
	// (captureValue).
	capturing bool
	capFrom   int
	cap       []byte
}

// errTooManyValues is returned when a scan passes scanner.maxValues; callers
// turn it into their 4xx.
var errTooManyValues = errors.New("server: too many JSON values")

const (
	scanBufSize = 64 << 10
	// maxDepth matches encoding/json's nesting limit, so both accept the
	// same bodies.
	maxDepth = 10000
	// maxKeyLen is the longest key kept for matching; all our keys are
	// shorter, so a longer key is only checked for syntax.
	maxKeyLen = 32
)

func (s *scanner) reset(r io.Reader, ndjson bool) {
	if s.buf == nil {
		s.buf = make([]byte, scanBufSize)
	}
	*s = scanner{r: r, buf: s.buf, ndjson: ndjson, line: 1, key: s.key[:0]}
}

// fill reads more input into buf, keeping the unread bytes buf[pos:end]. It
// reports whether new bytes arrived.
func (s *scanner) fill() bool {
	if s.eof || s.rerr != nil {
		return false
	}
	if s.capturing {
		s.cap = append(s.cap, s.buf[s.capFrom:s.pos]...)
		s.capFrom = 0 // where s.pos is after the move below
	}
	if s.pos > 0 {
		copy(s.buf, s.buf[s.pos:s.end])
		s.base += int64(s.pos)
		s.end -= s.pos
		s.pos = 0
	}
	if s.end == len(s.buf) {
		panic("BUG: scanner: fill with a full buffer")
	}
	// io.Reader may return 0, nil; give up after many such reads, like bufio.
	for range 100 {
		n, err := s.r.Read(s.buf[s.end:])
		s.end += n
		if err == io.EOF {
			s.eof = true
			return n > 0
		}
		if err != nil {
			s.rerr = err
			return n > 0
		}
		if n > 0 {
			return true
		}
	}
	s.rerr = io.ErrNoProgress
	return false
}

// ensure makes at least n unread bytes available, if the input has them.
func (s *scanner) ensure(n int) bool {
	for s.end-s.pos < n {
		if !s.fill() {
			return false
		}
	}
	return true
}

// where locates the scanner for error details.
func (s *scanner) where() string {
	if s.ndjson {
		return fmt.Sprintf("line %d", s.line)
	}
	return fmt.Sprintf("offset %d", s.base+int64(s.pos))
}

func (s *scanner) malformedMsg() string {
	if s.ndjson {
		return msgMalformedNDJSON
	}
	return msgMalformedJSON
}

// syntaxError is the 400 for input that is not JSON.
func (s *scanner) syntaxError(format string, args ...any) error {
	return badRequest(s.malformedMsg(), s.where()+": "+fmt.Sprintf(format, args...))
}

// shapeError is the 400 msg for valid JSON of the wrong shape.
func (s *scanner) shapeError(msg, path, want string) error {
	if path == "" {
		return badRequest(msg, s.where()+": expected "+want)
	}
	return badRequest(msg, s.where()+": "+path+": expected "+want)
}

// ruleError is the 400 for an identifier at path that breaks docs/API.md §2.6.
func (s *scanner) ruleError(path string) error {
	return ruleError(path, s.where())
}

// eofError is the error for input that ends early: the reader's own error
// (such as the 413 of decodeBody) if it failed, else a syntax error.
func (s *scanner) eofError() error {
	if s.rerr != nil {
		return s.rerr
	}
	return s.syntaxError("unexpected end of body")
}

// unexpected is the syntax error for byte c where something else must be.
func (s *scanner) unexpected(c byte, want string) error {
	if c == '\n' && s.ndjson {
		return s.syntaxError("unexpected end of line, expected %s", want)
	}
	return s.syntaxError("unexpected %q, expected %s", c, want)
}

// next skips whitespace and returns the next byte without consuming it.
// ok is false at the end of input or on a read error (see eofError).
func (s *scanner) next() (c byte, ok bool) {
	for {
		for s.pos < s.end {
			c = s.buf[s.pos]
			if c > ' ' {
				return c, true
			}
			switch c {
			case ' ', '\t', '\r':
				s.pos++
				continue
			case '\n':
				if s.ndjson {
					return c, true
				}
				s.pos++
				continue
			}
			return c, true
		}
		if !s.fill() {
			return 0, false
		}
	}
}

// Flags returned by readString.
const (
	strNonASCII  = 1 << iota // a byte >= 0x80 was kept
	strOver                  // more than keep bytes; the rest was dropped
	strSurrogate             // a lone \u surrogate (kept as U+FFFD)
	strNUL                   // \u0000
)

// strPlain marks the bytes that need no attention inside a string.
var strPlain = func() (t [256]bool) {
	for i := range t {
		t[i] = i >= 0x20 && i != '"' && i != '\\'
	}
	return t
}()

const (
	swarOnes  = 0x0101010101010101
	swarHighs = 0x8080808080808080
)

// plainRun returns the length n of the longest prefix of b made of bytes
// that need no attention inside a JSON string (not '"', '\\' or a control
// character), and 0x80 if any byte of that prefix is non-ASCII, else 0.
//
// Fast path: eight bytes at a time (SWAR). For each of the three tests the
// lowest flagged byte of a word is exact (a borrow only runs upwards), so
// the first special byte is found without a byte loop. Only the last few
// bytes of b, fewer than eight, are looked at one by one.
func plainRun(b []byte) (n int, hi byte) {
	var acc uint64
	for ; n+8 <= len(b); n += 8 {
		w := binary.LittleEndian.Uint64(b[n:])
		q := w ^ ('"' * swarOnes)
		bs := w ^ ('\\' * swarOnes)
		special := (((q - swarOnes) &^ q) | ((bs - swarOnes) &^ bs) | ((w - 0x20*swarOnes) &^ w)) & swarHighs
		if special != 0 {
			k := bits.TrailingZeros64(special) / 8
			acc |= w & (1<<(8*k) - 1)
			if acc&swarHighs != 0 {
				hi = 0x80
			}
			return n + k, hi
		}
		acc |= w
	}
	if acc&swarHighs != 0 {
		hi = 0x80
	}
	for n < len(b) && strPlain[b[n]] {
		hi |= b[n]
		n++
	}
	return n, hi & 0x80
}

// readString scans a string whose opening quote has been consumed, appending
// at most keep unescaped bytes to dst (keep 0 only checks syntax). Lone
// surrogates become U+FFFD, like encoding/json; flags report them and other
// facts the identifier rule needs.
func (s *scanner) readString(dst []byte, keep int) (_ []byte, flags int, err error) {
	start := len(dst)
	var acc byte
	for {
		// Fast path: a run of plain bytes, copied in one append.
		buf := s.buf[s.pos:s.end]
		i, hi := plainRun(buf)
		acc |= hi
		if keep > 0 {
			if room := keep - (len(dst) - start); i <= room {
				dst = append(dst, buf[:i]...)
			} else {
				dst = append(dst, buf[:max(room, 0)]...)
				flags |= strOver
			}
		}
		s.pos += i
		if i == len(buf) {
			if !s.fill() {
				return dst, flags, s.eofError()
			}
			continue
		}
		// Slow path: quote, escape or control character.
		switch c := buf[i]; c {
		case '"':
			s.pos++
			if acc >= utf8.RuneSelf {
				flags |= strNonASCII
			}
			if s.strict && flags&strSurrogate != 0 {
				return dst, flags, s.syntaxError("lone UTF-16 surrogate in \\u escape")
			}
			return dst, flags, nil
		case '\\':
			var r rune
			r, flags, err = s.escape(flags)
			if err != nil {
				return dst, flags, err
			}
			if keep > 0 {
				if utf8.RuneLen(r) <= keep-(len(dst)-start) {
					dst = utf8.AppendRune(dst, r)
				} else {
					flags |= strOver
				}
			}
		default:
			return dst, flags, s.syntaxError("control character %q in string", c)
		}
	}
}

// escape decodes the escape sequence at s.pos (a backslash).
func (s *scanner) escape(flags int) (rune, int, error) {
	if !s.ensure(2) {
		return 0, flags, s.eofError()
	}
	e := s.buf[s.pos+1]
	s.pos += 2
	switch e {
	case '"', '\\', '/':
		return rune(e), flags, nil
	case 'b':
		return '\b', flags, nil
	case 'f':
		return '\f', flags, nil
	case 'n':
		return '\n', flags, nil
	case 'r':
		return '\r', flags, nil
	case 't':
		return '\t', flags, nil
	case 'u':
	default:
		s.pos -= 2
		return 0, flags, s.syntaxError("invalid escape \\%c in string", e)
	}
	if !s.ensure(4) {
		return 0, flags, s.eofError()
	}
	r, ok := hex4(s.buf[s.pos : s.pos+4])
	if !ok {
		return 0, flags, s.syntaxError("invalid \\u escape in string")
	}
	s.pos += 4
	if r == 0 {
		flags |= strNUL
	}
	if !utf16.IsSurrogate(r) {
		return r, flags, nil
	}
	// A high surrogate must be followed by an escaped low one; anything else
	// leaves it lone, and the next bytes are scanned normally.
	if r < 0xdc00 && s.ensure(6) && s.buf[s.pos] == '\\' && s.buf[s.pos+1] == 'u' {
		if r2, ok := hex4(s.buf[s.pos+2 : s.pos+6]); ok && r2 >= 0xdc00 && r2 < 0xe000 {
			s.pos += 6
			return utf16.DecodeRune(r, r2), flags, nil
		}
	}
	return utf8.RuneError, flags | strSurrogate, nil
}

func hex4(b []byte) (rune, bool) {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// object walks the object that starts at the next byte, calling field for
// each member with the scanner just before the value; field must consume
// the value. If the next value is not an object, object returns
// notObject() without consuming anything.
func (s *scanner) object(notObject func() error, field func(key []byte) error) error {
	c, ok := s.next()
	if !ok {
		return s.eofError()
	}
	if c != '{' {
		if isValueStart(c) {
			return notObject()
		}
		return s.unexpected(c, "a JSON value")
	}
	s.pos++
	if s.depth++; s.depth > maxDepth {
		return s.syntaxError("nesting too deep")
	}
	c, ok = s.next()
	if !ok {
		return s.eofError()
	}
	if c == '}' {
		s.pos++
		s.depth--
		return nil
	}
	for {
		if c != '"' {
			return s.unexpected(c, "a string key")
		}
		s.pos++
		var err error
		if s.key, _, err = s.readString(s.key[:0], maxKeyLen); err != nil {
			return err
		}
		if c, ok = s.next(); !ok {
			return s.eofError()
		}
		if c != ':' {
			return s.unexpected(c, "':'")
		}
		s.pos++
		if err := field(s.key); err != nil {
			return err
		}
		if c, ok = s.next(); !ok {
			return s.eofError()
		}
		s.pos++
		switch c {
		case ',':
			if c, ok = s.next(); !ok {
				return s.eofError()
			}
		case '}':
			s.depth--
			return nil
		default:
			s.pos--
			return s.unexpected(c, "',' or '}'")
		}
	}
}

// array walks the array that starts at the next byte, calling elem for
// each element with the scanner just before it; elem must consume it. If
// the next value is not an array, array returns notArray() without
// consuming anything.
func (s *scanner) array(notArray func() error, elem func(i int) error) error {
	c, ok := s.next()
	if !ok {
		return s.eofError()
	}
	if c != '[' {
		if isValueStart(c) {
			return notArray()
		}
		return s.unexpected(c, "a JSON value")
	}
	s.pos++
	if s.depth++; s.depth > maxDepth {
		return s.syntaxError("nesting too deep")
	}
	if c, ok = s.next(); !ok {
		return s.eofError()
	}
	if c == ']' {
		s.pos++
		s.depth--
		return nil
	}
	for i := 0; ; i++ {
		if err := elem(i); err != nil {
			return err
		}
		if c, ok = s.next(); !ok {
			return s.eofError()
		}
		s.pos++
		switch c {
		case ',':
		case ']':
			s.depth--
			return nil
		default:
			s.pos--
			return s.unexpected(c, "',' or ']'")
		}
	}
}

// str reads the string value that starts at the next byte into dst, keeping
// at most keep bytes. If the next value is not a string, it returns
// notString() without consuming anything.
func (s *scanner) str(dst []byte, keep int, notString func() error) ([]byte, int, error) {
	c, ok := s.next()
	if !ok {
		return dst, 0, s.eofError()
	}
	if c != '"' {
		if isValueStart(c) {
			return dst, 0, notString()
		}
		return dst, 0, s.unexpected(c, "a JSON value")
	}
	s.pos++
	return s.readString(dst, keep)
}

// idString reads a string value into dst and checks the identifier rule;
// it returns dst with the identifier appended. path names the field for
// errors; shape is the error when the value is not a string.
func (s *scanner) idString(dst []byte, shape func() error, path func() string) ([]byte, error) {
	off := len(dst)
	dst, flags, err := s.str(dst, maxIDLen, shape)
	if err != nil {
		return dst, err
	}
	if !validDecoded(dst[off:], flags) {
		return dst, s.ruleError(path())
	}
	return dst, nil
}

// validDecoded applies the identifier rule to id, decoded by readString
// with keep maxIDLen and the given flags.
func validDecoded(id []byte, flags int) bool {
	return len(id) > 0 && flags&(strOver|strSurrogate|strNUL) == 0 &&
		(flags&strNonASCII == 0 || utf8.Valid(id))
}

// boolean reads true or false; anything else of valid JSON is notBool().
func (s *scanner) boolean(notBool func() error) (bool, error) {
	c, ok := s.next()
	if !ok {
		return false, s.eofError()
	}
	switch c {
	case 't':
		return true, s.literal("true")
	case 'f':
		return false, s.literal("false")
	}
	if isValueStart(c) {
		return false, notBool()
	}
	return false, s.unexpected(c, "a JSON value")
}

func isValueStart(c byte) bool {
	switch c {
	case '{', '[', '"', 't', 'f', 'n', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return true
	}
	return false
}

// literal consumes lit (true, false or null) at s.pos.
func (s *scanner) literal(lit string) error {
	s.ensure(len(lit))
	n := min(len(lit), s.end-s.pos)
	for i := range n {
		if s.buf[s.pos+i] != lit[i] {
			s.pos += i
			return s.unexpected(s.buf[s.pos], "'"+lit+"'")
		}
	}
	if n < len(lit) {
		s.pos += n
		return s.eofError()
	}
	s.pos += n
	return nil
}

// skipValue consumes and validates the next value, whatever its type.
func (s *scanner) skipValue() error {
	if s.values++; s.maxValues > 0 && s.values > s.maxValues {
		return errTooManyValues
	}
	c, ok := s.next()
	if !ok {
		return s.eofError()
	}
	switch c {
	case '"':
		s.pos++
		_, _, err := s.readString(nil, 0)
		return err
	case '{':
		return s.object(nil, func([]byte) error { return s.skipValue() })
	case '[':
		return s.array(nil, func(int) error { return s.skipValue() })
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	}
	if c == '-' || (c >= '0' && c <= '9') {
		return s.number()
	}
	return s.unexpected(c, "a JSON value")
}

// peekByte returns the byte at s.pos without skipping whitespace.
func (s *scanner) peekByte() (byte, bool) {
	if s.pos < s.end || s.fill() {
		return s.buf[s.pos], true
	}
	return 0, false
}

// digits consumes a run of digits and reports how many there were.
func (s *scanner) digits() int {
	n := 0
	for {
		c, ok := s.peekByte()
		if !ok || c < '0' || c > '9' {
			return n
		}
		s.pos++
		n++
	}
}

// number consumes a number per the JSON grammar:
// -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	if c, _ := s.peekByte(); c == '-' {
		s.pos++
	}
	c, ok := s.peekByte()
	switch {
	case !ok:
		return s.eofError()
	case c == '0':
		s.pos++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return s.unexpected(c, "a digit")
	}
	if c, _ := s.peekByte(); c == '.' {
		s.pos++
		if s.digits() == 0 {
			return s.numberError()
		}
	}
	if c, _ := s.peekByte(); c == 'e' || c == 'E' {
		s.pos++
		if c, _ := s.peekByte(); c == '+' || c == '-' {
			s.pos++
		}
		if s.digits() == 0 {
			return s.numberError()
		}
	}
	return nil
}

func (s *scanner) numberError() error {
	if c, ok := s.peekByte(); ok {
		return s.unexpected(c, "a digit")
	}
	return s.eofError()
}

// finish checks that only whitespace follows the top-level value.
func (s *scanner) finish() error {
	for {
		c, ok := s.next()
		if !ok {
			if s.rerr != nil {
				return s.rerr
			}
			return nil
		}
		if c == '\n' { // NDJSON mode only
			s.pos++
			s.line++
			continue
		}
		return s.syntaxError("unexpected %q after the top-level value", c)
	}
}

// records calls rec for each non-blank line of NDJSON input, with the
// scanner at the start of the line's value; rec must consume exactly one
// value. Only whitespace may follow it on its line.
func (s *scanner) records(rec func() error) error {
	for {
		c, ok := s.next()
		if !ok {
			if s.rerr != nil {
				return s.rerr
			}
			return nil
		}
		if c == '\n' { // blank line
			s.pos++
			s.line++
			continue
		}
		if err := rec(); err != nil {
			return err
		}
		c, ok = s.next()
		if !ok {
			if s.rerr != nil {
				return s.rerr
			}
			return nil
		}
		if c != '\n' {
			return s.syntaxError("unexpected %q after the record, expected end of line", c)
		}
		s.pos++
		s.line++
	}
}

// captureValue consumes the next value (validated, counted as skipValue
// counts) and appends its JSON text to dst.
func (s *scanner) captureValue(dst []byte) ([]byte, error) {
	if _, ok := s.next(); !ok {
		return dst, s.eofError()
	}
	s.capturing, s.capFrom, s.cap = true, s.pos, dst
	err := s.skipValue()
	s.cap = append(s.cap, s.buf[s.capFrom:s.pos]...)
	dst = s.cap
	s.capturing, s.cap = false, nil
	return dst, err
}
