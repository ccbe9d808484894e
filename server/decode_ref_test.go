package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/cohortd/cohortd/engine"
)

// A reference decoder built on encoding/json, for differential tests and
// fuzzing. It is slow and simple: exact key matching through maps (the last
// of duplicate keys wins), explicit type checks on every raw value. It
// cannot see invalid UTF-8 or lone surrogates (encoding/json turns both into
// U+FFFD), so results carry a flag when U+FFFD appears in an identifier.

// decoded is a canonical, comparable form of what a decoder delivered.
type decoded struct {
	items  []string // one per identifier: "<kind>:<bytes>" or change/record markers
	fffd   bool     // some identifier contains U+FFFD
	broken bool     // some identifier breaks the rule in a way the reference sees
}

func (d *decoded) add(prefix string, id []byte) {
	if bytes.Contains(id, []byte("\uFFFD")) {
		d.fffd = true
	}
	valid := validID(id)
	if prefix == "a:" || prefix == fmt.Sprintf("%d:", engine.KindAlias) {
		name, label, ok := bytes.Cut(id, []byte{0})
		valid = ok && validID(name) && validID(label)
	}
	if !valid {
		d.broken = true
	}
	d.items = append(d.items, prefix+string(id))
}

// check flags id the way add does, for identifiers that a later duplicate
// key overrides: the scanner validates every occurrence as it streams.
func (d *decoded) check(id []byte) {
	if bytes.Contains(id, []byte("\uFFFD")) {
		d.fffd = true
	}
	if !validID(id) {
		d.broken = true
	}
}

func (d *decoded) String() string { return strings.Join(d.items, "\n") }

// changes is String with consecutive change objects of one direction and
// time merged, their identifiers grouped by kind (external ids, device ids,
// aliases; each kind in the order sent): the headline fast path hands such
// lines over as one object, the reference as one object a line. Changes of
// one direction commute, so both mean the same.
func (d *decoded) changes() string {
	var (
		out  []string
		head string   // the open merged object's header, "" when none
		ids  []string // its identifiers
	)
	flush := func() {
		if head != "" {
			slices.SortStableFunc(ids, func(a, b string) int { return kindRank(a) - kindRank(b) })
			out = append(out, head)
			out = append(out, ids...)
		}
		head, ids = "", nil
	}
	for i := 0; i < len(d.items); {
		it := d.items[i]
		if !strings.HasPrefix(it, "change ") {
			flush()
			out = append(out, it)
			i++
			continue
		}
		j := i + 1
		for j < len(d.items) && !strings.HasPrefix(d.items[j], "change ") && !strings.HasPrefix(d.items[j], "user ") {
			j++
		}
		if it != head {
			flush()
			head = it
		}
		ids = append(ids, d.items[i+1:j]...)
		i = j
	}
	flush()
	return strings.Join(out, "\n")
}

// kindRank orders identifiers by their kind prefix as changeObject lists
// them: external ids, device ids, aliases, anything else.
func kindRank(id string) int {
	switch {
	case strings.HasPrefix(id, "u:"):
		return 0
	case strings.HasPrefix(id, "d:"):
		return 1
	case strings.HasPrefix(id, "a:"):
		return 2
	}
	return 3
}

func (d *decoded) addChange(c *changeObject) {
	tm := ""
	if c.HasTime {
		tm = c.Time.UTC().Format(time.RFC3339Nano)
	}
	d.items = append(d.items, fmt.Sprintf("change remove=%v time=%q", c.Remove, tm))
	for _, id := range c.UserIDs {
		d.add("u:", id)
	}
	for _, id := range c.DeviceIDs {
		d.add("d:", id)
	}
	for _, id := range c.Aliases {
		d.add("a:", id)
	}
}

func (d *decoded) addUser(r *userRecord) {
	d.items = append(d.items, fmt.Sprintf("user ext=%v dev=%v", r.ExternalID != nil, r.DeviceID != nil))
	if r.ExternalID != nil {
		d.add("u:", r.ExternalID)
	}
	if r.DeviceID != nil {
		d.add("d:", r.DeviceID)
	}
	for _, id := range r.Aliases {
		d.add("a:", id)
	}
}

func (d *decoded) addMember(k engine.Kind, id []byte) {
	d.add(fmt.Sprintf("%d:", k), id)
}

var errRef = errors.New("reference: rejected")

func rawIs(raw json.RawMessage, first byte) bool {
	t := bytes.TrimLeft(raw, " \t\r\n")
	return len(t) > 0 && t[0] == first
}

func refString(raw json.RawMessage) ([]byte, error) {
	if !rawIs(raw, '"') {
		return nil, errRef
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// refID is refString for an identifier: every occurrence is checked.
func refID(d *decoded, raw json.RawMessage) ([]byte, error) {
	b, err := refString(raw)
	if err == nil {
		d.check(b)
	}
	return b, err
}

type refPair struct {
	key string
	raw json.RawMessage
}

// refObject returns the members of an object in order, duplicates included.
func refObject(raw json.RawMessage) ([]refPair, error) {
	if !rawIs(raw, '{') {
		return nil, errRef
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	var pairs []refPair
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		pairs = append(pairs, refPair{t.(string), v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	return pairs, nil
}

func refArray(raw json.RawMessage) ([]json.RawMessage, error) {
	if !rawIs(raw, '[') {
		return nil, errRef
	}
	var a []json.RawMessage
	return a, json.Unmarshal(raw, &a)
}

func refStrings(d *decoded, raw json.RawMessage) ([][]byte, error) {
	a, err := refArray(raw)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(a))
	for _, e := range a {
		s, err := refID(d, e)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func refAlias(d *decoded, raw json.RawMessage) ([]byte, error) {
	pairs, err := refObject(raw)
	if err != nil {
		return nil, err
	}
	var name, label []byte
	for _, p := range pairs {
		switch p.key {
		case "alias_name":
			if name, err = refID(d, p.raw); err != nil {
				return nil, err
			}
		case "alias_label":
			if label, err = refID(d, p.raw); err != nil {
				return nil, err
			}
		}
	}
	if name == nil || label == nil {
		return nil, errRef
	}
	return engine.AliasKey(nil, name, label), nil
}

func refAliases(d *decoded, raw json.RawMessage) ([][]byte, error) {
	a, err := refArray(raw)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(a))
	for _, e := range a {
		k, err := refAlias(d, e)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

func refChange(d *decoded, raw json.RawMessage) (*changeObject, error) {
	pairs, err := refObject(raw)
	if err != nil {
		return nil, err
	}
	c := new(changeObject)
	for _, p := range pairs {
		switch p.key {
		case "user_ids":
			c.UserIDs, err = refStrings(d, p.raw)
		case "device_ids":
			c.DeviceIDs, err = refStrings(d, p.raw)
		case "aliases":
			c.Aliases, err = refAliases(d, p.raw)
		case "should_remove":
			switch string(bytes.TrimSpace(p.raw)) {
			case "true":
				c.Remove = true
			case "false":
				c.Remove = false
			default:
				err = errRef
			}
		case "timestamp":
			var s []byte
			if s, err = refString(p.raw); err == nil {
				t, ok := parseTime(s)
				if !ok {
					err = errRef
				}
				c.HasTime, c.Time = true, t
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

func refUser(d *decoded, raw json.RawMessage) (*userRecord, error) {
	pairs, err := refObject(raw)
	if err != nil {
		return nil, err
	}
	r := new(userRecord)
	for _, p := range pairs {
		switch p.key {
		case "external_id":
			r.ExternalID, err = refID(d, p.raw)
		case "device_id":
			r.DeviceID, err = refID(d, p.raw)
		case "aliases":
			r.Aliases, err = refAliases(d, p.raw)
		}
		if err != nil {
			return nil, err
		}
	}
	if r.ExternalID == nil && r.DeviceID == nil && len(r.Aliases) == 0 {
		return nil, errRef
	}
	return r, nil
}

// refTop walks a top-level JSON object in order, calling field for each
// member (duplicates included), and checks nothing follows it.
func refTop(body []byte, field func(key string, raw json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t != json.Delim('{') {
		return errRef
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if err := field(t.(string), raw); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errRef
	}
	return nil
}

// refLines calls line for each non-blank NDJSON line holding one JSON value.
func refLines(body []byte, line func(raw json.RawMessage) error) error {
	for _, l := range bytes.Split(body, []byte("\n")) {
		l = bytes.Trim(l, " \t\r")
		if len(l) == 0 {
			continue
		}
		var raw json.RawMessage
		if err := json.Unmarshal(l, &raw); err != nil {
			return err
		}
		if err := line(raw); err != nil {
			return err
		}
	}
	return nil
}

func refChangesJSON(body []byte) (*decoded, error) {
	var d decoded
	seen := false
	err := refTop(body, func(key string, raw json.RawMessage) error {
		if key != "cohort_changes" {
			return nil
		}
		seen = true
		a, err := refArray(raw)
		if err != nil {
			return err
		}
		for _, e := range a {
			c, err := refChange(&d, e)
			if err != nil {
				return err
			}
			d.addChange(c)
		}
		return nil
	})
	if err == nil && !seen {
		err = errRef
	}
	return &d, err
}

func refChangesNDJSON(body []byte) (*decoded, error) {
	var d decoded
	err := refLines(body, func(raw json.RawMessage) error {
		c, err := refChange(&d, raw)
		if err != nil {
			return err
		}
		d.addChange(c)
		return nil
	})
	return &d, err
}

func refMembersJSON(body []byte) (*decoded, error) {
	var d decoded
	err := refTop(body, func(key string, raw json.RawMessage) error {
		var ids [][]byte
		var err error
		var k engine.Kind
		switch key {
		case "user_ids":
			k = engine.KindExternal
			ids, err = refStrings(&d, raw)
		case "device_ids":
			k = engine.KindDevice
			ids, err = refStrings(&d, raw)
		case "aliases":
			k = engine.KindAlias
			ids, err = refAliases(&d, raw)
		default:
			return nil
		}
		for _, id := range ids {
			d.addMember(k, id)
		}
		return err
	})
	return &d, err
}

func refMembersNDJSON(body []byte) (*decoded, error) {
	var d decoded
	err := refLines(body, func(raw json.RawMessage) error {
		pairs, err := refObject(raw)
		if err != nil {
			return err
		}
		var ext, dev, name, label []byte
		for _, p := range pairs {
			switch p.key {
			case "external_id":
				ext, err = refID(&d, p.raw)
			case "device_id":
				dev, err = refID(&d, p.raw)
			case "alias_name":
				name, err = refID(&d, p.raw)
			case "alias_label":
				label, err = refID(&d, p.raw)
			}
			if err != nil {
				return err
			}
		}
		alias := name != nil || label != nil
		switch {
		case ext != nil && dev == nil && !alias:
			d.addMember(engine.KindExternal, ext)
		case dev != nil && ext == nil && !alias:
			d.addMember(engine.KindDevice, dev)
		case name != nil && label != nil && ext == nil && dev == nil:
			d.addMember(engine.KindAlias, engine.AliasKey(nil, name, label))
		default:
			return errRef
		}
		return nil
	})
	return &d, err
}

func refUsersJSON(body []byte) (*decoded, error) {
	var d decoded
	seen := false
	err := refTop(body, func(key string, raw json.RawMessage) error {
		if key != "users" {
			return nil
		}
		seen = true
		a, err := refArray(raw)
		if err != nil {
			return err
		}
		for _, e := range a {
			r, err := refUser(&d, e)
			if err != nil {
				return err
			}
			d.addUser(r)
		}
		return nil
	})
	if err == nil && !seen {
		err = errRef
	}
	return &d, err
}

func refUsersNDJSON(body []byte) (*decoded, error) {
	var d decoded
	err := refLines(body, func(raw json.RawMessage) error {
		r, err := refUser(&d, raw)
		if err != nil {
			return err
		}
		d.addUser(r)
		return nil
	})
	return &d, err
}

// The scanner side, in the same canonical form.

func scanChanges(body []byte, ndjson bool) (*decoded, error) {
	var d decoded
	fn := func(c *changeObject) error { d.addChange(c); return nil }
	var err error
	if ndjson {
		err = decodeChangesNDJSON(bytes.NewReader(body), fn)
	} else {
		err = decodeChangesJSON(bytes.NewReader(body), fn)
	}
	return &d, err
}

func scanMembers(body []byte, ndjson bool) (*decoded, error) {
	var d decoded
	var batchErr error
	fn := func(k engine.Kind, keys [][]byte) error {
		if len(keys) == 0 || len(keys) > maxBatch {
			batchErr = fmt.Errorf("batch of %d keys", len(keys))
		}
		for _, id := range keys {
			d.addMember(k, id)
		}
		return nil
	}
	var err error
	if ndjson {
		err = decodeMembersNDJSON(bytes.NewReader(body), fn)
	} else {
		err = decodeMembersJSON(bytes.NewReader(body), fn)
	}
	if err == nil {
		err = batchErr
	}
	return &d, err
}

func scanUsers(body []byte, ndjson bool) (*decoded, error) {
	var d decoded
	fn := func(r *userRecord) error { d.addUser(r); return nil }
	var err error
	if ndjson {
		err = decodeUsersNDJSON(bytes.NewReader(body), fn)
	} else {
		err = decodeUsersJSON(bytes.NewReader(body), fn)
	}
	return &d, err
}

// compareRef checks a scanner result against the reference's: both accept
// with identical output, or both reject; the scanner may also reject what
// the reference accepted when the reference shows a broken or replaced
// identifier (invalid UTF-8 and lone surrogates become U+FFFD there). Every
// scanner error must be a 400 apiError.
func compareRef(got *decoded, gotErr error, want *decoded, wantErr error) error {
	if gotErr != nil {
		var ae *apiError
		if !errors.As(gotErr, &ae) || ae.status != 400 {
			return fmt.Errorf("scanner error is not a 400 apiError: %v", gotErr)
		}
	}
	switch {
	case gotErr == nil && wantErr != nil:
		return fmt.Errorf("scanner accepted what the reference rejected (%v):\n%s", wantErr, got)
	case gotErr == nil && got.changes() != want.changes():
		return fmt.Errorf("mismatch:\nscanner:\n%s\nreference:\n%s", got, want)
	case gotErr != nil && wantErr == nil && !want.broken && !want.fffd:
		return fmt.Errorf("scanner rejected (%v) what the reference accepted:\n%s", gotErr, want)
	}
	return nil
}
