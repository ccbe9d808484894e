package server

import (
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/cohortd/cohortd/engine"
)

// Bulk /v1 bodies, decoded by the scanner as they stream in. Only the
// identifiers of the unit at hand are copied out (one change object, one
// user record, one batch of members), so a 256 MiB body costs one read
// buffer plus its largest unit, never a second copy of the body.
//
// The callbacks run while the body is still being read: an error after
// some callbacks means the body is invalid as a whole, and the caller (which
// stages what it resolves) must discard what it staged.

// span locates one decoded identifier in streamDecoder.arena.
type span struct{ off, end int }

// streamDecoder is the pooled state of one bulk decode.
type streamDecoder struct {
	s     scanner
	arena []byte    // decoded identifiers of the current unit
	spans [4][]span // per kind (index 0: the members batch)
	name  []byte    // alias_name scratch
	label []byte    // alias_label scratch
	ext   []byte    // external_id scratch
	dev   []byte    // device_id scratch
	keys  [][]byte
	batch engine.Kind // kind of the members batch in spans[0]
	// refs is the most entries change's id slices or keys were filled
	// with since the decoder left the pool: they may hold references that
	// far past their length, and putStream clears that many. Clearing
	// their whole capacity instead cost every pooled request up to a
	// megabyte once an import had grown them (8% of a single contains'
	// CPU).
	refs int

	container string // "cohort_changes" or "users" in JSON bodies, for paths
	idx       int    // index of the current unit in container

	change changeObject
	user   userRecord
}

var streamPool = sync.Pool{New: func() any { return new(streamDecoder) }}

// maxPooledArena is the largest arena kept in the pool: one huge change
// object must not pin its memory for the life of the process.
const maxPooledArena = 1 << 20

func getStream(r io.Reader, ndjson bool, container string) *streamDecoder {
	d := streamPool.Get().(*streamDecoder)
	d.s.reset(r, ndjson)
	d.container = container
	d.idx = 0
	d.arena = d.arena[:0]
	for k := range d.spans {
		d.spans[k] = d.spans[k][:0]
	}
	d.batch = 0
	return d
}

func putStream(d *streamDecoder) {
	d.s.r = nil
	if cap(d.arena) > maxPooledArena {
		d.arena = nil
	}
	for k := range d.spans {
		if cap(d.spans[k]) > maxPooledArena/16 {
			d.spans[k] = nil
		}
	}
	c := &d.change
	if cap(c.UserIDs)+cap(c.DeviceIDs)+cap(c.Aliases) > maxPooledArena/24 {
		*c = changeObject{}
	}
	if n := d.refs; n > 0 { // drop references into the arena and buffers
		clear(c.UserIDs[:min(n, cap(c.UserIDs))])
		clear(c.DeviceIDs[:min(n, cap(c.DeviceIDs))])
		clear(c.Aliases[:min(n, cap(c.Aliases))])
		clear(d.keys[:min(n, cap(d.keys))])
		d.refs = 0
	}
	if cap(d.user.Aliases) > maxPooledArena/24 {
		d.user.Aliases = nil
	}
	d.user = userRecord{Aliases: d.user.Aliases[:0]}
	streamPool.Put(d)
}

// path names a field of the current unit for error messages: in JSON bodies
// it starts with the container and index ("cohort_changes[2].user_ids[3]");
// in NDJSON the line number is in the details, so the field is enough.
func (d *streamDecoder) path(field string, i int) string {
	p := field
	if i >= 0 {
		p += "[" + strconv.Itoa(i) + "]"
	}
	if d.container != "" && !d.s.ndjson {
		prefix := d.container + "[" + strconv.Itoa(d.idx) + "]"
		if p == "" {
			return prefix
		}
		return prefix + "." + p
	}
	return p
}

// slices appends the identifiers of spans to dst.
func (d *streamDecoder) slices(dst [][]byte, spans []span) [][]byte {
	for _, sp := range spans {
		dst = append(dst, d.arena[sp.off:sp.end:sp.end])
	}
	return dst
}

// aliasObj reads an alias object {alias_name, alias_label} into d.name and
// d.label. path names the object; shape reports any other shape.
func (d *streamDecoder) aliasObj(shape func() error, path func() string) error {
	s := &d.s
	hasName, hasLabel := false, false
	err := s.object(shape, func(key []byte) error {
		var err error
		switch string(key) {
		case "alias_name":
			hasName = true
			d.name, err = s.idString(d.name[:0], shape, func() string { return path() + ".alias_name" })
		case "alias_label":
			hasLabel = true
			d.label, err = s.idString(d.label[:0], shape, func() string { return path() + ".alias_label" })
		default:
			err = s.skipValue()
		}
		return err
	})
	if err != nil {
		return err
	}
	if !hasName || !hasLabel {
		return shape()
	}
	return nil
}

// idArray reads an array of identifiers into the arena, replacing
// d.spans[k] (the last of duplicate keys wins).
func (d *streamDecoder) idArray(k engine.Kind, field string, shape func(path string, want string) error) error {
	d.spans[k] = d.spans[k][:0]
	return d.stringArray(k, field, shape, &d.spans[k], nil)
}

// stringArray reads an array of identifiers into the arena, appending their
// spans to *spans. With flush non-nil (members batches), it calls flush
// whenever *spans reaches maxBatch.
//
// This is the hot loop of every bulk body, so it does not go through
// array/idString and their closures. Fast path: a string that is plain
// ASCII without escapes and lies whole in the buffer is copied in one
// append. Anything else (escapes, non-ASCII, a string cut by the buffer
// end) takes the slow path, readString, from the same position.
func (d *streamDecoder) stringArray(k engine.Kind, field string, shape func(path string, want string) error,
	spans *[]span, flush func() error) error {
	s := &d.s
	c, ok := s.next()
	if !ok {
		return s.eofError()
	}
	if c != '[' {
		if isValueStart(c) {
			return shape(d.path(field, -1), "an array of strings")
		}
		return s.unexpected(c, "a JSON value")
	}
	s.pos++
	if c, ok = s.next(); !ok {
		return s.eofError()
	}
	if c == ']' {
		s.pos++
		return nil
	}
	for i := 0; ; i++ {
		if c != '"' {
			if isValueStart(c) {
				return shape(d.path(field, i), "a string")
			}
			return s.unexpected(c, "a string")
		}
		s.pos++
		off := len(d.arena)
		buf := s.buf[s.pos:s.end]
		n, hi := plainRun(buf)
		if n < len(buf) && buf[n] == '"' && n > 0 && n <= maxIDLen && hi == 0 {
			// Fast path.
			d.arena = append(d.arena, buf[:n]...)
			s.pos += n + 1
		} else {
			// Slow path.
			var flags int
			var err error
			if d.arena, flags, err = s.readString(d.arena, maxIDLen); err != nil {
				return err
			}
			if !validDecoded(d.arena[off:], flags) {
				return s.ruleError(d.path(field, i))
			}
		}
		*spans = append(*spans, span{off, len(d.arena)})
		if flush != nil && len(*spans) >= maxBatch {
			if err := flush(); err != nil {
				return err
			}
		}
		// Separator: usually right here, so check before skipping spaces.
		if s.pos < s.end && s.buf[s.pos] == ',' {
			s.pos++
		} else {
			if c, ok = s.next(); !ok {
				return s.eofError()
			}
			switch c {
			case ',':
				s.pos++
			case ']':
				s.pos++
				return nil
			default:
				return s.unexpected(c, "',' or ']'")
			}
		}
		if s.pos < s.end && s.buf[s.pos] == '"' {
			c = '"'
		} else if c, ok = s.next(); !ok {
			return s.eofError()
		}
	}
}

// aliasArray reads an array of alias objects into the arena as alias keys,
// replacing d.spans[engine.KindAlias].
func (d *streamDecoder) aliasArray(shape func(path string, want string) error) error {
	s := &d.s
	d.spans[engine.KindAlias] = d.spans[engine.KindAlias][:0]
	notArray := func() error { return shape(d.path("aliases", -1), "an array of objects") }
	return s.array(notArray, func(i int) error {
		err := d.aliasObj(func() error {
			return shape(d.path("aliases", i), "an object with string alias_name and alias_label")
		}, func() string { return d.path("aliases", i) })
		if err != nil {
			return err
		}
		off := len(d.arena)
		d.arena = engine.AliasKey(d.arena, d.name, d.label)
		d.spans[engine.KindAlias] = append(d.spans[engine.KindAlias], span{off, len(d.arena)})
		return nil
	})
}

func (d *streamDecoder) changeShape(path, want string) error {
	return d.s.shapeError(msgChangesShape, path, want)
}

// changeObj decodes one change object and passes it to fn.
func (d *streamDecoder) changeObj(fn func(c *changeObject) error) error {
	s := &d.s
	d.arena = d.arena[:0]
	for k := range d.spans {
		d.spans[k] = d.spans[k][:0]
	}
	c := &d.change
	c.Remove, c.HasTime, c.Time = false, false, time.Time{}
	err := s.object(func() error { return d.changeShape(d.path("", -1), "an object") }, func(key []byte) error {
		switch string(key) {
		case "user_ids":
			return d.idArray(engine.KindExternal, "user_ids", d.changeShape)
		case "device_ids":
			return d.idArray(engine.KindDevice, "device_ids", d.changeShape)
		case "aliases":
			return d.aliasArray(d.changeShape)
		case "should_remove":
			v, err := s.boolean(func() error { return d.changeShape(d.path("should_remove", -1), "a boolean") })
			c.Remove = v
			return err
		case "timestamp":
			bad := func() error { return d.changeShape(d.path("timestamp", -1), "an RFC 3339 time string") }
			var flags int
			var err error
			if d.name, flags, err = s.str(d.name[:0], 64, bad); err != nil {
				return err
			}
			t, ok := parseTime(d.name)
			if !ok || flags&strOver != 0 {
				return bad()
			}
			c.HasTime, c.Time = true, t
			return nil
		}
		return s.skipValue()
	})
	if err != nil {
		return err
	}
	c.UserIDs = d.slices(c.UserIDs[:0], d.spans[engine.KindExternal])
	c.DeviceIDs = d.slices(c.DeviceIDs[:0], d.spans[engine.KindDevice])
	c.Aliases = d.slices(c.Aliases[:0], d.spans[engine.KindAlias])
	d.refs = max(d.refs, len(c.UserIDs), len(c.DeviceIDs), len(c.Aliases))
	return fn(c)
}

// decodeChangesJSON decodes a bulk changes body {"cohort_changes":[…]} as
// it streams from r, calling fn for each change object in order. The
// *changeObject and every slice in it are owned by the decoder and valid
// only during the call; fn's error stops decoding and is returned as is.
// Other errors are 400 apiErrors, or r's own error.
func decodeChangesJSON(r io.Reader, fn func(c *changeObject) error) error {
	d := getStream(r, false, "cohort_changes")
	defer putStream(d)
	s := &d.s
	seen := false
	err := s.object(func() error {
		return s.shapeError(msgChangesShape, "", `an object {"cohort_changes":[…]}`)
	}, func(key []byte) error {
		if string(key) != "cohort_changes" {
			return s.skipValue()
		}
		// A repeated cohort_changes key is delivered too: its objects
		// were already handed over when the second one appears.
		seen = true
		return s.array(func() error {
			return s.shapeError(msgChangesShape, "cohort_changes", "an array of objects")
		}, func(i int) error {
			d.idx = i
			return d.changeObj(fn)
		})
	})
	if err != nil {
		return err
	}
	if err := s.finish(); err != nil {
		return err
	}
	if !seen {
		return badRequest(msgChangesShape, "cohort_changes is required")
	}
	return nil
}

// decodeChangesNDJSON decodes a bulk changes body of NDJSON change objects
// (one per line, blank lines ignored) as it streams from r, calling fn for
// each in order. Ownership and errors as for decodeChangesJSON; error
// details carry the line number.
func decodeChangesNDJSON(r io.Reader, fn func(c *changeObject) error) error {
	d := getStream(r, true, "")
	defer putStream(d)
	return d.s.records(func() error {
		if ok, err := d.headlineLine(fn); ok {
			return err
		}
		return d.changeObj(fn)
	})
}

// The headline bulk shape (docs/WORKLOADS.md): one change object a line
// naming one identifier, as exporters write one user a line. Most lines
// name an external id; the rest name a device id or an alias, as the users
// of a cohort are identified.
const (
	headlineUser   = `{"user_ids":["`
	headlineDevice = `{"device_ids":["`
	headlineAlias  = `{"aliases":[{"alias_name":"`
	headlineLabel  = `","alias_label":"`
	headlineRemove = `,"should_remove":true}`
	headlineAdd    = `,"should_remove":false}`
)

// headlineLine is the fast path of the headline shape: a record that is
// exactly {"user_ids":["<id>"]}, {"device_ids":["<id>"]} or
// {"aliases":[{"alias_name":"<name>","alias_label":"<label>"}]} (each
// optionally with ,"should_remove":true|false after the array), its
// strings plain ASCII without escapes, all in the buffer, is handed to fn
// without the general walk. Anything else reports false and consumes
// nothing: changeObj then decodes it. BenchmarkBulkChanges: the general
// walk of such a line cost about as much as resolving its id, so one
// identifier a line imported at ~60% of the rate of 1,000 a line.
//
// Consecutive headline lines of the same direction that lie whole in the
// buffer are handed over as one change object of their identifiers (up to
// maxHeadlineRun), whatever their kinds: the same changes with the same
// result, since changes of one direction commute (the last change of a
// user wins, and they all say the same), with one callback instead of one
// a line. Merging only lines of one kind, a device id or alias line every
// few external ids (the standard user mix) broke every run: the mixed
// flavour of BenchmarkBulkChanges ran at 63% of the rate of 1,000 a line.
func (d *streamDecoder) headlineLine(fn func(c *changeObject) error) (bool, error) {
	s := &d.s
	kind, id, label, remove, used := headlineRecord(s.buf[s.pos:s.end])
	if used == 0 {
		return false, nil
	}
	c := &d.change
	c.UserIDs, c.DeviceIDs, c.Aliases = c.UserIDs[:0], c.DeviceIDs[:0], c.Aliases[:0]
	c.Remove = remove
	c.HasTime, c.Time = false, time.Time{}
	// The ids stay in the scanner's buffer, valid during fn, which runs
	// before the next read; alias keys are built in the arena, as spans
	// (it may move while it grows).
	d.arena = d.arena[:0]
	d.spans[engine.KindAlias] = d.spans[engine.KindAlias][:0]
	for n := 0; ; {
		switch kind {
		case engine.KindExternal:
			c.UserIDs = append(c.UserIDs, id)
		case engine.KindDevice:
			c.DeviceIDs = append(c.DeviceIDs, id)
		default:
			off := len(d.arena)
			d.arena = engine.AliasKey(d.arena, id, label)
			d.spans[engine.KindAlias] = append(d.spans[engine.KindAlias], span{off, len(d.arena)})
		}
		s.pos += used
		// More lines of the same direction, each right after a bare '\n';
		// the last line's '\n' is left to records.
		if n++; n == maxHeadlineRun || s.pos >= s.end || s.buf[s.pos] != '\n' {
			break
		}
		var rm bool
		kind, id, label, rm, used = headlineRecord(s.buf[s.pos+1 : s.end])
		if used == 0 || rm != remove || s.pos+1+used >= s.end {
			break
		}
		s.pos++
		s.line++
	}
	c.Aliases = d.slices(c.Aliases, d.spans[engine.KindAlias])
	d.refs = max(d.refs, len(c.UserIDs), len(c.DeviceIDs), len(c.Aliases))
	return true, fn(c)
}

// maxHeadlineRun bounds the identifiers of headline lines handed over at once.
const maxHeadlineRun = 1024

// headlineRecord matches one headline record at the start of b and returns
// its kind, identifier (an alias's name, and its label), direction and
// length (0: b does not start with one whole).
func headlineRecord(b []byte) (kind engine.Kind, id, label []byte, remove bool, used int) {
	var rest []byte
	switch {
	case hasPrefix(b, headlineUser):
		kind, rest = engine.KindExternal, b[len(headlineUser):]
	case hasPrefix(b, headlineDevice):
		kind, rest = engine.KindDevice, b[len(headlineDevice):]
	case hasPrefix(b, headlineAlias):
		kind, rest = engine.KindAlias, b[len(headlineAlias):]
	default:
		return 0, nil, nil, false, 0
	}
	id, rest = plainString(rest)
	if id == nil {
		return 0, nil, nil, false, 0
	}
	closer := `"]`
	if kind == engine.KindAlias {
		if !hasPrefix(rest, headlineLabel) {
			return 0, nil, nil, false, 0
		}
		if label, rest = plainString(rest[len(headlineLabel):]); label == nil {
			return 0, nil, nil, false, 0
		}
		closer = `"}]`
	}
	if !hasPrefix(rest, closer) {
		return 0, nil, nil, false, 0
	}
	rest = rest[len(closer):]
	switch {
	case hasPrefix(rest, "}"):
		rest = rest[1:]
	case hasPrefix(rest, headlineRemove):
		rest, remove = rest[len(headlineRemove):], true
	case hasPrefix(rest, headlineAdd):
		rest = rest[len(headlineAdd):]
	default:
		return 0, nil, nil, false, 0
	}
	return kind, id, label, remove, len(b) - len(rest)
}

// plainString returns the identifier at the start of b, up to a closing
// quote, and what follows it (the quote included), if it is 1 to maxIDLen
// plain ASCII bytes (no escape, no control character): such bytes are
// valid identifiers as they stand. Otherwise it returns nil, and the
// general walk decides.
func plainString(b []byte) (id, rest []byte) {
	n, hi := plainRun(b)
	if n == 0 || n > maxIDLen || hi != 0 || n == len(b) || b[n] != '"' {
		return nil, nil
	}
	return b[:n:n], b[n:]
}

// hasPrefix is bytes.HasPrefix for the fast path's string constants. For
// prefixes of more than 8 bytes it still calls memeqbody (3% of the
// server's CPU on one-identifier-a-line bodies, by perf); a word-at-a-time
// compare was no faster in BenchmarkDecodeOneALine.
func hasPrefix(b []byte, p string) bool {
	return len(b) >= len(p) && string(b[:len(p)]) == p
}

// flush hands the members batch to fn and empties it.
func (d *streamDecoder) flush(fn func(k engine.Kind, keys [][]byte) error) error {
	if len(d.spans[0]) == 0 {
		return nil
	}
	d.keys = d.slices(d.keys[:0], d.spans[0])
	d.refs = max(d.refs, len(d.keys))
	d.spans[0] = d.spans[0][:0]
	err := fn(d.batch, d.keys)
	d.arena = d.arena[:0]
	return err
}

// addKey appends one identifier of kind k to the members batch, flushing
// first if the batch holds another kind, and after if it is full. appendKey
// appends the identifier to the arena.
func (d *streamDecoder) addKey(k engine.Kind, fn func(k engine.Kind, keys [][]byte) error, appendKey func(dst []byte) ([]byte, error)) error {
	if d.batch != k {
		if err := d.flush(fn); err != nil {
			return err
		}
		d.batch = k
	}
	off := len(d.arena)
	var err error
	if d.arena, err = appendKey(d.arena); err != nil {
		return err
	}
	d.spans[0] = append(d.spans[0], span{off, len(d.arena)})
	if len(d.spans[0]) >= maxBatch {
		return d.flush(fn)
	}
	return nil
}

func (d *streamDecoder) idsShape(path, want string) error {
	return d.s.shapeError(msgIDsShape, path, want)
}

// decodeMembersJSON decodes a snapshot body
// {"user_ids":[…],"device_ids":[…],"aliases":[…]} (every array optional) as
// it streams from r, calling fn with batches of at most maxBatch
// identifiers of one kind, in body order; alias keys are
// engine.AliasKey(alias_name, alias_label). keys and their bytes are owned by the
// decoder and valid only during the call. Errors as for decodeChangesJSON.
func decodeMembersJSON(r io.Reader, fn func(k engine.Kind, keys [][]byte) error) error {
	d := getStream(r, false, "")
	defer putStream(d)
	s := &d.s
	flush := func() error { return d.flush(fn) }
	ids := func(k engine.Kind, field string) error {
		if d.batch != k {
			if err := d.flush(fn); err != nil {
				return err
			}
			d.batch = k
		}
		return d.stringArray(k, field, d.idsShape, &d.spans[0], flush)
	}
	err := s.object(func() error { return d.idsShape("", "an object") }, func(key []byte) error {
		switch string(key) {
		case "user_ids":
			return ids(engine.KindExternal, "user_ids")
		case "device_ids":
			return ids(engine.KindDevice, "device_ids")
		case "aliases":
			notArray := func() error { return d.idsShape("aliases", "an array of objects") }
			return s.array(notArray, func(i int) error {
				err := d.aliasObj(func() error {
					return d.idsShape(d.path("aliases", i), "an object with string alias_name and alias_label")
				}, func() string { return d.path("aliases", i) })
				if err != nil {
					return err
				}
				return d.addKey(engine.KindAlias, fn, func(dst []byte) ([]byte, error) {
					return engine.AliasKey(dst, d.name, d.label), nil
				})
			})
		}
		return s.skipValue()
	})
	if err != nil {
		return err
	}
	if err := s.finish(); err != nil {
		return err
	}
	return d.flush(fn)
}

// decodeMembersNDJSON decodes a snapshot body of NDJSON lines, each
// {"external_id":…}, {"device_id":…} or {"alias_name":…,"alias_label":…}
// (exactly one identifier; other fields ignored), as it streams from r,
// calling fn as decodeMembersJSON does.
func decodeMembersNDJSON(r io.Reader, fn func(k engine.Kind, keys [][]byte) error) error {
	d := getStream(r, true, "")
	defer putStream(d)
	s := &d.s
	lineShape := func() error { return badRequest(msgMemberLine, s.where()) }
	err := s.records(func() error {
		var has [4]bool
		err := s.object(lineShape, func(key []byte) error {
			var err error
			switch string(key) {
			case "external_id":
				has[engine.KindExternal] = true
				d.ext, err = s.idString(d.ext[:0], lineShape, func() string { return "external_id" })
			case "device_id":
				has[engine.KindDevice] = true
				d.dev, err = s.idString(d.dev[:0], lineShape, func() string { return "device_id" })
			case "alias_name":
				has[0] = true
				d.name, err = s.idString(d.name[:0], lineShape, func() string { return "alias_name" })
			case "alias_label":
				has[engine.KindAlias] = true
				d.label, err = s.idString(d.label[:0], lineShape, func() string { return "alias_label" })
			default:
				err = s.skipValue()
			}
			return err
		})
		if err != nil {
			return err
		}
		alias := has[0] || has[engine.KindAlias]
		switch {
		case has[engine.KindExternal] && !has[engine.KindDevice] && !alias:
			return d.addKey(engine.KindExternal, fn, func(dst []byte) ([]byte, error) { return append(dst, d.ext...), nil })
		case has[engine.KindDevice] && !has[engine.KindExternal] && !alias:
			return d.addKey(engine.KindDevice, fn, func(dst []byte) ([]byte, error) { return append(dst, d.dev...), nil })
		case has[0] && has[engine.KindAlias] && !has[engine.KindExternal] && !has[engine.KindDevice]:
			return d.addKey(engine.KindAlias, fn, func(dst []byte) ([]byte, error) { return engine.AliasKey(dst, d.name, d.label), nil })
		}
		return lineShape()
	})
	if err != nil {
		return err
	}
	return d.flush(fn)
}

func (d *streamDecoder) usersShape(path, want string) error {
	return d.s.shapeError(msgUsersShape, path, want)
}

// userRec decodes one user record and passes it to fn.
func (d *streamDecoder) userRec(fn func(rec *userRecord) error) error {
	s := &d.s
	d.arena = d.arena[:0]
	d.spans[engine.KindAlias] = d.spans[engine.KindAlias][:0]
	hasExt, hasDev := false, false
	err := s.object(func() error { return d.usersShape(d.path("", -1), "an object") }, func(key []byte) error {
		var err error
		switch string(key) {
		case "external_id":
			hasExt = true
			d.ext, err = s.idString(d.ext[:0], func() error {
				return d.usersShape(d.path("external_id", -1), "a string")
			}, func() string { return d.path("external_id", -1) })
		case "device_id":
			hasDev = true
			d.dev, err = s.idString(d.dev[:0], func() error {
				return d.usersShape(d.path("device_id", -1), "a string")
			}, func() string { return d.path("device_id", -1) })
		case "aliases":
			err = d.aliasArray(d.usersShape)
		default:
			err = s.skipValue()
		}
		return err
	})
	if err != nil {
		return err
	}
	rec := &d.user
	rec.ExternalID, rec.DeviceID = nil, nil
	if hasExt {
		rec.ExternalID = d.ext
	}
	if hasDev {
		rec.DeviceID = d.dev
	}
	rec.Aliases = d.slices(rec.Aliases[:0], d.spans[engine.KindAlias])
	if !hasExt && !hasDev && len(rec.Aliases) == 0 {
		if p := d.path("", -1); p != "" {
			return badRequest(msgUserEmpty, s.where()+": "+p)
		}
		return badRequest(msgUserEmpty, s.where())
	}
	return fn(rec)
}

// decodeUsersJSON decodes a users body {"users":[record…]} as it streams
// from r, calling fn for each record in order. The *userRecord and its
// slices are owned by the decoder and valid only during the call. Errors as
// for decodeChangesJSON.
func decodeUsersJSON(r io.Reader, fn func(rec *userRecord) error) error {
	d := getStream(r, false, "users")
	defer putStream(d)
	s := &d.s
	seen := false
	err := s.object(func() error {
		return s.shapeError(msgUsersShape, "", `an object {"users":[…]}`)
	}, func(key []byte) error {
		if string(key) != "users" {
			return s.skipValue()
		}
		seen = true
		return s.array(func() error {
			return s.shapeError(msgUsersShape, "users", "an array of objects")
		}, func(i int) error {
			d.idx = i
			return d.userRec(fn)
		})
	})
	if err != nil {
		return err
	}
	if err := s.finish(); err != nil {
		return err
	}
	if !seen {
		return badRequest(msgUsersShape, "users is required")
	}
	return nil
}

// decodeUsersNDJSON decodes a users body of NDJSON records as it streams
// from r, calling fn for each in order, as decodeUsersJSON does.
func decodeUsersNDJSON(r io.Reader, fn func(rec *userRecord) error) error {
	d := getStream(r, true, "")
	defer putStream(d)
	return d.s.records(func() error { return d.userRec(fn) })
}
