package server

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/cohortd/cohortd/engine"
)

// gen writes random valid bodies in every shape we decode, with the JSON
// corners that matter: escapes of every kind, non-BMP runes, whitespace,
// unknown fields of every type, duplicate keys, and field order.
type gen struct {
	r      *rand.Rand
	b      bytes.Buffer
	ndjson bool // no newlines inside a record
}

func (g *gen) ws() {
	if g.r.IntN(3) != 0 {
		return
	}
	ws := " \t\r\n"
	if g.ndjson {
		ws = " \t\r"
	}
	for range g.r.IntN(3) + 1 {
		g.b.WriteByte(ws[g.r.IntN(len(ws))])
	}
}

var genRunes = []rune("aZ09-_.@+ é€\"\\/\b\f\n\r\t\x01\x1f\u007f\u0080\u00ff\u2028\ufffd\uffff😀𝄞\U0010ffff")

func (g *gen) idString() string {
	switch g.r.IntN(20) {
	case 0:
		return strings.Repeat("x", 510) + "é" // 512 bytes
	case 1:
		var s strings.Builder
		for range g.r.IntN(8) + 1 {
			s.WriteRune(genRunes[g.r.IntN(len(genRunes))])
		}
		return s.String()
	}
	return fmt.Sprintf("user-%d", g.r.IntN(1000))
}

// str writes s as a JSON string, escaping each rune one of several ways.
func (g *gen) str(s string) {
	g.b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			g.b.WriteByte('\\')
			g.b.WriteRune(r)
		case r < 0x20 || g.r.IntN(8) == 0:
			switch {
			case r == '\n' && g.r.IntN(2) == 0:
				g.b.WriteString(`\n`)
			case r == '/' && g.r.IntN(2) == 0:
				g.b.WriteString(`\/`)
			case r > 0xffff:
				r1, r2 := utf16Pair(r)
				fmt.Fprintf(&g.b, `\u%04x\u%04X`, r1, r2)
			default:
				fmt.Fprintf(&g.b, `\u%04x`, r)
			}
		default:
			g.b.WriteRune(r)
		}
	}
	g.b.WriteByte('"')
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// junk writes a random value of any type.
func (g *gen) junk(depth int) {
	g.ws()
	n := 7
	if depth > 3 {
		n = 5
	}
	switch g.r.IntN(n) {
	case 0:
		g.str(g.idString() + "]}\"{[")
	case 1:
		g.b.WriteString([]string{"0", "-0", "12", "-3.25", "1e9", "2E-3", "6.02e+23", "-0.0e0"}[g.r.IntN(8)])
	case 2:
		g.b.WriteString([]string{"true", "false", "null"}[g.r.IntN(3)])
	case 3:
		g.b.WriteString(`""`)
	case 4:
		g.b.WriteString(`"\\\"\u0000"`)
	case 5:
		g.b.WriteByte('[')
		for i := range g.r.IntN(4) {
			if i > 0 {
				g.b.WriteByte(',')
			}
			g.junk(depth + 1)
		}
		g.ws()
		g.b.WriteByte(']')
	case 6:
		g.b.WriteByte('{')
		for i := range g.r.IntN(4) {
			if i > 0 {
				g.b.WriteByte(',')
			}
			g.ws()
			g.str([]string{"user_ids", "aliases", "x", "cohort_changes", "é"}[g.r.IntN(5)])
			g.ws()
			g.b.WriteByte(':')
			g.junk(depth + 1)
		}
		g.ws()
		g.b.WriteByte('}')
	}
	g.ws()
}

// object writes an object of fields in random order, plus junk fields.
func (g *gen) object(fields map[string]func()) {
	keys := make([]string, 0, len(fields)+2)
	for k := range fields {
		keys = append(keys, k)
	}
	for range g.r.IntN(3) {
		keys = append(keys, fmt.Sprintf("unknown%d", g.r.IntN(3)))
	}
	g.r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	g.ws()
	g.b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			g.b.WriteByte(',')
		}
		g.ws()
		if k == "user_ids" && g.r.IntN(10) == 0 {
			g.b.WriteString(`"user\u005fids"`)
		} else {
			g.str(k)
		}
		g.ws()
		g.b.WriteByte(':')
		if f, ok := fields[k]; ok {
			g.ws()
			f()
			g.ws()
		} else {
			g.junk(0)
		}
	}
	g.ws()
	g.b.WriteByte('}')
	g.ws()
}

func (g *gen) array(n int, elem func()) {
	g.b.WriteByte('[')
	for i := range n {
		if i > 0 {
			g.b.WriteByte(',')
		}
		g.ws()
		elem()
		g.ws()
	}
	g.b.WriteByte(']')
}

func (g *gen) ids() {
	g.array(g.r.IntN(6), func() { g.str(g.idString()) })
}

func (g *gen) alias() {
	g.object(map[string]func(){
		"alias_name":  func() { g.str(g.idString()) },
		"alias_label": func() { g.str(g.idString()) },
	})
}

func (g *gen) aliases() { g.array(g.r.IntN(3), g.alias) }

func (g *gen) change() {
	f := map[string]func(){}
	if g.r.IntN(3) != 0 {
		f["user_ids"] = g.ids
	}
	if g.r.IntN(2) == 0 {
		f["device_ids"] = g.ids
	}
	if g.r.IntN(3) == 0 {
		f["aliases"] = g.aliases
	}
	if g.r.IntN(2) == 0 {
		f["should_remove"] = func() { g.b.WriteString([]string{"true", "false"}[g.r.IntN(2)]) }
	}
	if g.r.IntN(3) == 0 {
		f["timestamp"] = func() {
			g.str([]string{"2026-01-02T03:04:05Z", "2009-12-31T23:59:59.999999999-07:00", "2026-11-28T10:00:00.5+01:00"}[g.r.IntN(3)])
		}
	}
	g.object(f)
}

func (g *gen) user() {
	f := map[string]func(){}
	switch g.r.IntN(4) {
	case 0:
		f["external_id"] = func() { g.str(g.idString()) }
	case 1:
		f["device_id"] = func() { g.str(g.idString()) }
	case 2:
		f["aliases"] = func() { g.array(g.r.IntN(2)+1, g.alias) }
	default:
		f["external_id"] = func() { g.str(g.idString()) }
		f["device_id"] = func() { g.str(g.idString()) }
		f["aliases"] = g.aliases
	}
	g.object(f)
}

func (g *gen) member() {
	switch g.r.IntN(3) {
	case 0:
		g.object(map[string]func(){"external_id": func() { g.str(g.idString()) }})
	case 1:
		g.object(map[string]func(){"device_id": func() { g.str(g.idString()) }})
	default:
		g.alias()
	}
}

// body writes a whole body: NDJSON lines of unit, or a JSON object whose
// field top holds an array of units (members: three optional arrays).
func (g *gen) body(shape string, ndjson bool) []byte {
	g.b.Reset()
	g.ndjson = ndjson
	unit := map[string]func(){"changes": g.change, "users": g.user, "members": g.member}[shape]
	n := g.r.IntN(6)
	if ndjson {
		for range n {
			if g.r.IntN(4) == 0 {
				g.b.WriteString(" \r\n")
			}
			unit()
			g.b.WriteString([]string{"\n", "\r\n", " \n"}[g.r.IntN(3)])
		}
		return bytes.Clone(g.b.Bytes())
	}
	switch shape {
	case "changes":
		g.object(map[string]func(){"cohort_changes": func() { g.array(n, unit) }})
	case "users":
		g.object(map[string]func(){"users": func() { g.array(n, unit) }})
	case "members":
		f := map[string]func(){}
		if g.r.IntN(3) != 0 {
			f["user_ids"] = g.ids
		}
		if g.r.IntN(3) != 0 {
			f["device_ids"] = g.ids
		}
		if g.r.IntN(3) != 0 {
			f["aliases"] = g.aliases
		}
		g.object(f)
	}
	return bytes.Clone(g.b.Bytes())
}

// diff decodes body with the scanner (whole and one byte per read) and with
// the reference, and reports any disagreement.
func diff(shape string, ndjson bool, body []byte) error {
	var scan func([]byte, bool) (*decoded, error)
	var ref func([]byte) (*decoded, error)
	switch shape {
	case "changes":
		scan, ref = scanChanges, refChangesJSON
		if ndjson {
			ref = refChangesNDJSON
		}
	case "users":
		scan, ref = scanUsers, refUsersJSON
		if ndjson {
			ref = refUsersNDJSON
		}
	case "members":
		scan, ref = scanMembers, refMembersJSON
		if ndjson {
			ref = refMembersNDJSON
		}
	}
	got, gotErr := scan(body, ndjson)
	want, wantErr := ref(body)
	if err := compareRef(got, gotErr, want, wantErr); err != nil {
		return err
	}
	return nil
}

func TestDecodeDifferential(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 500
	}
	g := &gen{r: rand.New(rand.NewPCG(1, 2))}
	for _, shape := range []string{"changes", "users", "members"} {
		for _, ndjson := range []bool{false, true} {
			for i := range n {
				body := g.body(shape, ndjson)
				if err := diff(shape, ndjson, body); err != nil {
					t.Fatalf("%s ndjson=%v body %d %q: %v", shape, ndjson, i, body, err)
				}
				// Generated bodies are valid: both must accept.
				if _, err := scanAny(shape, ndjson, body, false); err != nil {
					t.Fatalf("%s ndjson=%v body %q: %v", shape, ndjson, body, err)
				}
			}
		}
	}
}

// scanAny decodes with the scanner, optionally one byte per read.
func scanAny(shape string, ndjson bool, body []byte, oneByte bool) (*decoded, error) {
	var d decoded
	r := iotestReader(string(body), oneByte)
	change := func(c *changeObject) error { d.addChange(c); return nil }
	user := func(u *userRecord) error { d.addUser(u); return nil }
	member := func(k engine.Kind, keys [][]byte) error {
		for _, key := range keys {
			d.addMember(k, key)
		}
		return nil
	}
	var err error
	switch {
	case shape == "changes" && ndjson:
		err = decodeChangesNDJSON(r, change)
	case shape == "changes":
		err = decodeChangesJSON(r, change)
	case shape == "users" && ndjson:
		err = decodeUsersNDJSON(r, user)
	case shape == "users":
		err = decodeUsersJSON(r, user)
	case shape == "members" && ndjson:
		err = decodeMembersNDJSON(r, member)
	default:
		err = decodeMembersJSON(r, member)
	}
	return &d, err
}

// fuzzDecoder is the body of every bulk decoder fuzz target: never panic,
// agree with the reference, and decode the same whatever the read sizes.
func fuzzDecoder(t *testing.T, shape string, ndjson bool, body []byte) {
	if err := diff(shape, ndjson, body); err != nil {
		t.Fatal(err)
	}
	a, errA := scanAny(shape, ndjson, body, false)
	b, errB := scanAny(shape, ndjson, body, true)
	if (errA == nil) != (errB == nil) || a.changes() != b.changes() {
		t.Fatalf("read sizes matter: %v / %v\n%s\n--\n%s", errA, errB, a, b)
	}
	if errA != nil && errB != nil && errA.Error() != errB.Error() {
		t.Fatalf("read sizes change the error: %v / %v", errA, errB)
	}
}

// addSeeds adds generated bodies to f's corpus (testdata/fuzz holds more).
func addSeeds(f *testing.F, shape string, ndjson bool, withFlag bool) {
	g := &gen{r: rand.New(rand.NewPCG(3, 4))}
	for range 20 {
		body := g.body(shape, ndjson)
		if withFlag {
			f.Add(body, ndjson)
		} else {
			f.Add(body)
		}
	}
}

func FuzzDecodeChangesJSON(f *testing.F) {
	addSeeds(f, "changes", false, false)
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecoder(t, "changes", false, body) })
}

// headlineBodies are NDJSON bodies in and around the headline shape that
// decodeChangesNDJSON takes a fast path for (headlineLine).
var headlineBodies = []string{
	"{\"user_ids\":[\"u1\"]}\n{\"user_ids\":[\"u2\"],\"should_remove\":true}\n{\"user_ids\":[\"u3\"],\"should_remove\":false}\n",
	"{\"user_ids\":[\"u1\"]}   \r\n\n{\"user_ids\":[\"u\\u0031\"]}\n{\"user_ids\":[\"é\"]}\n",
	"{\"user_ids\":[\"u1\"]}{\"user_ids\":[\"u2\"]}\n",
	"{\"user_ids\":[\"u1\"],\"should_remove\":true,\"x\":1}\n",
	"{\"user_ids\":[\"\"]}\n",
	"{\"user_ids\":[\"" + strings.Repeat("x", 513) + "\"]}\n",
	"{\"user_ids\":[\"u1\",\"u2\"]}\n{\"user_ids\":[\"u1\"]",
	"{\"user_ids\":[\"u\x01\"]}\n",
	"{\"user_ids\":[\"u1\"]}\n{\"user_ids\":[\"u2\"]}\n{\"user_ids\":[\"u3\"]}\n{\"user_ids\":[\"u4\"],\"should_remove\":true}\n{\"user_ids\":[\"u5\"],\"should_remove\":true}\n{\"user_ids\":[\"u6\"]}\n",
	"{\"device_ids\":[\"d1\"]}\n{\"device_ids\":[\"d2\"]}\n{\"user_ids\":[\"u1\"]}\n{\"device_ids\":[\"d3\"],\"should_remove\":true}\n{\"device_ids\":[\"d4\"],\"should_remove\":true}\n",
	"{\"user_ids\":[\"u1\"]}\n{\"device_ids\":[\"u1\"]}\n{\"user_ids\":[\"u1\"],\"should_remove\":true}\n{\"device_ids\":[\"d\\u0031\"]}\n{\"device_ids\":[\"\"]}\n",
	"{\"device_ids\":[\"d1\",\"d2\"]}\n{\"device_ids\":[\"d1\"],\"x\":1}\n{\"device_ids\":[\"" + strings.Repeat("d", 513) + "\"]}\n",
	// The standard mix: runs of one direction across kinds, aliases among them.
	"{\"user_ids\":[\"u1\"]}\n{\"aliases\":[{\"alias_name\":\"email\",\"alias_label\":\"1@example.com\"}]}\n{\"device_ids\":[\"d1\"]}\n{\"user_ids\":[\"u2\"]}\n" +
		"{\"aliases\":[{\"alias_name\":\"email\",\"alias_label\":\"2@example.com\"}],\"should_remove\":true}\n{\"user_ids\":[\"u1\"],\"should_remove\":true}\n{\"device_ids\":[\"d2\"],\"should_remove\":false}\n",
	"{\"user_ids\":[\"u1\"]}\n{\"user_ids\":[\"u2\"],\"timestamp\":\"2009-01-01T00:00:00Z\"}\n{\"device_ids\":[\"d1\"]}\n",
	"{\"aliases\":[{\"alias_label\":\"l\",\"alias_name\":\"n\"}]}\n{\"aliases\":[{\"alias_name\":\"n\",\"alias_label\":\"\"}]}\n{\"aliases\":[{\"alias_name\":\"n\"}]}\n",
	"{\"aliases\":[{\"alias_name\":\"n\",\"alias_label\":\"l\\u0000\"}]}\n{\"aliases\":[{\"alias_name\":\"n\",\"alias_label\":\"l\",\"x\":1}]}\n{\"aliases\":[{\"alias_name\":\"" + strings.Repeat("n", 513) + "\",\"alias_label\":\"l\"}]}\n",
	"{\"aliases\":[{\"alias_name\":\"n\",\"alias_label\":\"l\"},{\"alias_name\":\"m\",\"alias_label\":\"k\"}]}\n{\"aliases\":[{\"alias_name\":\"n\",\"alias_label\":\"l\"}]}\n{\"aliases\":[{\"alias_name\":\"é\",\"alias_label\":\"l\"}]}\n",
}

func TestHeadlineLinesMatchReference(t *testing.T) {
	for _, b := range headlineBodies {
		fuzzDecoder(t, "changes", true, []byte(b))
	}
}

func FuzzDecodeChangesNDJSON(f *testing.F) {
	addSeeds(f, "changes", true, false)
	for _, b := range headlineBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecoder(t, "changes", true, body) })
}

func FuzzDecodeMembers(f *testing.F) {
	addSeeds(f, "members", false, true)
	addSeeds(f, "members", true, true)
	f.Fuzz(func(t *testing.T, body []byte, ndjson bool) { fuzzDecoder(t, "members", ndjson, body) })
}

func FuzzDecodeUsers(f *testing.F) {
	addSeeds(f, "users", false, true)
	addSeeds(f, "users", true, true)
	f.Fuzz(func(t *testing.T, body []byte, ndjson bool) { fuzzDecoder(t, "users", ndjson, body) })
}

// FuzzPartnerUsers checks the fastjson partner decoder: no panic, errors
// are 400 apiErrors, at most maxIDs identifiers, every identifier follows
// the rule, and whenever the reference accepts the body too, both decode
// the same changes.
func FuzzPartnerUsers(f *testing.F) {
	g := &gen{r: rand.New(rand.NewPCG(5, 6))}
	for range 20 {
		body := g.body("changes", false)
		body = append([]byte(`{"cohort_id":"c","partner_api_key":"k",`), bytes.TrimLeft(body, " \t\r\n{")...)
		f.Add(body, uint16(10))
	}
	f.Fuzz(func(t *testing.T, body []byte, maxIDs uint16) {
		req, err := parsePartnerUsers(body, int(maxIDs), 1<<20)
		if err == nil {
			err = req.validate()
		}
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("error is not a 400 apiError: %v", err)
			}
			return
		}
		var got decoded
		n := 0
		if err := req.eachChange(func(c *changeObject) error {
			n += len(c.UserIDs) + len(c.DeviceIDs) + len(c.Aliases)
			got.addChange(c)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if n > int(maxIDs) {
			t.Fatalf("%d identifiers, cap %d", n, maxIDs)
		}
		if got.broken {
			t.Fatalf("broken identifier accepted:\n%s", &got)
		}
		if !utf8.Valid(body) {
			return // the reference would see U+FFFD where we rejected or kept bytes
		}
		want, wantErr := refChangesJSON(body)
		if wantErr == nil && got.String() != want.String() {
			t.Fatalf("mismatch:\npartner:\n%s\nreference:\n%s", &got, want)
		}
	})
}
