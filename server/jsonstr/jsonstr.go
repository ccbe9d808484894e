// Package jsonstr appends JSON string literals. It is the one escaper of
// the server's hand-built replies and of the request bodies loadgen and
// bench build, so that all of them treat odd bytes the same way.
//
// # Output
//
// Append's output is always valid JSON, and decodes to s with every byte
// that is not part of valid UTF-8 replaced by U+FFFD, as encoding/json's
// Marshal does (a fuzz test checks the two decode to the same string).
// Quotes, backslashes and the control bytes below 0x20 are escaped (\n, \r
// and \t in short form, the others as \u00XX); everything else, including
// valid multi-byte UTF-8, '<', '>', '&', U+2028 and U+2029, is copied as is.
// Unlike encoding/json it does not escape for HTML: the replies are
// application/json, never inlined in a page.
//
// # Cost
//
// Fast path: a byte of printable ASCII costs one table lookup and is
// copied with its neighbours in one append. Slow path: a byte of 0x80 or
// more decodes one rune to check it. Append allocates only to grow dst.
//
// The package holds no state and is safe for concurrent use.
package jsonstr

import "unicode/utf8"

// safe marks the ASCII bytes copied as they are: printable, not '"' or '\\'.
// Bytes of 0x80 and more are false and take the slow path.
var safe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// Append appends s to dst as a quoted JSON string and returns the extended
// buffer. It does not keep s or dst.
func Append[S ~string | ~[]byte](dst []byte, s S) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if safe[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		// Slow path: a valid sequence stays in the span being copied; a
		// byte that does not start one becomes U+FFFD. Two-byte sequences
		// (Latin, Greek, Cyrillic letters) are checked here, the rest by
		// validAt.
		if c >= 0xC2 && c < 0xE0 && i+1 < len(s) && s[i+1]&0xC0 == 0x80 {
			i += 2
			continue
		}
		size := validAt(s, i)
		if size == 0 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// validAt returns the length of the valid UTF-8 sequence that starts at
// s[i] (a byte of 0x80 or more), 0 when none does: what utf8.DecodeRune
// accepts (no overlong forms, surrogates or values past U+10FFFF), written
// out because utf8 has no function for both strings and byte slices.
func validAt[S ~string | ~[]byte](s S, i int) int {
	const lo, hi = 0x80, 0xBF  // the range of a continuation byte
	l, h := byte(lo), byte(hi) // the range of the second byte
	var size int
	switch c := s[i]; {
	case c < 0xC2: // a continuation byte, or an overlong 2-byte form
		return 0
	case c < 0xE0:
		size = 2
	case c < 0xF0:
		size = 3
		switch c {
		case 0xE0:
			l = 0xA0 // overlong below
		case 0xED:
			h = 0x9F // surrogates above
		}
	case c < 0xF5:
		size = 4
		switch c {
		case 0xF0:
			l = 0x90 // overlong below
		case 0xF4:
			h = 0x8F // past U+10FFFF above
		}
	default:
		return 0
	}
	if len(s)-i < size || s[i+1] < l || s[i+1] > h {
		return 0
	}
	for j := i + 2; j < i+size; j++ {
		if s[j] < lo || s[j] > hi {
			return 0
		}
	}
	return size
}
