package server

import (
	"bytes"
	"fmt"
	"github.com/cohortd/cohortd/index"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// Small bodies, parsed whole with a pooled fastjson parser (partner
// endpoints: at most -partner-max-body, 8 MiB by default).
//
// Everything these functions return that is not a Go string (identifier
// slices, *fastjson.Value) points into the parser's memory: it is valid
// until the parser parses again or goes back to its pool.

// checkEscapes rejects what fastjson would silently keep verbatim: an
// unknown escape (\x), a short or non-hex \u escape, and a lone UTF-16
// surrogate. Backslashes only occur inside strings in valid JSON (fastjson
// rejects them elsewhere), so a sequential walk over the backslashes sees
// every escape exactly once. Bodies without a backslash cost one IndexByte.
func checkEscapes(b []byte) error {
	for i := bytes.IndexByte(b, '\\'); i >= 0; {
		if i+1 >= len(b) {
			return badRequest(msgMalformedJSON, fmt.Sprintf("offset %d: unterminated escape", i))
		}
		switch b[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			if i+6 > len(b) {
				return badRequest(msgMalformedJSON, fmt.Sprintf("offset %d: invalid \\u escape", i))
			}
			r, ok := hex4(b[i+2 : i+6])
			if !ok {
				return badRequest(msgMalformedJSON, fmt.Sprintf("offset %d: invalid \\u escape", i))
			}
			if utf16.IsSurrogate(r) {
				lone := true
				if r < 0xdc00 && i+12 <= len(b) && b[i+6] == '\\' && b[i+7] == 'u' {
					if r2, ok := hex4(b[i+8 : i+12]); ok && r2 >= 0xdc00 && r2 < 0xe000 {
						lone = false
						i += 6
					}
				}
				if lone {
					return badRequest(msgMalformedJSON, fmt.Sprintf("offset %d: lone UTF-16 surrogate in \\u escape", i))
				}
			}
			i += 6
		default:
			return badRequest(msgMalformedJSON, fmt.Sprintf("offset %d: invalid escape \\%c", i, b[i+1]))
		}
		j := bytes.IndexByte(b[i:], '\\')
		if j < 0 {
			break
		}
		i += j
	}
	return nil
}

// parseJSON parses body with p. Any failure, including invalid escapes that
// fastjson would accept (see checkEscapes), is a 400 "malformed JSON body".
// The value is owned by p; body is not retained (p copies it).
func parseJSON(p *fastjson.Parser, body []byte) (*fastjson.Value, error) {
	if err := checkEscapes(body); err != nil {
		return nil, err
	}
	v, err := p.ParseBytes(body)
	if err != nil {
		return nil, badRequest(msgMalformedJSON, err.Error())
	}
	return v, nil
}

// parseJSONObject is parseJSON for bodies that must be an object.
func parseJSONObject(p *fastjson.Parser, body []byte) (*fastjson.Object, error) {
	v, err := parseJSON(p, body)
	if err != nil {
		return nil, err
	}
	o, err := v.Object()
	if err != nil {
		return nil, badRequest(msgMalformedJSON, "the body must be a JSON object")
	}
	return o, nil
}

// stringOf returns v as a Go string if it is a JSON string, else "".
func stringOf(v *fastjson.Value) string {
	if v == nil || v.Type() != fastjson.TypeString {
		return ""
	}
	b, _ := v.StringBytes()
	return string(b)
}

// idOf returns v's bytes (owned by the parser) if it is a string that
// follows the identifier rule.
func idOf(v *fastjson.Value) ([]byte, bool) {
	if v == nil || v.Type() != fastjson.TypeString {
		return nil, false
	}
	b, _ := v.StringBytes()
	return b, validID(b)
}

// partnerCohortReq is the body of POST /partners/{partner}/cohorts.
//
// Parsing only fails on a body that is not a JSON object; field errors are
// kept for validate, so that the handler checks the credentials first (401
// before 400, as the partner API does) and the fields second.
type partnerCohortReq struct {
	PartnerAPIKey string
	ClientSecret  string
	CohortID      string
	Name          string
	CreatedAt     time.Time

	invalid error // first field error, in docs/API.md §3 order
}

// validate returns the first field error (a 400 apiError), or nil.
func (r *partnerCohortReq) validate() error { return r.invalid }

// parsePartnerCohort parses a /partners/{partner}/cohorts body. The
// returned request holds Go strings and no reference to p or body.
func parsePartnerCohort(p *fastjson.Parser, body []byte) (partnerCohortReq, error) {
	var req partnerCohortReq
	o, err := parseJSONObject(p, body)
	if err != nil {
		return req, err
	}
	var cohortID, name, createdAt *fastjson.Value
	o.Visit(func(key []byte, v *fastjson.Value) { // the last of duplicate keys wins
		switch string(key) {
		case "partner_api_key":
			req.PartnerAPIKey = stringOf(v)
		case "client_secret":
			req.ClientSecret = stringOf(v)
		case "cohort_id":
			cohortID = v
		case "name":
			name = v
		case "created_at":
			createdAt = v
		}
	})
	id, ok := idOf(cohortID)
	if !ok {
		req.invalid = badRequest(msgCohortID)
		return req, nil
	}
	req.CohortID = string(id)
	// A name is free text, but still valid UTF-8 without NUL, of any length
	// the body allows.
	if name == nil || name.Type() != fastjson.TypeString {
		req.invalid = badRequest(msgName)
		return req, nil
	}
	nb, _ := name.StringBytes()
	if len(nb) == 0 || !validText(nb) {
		req.invalid = badRequest(msgName)
		return req, nil
	}
	req.Name = string(nb)
	if createdAt == nil || createdAt.Type() != fastjson.TypeString {
		req.invalid = badRequest(msgCreatedAt)
		return req, nil
	}
	cb, _ := createdAt.StringBytes()
	t, ok := parseTime(cb)
	if !ok {
		req.invalid = badRequest(msgCreatedAt)
		return req, nil
	}
	req.CreatedAt = t
	return req, nil
}

// validText reports whether b is valid UTF-8 without NUL (any length).
func validText(b []byte) bool {
	return bytes.IndexByte(b, 0) < 0 && utf8.Valid(b)
}

// partnerUsersReq is the body of POST /partners/{partner}/cohorts/users,
// parsed and fully validated (shape, identifier rule, cap) before anything
// is applied. As for partnerCohortReq, field errors wait in validate so
// the handler can check the credentials first.
type partnerUsersReq struct {
	PartnerAPIKey string
	ClientSecret  string
	CohortID      string

	changes []changeObject
	ids     int // identifiers as sent, duplicates included
	invalid error
}

// validate returns the first field error (a 400 apiError), or nil.
func (r *partnerUsersReq) validate() error { return r.invalid }

// eachChange calls fn for each change object in body order, stopping at
// fn's first error. It must only be called when validate returned nil.
// The change objects and their identifier bytes are owned by the parser:
// valid until it parses again or returns to its pool.
func (r *partnerUsersReq) eachChange(fn func(c *changeObject) error) error {
	for i := range r.changes {
		if err := fn(&r.changes[i]); err != nil {
			return err
		}
	}
	return nil
}

// parsePartnerUsers parses and validates a /partners/{partner}/cohorts/users
// body. maxIDs caps the identifiers of the whole request as sent (user_ids +
// device_ids + aliases over all change objects, duplicates included).
// Only a body that is not a JSON object is an error here; see validate.
func parsePartnerUsers(p *fastjson.Parser, body []byte, maxIDs int) (partnerUsersReq, error) {
	var req partnerUsersReq
	o, err := parseJSONObject(p, body)
	if err != nil {
		return req, err
	}
	var cohortID *fastjson.Value
	var changes []*fastjson.Value
	o.Visit(func(key []byte, v *fastjson.Value) {
		switch string(key) {
		case "partner_api_key":
			req.PartnerAPIKey = stringOf(v)
		case "client_secret":
			req.ClientSecret = stringOf(v)
		case "cohort_id":
			cohortID = v
		case "cohort_changes":
			// A repeated cohort_changes key is concatenated, as the
			// streaming decoder (decodeChangesJSON) must do.
			changes = append(changes, v)
		}
	})
	id, ok := idOf(cohortID)
	if !ok {
		req.invalid = badRequest(msgCohortID)
		return req, nil
	}
	req.CohortID = string(id)
	req.invalid = req.parseChanges(changes, maxIDs)
	return req, nil
}

// partnerRange locates one change object's identifiers while the flat
// slices still grow.
type partnerRange struct{ users, devices, aliases [2]int }

func (r *partnerUsersReq) parseChanges(vs []*fastjson.Value, maxIDs int) error {
	if len(vs) == 0 {
		return badRequest(msgChangesShape, "cohort_changes is required")
	}
	var arr []*fastjson.Value
	for _, v := range vs {
		a, err := v.Array()
		if err != nil {
			return badRequest(msgChangesShape, "cohort_changes: expected an array of objects")
		}
		if arr == nil {
			arr = a // the usual single key: no copy
		} else {
			arr = append(arr[:len(arr):len(arr)], a...)
		}
	}
	var (
		flat    [][]byte // user and device ids, owned by the parser
		arena   []byte   // alias keys
		aliases []span
		ranges  = make([]partnerRange, len(arr))
	)
	r.changes = make([]changeObject, len(arr))
	for i, cv := range arr {
		path := func(field string) string { return fmt.Sprintf("cohort_changes[%d]%s", i, field) }
		shape := func(field, want string) error {
			return badRequest(msgChangesShape, path(field)+": expected "+want)
		}
		co, err := cv.Object()
		if err != nil {
			return shape("", "an object")
		}
		c := &r.changes[i]
		rg := &ranges[i]
		ids := func(v *fastjson.Value, field string) ([2]int, error) {
			if v.Type() != fastjson.TypeArray {
				return [2]int{}, shape("."+field, "an array of strings")
			}
			a, _ := v.Array()
			if r.ids += len(a); r.ids > maxIDs {
				return [2]int{}, tooManyIDs(maxIDs)
			}
			from := len(flat)
			for j, e := range a {
				if e.Type() != fastjson.TypeString {
					return [2]int{}, shape(fmt.Sprintf(".%s[%d]", field, j), "a string")
				}
				b, ok := idOf(e)
				if !ok {
					return [2]int{}, ruleError(path(fmt.Sprintf(".%s[%d]", field, j)))
				}
				flat = append(flat, b)
			}
			return [2]int{from, len(flat)}, nil
		}
		var ferr error
		co.Visit(func(key []byte, v *fastjson.Value) {
			if ferr != nil {
				return
			}
			switch string(key) {
			case "user_ids":
				rg.users, ferr = ids(v, "user_ids")
			case "device_ids":
				rg.devices, ferr = ids(v, "device_ids")
			case "aliases":
				if v.Type() != fastjson.TypeArray {
					ferr = shape(".aliases", "an array of objects")
					return
				}
				a, _ := v.Array()
				if r.ids += len(a); r.ids > maxIDs {
					ferr = tooManyIDs(maxIDs)
					return
				}
				from := len(aliases)
				for j, e := range a {
					name, label, err := aliasOf(e, path(fmt.Sprintf(".aliases[%d]", j)), msgChangesShape)
					if err != nil {
						ferr = err
						return
					}
					off := len(arena)
					arena = index.AliasKey(arena, name, label)
					aliases = append(aliases, span{off, len(arena)})
				}
				rg.aliases = [2]int{from, len(aliases)}
			case "should_remove":
				switch v.Type() {
				case fastjson.TypeTrue:
					c.Remove = true
				case fastjson.TypeFalse:
					c.Remove = false
				default:
					ferr = shape(".should_remove", "a boolean")
				}
			case "timestamp":
				var t time.Time
				ok := v.Type() == fastjson.TypeString
				if ok {
					b, _ := v.StringBytes()
					t, ok = parseTime(b)
				}
				if !ok {
					ferr = shape(".timestamp", "an RFC 3339 time string")
					return
				}
				c.HasTime, c.Time = true, t
			}
		})
		if ferr != nil {
			return ferr
		}
	}
	// The flat slices are final now: cut each change's identifiers out of
	// them (sharing their backing arrays).
	keys := make([][]byte, len(aliases))
	for i, sp := range aliases {
		keys[i] = arena[sp.off:sp.end:sp.end]
	}
	for i := range r.changes {
		c, rg := &r.changes[i], &ranges[i]
		c.UserIDs = flat[rg.users[0]:rg.users[1]:rg.users[1]]
		c.DeviceIDs = flat[rg.devices[0]:rg.devices[1]:rg.devices[1]]
		c.Aliases = keys[rg.aliases[0]:rg.aliases[1]:rg.aliases[1]]
	}
	return nil
}

// aliasOf returns the name and label of an alias object (owned by the
// parser). path names the object in errors; shapeMsg is the 400 message
// when it is not an object with two string fields.
func aliasOf(v *fastjson.Value, path, shapeMsg string) (name, label []byte, err error) {
	o, oerr := v.Object()
	if oerr != nil {
		return nil, nil, badRequest(shapeMsg, path+": expected an object with string alias_name and alias_label")
	}
	var nv, lv *fastjson.Value
	o.Visit(func(key []byte, v *fastjson.Value) {
		switch string(key) {
		case "alias_name":
			nv = v
		case "alias_label":
			lv = v
		}
	})
	if nv == nil || lv == nil || nv.Type() != fastjson.TypeString || lv.Type() != fastjson.TypeString {
		return nil, nil, badRequest(shapeMsg, path+": expected an object with string alias_name and alias_label")
	}
	name, ok := idOf(nv)
	if !ok {
		return nil, nil, ruleError(path + ".alias_name")
	}
	label, ok = idOf(lv)
	if !ok {
		return nil, nil, ruleError(path + ".alias_label")
	}
	return name, label, nil
}

// usersDeleteReq is the body of POST /v1/users/delete, grouped by kind.
// UserIDs and DeviceIDs are owned by the parser; Aliases (alias keys) are
// allocated per request.
type usersDeleteReq struct {
	UserIDs   [][]byte
	DeviceIDs [][]byte
	Aliases   [][]byte
}

// parseUsersDelete parses {"user_ids":[…],"device_ids":[…],"aliases":[…]}
// (every array optional) and checks every identifier.
func parseUsersDelete(p *fastjson.Parser, body []byte) (usersDeleteReq, error) {
	var req usersDeleteReq
	o, err := parseJSONObject(p, body)
	if err != nil {
		return req, err
	}
	// Repeated keys are concatenated, as decodeMembersJSON does.
	var users, devices, aliases []*fastjson.Value
	o.Visit(func(key []byte, v *fastjson.Value) {
		switch string(key) {
		case "user_ids":
			users = append(users, v)
		case "device_ids":
			devices = append(devices, v)
		case "aliases":
			aliases = append(aliases, v)
		}
	})
	concat := func(vs []*fastjson.Value, field, want string) ([]*fastjson.Value, error) {
		var all []*fastjson.Value
		for _, v := range vs {
			a, err := v.Array()
			if err != nil {
				return nil, badRequest(msgIDsShape, field+": expected "+want)
			}
			all = append(all, a...)
		}
		return all, nil
	}
	ids := func(vs []*fastjson.Value, field string) ([][]byte, error) {
		a, err := concat(vs, field, "an array of strings")
		if err != nil || len(a) == 0 {
			return nil, err
		}
		out := make([][]byte, 0, len(a))
		for i, e := range a {
			if e.Type() != fastjson.TypeString {
				return nil, badRequest(msgIDsShape, fmt.Sprintf("%s[%d]: expected a string", field, i))
			}
			b, ok := idOf(e)
			if !ok {
				return nil, ruleError(fmt.Sprintf("%s[%d]", field, i))
			}
			out = append(out, b)
		}
		return out, nil
	}
	if req.UserIDs, err = ids(users, "user_ids"); err != nil {
		return usersDeleteReq{}, err
	}
	if req.DeviceIDs, err = ids(devices, "device_ids"); err != nil {
		return usersDeleteReq{}, err
	}
	a, err := concat(aliases, "aliases", "an array of objects")
	if err != nil {
		return usersDeleteReq{}, err
	}
	if len(a) > 0 {
		var arena []byte
		ends := make([]int, 0, len(a))
		for i, e := range a {
			name, label, err := aliasOf(e, fmt.Sprintf("aliases[%d]", i), msgIDsShape)
			if err != nil {
				return usersDeleteReq{}, err
			}
			arena = index.AliasKey(arena, name, label)
			ends = append(ends, len(arena))
		}
		req.Aliases = make([][]byte, len(ends))
		off := 0
		for i, end := range ends {
			req.Aliases[i] = arena[off:end:end]
			off = end
		}
	}
	return req, nil
}

// parseUserRef decodes one user reference of /v1/segments/contains:
// {"external_id"} | {"device_id"} | {"alias_name","alias_label"}, exactly
// one identifier (other fields ignored). External and device ids are owned
// by the parser; an alias key is newly allocated. Errors are 400s whose
// details the caller may prefix with the element's position.
func parseUserRef(v *fastjson.Value) (index.Kind, []byte, error) {
	o, err := v.Object()
	if err != nil {
		return 0, nil, badRequest(msgUserRef)
	}
	var ext, dev, name, label *fastjson.Value
	o.Visit(func(key []byte, v *fastjson.Value) {
		switch string(key) {
		case "external_id":
			ext = v
		case "device_id":
			dev = v
		case "alias_name":
			name = v
		case "alias_label":
			label = v
		}
	})
	alias := name != nil || label != nil
	var (
		k     index.Kind
		field string
		src   *fastjson.Value
	)
	switch {
	case ext != nil && dev == nil && !alias:
		k, field, src = index.KindExternal, "external_id", ext
	case dev != nil && ext == nil && !alias:
		k, field, src = index.KindDevice, "device_id", dev
	case name != nil && label != nil && ext == nil && dev == nil:
		if name.Type() != fastjson.TypeString || label.Type() != fastjson.TypeString {
			return 0, nil, badRequest(msgUserRef)
		}
		n, ok := idOf(name)
		if !ok {
			return 0, nil, ruleError("alias_name")
		}
		l, ok := idOf(label)
		if !ok {
			return 0, nil, ruleError("alias_label")
		}
		return index.KindAlias, index.AliasKey(make([]byte, 0, len(n)+1+len(l)), n, l), nil
	default:
		return 0, nil, badRequest(msgUserRef)
	}
	if src.Type() != fastjson.TypeString {
		return 0, nil, badRequest(msgUserRef)
	}
	b, ok := idOf(src)
	if !ok {
		return 0, nil, ruleError(field)
	}
	return k, b, nil
}
