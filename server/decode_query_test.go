package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fastjson"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/segment"
)

// queryWorkspace is a workspace whose users u0…u9 hold external ids and
// d0…d9 device ids (anonymous), and alias (email, a0) names u0.
func queryWorkspace(t testing.TB) *engine.Workspace {
	t.Helper()
	e, err := engine.Open(engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.CreateWorkspace("ws")
	w := e.Workspace("ws")
	var b engine.UserBatch
	for i := range 10 {
		b.Add(fmt.Appendf(nil, "u%d", i), nil, nil)
		b.Add(nil, fmt.Appendf(nil, "d%d", i), nil)
	}
	b.Add([]byte("u0"), nil, [][]byte{engine.AliasKey(nil, []byte("email"), []byte("a0"))})
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestDecodeSegmentQuery(t *testing.T) {
	w := queryWorkspace(t)
	id := func(k engine.Kind, key string) engine.UserID { return w.Resolve(k, []byte(key)) }
	u := func(key string) engine.UserID { return id(engine.KindExternal, key) }
	d := func(key string) engine.UserID { return id(engine.KindDevice, key) }
	cases := []struct {
		name, body string
		form       int
		ids        []engine.UserID
		segment    string
		limit      string
		cursor     string
		err        string // message prefix of the 4xx
	}{
		{name: "users", body: `{"users":[{"external_id":"u1"},{"device_id":"d2"},{"alias_name":"email","alias_label":"a0","x":1},{"external_id":"nobody"}],"segment":{"all":true}}`,
			form: formUsers, ids: []engine.UserID{u("u1"), d("d2"), u("u0"), engine.NoUser}, segment: `{"all":true}`},
		{name: "compact external", body: ` { "segment" : { "cohort" : "p/c" } , "external_ids" : ["u3", "u\u0034", "zz"] } `,
			form: formExternalIDs, ids: []engine.UserID{u("u3"), u("u4"), engine.NoUser}, segment: `{ "cohort" : "p/c" }`},
		{name: "compact device, repeated key concatenated", body: `{"device_ids":["d1"],"segment":{"all":true},"device_ids":["d9"]}`,
			form: formDeviceIDs, ids: []engine.UserID{d("d1"), d("d9")}, segment: `{"all":true}`},
		{name: "last segment wins", body: `{"segment":{"not":{"all":true}},"segment":{"all":true},"external_ids":[]}`,
			form: formExternalIDs, segment: `{"all":true}`},
		{name: "limit and cursor", body: `{"segment":{"all":true},"limit":25,"cursor":"abc"}`, segment: `{"all":true}`, limit: "25", cursor: "abc"},
		{name: "null limit and cursor", body: `{"segment":{"all":true},"limit":null,"cursor":null}`, segment: `{"all":true}`},
		{name: "no segment", body: `{"users":[]}`, form: formUsers},
		{name: "two forms", body: `{"users":[],"external_ids":[]}`, err: msgContainsForm},
		{name: "users not an array", body: `{"users":"u1"}`, err: msgUsersArray},
		{name: "compact not strings", body: `{"external_ids":[1]}`, err: msgCompactIDs},
		{name: "compact rule", body: `{"external_ids":[""]}`, err: "external_ids[0]" + ruleSuffix},
		{name: "user ref two ids", body: `{"users":[{"external_id":"u1","device_id":"d1"}]}`, err: msgUserRef},
		{name: "user ref rule", body: `{"users":[{"external_id":"` + strings.Repeat("x", 513) + `"}]}`, err: "external_id" + ruleSuffix},
		{name: "user ref not a string", body: `{"users":[{"external_id":5}]}`, err: msgUserRef},
		{name: "limit not a number", body: `{"limit":"5"}`, err: msgLimit},
		{name: "cursor not a string", body: `{"cursor":5}`, err: msgCursor},
		{name: "not an object", body: `[1]`, err: msgMalformedJSON},
		{name: "malformed", body: `{"segment":{"all":true}`, err: msgMalformedJSON},
		{name: "trailing garbage", body: `{} x`, err: msgMalformedJSON},
		{name: "segment of junk", body: `{"segment":{"all":true,"pad":[` + strings.Repeat("0,", maxSegmentValues) + `0]}}`, err: msgSegmentTooBig},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q := getQuery()
			defer putQuery(q)
			lk := w.NewLookup()
			err := decodeSegmentQuery(strings.NewReader(c.body), q, lk)
			if c.err != "" {
				var ae *apiError
				if !errors.As(err, &ae) || ae.status != 400 || !strings.HasPrefix(ae.message, c.err) {
					t.Fatalf("error %v, want 400 %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if q.form != c.form || string(q.segment) != c.segment || string(q.limit) != c.limit || string(q.cursor) != c.cursor {
				t.Fatalf("form %d segment %q limit %q cursor %q", q.form, q.segment, q.limit, q.cursor)
			}
			if got := lk.IDs(); fmt.Sprint(got) != fmt.Sprint(c.ids) && !(len(got) == 0 && len(c.ids) == 0) {
				t.Fatalf("ids %v, want %v", got, c.ids)
			}
		})
	}
	t.Run("without a lookup users are unknown fields", func(t *testing.T) {
		q := getQuery()
		defer putQuery(q)
		if err := decodeSegmentQuery(strings.NewReader(`{"segment":{"all":true},"users":[1,2],"external_ids":5}`), q, nil); err != nil || q.form != formNone {
			t.Fatalf("%v form %d", err, q.form)
		}
	})
	t.Run("segment across buffer refills", func(t *testing.T) {
		// An expression longer than the scanner's buffer, with whitespace
		// and escapes, comes back byte for byte.
		var seg strings.Builder
		seg.WriteString(`{ "or" : [`)
		for i := range 1000 {
			if i > 0 {
				seg.WriteString(" ,\n\t")
			}
			fmt.Fprintf(&seg, `{"cohort":"p/c\u00e9%d-%s"}`, i, strings.Repeat("y", 100))
		}
		seg.WriteString("] }")
		body := `{"limit":3,"segment":` + seg.String() + `,"cursor":null}`
		if len(body) <= scanBufSize {
			t.Fatalf("body of %d bytes fits the buffer", len(body))
		}
		q := getQuery()
		defer putQuery(q)
		if err := decodeSegmentQuery(strings.NewReader(body), q, nil); err != nil {
			t.Fatal(err)
		}
		if string(q.segment) != seg.String() || string(q.limit) != "3" {
			t.Fatalf("segment of %d bytes captured as %d", seg.Len(), len(q.segment))
		}
	})
	t.Run("at most maxQueryIDs", func(t *testing.T) {
		var b bytes.Buffer
		b.WriteString(`{"external_ids":[`)
		for i := 0; i <= maxQueryIDs; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`"x"`)
		}
		b.WriteString(`]}`)
		q := getQuery()
		defer putQuery(q)
		var ae *apiError
		if err := decodeSegmentQuery(&b, q, w.NewLookup()); !errors.As(err, &ae) || ae.message != msgTooManyQueryID {
			t.Fatalf("%v", err)
		}
	})
}

func TestDecodeUsersDelete(t *testing.T) {
	req, err := decodeUsersDelete(strings.NewReader(`{"user_ids":["a","b"],"aliases":[{"alias_name":"n","alias_label":"l"}],"device_ids":["d"],"user_ids":["c"],"x":[1]}`))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%q %q %q", req.UserIDs, req.DeviceIDs, req.Aliases)
	if want := fmt.Sprintf("%q %q %q", []string{"a", "b", "c"}, []string{"d"}, []string{"n\x00l"}); got != want {
		t.Fatalf("%s, want %s", got, want)
	}
	for _, bad := range []string{`[]`, `{"user_ids":"a"}`, `{"user_ids":[""]}`, `{"aliases":[{"alias_name":"n"}]}`} {
		if _, err := decodeUsersDelete(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestScanPartnerCreds(t *testing.T) {
	var c partnerCreds
	for _, tc := range []struct{ body, key, secret, err string }{
		{body: `{"cohort_changes":[{"user_ids":["a"]}],"partner_api_key":"k1","client_secret":"s1"}`, key: "k1", secret: "s1"},
		{body: `{"partner_api_key":"k1","partner_api_key":"k2","client_secret":5}`, key: "k2"},
		{body: `{"partner_api_key":"` + strings.Repeat("k", maxSecretLen+1) + `","client_secret":"s\u0031"}`, secret: "s1"},
		{body: `{"partner_api_key":"\ud800"}`, err: msgMalformedJSON},
		{body: `{"x":"\udc00"}`, err: msgMalformedJSON},
		{body: `[]`, err: msgMalformedJSON},
		{body: `{"partner_api_key":"k"`, err: msgMalformedJSON},
		{body: `{"pad":[` + strings.Repeat("0,", 100) + `0]}`, err: "request body has more than 50 JSON values"},
	} {
		err := scanPartnerCreds([]byte(tc.body), 50, &c)
		if tc.err != "" {
			var ae *apiError
			if !errors.As(err, &ae) || !strings.HasPrefix(ae.message, tc.err) {
				t.Errorf("%.40s: error %v, want %q", tc.body, err, tc.err)
			}
			continue
		}
		if err != nil || string(c.PartnerAPIKey) != tc.key || string(c.ClientSecret) != tc.secret {
			t.Errorf("%.40s: %q %q %v", tc.body, c.PartnerAPIKey, c.ClientSecret, err)
		}
	}
}

// FuzzPartnerCreds checks authentication before parsing: the scanners that
// pull the credentials out of a partner body (scanPartnerCreds for
// /cohorts, parsePartnerUsers for /cohorts/users, both building no tree)
// never panic, fail only with a 4xx, accept every object fastjson accepts,
// and find the credentials it would.
func FuzzPartnerCreds(f *testing.F) {
	f.Add([]byte(`{"partner_api_key":"k","client_secret":"s","cohort_id":"c","cohort_changes":[]}`))
	f.Add([]byte(`{"cohort_changes":[{"user_ids":["a"],"aliases":[{"alias_name":"n","alias_label":"l"}]}],"client_secret":"s\u00e9","partner_api_key":"k\n"}`))
	f.Add([]byte(`{"partner_api_key":1,"partner_api_key":"k2","x":{"y":[true,null,-1.5e3]}}`))
	f.Add([]byte(`{"pad":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}`))
	var p fastjson.Parser
	var c partnerCreds
	f.Fuzz(func(t *testing.T, body []byte) {
		err := scanPartnerCreds(body, 32, &c)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || (ae.status != 400 && ae.status != 413) {
				t.Fatalf("error is not a 400 or 413 apiError: %v", err)
			}
		}
		o, perr := parseJSONObject(&p, body)
		if perr != nil {
			return
		}
		values := 0
		var count func(v *fastjson.Value)
		count = func(v *fastjson.Value) {
			switch v.Type() {
			case fastjson.TypeObject:
				v.GetObject().Visit(func(_ []byte, v *fastjson.Value) { values++; count(v) })
			case fastjson.TypeArray:
				for _, e := range v.GetArray() {
					values++
					count(e)
				}
			}
		}
		o.Visit(func(_ []byte, v *fastjson.Value) { values++; count(v) })
		if values > 32 {
			return // over the cap: a 413 is right
		}
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) && len(ae.errors) > 0 && strings.Contains(ae.errors[0], "control character") {
				return // fastjson keeps raw control characters in strings; JSON does not allow them
			}
			if !json.Valid(body) {
				return // fastjson is lax about numbers ("[.]" parses); the scanner follows RFC 8259
			}
			t.Fatalf("fastjson accepts the object, the scanner says %v", err)
		}
		var key, secret string
		o.Visit(func(k []byte, v *fastjson.Value) {
			switch string(k) {
			case "partner_api_key":
				key = stringOf(v)
			case "client_secret":
				secret = stringOf(v)
			}
		})
		if len(key) > maxSecretLen {
			key = ""
		}
		if len(secret) > maxSecretLen {
			secret = ""
		}
		if string(c.PartnerAPIKey) != key || string(c.ClientSecret) != secret {
			t.Fatalf("scanner found %q %q, fastjson %q %q", c.PartnerAPIKey, c.ClientSecret, key, secret)
		}
		// The one-pass decoder of cohorts/users finds the same credentials,
		// whatever the rest of the body holds.
		req, err := parsePartnerUsers(body, 1000, 32)
		if err != nil {
			t.Fatalf("parsePartnerUsers: %v", err)
		}
		if req.PartnerAPIKey != key || req.ClientSecret != secret {
			t.Fatalf("parsePartnerUsers found %q %q, fastjson %q %q", req.PartnerAPIKey, req.ClientSecret, key, secret)
		}
	})
}

// FuzzDecodeSegmentQuery checks the segment query decoder: no panic, only
// 400/413 errors, and on a body encoding/json accepts too, the same segment
// and the same number of identifiers.
func FuzzDecodeSegmentQuery(f *testing.F) {
	f.Add([]byte(`{"segment":{"and":[{"cohort":"p/a"},{"not":{"cohort":"p/b"}}]},"users":[{"external_id":"u1"},{"device_id":"d1"},{"alias_name":"email","alias_label":"a0"}]}`))
	f.Add([]byte(`{"segment":{"all":true},"external_ids":["u1","u\u00e9"],"limit":10,"cursor":null}`))
	f.Add([]byte(`{"device_ids":["d1"],"segment":{"or":[{"all":true}]},"x":[{},[],""]}`))
	f.Add([]byte(`{"segment":{"cohort":"p/a"},"external_ids":["u1","u7","nobody"],"segment":{"cohort":"p/b"}}`))
	f.Add([]byte(`{"segment":{"and":[{"cohort":"p/b"},{"cohort":"p/a"}]},"segment":{"not":{"cohort":"p/a"}},"users":[{"external_id":"u2"}]}`))
	w := queryWorkspace(f)
	// Cohorts whose key filters are earned, so that a body that names its
	// segment first resolves through them (bindEarly).
	for c, keys := range map[string][]string{"a": {"u0", "u1", "u2", "u3"}, "b": {"u3", "u4", "u9"}} {
		cs := w.NewChangeSet()
		for _, k := range keys {
			cs.AddMany(engine.KindExternal, [][]byte{[]byte(k)}, false)
		}
		if _, err := w.ApplyChanges("p", c, cs); err != nil {
			f.Fatal(err)
		}
		w.LookupSet(w.Cohort("p", c), 1<<20)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		q := getQuery()
		defer putQuery(q)
		lk := w.NewLookup()
		err := decodeSegmentQuery(bytes.NewReader(body), q, lk)

		// The same body with the segment bound as soon as it comes:
		// the same outcome, but for a segment repeated after
		// identifiers, and the same answers.
		q2 := getQuery()
		defer putQuery(q2)
		q2.ws = w
		lk2 := w.NewLookup()
		err2 := decodeSegmentQuery(bytes.NewReader(body), q2, lk2)
		if q2.bound != nil {
			defer q2.bound.Release()
		}
		var ae2 *apiError
		switch {
		case err2 != nil && errors.As(err2, &ae2) && ae2.message == msgSegmentAgain:
		case (err == nil) != (err2 == nil):
			t.Fatalf("decoding with the segment bound early: %v, without: %v", err2, err)
		case err == nil && q.segment != nil:
			seg, perr := w.Segment(q.segment, segment.Parse)
			if perr != nil {
				break
			}
			b := w.Bind(seg)
			defer b.Release()
			b2 := q2.bound
			if b2 == nil {
				b2 = w.Bind(seg)
				defer b2.Release()
			}
			ids, ids2 := lk.IDs(), lk2.IDs()
			if len(ids) != len(ids2) {
				t.Fatalf("%d identifiers, %d with the segment bound early", len(ids), len(ids2))
			}
			for i := range ids {
				if b.Contains(ids[i]) != b2.Contains(ids2[i]) {
					t.Fatalf("identifier %d: %v, with the segment bound early %v", i, b.Contains(ids[i]), b2.Contains(ids2[i]))
				}
			}
		}

		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || (ae.status != 400 && ae.status != 413) {
				t.Fatalf("error is not a 400 or 413 apiError: %v", err)
			}
			return
		}
		if lk.Len() != q.ids || q.ids > maxQueryIDs {
			t.Fatalf("%d identifiers looked up, %d counted", lk.Len(), q.ids)
		}
		var ref map[string]json.RawMessage
		if json.Unmarshal(body, &ref) != nil {
			return
		}
		if seg, ok := ref["segment"]; ok && q.segment != nil {
			var a, b any
			if json.Unmarshal(seg, &a) != nil || json.Unmarshal(q.segment, &b) != nil || fmt.Sprint(a) != fmt.Sprint(b) {
				t.Fatalf("segment %s, reference %s", q.segment, seg)
			}
		}
	})
}

// FuzzDecodeUsersDelete checks the streamed delete decoder against the
// fastjson one it replaced: no panic, 400s only, the same identifiers
// whenever both accept the body.
func FuzzDecodeUsersDelete(f *testing.F) {
	f.Add([]byte(`{"user_ids":["a","b"],"device_ids":["d"],"aliases":[{"alias_name":"n","alias_label":"l"}]}`))
	f.Add([]byte(`{"user_ids":["a"],"user_ids":["\u00e9"],"x":null}`))
	var p fastjson.Parser
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := decodeUsersDelete(bytes.NewReader(body))
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("error is not a 400 apiError: %v", err)
			}
			return
		}
		want, werr := parseUsersDelete(&p, body)
		if werr != nil {
			return
		}
		if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
			t.Fatalf("streamed %q, fastjson %q", got, want)
		}
	})
}

// TestUserRefFastPathAgrees decodes the same user references written as
// encoders write them ({"external_id":"…"}, which plainUserRef takes) and
// spaced out (which only the object scanner takes): the ids looked up must
// be the same, whatever falls on a buffer boundary, and references the
// fast path must refuse (escapes, non-ASCII, empty, extra fields, aliases)
// must still decode or fail as the general path says.
func TestUserRefFastPathAgrees(t *testing.T) {
	w := queryWorkspace(t)
	r := rand.New(rand.NewPCG(3, 4))
	refs := []string{
		`{"external_id":"u1"}`, `{"device_id":"d2"}`, `{"external_id":"nobody"}`,
		`{"external_id":"u\u0031"}`, `{"external_id":"é"}`, `{"device_id":"d3","x":1}`,
		`{"alias_name":"email","alias_label":"a0"}`, `{"external_id":"u4" }`,
		`{"device_id":"` + strings.Repeat("d", maxIDLen) + `"}`,
	}
	decode := func(body []byte) ([]engine.UserID, error) {
		q := getQuery()
		defer putQuery(q)
		lk := w.NewLookup()
		if err := decodeSegmentQuery(bytes.NewReader(body), q, lk); err != nil {
			return nil, err
		}
		return slices.Clone(lk.IDs()), nil
	}
	for round := range 20 {
		var compact, spaced bytes.Buffer
		compact.WriteString(`{"segment":{"all":true},"users":[`)
		spaced.WriteString(`{ "segment" : { "all" : true } , "users" : [ `)
		n := 1 + r.IntN(3000)
		for i := range n {
			ref := refs[r.IntN(len(refs))]
			if r.IntN(3) == 0 {
				ref = fmt.Sprintf(`{"external_id":"u%d"}`, r.IntN(12))
			}
			if i > 0 {
				compact.WriteByte(',')
				spaced.WriteString(" , ")
			}
			compact.WriteString(ref)
			spaced.WriteString(strings.NewReplacer(`{`, `{ `, `":`, `" : `, `}`, ` }`).Replace(ref))
		}
		compact.WriteString(`]}`)
		spaced.WriteString(` ] }`)
		got, err := decode(compact.Bytes())
		want, werr := decode(spaced.Bytes())
		if (err == nil) != (werr == nil) || !slices.Equal(got, want) {
			t.Fatalf("round %d (%d refs): compact %v %v, spaced %v %v", round, n, len(got), err, len(want), werr)
		}
		if err == nil && len(got) != n {
			t.Fatalf("round %d: %d ids for %d references", round, len(got), n)
		}
	}
	// An id over the limit is refused by both paths alike.
	long := `{"users":[{"external_id":"` + strings.Repeat("x", maxIDLen+1) + `"}]}`
	if _, err := decode([]byte(long)); err == nil {
		t.Fatal("an id over the limit was accepted")
	}
}
