package jsonstr

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAppend(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", `""`},
		{"plain", `"plain"`},
		{`q"uote\back`, `"q\"uote\\back"`},
		{"nl\n\r\ttab\x01\x1f\x7f", `"nl\n\r\ttab\u0001\u001f` + "\x7f\""},
		{"ünï€ 🙂 <&> \u2028", "\"ünï€ 🙂 <&> \u2028\""},
		{"bad\xffutf8\xe2\x82", `"bad\ufffdutf8\ufffd\ufffd"`},
		{"\xef\xbf\xbd", "\"\xef\xbf\xbd\""},     // U+FFFD itself is valid
		{"\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`}, // a surrogate half is not
	} {
		if got := string(Append(nil, c.in)); got != c.want {
			t.Errorf("Append(%q) = %s, want %s", c.in, got, c.want)
		}
		if got := string(Append([]byte("x"), []byte(c.in))); got != "x"+c.want {
			t.Errorf("Append([]byte %q) = %s, want x%s", c.in, got, c.want)
		}
	}
}

// TestValidAt compares validAt with utf8.DecodeRune on every 1-4 byte
// prefix that matters: each lead byte with continuations at the edges of
// their ranges.
func TestValidAt(t *testing.T) {
	conts := []byte{0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff}
	for lead := 0x80; lead < 0x100; lead++ {
		for _, b1 := range conts {
			for _, b2 := range conts {
				for _, b3 := range conts {
					for n := 1; n <= 4; n++ {
						s := []byte{byte(lead), b1, b2, b3}[:n]
						r, size := utf8.DecodeRune(s)
						want := size
						if r == utf8.RuneError && size == 1 {
							want = 0
						}
						if got := validAt(s, 0); got != want {
							t.Fatalf("validAt(% x) = %d, want %d", s, got, want)
						}
					}
				}
			}
		}
	}
}

func TestAppendAllocs(t *testing.T) {
	dst := make([]byte, 0, 256)
	s := []byte("user-\"00042\"\n\xff é")
	if n := testing.AllocsPerRun(100, func() { dst = Append(dst[:0], s) }); n != 0 {
		t.Errorf("%v allocations, want 0", n)
	}
}

// FuzzAppend checks Append against encoding/json: both outputs are valid
// JSON and decode to the same string.
func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "a", `"\`, "\x00\x01\n\r\t\x1f\x7f", "é€🙂", "\xff", "\xe2\x82", "\xed\xa0\x80",
		"\xf4\x90\x80\x80", "a\xc0\xafb", "<script>&", "\u2028\u2029", strings.Repeat("ü\x80", 5)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Append(nil, s)
		if !json.Valid(got) {
			t.Fatalf("Append(%q) = %s: not JSON", s, got)
		}
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var a, b string
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("Append(%q) = %s: %v", s, got, err)
		}
		if err := json.Unmarshal(want, &b); err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Fatalf("Append(%q) decodes to %q, encoding/json's %s to %q", s, a, want, b)
		}
		if bs := Append(nil, []byte(s)); string(bs) != string(got) {
			t.Fatalf("Append([]byte %q) = %s, Append(string) = %s", s, bs, got)
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	for _, c := range []struct{ name, s string }{
		{"ascii", "user-00000042"},
		{"escapes", "user \"42\"\t"},
		{"utf8", "usér-ünïcode-€"},
	} {
		b.Run(fmt.Sprintf("%s_%d", c.name, len(c.s)), func(b *testing.B) {
			s := []byte(c.s)
			dst := make([]byte, 0, 64)
			b.SetBytes(int64(len(s)))
			b.ReportAllocs()
			for b.Loop() {
				dst = Append(dst[:0], s)
			}
		})
	}
}
