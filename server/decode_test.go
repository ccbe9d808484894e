package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/valyala/fastjson"

	"github.com/cohortd/cohortd/engine"
)

// wantErr checks that err is an *apiError with status whose message
// contains msg and whose details contain detail (each may be empty).
func wantErr(t *testing.T, err error, status int, msg, detail string) {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v (%T), want an *apiError %d %q", err, err, status, msg)
	}
	if ae.status != status || !strings.Contains(ae.message, msg) {
		t.Fatalf("err = %d %q %q, want %d %q", ae.status, ae.message, ae.errors, status, msg)
	}
	if detail != "" && !strings.Contains(strings.Join(ae.errors, "\n"), detail) {
		t.Fatalf("err details = %q, want %q in them", ae.errors, detail)
	}
}

var (
	// id512 is 512 bytes ending in a 2-byte rune: the limit is in bytes.
	id512 = strings.Repeat("x", 510) + "é"
	long  = strings.Repeat("a", 512)
)

const rule = ruleSuffix

// changesCase is one body for the change decoders: either the decoded
// form (one line per change and per identifier, see decoded) or an error.
type changesCase struct {
	name   string
	body   string
	want   string // decoded form, when no error
	status int    // error status, 0 for success
	msg    string // substring of the error message
	detail string // substring of the error details
}

func runChangesCases(t *testing.T, ndjson bool, cases []changesCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, oneByte := range []bool{false, true} {
				var d decoded
				fn := func(c *changeObject) error { d.addChange(c); return nil }
				r := iotestReader(tc.body, oneByte)
				var err error
				if ndjson {
					err = decodeChangesNDJSON(r, fn)
				} else {
					err = decodeChangesJSON(r, fn)
				}
				if tc.status != 0 {
					wantErr(t, err, tc.status, tc.msg, tc.detail)
					continue
				}
				if err != nil {
					t.Fatalf("oneByte=%v: %v", oneByte, err)
				}
				if got := d.String(); got != tc.want {
					t.Fatalf("oneByte=%v: got\n%s\nwant\n%s", oneByte, got, tc.want)
				}
			}
		})
	}
}

// iotestReader reads body whole, or one byte per Read so that every token
// straddles a buffer refill.
func iotestReader(body string, oneByte bool) io.Reader {
	if oneByte {
		return iotest.OneByteReader(strings.NewReader(body))
	}
	return strings.NewReader(body)
}

func TestDecodeChangesJSON(t *testing.T) {
	ok := `change remove=false time=""`
	cases := []changesCase{
		{name: "empty array", body: `{"cohort_changes":[]}`, want: ""},
		{name: "whitespace", body: " \t\r\n{ \n\"cohort_changes\" :\t[ {\"user_ids\" : [ \"a\" , \"b\" ] } ] } \n",
			want: ok + "\nu:a\nu:b"},
		{name: "all fields", body: `{"cohort_changes":[{"user_ids":["u1"],"device_ids":["d1","d2"],"aliases":[{"alias_label":"x@y","alias_name":"email","extra":{"n":[1]}}],"should_remove":true,"timestamp":"2026-01-02T03:04:05.5+01:00"}]}`,
			want: "change remove=true time=\"2026-01-02T02:04:05.5Z\"\nu:u1\nd:d1\nd:d2\na:email\x00x@y"},
		{name: "unknown nested fields",
			body: `{"a":{"b":[1,-2.5e+3,0,-0,1E9,true,false,null,"x\"]}",{"c":{}}]},"cohort_changes":[{"junk":[[[]],{"k":"]}"}],"user_ids":["a"],"z":"\\"}],"t":[]}`,
			want: ok + "\nu:a"},
		{name: "escapes", body: `{"cohort_changes":[{"user_ids":["a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\ud83d\ude00"]}]}`,
			want: ok + "\nu:a\"b\\c/d\b\f\n\r\té€😀"},
		{name: "escaped key", body: `{"cohort\u005fchanges":[{"user\u005fids":["a"]}]}`, want: ok + "\nu:a"},
		{name: "non-BMP raw", body: `{"cohort_changes":[{"device_ids":["😀𝄞"]}]}`, want: ok + "\nd:😀𝄞"},
		{name: "empty and absent arrays", body: `{"cohort_changes":[{},{"user_ids":[],"device_ids":[],"aliases":[]}]}`,
			want: ok + "\n" + ok},
		{name: "duplicate key last wins", body: `{"cohort_changes":[{"user_ids":["a"],"user_ids":["b"],"should_remove":true,"should_remove":false}]}`,
			want: ok + "\nu:b"},
		{name: "duplicate ids kept", body: `{"cohort_changes":[{"user_ids":["a","a"]}]}`, want: ok + "\nu:a\nu:a"},
		{name: "512 bytes", body: `{"cohort_changes":[{"user_ids":["` + id512 + `","` + long + `"]}]}`,
			want: ok + "\nu:" + id512 + "\nu:" + long},
		{name: "512 bytes escaped", body: `{"cohort_changes":[{"user_ids":["` + strings.Repeat(`\u0061`, 512) + `"]}]}`,
			want: ok + "\nu:" + long},
		{name: "utc timestamp", body: `{"cohort_changes":[{"timestamp":"2009-12-31T23:59:59Z"}]}`,
			want: `change remove=false time="2009-12-31T23:59:59Z"`},

		{name: "not json", body: `{`, status: 400, msg: msgMalformedJSON, detail: "unexpected end"},
		{name: "empty body", body: ``, status: 400, msg: msgMalformedJSON},
		{name: "garbage", body: `hello`, status: 400, msg: msgMalformedJSON},
		{name: "trailing data", body: `{"cohort_changes":[]} {}`, status: 400, msg: msgMalformedJSON, detail: "after the top-level value"},
		{name: "trailing comma", body: `{"cohort_changes":[],}`, status: 400, msg: msgMalformedJSON},
		{name: "array body", body: `[]`, status: 400, msg: msgChangesShape},
		{name: "absent", body: `{"other":1}`, status: 400, msg: msgChangesShape, detail: "required"},
		{name: "null", body: `{"cohort_changes":null}`, status: 400, msg: msgChangesShape},
		{name: "object", body: `{"cohort_changes":{}}`, status: 400, msg: msgChangesShape},
		{name: "element not object", body: `{"cohort_changes":[1]}`, status: 400, msg: msgChangesShape, detail: "cohort_changes[0]"},
		{name: "element null", body: `{"cohort_changes":[{},null]}`, status: 400, msg: msgChangesShape, detail: "cohort_changes[1]"},
		{name: "user_ids string", body: `{"cohort_changes":[{"user_ids":"a"}]}`, status: 400, msg: msgChangesShape, detail: "cohort_changes[0].user_ids"},
		{name: "user_ids null", body: `{"cohort_changes":[{"user_ids":null}]}`, status: 400, msg: msgChangesShape},
		{name: "device id number", body: `{"cohort_changes":[{"device_ids":["a",5]}]}`, status: 400, msg: msgChangesShape, detail: "device_ids[1]"},
		{name: "aliases object", body: `{"cohort_changes":[{"aliases":{"alias_name":"a","alias_label":"b"}}]}`, status: 400, msg: msgChangesShape},
		{name: "alias missing label", body: `{"cohort_changes":[{"aliases":[{"alias_name":"a"}]}]}`, status: 400, msg: msgChangesShape, detail: "aliases[0]"},
		{name: "alias label number", body: `{"cohort_changes":[{"aliases":[{"alias_name":"a","alias_label":1}]}]}`, status: 400, msg: msgChangesShape},
		{name: "alias string", body: `{"cohort_changes":[{"aliases":["a"]}]}`, status: 400, msg: msgChangesShape},
		{name: "should_remove string", body: `{"cohort_changes":[{"should_remove":"true"}]}`, status: 400, msg: msgChangesShape, detail: "should_remove"},
		{name: "should_remove null", body: `{"cohort_changes":[{"should_remove":null}]}`, status: 400, msg: msgChangesShape},
		{name: "timestamp date only", body: `{"cohort_changes":[{"timestamp":"2026-01-02"}]}`, status: 400, msg: msgChangesShape, detail: "timestamp"},
		{name: "timestamp number", body: `{"cohort_changes":[{"timestamp":1700000000}]}`, status: 400, msg: msgChangesShape},
		{name: "timestamp no zone", body: `{"cohort_changes":[{"timestamp":"2026-01-02T03:04:05"}]}`, status: 400, msg: msgChangesShape},

		{name: "empty id", body: `{"cohort_changes":[{},{"user_ids":["a",""]}]}`, status: 400, msg: "cohort_changes[1].user_ids[1]" + rule},
		{name: "513 bytes", body: `{"cohort_changes":[{"device_ids":["` + long + `b"]}]}`, status: 400, msg: "cohort_changes[0].device_ids[0]" + rule},
		{name: "513 bytes rune", body: `{"cohort_changes":[{"user_ids":["` + long[1:] + `é"]}]}`, status: 400, msg: "user_ids[0]" + rule},
		{name: "escaped NUL", body: `{"cohort_changes":[{"user_ids":["a\u0000"]}]}`, status: 400, msg: "user_ids[0]" + rule},
		{name: "lone high surrogate", body: `{"cohort_changes":[{"user_ids":["\ud800"]}]}`, status: 400, msg: "user_ids[0]" + rule},
		{name: "high surrogate then letter", body: `{"cohort_changes":[{"user_ids":["\ud800\u0041"]}]}`, status: 400, msg: "user_ids[0]" + rule},
		{name: "lone low surrogate", body: `{"cohort_changes":[{"user_ids":["\udc00x"]}]}`, status: 400, msg: "user_ids[0]" + rule},
		{name: "invalid utf8", body: "{\"cohort_changes\":[{\"user_ids\":[\"a\xffb\"]}]}", status: 400, msg: "user_ids[0]" + rule},
		{name: "encoded surrogate utf8", body: "{\"cohort_changes\":[{\"user_ids\":[\"\xed\xa0\x80\"]}]}", status: 400, msg: "user_ids[0]" + rule},
		{name: "empty alias name", body: `{"cohort_changes":[{"aliases":[{"alias_name":"","alias_label":"b"}]}]}`, status: 400, msg: "cohort_changes[0].aliases[0].alias_name" + rule},
		{name: "long alias label", body: `{"cohort_changes":[{"aliases":[{"alias_name":"a","alias_label":"` + long + `x"}]}]}`, status: 400, msg: "aliases[0].alias_label" + rule},

		{name: "raw control char", body: "{\"cohort_changes\":[{\"user_ids\":[\"a\tb\"]}]}", status: 400, msg: msgMalformedJSON, detail: "control character"},
		{name: "bad escape", body: `{"cohort_changes":[{"user_ids":["a\xb"]}]}`, status: 400, msg: msgMalformedJSON, detail: "invalid escape"},
		{name: "bad u escape", body: `{"cohort_changes":[{"user_ids":["\u12g4"]}]}`, status: 400, msg: msgMalformedJSON},
		{name: "bad escape in skipped", body: `{"x":"\q","cohort_changes":[]}`, status: 400, msg: msgMalformedJSON},
		{name: "leading zero", body: `{"x":01,"cohort_changes":[]}`, status: 400, msg: msgMalformedJSON},
		{name: "bare fraction", body: `{"x":1.,"cohort_changes":[]}`, status: 400, msg: msgMalformedJSON},
		{name: "bare exponent", body: `{"x":1e,"cohort_changes":[]}`, status: 400, msg: msgMalformedJSON},
		{name: "plus number", body: `{"x":+1,"cohort_changes":[]}`, status: 400, msg: msgMalformedJSON},
		{name: "bad literal", body: `{"x":nul,"cohort_changes":[]}`, status: 400, msg: msgMalformedJSON},
		{name: "unterminated skip", body: `{"x":[1,2`, status: 400, msg: msgMalformedJSON},
		{name: "truncated id", body: `{"cohort_changes":[{"user_ids":["abc`, status: 400, msg: msgMalformedJSON, detail: "unexpected end"},
		{name: "missing colon", body: `{"cohort_changes" []}`, status: 400, msg: msgMalformedJSON},
		{name: "single quotes", body: `{'cohort_changes':[]}`, status: 400, msg: msgMalformedJSON},
		{name: "too deep", body: `{"x":` + strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1) + `,"cohort_changes":[]}`,
			status: 400, msg: msgMalformedJSON, detail: "too deep"},
		{name: "deep ok", body: `{"x":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `,"cohort_changes":[]}`, want: ""},
	}
	runChangesCases(t, false, cases)
}

func TestDecodeChangesNDJSON(t *testing.T) {
	ok := `change remove=false time=""`
	cases := []changesCase{
		{name: "empty body", body: "", want: ""},
		{name: "blank lines", body: "\n \n\t\r\n", want: ""},
		{name: "lines", body: "{\"user_ids\":[\"a\"]}\r\n\n  {\"device_ids\":[\"b\"],\"should_remove\":true}  \n{}",
			want: ok + "\nu:a\nchange remove=true time=\"\"\nd:b\n" + ok},
		{name: "no final newline", body: `{"user_ids":["a"]}`, want: ok + "\nu:a"},

		{name: "object over two lines", body: "{\"user_ids\":\n[\"a\"]}\n", status: 400, msg: msgMalformedNDJSON, detail: "line 1"},
		{name: "two objects on a line", body: "{}\n{} {}\n", status: 400, msg: msgMalformedNDJSON, detail: "line 2"},
		{name: "null line", body: "{}\n\nnull\n", status: 400, msg: msgChangesShape, detail: "line 3"},
		{name: "array line", body: "[]\n", status: 400, msg: msgChangesShape, detail: "line 1"},
		{name: "cohort_changes wrapper", body: `{"cohort_changes":[{"user_ids":["a"]}]}`, want: ok},
		{name: "bad shape", body: "{}\n{\"user_ids\":[1]}\n", status: 400, msg: msgChangesShape, detail: "line 2: user_ids[0]"},
		{name: "rule", body: "{}\n{}\n{\"user_ids\":[\"a\",\"\"]}\n", status: 400, msg: "user_ids[1]" + rule, detail: "line 3"},
		{name: "truncated", body: "{\"user_ids\":[\"a\"", status: 400, msg: msgMalformedNDJSON, detail: "line 1"},
	}
	runChangesCases(t, true, cases)
}

func TestDecodeChangesOneByteAndErrors(t *testing.T) {
	// Every token straddles a refill when the reader yields one byte a time.
	body := benchChangesBody(3000, false)
	want, err := scanChanges(body, false)
	if err != nil {
		t.Fatal(err)
	}
	var got decoded
	if err := decodeChangesJSON(iotest.OneByteReader(bytes.NewReader(body)), func(c *changeObject) error {
		got.addChange(c)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got.String() != want.String() {
		t.Fatal("one-byte reads decode differently")
	}
	// A reader error passes through unchanged, also mid-string.
	boom := errors.New("boom")
	for _, n := range []int{0, 5, 40, 100} {
		err := decodeChangesJSON(&failAfter{data: body[:n], err: boom}, func(*changeObject) error { return nil })
		if !errors.Is(err, boom) {
			t.Fatalf("n=%d: err = %v, want boom", n, err)
		}
	}
	// The callback's error stops decoding and comes back as is.
	calls := 0
	err = decodeChangesNDJSON(bytes.NewReader(benchChangesBody(5000, true)), func(*changeObject) error {
		calls++
		if calls == 2 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || calls != 2 {
		t.Fatalf("err = %v after %d calls", err, calls)
	}
}

// failAfter yields data, then err.
type failAfter struct {
	data []byte
	err  error
}

func (f *failAfter) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestDecodeChangesLargeObject(t *testing.T) {
	// One change object far larger than the read buffer.
	body := benchChangesBody(20000, false)
	body = bytes.ReplaceAll(body, []byte(`],"should_remove":false},{"user_ids":[`), []byte(","))
	n := 0
	err := decodeChangesJSON(bytes.NewReader(body), func(c *changeObject) error {
		n += len(c.UserIDs)
		if string(c.UserIDs[19999]) != "user-00000000019999" {
			t.Fatalf("last id %q", c.UserIDs[19999])
		}
		return nil
	})
	if err != nil || n != 20000 {
		t.Fatalf("n=%d err=%v", n, err)
	}
}

func TestDecodeMembers(t *testing.T) {
	type batch struct {
		k engine.Kind
		n int
	}
	collect := func(ndjson bool, body string) ([]batch, string, error) {
		var bs []batch
		var d decoded
		fn := func(k engine.Kind, keys [][]byte) error {
			bs = append(bs, batch{k, len(keys)})
			for _, key := range keys {
				d.addMember(k, key)
			}
			return nil
		}
		var err error
		if ndjson {
			err = decodeMembersNDJSON(strings.NewReader(body), fn)
		} else {
			err = decodeMembersJSON(strings.NewReader(body), fn)
		}
		return bs, d.String(), err
	}
	t.Run("json batches", func(t *testing.T) {
		var b strings.Builder
		b.WriteString(`{"user_ids":[`)
		for i := range 10000 {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`"u"`)
		}
		b.WriteString(`],"x":{"user_ids":["no"]},"aliases":[{"alias_name":"n","alias_label":"l"}],"device_ids":[],"user_ids":["v"]}`)
		bs, _, err := collect(false, b.String())
		if err != nil {
			t.Fatal(err)
		}
		want := []batch{{engine.KindExternal, 4096}, {engine.KindExternal, 4096}, {engine.KindExternal, 1808}, {engine.KindAlias, 1}, {engine.KindExternal, 1}}
		if len(bs) != len(want) {
			t.Fatalf("batches %v, want %v", bs, want)
		}
		for i := range want {
			if bs[i] != want[i] {
				t.Fatalf("batches %v, want %v", bs, want)
			}
		}
	})
	cases := []struct {
		name   string
		ndjson bool
		body   string
		want   string
		msg    string
		detail string
	}{
		{name: "json empty", body: `{}`, want: ""},
		{name: "json all", body: `{"device_ids":["d"],"aliases":[{"alias_name":"e","alias_label":"x"}],"user_ids":["u\u00e9"]}`,
			want: "3:d\n2:e\x00x\n1:ué"},
		{name: "json null", body: `{"user_ids":null}`, msg: msgIDsShape},
		{name: "json not object", body: `[]`, msg: msgIDsShape},
		{name: "json number id", body: `{"device_ids":[1]}`, msg: msgIDsShape, detail: "device_ids[0]"},
		{name: "json alias no label", body: `{"aliases":[{"alias_name":"a"}]}`, msg: msgIDsShape},
		{name: "json rule", body: `{"user_ids":["a",""]}`, msg: "user_ids[1]" + rule},
		{name: "json alias rule", body: `{"aliases":[{"alias_name":"a","alias_label":"\u0000"}]}`, msg: "aliases[0].alias_label" + rule},
		{name: "json bad", body: `{"user_ids":["a"]`, msg: msgMalformedJSON},

		{name: "ndjson all", ndjson: true, body: "{\"external_id\":\"u\"}\n\n{\"device_id\":\"d\",\"x\":[1]}\n{\"alias_label\":\"l\",\"alias_name\":\"n\"}\n{\"external_id\":\"v\"}\n",
			want: "1:u\n3:d\n2:n\x00l\n1:v"},
		{name: "ndjson two ids", ndjson: true, body: "{\"external_id\":\"u\",\"device_id\":\"d\"}\n", msg: msgMemberLine, detail: "line 1"},
		{name: "ndjson none", ndjson: true, body: "{\"external_id\":\"u\"}\n{\"x\":1}\n", msg: msgMemberLine, detail: "line 2"},
		{name: "ndjson name only", ndjson: true, body: "{\"alias_name\":\"u\"}\n", msg: msgMemberLine},
		{name: "ndjson alias and ext", ndjson: true, body: "{\"alias_name\":\"u\",\"alias_label\":\"l\",\"external_id\":\"e\"}\n", msg: msgMemberLine},
		{name: "ndjson number", ndjson: true, body: "{\"external_id\":5}\n", msg: msgMemberLine},
		{name: "ndjson null", ndjson: true, body: "{\"external_id\":null}\n", msg: msgMemberLine},
		{name: "ndjson string line", ndjson: true, body: "\"u\"\n", msg: msgMemberLine},
		{name: "ndjson rule", ndjson: true, body: "{\"external_id\":\"u\"}\n{\"device_id\":\"\"}\n", msg: "device_id" + rule, detail: "line 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, got, err := collect(tc.ndjson, tc.body)
			if tc.msg != "" {
				wantErr(t, err, 400, tc.msg, tc.detail)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDecodeUsers(t *testing.T) {
	cases := []struct {
		name   string
		ndjson bool
		body   string
		want   string
		msg    string
		detail string
	}{
		{name: "json", body: `{"users":[{"external_id":"e"},{"device_id":"d","x":{}},{"aliases":[{"alias_name":"n","alias_label":"l"}]},{"external_id":"e2","device_id":"d2","aliases":[]}]}`,
			want: "user ext=true dev=false\nu:e\nuser ext=false dev=true\nd:d\nuser ext=false dev=false\na:n\x00l\nuser ext=true dev=true\nu:e2\nd:d2"},
		{name: "json empty", body: `{"users":[]}`, want: ""},
		{name: "json missing", body: `{}`, msg: msgUsersShape},
		{name: "json null", body: `{"users":null}`, msg: msgUsersShape},
		{name: "json no ids", body: `{"users":[{"external_id":"e"},{"x":1}]}`, msg: msgUserEmpty, detail: "users[1]"},
		{name: "json empty aliases only", body: `{"users":[{"aliases":[]}]}`, msg: msgUserEmpty},
		{name: "json ext null", body: `{"users":[{"external_id":null}]}`, msg: msgUsersShape, detail: "users[0].external_id"},
		{name: "json rule", body: `{"users":[{"device_id":"` + long + `x"}]}`, msg: "users[0].device_id" + rule},
		{name: "json alias rule", body: `{"users":[{"aliases":[{"alias_name":"","alias_label":"l"}]}]}`, msg: "users[0].aliases[0].alias_name" + rule},
		{name: "ndjson", ndjson: true, body: "{\"external_id\":\"e\"}\n\n{\"device_id\":\"d\"}\n", want: "user ext=true dev=false\nu:e\nuser ext=false dev=true\nd:d"},
		{name: "ndjson no ids", ndjson: true, body: "{\"external_id\":\"e\"}\n{}\n", msg: msgUserEmpty, detail: "line 2"},
		{name: "ndjson bad", ndjson: true, body: "{\"external_id\":\"e\"", msg: msgMalformedNDJSON},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := scanUsers([]byte(tc.body), tc.ndjson)
			if tc.msg != "" {
				wantErr(t, err, 400, tc.msg, tc.detail)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFormatThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 7: "7", 999: "999", 1000: "1,000", 25000: "25,000",
		100000: "100,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := formatThousands(n); got != want {
			t.Errorf("formatThousands(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestValidID(t *testing.T) {
	for s, want := range map[string]bool{"a": true, "": false, long: true, long + "a": false, id512: true,
		"a\x00": false, "\xff": false, "😀": true, "\xed\xa0\x80": false} {
		if got := validID([]byte(s)); got != want {
			t.Errorf("validID(%q) = %v", s, got)
		}
	}
}

func TestParsePartnerCohort(t *testing.T) {
	var p fastjson.Parser
	const creds = `"partner_api_key":"pk","client_secret":"cs"`
	cases := []struct {
		name string
		body string
		msg  string // validate() message; "" for valid
		when time.Time
	}{
		{name: "valid", body: `{` + creds + `,"cohort_id":"c1","name":"N","created_at":"2026-01-02T03:04:05Z","x":[1]}`,
			when: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
		{name: "offset fraction", body: `{` + creds + `,"cohort_id":"c1","name":"N","created_at":"2026-01-02T03:04:05.25+05:30"}`,
			when: time.Date(2026, 1, 1, 21, 34, 5, 250e6, time.UTC)},
		{name: "cohort_id missing", body: `{` + creds + `,"name":"N","created_at":"2026-01-02T03:04:05Z"}`, msg: msgCohortID},
		{name: "cohort_id number", body: `{` + creds + `,"cohort_id":5,"name":"N"}`, msg: msgCohortID},
		{name: "cohort_id empty", body: `{` + creds + `,"cohort_id":"","name":""}`, msg: msgCohortID},
		{name: "cohort_id NUL", body: `{` + creds + `,"cohort_id":"a\u0000"}`, msg: msgCohortID},
		{name: "name missing", body: `{` + creds + `,"cohort_id":"c","created_at":"x"}`, msg: msgName},
		{name: "name empty", body: `{` + creds + `,"cohort_id":"c","name":""}`, msg: msgName},
		{name: "name null", body: `{` + creds + `,"cohort_id":"c","name":null}`, msg: msgName},
		{name: "created_at missing", body: `{` + creds + `,"cohort_id":"c","name":"N"}`, msg: msgCreatedAt},
		{name: "created_at date", body: `{` + creds + `,"cohort_id":"c","name":"N","created_at":"2026-01-02"}`, msg: msgCreatedAt},
		{name: "created_at epoch", body: `{` + creds + `,"cohort_id":"c","name":"N","created_at":1700000000}`, msg: msgCreatedAt},
		{name: "created_at garbage", body: `{` + creds + `,"cohort_id":"c","name":"N","created_at":"yesterday"}`, msg: msgCreatedAt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := parsePartnerCohort(&p, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			// Credentials come back even when a field is invalid.
			if req.PartnerAPIKey != "pk" || req.ClientSecret != "cs" {
				t.Fatalf("creds %q %q", req.PartnerAPIKey, req.ClientSecret)
			}
			if tc.msg != "" {
				wantErr(t, req.validate(), 400, tc.msg, "")
				return
			}
			if err := req.validate(); err != nil {
				t.Fatal(err)
			}
			if req.CohortID != "c1" || req.Name != "N" || !req.CreatedAt.Equal(tc.when) {
				t.Fatalf("req %+v", req)
			}
		})
	}
	for _, body := range []string{``, `x`, `[]`, `"s"`, `{"a":1`, `{"a":"\ud800"}`, `{"a":"\x"}`, `{} {}`} {
		_, err := parsePartnerCohort(&p, []byte(body))
		wantErr(t, err, 400, msgMalformedJSON, "")
	}
	// Missing credentials are empty strings (the handler answers 401).
	req, err := parsePartnerCohort(&p, []byte(`{"partner_api_key":5}`))
	if err != nil || req.PartnerAPIKey != "" || req.ClientSecret != "" {
		t.Fatalf("%+v %v", req, err)
	}
}

func TestParsePartnerUsers(t *testing.T) {
	const head = `{"partner_api_key":"pk","client_secret":"cs","cohort_id":"c1",`
	ids := func(n int, prefix string) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`"` + prefix + `"`) // duplicates count toward the cap
		}
		return b.String()
	}
	cases := []struct {
		name   string
		body   string
		maxIDs int
		want   string
		msg    string
		detail string
	}{
		{name: "empty", body: head + `"cohort_changes":[]}`, want: ""},
		{name: "all", body: head + `"cohort_changes":[{"user_ids":["a\u00e9"],"device_ids":[],"aliases":[{"alias_name":"e","alias_label":"x","z":1}]},{"device_ids":["d"],"should_remove":true,"timestamp":"2026-01-02T03:04:05+01:00","junk":{"a":[]}}]}`,
			want: "change remove=false time=\"\"\nu:aé\na:e\x00x\nchange remove=true time=\"2026-01-02T02:04:05Z\"\nd:d"},
		{name: "at cap", body: head + `"cohort_changes":[{"user_ids":[` + ids(500, "u") + `]},{"device_ids":[` + ids(499, "d") + `],"aliases":[{"alias_name":"a","alias_label":"b"}]}]}`,
			maxIDs: 1000},
		{name: "cap plus one", body: head + `"cohort_changes":[{"user_ids":[` + ids(500, "u") + `]},{"device_ids":[` + ids(500, "d") + `],"aliases":[{"alias_name":"a","alias_label":"b"}]}]}`,
			maxIDs: 1000, msg: "Only 1,000 user_ids, device_ids, and aliases are allowed per request"},
		{name: "cap 25000", body: head + `"cohort_changes":[{"user_ids":[` + ids(25001, "u") + `]}]}`,
			maxIDs: 25000, msg: "Only 25,000 user_ids, device_ids, and aliases are allowed per request"},
		{name: "cap 999", body: head + `"cohort_changes":[{"user_ids":[` + ids(1000, "u") + `]}]}`,
			maxIDs: 999, msg: "Only 999 user_ids"},
		{name: "absent", body: head + `"x":1}`, msg: msgChangesShape},
		{name: "null", body: head + `"cohort_changes":null}`, msg: msgChangesShape},
		{name: "object", body: head + `"cohort_changes":{"user_ids":["a"]}}`, msg: msgChangesShape},
		{name: "element string", body: head + `"cohort_changes":["a"]}`, msg: msgChangesShape, detail: "cohort_changes[0]"},
		{name: "user_ids object", body: head + `"cohort_changes":[{"user_ids":{}}]}`, msg: msgChangesShape},
		{name: "user_ids null", body: head + `"cohort_changes":[{"user_ids":null}]}`, msg: msgChangesShape},
		{name: "device id number", body: head + `"cohort_changes":[{"device_ids":[1]}]}`, msg: msgChangesShape, detail: "device_ids[0]"},
		{name: "alias missing name", body: head + `"cohort_changes":[{"aliases":[{"alias_label":"a"}]}]}`, msg: msgChangesShape},
		{name: "should_remove number", body: head + `"cohort_changes":[{"should_remove":1}]}`, msg: msgChangesShape},
		{name: "timestamp bad", body: head + `"cohort_changes":[{"timestamp":"2026-01-02 03:04:05Z"}]}`, msg: msgChangesShape},
		{name: "empty id", body: head + `"cohort_changes":[{"user_ids":["a"]},{"user_ids":["b",""]}]}`, msg: "cohort_changes[1].user_ids[1]" + rule},
		{name: "513", body: head + `"cohort_changes":[{"device_ids":["` + long + `x"]}]}`, msg: "cohort_changes[0].device_ids[0]" + rule},
		{name: "512", body: head + `"cohort_changes":[{"device_ids":["` + id512 + `"]}]}`, want: "change remove=false time=\"\"\nd:" + id512},
		{name: "NUL", body: head + `"cohort_changes":[{"user_ids":["\u0000"]}]}`, msg: "user_ids[0]" + rule},
		{name: "invalid utf8", body: head + "\"cohort_changes\":[{\"user_ids\":[\"\xc3\"]}]}", msg: "user_ids[0]" + rule},
		{name: "alias label rule", body: head + `"cohort_changes":[{"aliases":[{"alias_name":"a","alias_label":""}]}]}`, msg: "cohort_changes[0].aliases[0].alias_label" + rule},
		{name: "cohort_id first", body: `{"cohort_id":"","cohort_changes":null}`, msg: msgCohortID},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			maxIDs := tc.maxIDs
			if maxIDs == 0 {
				maxIDs = 1000
			}
			req, err := parsePartnerUsers([]byte(tc.body), maxIDs, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if tc.msg != "" {
				wantErr(t, req.validate(), 400, tc.msg, tc.detail)
				return
			}
			if err := req.validate(); err != nil {
				t.Fatal(err)
			}
			if req.PartnerAPIKey != "pk" || req.ClientSecret != "cs" || req.CohortID != "c1" {
				t.Fatalf("req %+v", req)
			}
			if tc.want == "" && tc.maxIDs == 0 {
				return
			}
			var d decoded
			if err := req.eachChange(func(c *changeObject) error { d.addChange(c); return nil }); err != nil {
				t.Fatal(err)
			}
			if tc.want != "" && d.String() != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", d.String(), tc.want)
			}
		})
	}
	// Credentials are available although cohort_changes is broken.
	req, err := parsePartnerUsers([]byte(`{"client_secret":"cs","partner_api_key":"pk","cohort_id":"c","cohort_changes":5}`), 1000, 1<<20)
	if err != nil || req.PartnerAPIKey != "pk" || req.ClientSecret != "cs" || req.validate() == nil {
		t.Fatalf("%+v %v", req, err)
	}
	_, err = parsePartnerUsers([]byte(`{"cohort_changes":[{"user_ids":["\udfff"]}]}`), 1000, 1<<20)
	wantErr(t, err, 400, msgMalformedJSON, "surrogate")
}

func TestCheckEscapes(t *testing.T) {
	for body, ok := range map[string]bool{
		`"a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00"`: true,
		`"\\\\u"`:          true, // an escaped backslash, then a plain u
		`"\ud800"`:         false,
		`"\ud800\u0041"`:   false,
		`"\udc00"`:         false,
		`"\ud800\udbff"`:   false,
		`"\u00"`:           false,
		`"\x"`:             false,
		`"\`:               false,
		`"\ud83d\ude00\\"`: true,
	} {
		if err := checkEscapes([]byte(body)); (err == nil) != ok {
			t.Errorf("checkEscapes(%s) = %v, want ok=%v", body, err, ok)
		}
	}
}

func TestParseUsersDelete(t *testing.T) {
	var p fastjson.Parser
	req, err := parseUsersDelete(&p, []byte(`{"user_ids":["a","b"],"aliases":[{"alias_name":"n","alias_label":"l"},{"alias_name":"m","alias_label":"k"}],"x":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(req.UserIDs) != 2 || string(req.UserIDs[1]) != "b" || len(req.DeviceIDs) != 0 ||
		len(req.Aliases) != 2 || string(req.Aliases[0]) != "n\x00l" || string(req.Aliases[1]) != "m\x00k" {
		t.Fatalf("%q", req)
	}
	for body, msg := range map[string]string{
		`[]`:                                   msgMalformedJSON,
		`{"user_ids":"a"}`:                     msgIDsShape,
		`{"device_ids":[null]}`:                msgIDsShape,
		`{"aliases":[{"alias_name":"a"}]}`:     msgIDsShape,
		`{"aliases":{}}`:                       msgIDsShape,
		`{"user_ids":[""]}`:                    "user_ids[0]" + rule,
		`{"device_ids":["a","` + long + `b"]}`: "device_ids[1]" + rule,
		`{"aliases":[{"alias_name":"a","alias_label":"\u0000"}]}`: "aliases[0].alias_label" + rule,
	} {
		_, err := parseUsersDelete(&p, []byte(body))
		wantErr(t, err, 400, msg, "")
	}
}

func TestParseUserRef(t *testing.T) {
	cases := []struct {
		body string
		k    engine.Kind
		key  string
		msg  string
	}{
		{body: `{"external_id":"e"}`, k: engine.KindExternal, key: "e"},
		{body: `{"device_id":"d","x":1}`, k: engine.KindDevice, key: "d"},
		{body: `{"alias_label":"l","alias_name":"n"}`, k: engine.KindAlias, key: "n\x00l"},
		{body: `{}`, msg: msgUserRef},
		{body: `"e"`, msg: msgUserRef},
		{body: `{"external_id":"e","device_id":"d"}`, msg: msgUserRef},
		{body: `{"alias_name":"n"}`, msg: msgUserRef},
		{body: `{"alias_name":"n","alias_label":"l","device_id":"d"}`, msg: msgUserRef},
		{body: `{"external_id":5}`, msg: msgUserRef},
		{body: `{"alias_name":"n","alias_label":null}`, msg: msgUserRef},
		{body: `{"external_id":""}`, msg: "external_id" + rule},
		{body: `{"device_id":"` + long + `x"}`, msg: "device_id" + rule},
		{body: `{"alias_name":"n","alias_label":"\u0000"}`, msg: "alias_label" + rule},
	}
	for _, tc := range cases {
		d := getStream(strings.NewReader(tc.body), false, "")
		k, key, err := d.userRef(0)
		key = bytes.Clone(key)
		putStream(d)
		if tc.msg != "" {
			wantErr(t, err, 400, tc.msg, "")
			continue
		}
		if err != nil || k != tc.k || string(key) != tc.key {
			t.Fatalf("%s: %v %q %v", tc.body, k, key, err)
		}
	}
}

func TestPlainRun(t *testing.T) {
	// Every special byte at every position of a 20-byte run, with and
	// without non-ASCII bytes around it.
	for _, fill := range []byte{'a', 0xc3, 0x7f, 0x20} {
		for _, special := range []byte{'"', '\\', 0x00, 0x1f, 0x0a} {
			for pos := 0; pos <= 20; pos++ {
				b := bytes.Repeat([]byte{fill}, 20)
				if pos < 20 {
					b[pos] = special
				}
				n, hi := plainRun(b)
				wantHi := byte(0)
				if fill >= 0x80 && pos > 0 {
					wantHi = 0x80
				}
				if n != pos || hi != wantHi {
					t.Fatalf("fill %#x special %#x at %d: n=%d hi=%#x", fill, special, pos, n, hi)
				}
			}
		}
	}
	// Against the byte loop, on random mixes of plain, special and high bytes.
	r := rand.New(rand.NewPCG(7, 8))
	alphabet := []byte{'a', 'z', ' ', '!', '#', '[', ']', 0x7f, 0x80, 0xc3, 0xff, '"', '\\', 0, 0x1f, '\n'}
	for range 20000 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
			if r.IntN(3) != 0 {
				b[i] = alphabet[r.IntN(11)] // mostly plain
			}
		}
		wantN, wantHi := 0, byte(0)
		for wantN < len(b) && strPlain[b[wantN]] {
			wantHi |= b[wantN] & 0x80
			wantN++
		}
		if n, hi := plainRun(b); n != wantN || hi != wantHi {
			t.Fatalf("plainRun(%q) = %d, %#x; want %d, %#x", b, n, hi, wantN, wantHi)
		}
	}
}

func TestDecodeChangesAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("coverage and the race detector allocate")
	}
	// Steady state: the pooled decoder does not allocate per identifier or
	// per change object.
	body := benchChangesBody(5000, true)
	var br bytes.Reader
	fn := func(*changeObject) error { return nil }
	allocs := testing.AllocsPerRun(20, func() {
		br.Reset(body)
		if err := decodeChangesNDJSON(&br, fn); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 3 {
		t.Fatalf("%.1f allocations per body of 5,000 ids", allocs)
	}
}

// TestPutStreamDropsReferences: a decoder whose change or keys were filled
// goes back to the pool holding no identifier references, even past the
// slices' lengths (up to the most entries they were filled with).
func TestPutStreamDropsReferences(t *testing.T) {
	d := getStream(bytes.NewReader(nil), false, "")
	c := &d.change
	c.UserIDs = append(c.UserIDs[:0], []byte("a"), []byte("b"), []byte("c"))[:1]
	c.DeviceIDs = append(c.DeviceIDs[:0], []byte("d"))[:0]
	c.Aliases = append(c.Aliases[:0], []byte("e"))[:0]
	d.keys = append(d.keys[:0], []byte("k"), []byte("l"))[:1]
	d.refs = 3 // as the fills note it
	putStream(d)
	for name, s := range map[string][][]byte{"UserIDs": c.UserIDs, "DeviceIDs": c.DeviceIDs, "Aliases": c.Aliases, "keys": d.keys} {
		for i, b := range s[:cap(s)] {
			if b != nil {
				t.Errorf("%s[%d] still references %q after putStream", name, i, b)
			}
		}
	}
	if d.refs != 0 {
		t.Errorf("refs = %d after putStream", d.refs)
	}
}

// TestHeadlineRunsAcrossKinds checks that one-identifier lines of one
// direction reach fn as one change object whatever their kinds (the fast
// path, not one object a line), and that a change of direction, a line
// the fast path does not take, or a timestamp ends the run.
func TestHeadlineRunsAcrossKinds(t *testing.T) {
	body := `{"user_ids":["u1"]}` + "\n" +
		`{"device_ids":["d1"]}` + "\n" +
		`{"aliases":[{"alias_name":"email","alias_label":"1@example.com"}]}` + "\n" +
		`{"user_ids":["u2"],"should_remove":false}` + "\n" +
		`{"user_ids":["u3"],"should_remove":true}` + "\n" +
		`{"aliases":[{"alias_name":"email","alias_label":"3@example.com"}],"should_remove":true}` + "\n" +
		`{"user_ids":["u4"],"timestamp":"2020-01-01T00:00:00Z"}` + "\n" +
		`{"device_ids":["d2"]}` + "\n"
	var got []string
	err := decodeChangesNDJSON(strings.NewReader(body), func(c *changeObject) error {
		var b strings.Builder
		fmt.Fprintf(&b, "remove=%v time=%v", c.Remove, c.HasTime)
		for _, id := range c.UserIDs {
			fmt.Fprintf(&b, " u:%s", id)
		}
		for _, id := range c.DeviceIDs {
			fmt.Fprintf(&b, " d:%s", id)
		}
		for _, id := range c.Aliases {
			name, label := engine.SplitAlias(id)
			fmt.Fprintf(&b, " a:%s/%s", name, label)
		}
		got = append(got, b.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"remove=false time=false u:u1 u:u2 d:d1 a:email/1@example.com",
		"remove=true time=false u:u3 a:email/3@example.com",
		"remove=false time=true u:u4",
		"remove=false time=false d:d2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("change objects:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestDecodersLeaveNoReferences decodes change bodies of each path (runs
// of headline lines; general objects, the longer first) and a members
// batch: whatever the fills left past the slices' lengths, the decoder
// goes back to the pool without references.
func TestDecodersLeaveNoReferences(t *testing.T) {
	check := func(name string, s [][]byte) {
		t.Helper()
		for i, b := range s[:cap(s)] {
			if b != nil {
				t.Errorf("%s[%d] still references %q after the decoder went back", name, i, b)
			}
		}
	}
	for name, body := range map[string]string{
		"headline": strings.Repeat(`{"user_ids":["a"]}`+"\n"+`{"device_ids":["c"]}`+"\n"+`{"aliases":[{"alias_name":"n","alias_label":"l"}]}`+"\n", 6) + `{"user_ids":["b"],"should_remove":true}` + "\n",
		"general":  `{"user_ids":["d","e","f","g"],"device_ids":["h","i","j"]}` + "\n" + `{"user_ids":["k"],"device_ids":["l"]}` + "\n",
	} {
		var seen *changeObject
		if err := decodeChangesNDJSON(strings.NewReader(body), func(c *changeObject) error { seen = c; return nil }); err != nil {
			t.Fatal(err)
		}
		check(name+" UserIDs", seen.UserIDs)
		check(name+" DeviceIDs", seen.DeviceIDs)
		check(name+" Aliases", seen.Aliases)
	}
	var keys [][]byte
	if err := decodeMembersJSON(strings.NewReader(`{"user_ids":["k","l","m"]}`), func(_ engine.Kind, ks [][]byte) error { keys = ks; return nil }); err != nil {
		t.Fatal(err)
	}
	check("keys", keys)
}
