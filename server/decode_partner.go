package server

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
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
// decoded and fully validated (shape, identifier rule, cap) before anything
// is applied. As for partnerCohortReq, field errors wait in validate so
// the handler checks the credentials first.
type partnerUsersReq struct {
	PartnerAPIKey string
	ClientSecret  string
	CohortID      string

	changes []changeObject // identifiers point into sc.buf
	sc      *partnerScratch
	ids     int // identifiers as sent, duplicates included
	invalid error
}

// partnerScratch is the reusable memory of parsePartnerUsers: a partner
// request copies ~1,000 identifiers, and growing these afresh for each
// allocated more than the rest of the request.
type partnerScratch struct {
	buf     []byte
	spans   []span // of identifiers in buf
	ranges  []partnerRanges
	flags   []uint8 // per change: bit 0 remove, bit 1 has time
	times   []time.Time
	keys    [][]byte
	changes []changeObject
}

// partnerRanges locates one change object's identifiers in spans.
type partnerRanges struct{ users, devices, aliases [2]int }

var partnerScratches = sync.Pool{New: func() any { return new(partnerScratch) }}

// release gives r's memory back; r must not be used afterwards.
func (r *partnerUsersReq) release() {
	sc := r.sc
	if sc == nil || cap(sc.buf) > maxPooledArena {
		return
	}
	clear(sc.keys)
	clear(sc.changes)
	*sc = partnerScratch{buf: sc.buf[:0], spans: sc.spans[:0], ranges: sc.ranges[:0], flags: sc.flags[:0],
		times: sc.times[:0], keys: sc.keys[:0], changes: sc.changes[:0]}
	r.sc, r.changes = nil, nil
	partnerScratches.Put(sc)
}

// validate returns the first field error (a 400 apiError), or nil.
func (r *partnerUsersReq) validate() error { return r.invalid }

// eachChange calls fn for each change object in body order, stopping at
// fn's first error. It must only be called when validate returned nil.
// The change objects and their identifier bytes are owned by r.
func (r *partnerUsersReq) eachChange(fn func(c *changeObject) error) error {
	for i := range r.changes {
		if err := fn(&r.changes[i]); err != nil {
			return err
		}
	}
	return nil
}

// errStopScan ends the one-pass decode of a partner body at a field error,
// which then waits in validate while a second scan finds the credentials.
var errStopScan = errors.New("server: field error")

// parsePartnerUsers decodes a /partners/{partner}/cohorts/users body with
// the scanner in one pass that builds no tree (so, as scanPartnerCreds, it
// costs an unauthenticated sender a scan): the credentials, cohort_id and
// every change object, whose identifiers are copied out. maxIDs caps the
// identifiers of the whole request as sent (user_ids + device_ids +
// aliases over all change objects, duplicates included); maxValues caps the
// JSON values skipped (a 413). Only a body that is not a JSON object, or
// has too many values, is an error here; field errors wait in validate.
// The fastjson parse it replaced cost a third of a partner request
// (BenchmarkPartnerChanges, a profile of the binary under load).
func parsePartnerUsers(body []byte, maxIDs, maxValues int) (partnerUsersReq, error) {
	req := partnerUsersReq{sc: partnerScratches.Get().(*partnerScratch)}
	sc := req.sc
	br := bytesReaderPool.Get().(*bytes.Reader)
	br.Reset(body)
	defer func() {
		br.Reset(nil)
		bytesReaderPool.Put(br)
	}()
	d := getStream(br, false, "cohort_changes")
	defer putStream(d)
	s := &d.s
	s.maxValues, s.strict = maxValues, true
	var cohortOK, cohortSeen, changesSeen bool
	var cohortID []byte
	keep := func(ids [][]byte) [2]int {
		from := len(sc.spans)
		for _, id := range ids {
			off := len(sc.buf)
			sc.buf = append(sc.buf, id...)
			sc.spans = append(sc.spans, span{off, len(sc.buf)})
		}
		return [2]int{from, len(sc.spans)}
	}
	change := func(c *changeObject) error {
		if req.ids += len(c.UserIDs) + len(c.DeviceIDs) + len(c.Aliases); req.ids > maxIDs {
			req.invalid = tooManyIDs(maxIDs)
			return errStopScan
		}
		sc.ranges = append(sc.ranges, partnerRanges{keep(c.UserIDs), keep(c.DeviceIDs), keep(c.Aliases)})
		var f uint8
		if c.Remove {
			f |= 1
		}
		if c.HasTime {
			f |= 2
		}
		sc.flags, sc.times = append(sc.flags, f), append(sc.times, c.Time)
		return nil
	}
	str := func(dst []byte, keepN int) ([]byte, bool, error) {
		c, ok := s.next()
		if !ok {
			return dst[:0], false, s.eofError()
		}
		if c != '"' {
			return dst[:0], false, s.skipValue()
		}
		s.values++
		s.pos++
		dst, fl, err := s.readString(dst[:0], keepN)
		return dst, err == nil && fl&strOver == 0, err
	}
	var key, secret []byte
	credsOnly := false
	scan := func() error {
		return s.object(func() error { return badRequest(msgMalformedJSON, msgBodyNotObject) }, func(k []byte) error {
			var err error
			var ok bool
			switch string(k) {
			case "partner_api_key":
				if key, ok, err = str(key, maxSecretLen); !ok {
					key = key[:0]
				}
			case "client_secret":
				if secret, ok, err = str(secret, maxSecretLen); !ok {
					secret = secret[:0]
				}
			case "cohort_id":
				cohortSeen = true
				cohortID, ok, err = str(cohortID, maxIDLen)
				cohortOK = ok && validID(cohortID)
			case "cohort_changes":
				changesSeen = true
				if credsOnly {
					return s.skipValue()
				}
				// A repeated cohort_changes key is concatenated, as the
				// bulk decoder (decodeChangesJSON) does.
				err = s.array(func() error {
					return s.shapeError(msgChangesShape, "cohort_changes", "an array of objects")
				}, func(i int) error {
					d.idx = i
					return d.changeObj(change)
				})
				var ae *apiError
				if err != nil && !errors.Is(err, errStopScan) && errors.As(err, &ae) && ae.status == 400 && ae.message != msgMalformedJSON {
					req.invalid = err // a shape or rule error: later, after the credentials
					err = errStopScan
				}
			default:
				err = s.skipValue()
			}
			return err
		})
	}
	err := scan()
	if err == nil {
		err = s.finish()
	}
	if errors.Is(err, errStopScan) {
		// A field error: the rest of the body is scanned again for the
		// credentials (and a later cohort_id), nothing else.
		br.Reset(body)
		s.reset(br, false)
		s.maxValues, s.strict = maxValues, true
		credsOnly = true
		if err = scan(); err == nil {
			err = s.finish()
		}
	}
	if errors.Is(err, errTooManyValues) {
		return partnerUsersReq{}, errorf(fasthttp.StatusRequestEntityTooLarge,
			"request body has more than %d JSON values", maxValues)
	}
	if err != nil {
		return partnerUsersReq{}, err
	}
	req.PartnerAPIKey, req.ClientSecret = string(key), string(secret)
	switch {
	case !cohortSeen || !cohortOK:
		req.invalid = badRequest(msgCohortID) // first, as docs/API.md §3 orders the fields
		return req, nil
	case req.invalid != nil:
		return req, nil
	case !changesSeen:
		req.invalid = badRequest(msgChangesShape, "cohort_changes is required")
		return req, nil
	}
	req.CohortID = string(cohortID)
	// The identifiers are final now: cut each change's out of buf.
	for _, sp := range sc.spans {
		sc.keys = append(sc.keys, sc.buf[sp.off:sp.end:sp.end])
	}
	keys := sc.keys
	for i, rg := range sc.ranges {
		sc.changes = append(sc.changes, changeObject{
			UserIDs:   keys[rg.users[0]:rg.users[1]:rg.users[1]],
			DeviceIDs: keys[rg.devices[0]:rg.devices[1]:rg.devices[1]],
			Aliases:   keys[rg.aliases[0]:rg.aliases[1]:rg.aliases[1]],
			Remove:    sc.flags[i]&1 != 0, HasTime: sc.flags[i]&2 != 0, Time: sc.times[i],
		})
	}
	req.changes = sc.changes
	return req, nil
}

// usersDeleteReq is the body of POST /v1/users/delete, grouped by kind
// (decodeUsersDelete).
type usersDeleteReq struct {
	UserIDs   [][]byte
	DeviceIDs [][]byte
	Aliases   [][]byte
}
