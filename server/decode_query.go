package server

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/segment"
)

// Bodies decoded with the scanner before (or instead of) building a tree:
// segment queries, user deletes, and the credentials of partner bodies.
//
// A query or delete body is at most -query-max-body decoded bytes and holds
// at most maxQueryIDs identifiers; a tree of it would cost tens of times its
// size (a 16 MiB body of [0,0,…] took 4.1 GB as a fastjson tree), so these
// bodies stream through the scanner: a contains body's identifiers go to
// the resolver as they come, only the segment expression's own JSON text is
// kept (at most maxSegmentBytes) and parsed as a tree.

// Limits of query bodies (docs/API.md §5).
const (
	// maxQueryIDs is the most identifiers of a contains or delete request.
	maxQueryIDs = 100_000
	// maxSegmentBytes bounds the JSON text of a segment expression, and
	// maxSegmentValues the values in it: 1,024 operands (the parser's own
	// cap) of the longest cohort ids fit.
	maxSegmentBytes  = 1 << 20
	maxSegmentValues = 16 << 10
)

// Messages of query bodies.
const (
	msgContainsForm   = "contains needs exactly one of users, external_ids or device_ids"
	msgUsersArray     = "users must be an array of user references"
	msgCompactIDs     = "external_ids and device_ids must be arrays of strings"
	msgSegmentTooBig  = "segment expression is too large"
	msgLimit          = "limit must be an integer from 1 to 10000"
	msgCursor         = "cursor must be a string or null"
	msgBodyNotObject  = "the body must be a JSON object"
	msgTooManyQueryID = "at most 100,000 identifiers are allowed per request"
	msgSegmentAgain   = "segment must not be given again after identifiers"
)

// Which list of users a contains body gave.
const (
	formNone = iota
	formUsers
	formExternalIDs
	formDeviceIDs
)

// segmentQuery is a decoded body of POST /v1/segments/{count,contains,members}:
// {"segment":E, "users"|"external_ids"|"device_ids":[…], "limit":N, "cursor":C}.
// Identifiers are not kept: decodeSegmentQuery hands each to a callback.
type segmentQuery struct {
	segment    []byte // the JSON text of E; nil when absent
	form       int
	ids        int    // identifiers given (contains)
	limit      []byte // the JSON text of limit; nil when absent or null
	cursor     []byte // nil when absent or null
	cursorSeen bool

	// ws is the workspace of a contains query; bound is its segment,
	// bound as soon as the body gave it (bindEarly), or nil, and boundAt
	// the identifiers given before that.
	ws      *engine.Workspace
	bound   *engine.BoundSegment
	boundAt int

	bufs [3][]byte // reused backing of segment, limit, cursor
}

// bindEarly binds the segment of a contains body as soon as the decoder
// has it, so that the identifiers after it are resolved knowing what they
// will be tested against (engine.Lookup.Within: ids a cohort's key filter
// rules out are not looked up). A segment that does not parse is left for
// segmentRequest to report, after the rest of the body, as before.
func bindEarly(q *segmentQuery, lk *engine.Lookup) {
	if q.ws == nil {
		return
	}
	seg, err := q.ws.Segment(q.segment, segment.Parse)
	if err != nil {
		return
	}
	q.bound, q.boundAt = q.ws.Bind(seg), q.ids
	lk.Within(q.bound)
}

var queryPool = sync.Pool{New: func() any { return new(segmentQuery) }}

// getQuery returns an empty pooled query; putQuery gives it back.
func getQuery() *segmentQuery {
	q := queryPool.Get().(*segmentQuery)
	*q = segmentQuery{bufs: q.bufs}
	return q
}

func putQuery(q *segmentQuery) {
	if cap(q.bufs[0]) > maxPooledArena {
		q.bufs[0] = nil
	}
	queryPool.Put(q)
}

// decodeSegmentQuery decodes a segment query body as it streams from r.
// Each identifier of users, external_ids or device_ids is added to lk, in
// order; with lk nil (count, members) those fields are unknown fields.
// q.segment is the segment's JSON text (in q's reused buffer). Unknown
// fields are skipped but must be valid JSON; the body holds at most
// maxQueryIDs identifiers.
func decodeSegmentQuery(r io.Reader, q *segmentQuery, lk *engine.Lookup) error {
	d := getStream(r, false, "")
	defer putStream(d)
	s := &d.s
	segBuf, limBuf, curBuf := q.bufs[0][:0], q.bufs[1][:0], q.bufs[2][:0]
	defer func() { q.bufs = [3][]byte{segBuf, limBuf, curBuf} }()
	form := func(f int) error {
		if q.form != formNone && q.form != f {
			return badRequest(msgContainsForm)
		}
		q.form = f
		return nil
	}
	addID := func(k engine.Kind, key []byte) error {
		if q.ids++; q.ids > maxQueryIDs {
			return badRequest(msgTooManyQueryID)
		}
		lk.Add(k, key)
		return nil
	}
	err := s.object(func() error { return badRequest(msgMalformedJSON, msgBodyNotObject) }, func(key []byte) error {
		k := string(key)
		if lk == nil && (k == "users" || k == "external_ids" || k == "device_ids") {
			return s.skipValue()
		}
		switch k {
		case "segment":
			// The last segment wins, as with any repeated key, except
			// over identifiers already resolved for an earlier one
			// (bindEarly): their answers would be the earlier one's.
			if q.bound != nil {
				if q.ids > q.boundAt {
					return badRequest(msgSegmentAgain)
				}
				q.bound.Release()
				q.bound = nil
				lk.Within(nil)
			}
			start := s.values
			s.maxValues = start + maxSegmentValues
			var err error
			segBuf, err = s.captureValue(segBuf[:0])
			s.maxValues = 0
			if errors.Is(err, errTooManyValues) || len(segBuf) > maxSegmentBytes {
				return badRequest(msgSegmentTooBig, "at most "+strconv.Itoa(maxSegmentBytes)+" bytes and "+strconv.Itoa(maxSegmentValues)+" JSON values")
			}
			q.segment = segBuf
			if err == nil && lk != nil {
				bindEarly(q, lk)
			}
			return err
		case "users":
			if err := form(formUsers); err != nil {
				return err
			}
			return s.array(func() error {
				return badRequest(msgUsersArray, "users: expected an array of objects")
			}, func(i int) error {
				k, v, err := d.userRef(i)
				if err != nil {
					return err
				}
				return addID(k, v)
			})
		case "external_ids", "device_ids":
			k, f, field := engine.KindExternal, formExternalIDs, "external_ids"
			if string(key) == "device_ids" {
				k, f, field = engine.KindDevice, formDeviceIDs, "device_ids"
			}
			if err := form(f); err != nil {
				return err
			}
			d.spans[0] = d.spans[0][:0]
			d.arena = d.arena[:0]
			flush := func() error {
				spans := d.spans[0]
				if q.ids += len(spans); q.ids > maxQueryIDs {
					return badRequest(msgTooManyQueryID)
				}
				d.keys = d.keys[:0]
				for _, sp := range spans {
					d.keys = append(d.keys, d.arena[sp.off:sp.end:sp.end])
				}
				lk.AddMany(k, d.keys)
				clear(d.keys) // drop references into the arena
				d.spans[0] = spans[:0]
				d.arena = d.arena[:0]
				return nil
			}
			shape := func(path, want string) error { return s.shapeError(msgCompactIDs, path, want) }
			if err := d.stringArray(k, field, shape, &d.spans[0], flush); err != nil {
				return err
			}
			return flush()
		case "limit":
			c, ok := s.next()
			switch {
			case !ok:
				return s.eofError()
			case c == 'n':
				limBuf = limBuf[:0]
				q.limit = nil
				return s.literal("null")
			case c == '-' || (c >= '0' && c <= '9'):
				var err error
				limBuf, err = s.captureValue(limBuf[:0])
				q.limit = limBuf
				return err
			}
			if isValueStart(c) {
				return badRequest(msgLimit)
			}
			return s.unexpected(c, "a JSON value")
		case "cursor":
			q.cursorSeen = true
			c, ok := s.next()
			switch {
			case !ok:
				return s.eofError()
			case c == 'n':
				q.cursor = nil
				return s.literal("null")
			case c == '"':
				s.pos++
				var err error
				var flags int
				curBuf, flags, err = s.readString(curBuf[:0], 256)
				if err == nil && flags&strOver != 0 {
					curBuf = append(curBuf[:0], '!') // too long: an invalid cursor
				}
				q.cursor = curBuf
				return err
			}
			if isValueStart(c) {
				return badRequest(msgCursor)
			}
			return s.unexpected(c, "a JSON value")
		}
		return s.skipValue()
	})
	if err != nil {
		return err
	}
	return s.finish()
}

// userRef reads one user reference of a contains body:
// {"external_id"} | {"device_id"} | {"alias_name","alias_label"}, exactly one
// identifier (other fields ignored). The key is valid until the scanner
// moves on (it may lie in the scanner's buffer).
func (d *streamDecoder) userRef(i int) (engine.Kind, []byte, error) {
	s := &d.s
	if k, id, used := plainUserRef(s.buf[s.pos:s.end]); used > 0 {
		s.pos += used
		return k, id, nil
	}
	at := func() string { return "users[" + strconv.Itoa(i) + "]" }
	shape := func() error { return badRequest(msgUserRef, at()) }
	var has [4]bool
	err := s.object(shape, func(key []byte) error {
		var err error
		switch string(key) {
		case "external_id":
			has[engine.KindExternal] = true
			d.ext, err = s.idString(d.ext[:0], shape, func() string { return "external_id" })
		case "device_id":
			has[engine.KindDevice] = true
			d.dev, err = s.idString(d.dev[:0], shape, func() string { return "device_id" })
		case "alias_name":
			has[0] = true
			d.name, err = s.idString(d.name[:0], shape, func() string { return "alias_name" })
		case "alias_label":
			has[engine.KindAlias] = true
			d.label, err = s.idString(d.label[:0], shape, func() string { return "alias_label" })
		default:
			err = s.skipValue()
		}
		if err != nil {
			return atUser(err, at)
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	alias := has[0] || has[engine.KindAlias]
	switch {
	case has[engine.KindExternal] && !has[engine.KindDevice] && !alias:
		return engine.KindExternal, d.ext, nil
	case has[engine.KindDevice] && !has[engine.KindExternal] && !alias:
		return engine.KindDevice, d.dev, nil
	case has[0] && has[engine.KindAlias] && !has[engine.KindExternal] && !has[engine.KindDevice]:
		d.arena = engine.AliasKey(d.arena[:0], d.name, d.label)
		return engine.KindAlias, d.arena, nil
	}
	return 0, nil, shape()
}

// The user references batch contains mostly gets: {"external_id":"…"} or
// {"device_id":"…"}, as JSON encoders write them.
var (
	plainExternalRef = []byte(`{"external_id":"`)
	plainDeviceRef   = []byte(`{"device_id":"`)
)

// plainUserRef matches one of those references whole at the start of b,
// without spaces or escapes and with an id that the identifier rule
// accepts as written (plainRun: 1 to maxIDLen printable ASCII bytes), and
// returns its kind, id (in b) and length; used is 0 for anything else,
// which the general path decodes. It spares the common reference the
// object scanner, whose key and value scans cost a third of a 1,000-user
// batch contains.
func plainUserRef(b []byte) (k engine.Kind, id []byte, used int) {
	var rest []byte
	switch {
	case bytes.HasPrefix(b, plainExternalRef):
		k, rest = engine.KindExternal, b[len(plainExternalRef):]
	case bytes.HasPrefix(b, plainDeviceRef):
		k, rest = engine.KindDevice, b[len(plainDeviceRef):]
	default:
		return 0, nil, 0
	}
	n, hi := plainRun(rest)
	if n == 0 || n > maxIDLen || hi != 0 || n+1 >= len(rest) || rest[n] != '"' || rest[n+1] != '}' {
		return 0, nil, 0
	}
	return k, rest[:n:n], len(b) - len(rest) + n + 2
}

// atUser makes a rule error of a user reference name the user instead of
// the scanner's position.
func atUser(err error, at func() string) error {
	var ae *apiError
	if errors.As(err, &ae) && strings.HasSuffix(ae.message, ruleSuffix) {
		return &apiError{status: ae.status, message: ae.message, errors: []string{at()}}
	}
	return err
}

// parseLimit checks a page limit's JSON text.
func parseLimit(b []byte) (int, error) {
	n, err := strconv.Atoi(string(b))
	if err != nil || n < 1 || n > maxPageLimit {
		return 0, badRequest(msgLimit)
	}
	return n, nil
}

// decodeUsersDelete decodes POST /v1/users/delete
// {"user_ids":[…],"device_ids":[…],"aliases":[…]} (every array optional,
// repeated keys concatenated) as it streams from r, copying the
// identifiers out, at most maxQueryIDs of them.
func decodeUsersDelete(r io.Reader) (usersDeleteReq, error) {
	var req usersDeleteReq
	var bufs [4][]byte
	var ends [4][]int
	n := 0
	err := decodeMembersJSON(r, func(k engine.Kind, keys [][]byte) error {
		if n += len(keys); n > maxQueryIDs {
			return badRequest(msgTooManyQueryID)
		}
		for _, key := range keys {
			bufs[k] = append(bufs[k], key...)
			ends[k] = append(ends[k], len(bufs[k]))
		}
		return nil
	})
	if err != nil {
		return usersDeleteReq{}, err
	}
	cut := func(k engine.Kind) [][]byte {
		if len(ends[k]) == 0 {
			return nil
		}
		out := make([][]byte, len(ends[k]))
		off := 0
		for i, end := range ends[k] {
			out[i] = bufs[k][off:end:end]
			off = end
		}
		return out
	}
	req.UserIDs, req.DeviceIDs, req.Aliases = cut(engine.KindExternal), cut(engine.KindDevice), cut(engine.KindAlias)
	return req, nil
}

// maxSecretLen bounds a credential kept from a partner body; anything
// longer is no credential we issued.
const maxSecretLen = 256

// partnerCreds are the credentials of a partner body.
type partnerCreds struct {
	PartnerAPIKey []byte
	ClientSecret  []byte
}

// scanPartnerCreds pulls partner_api_key and client_secret out of a
// partner body with the scanner, building nothing, so that the body is
// authenticated before it is parsed (an unauthenticated body costs one
// scan). The body must be a JSON object (else 400, as before); a
// credential that is not a string, or longer than maxSecretLen, is empty
// (401 later); the last of repeated keys wins. More than maxValues values
// in the body is a 413. The returned slices are owned by creds' buffers.
func scanPartnerCreds(body []byte, maxValues int, creds *partnerCreds) error {
	br := bytesReaderPool.Get().(*bytes.Reader)
	br.Reset(body)
	defer func() {
		br.Reset(nil)
		bytesReaderPool.Put(br)
	}()
	d := getStream(br, false, "")
	defer putStream(d)
	s := &d.s
	s.maxValues, s.strict = maxValues, true
	creds.PartnerAPIKey, creds.ClientSecret = creds.PartnerAPIKey[:0], creds.ClientSecret[:0]
	str := func(dst []byte) ([]byte, error) {
		c, ok := s.next()
		if !ok {
			return dst[:0], s.eofError()
		}
		if c != '"' {
			return dst[:0], s.skipValue()
		}
		s.values++
		s.pos++
		dst, flags, err := s.readString(dst[:0], maxSecretLen)
		if flags&strOver != 0 {
			dst = dst[:0]
		}
		return dst, err
	}
	err := s.object(func() error { return badRequest(msgMalformedJSON, msgBodyNotObject) }, func(key []byte) error {
		var err error
		switch string(key) {
		case "partner_api_key":
			creds.PartnerAPIKey, err = str(creds.PartnerAPIKey)
		case "client_secret":
			creds.ClientSecret, err = str(creds.ClientSecret)
		default:
			err = s.skipValue()
		}
		return err
	})
	if err == nil {
		err = s.finish()
	}
	if errors.Is(err, errTooManyValues) {
		return errorf(fasthttp.StatusRequestEntityTooLarge,
			"request body has more than %d JSON values", maxValues)
	}
	return err
}
