package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cohortd/cohortd/index"
	"io"
	"strings"
	"time"
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
	if prefix == "a:" || prefix == fmt.Sprintf("%d:", index.KindAlias) {
		name, label, ok := bytes.Cut(id, []byte{0})
		valid = ok && validID(name) && validID(label)
	}
	if !valid {
		d.broken = true
	}
	d.items = append(d.items, prefix+string(id))
}

func (d *decoded) String() string { return strings.Join(d.items, "\n") }

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

func (d *decoded) addMember(k index.Kind, id []byte) {
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

func refObject(raw json.RawMessage) (map[string]json.RawMessage, error) {
	if !rawIs(raw, '{') {
		return nil, errRef
	}
	var m map[string]json.RawMessage
	return m, json.Unmarshal(raw, &m)
}

func refArray(raw json.RawMessage) ([]json.RawMessage, error) {
	if !rawIs(raw, '[') {
		return nil, errRef
	}
	var a []json.RawMessage
	return a, json.Unmarshal(raw, &a)
}

func refStrings(raw json.RawMessage) ([][]byte, error) {
	a, err := refArray(raw)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(a))
	for _, e := range a {
		s, err := refString(e)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func refAlias(raw json.RawMessage) ([]byte, error) {
	m, err := refObject(raw)
	if err != nil {
		return nil, err
	}
	n, ok1 := m["alias_name"]
	l, ok2 := m["alias_label"]
	if !ok1 || !ok2 {
		return nil, errRef
	}
	name, err := refString(n)
	if err != nil {
		return nil, err
	}
	label, err := refString(l)
	if err != nil {
		return nil, err
	}
	return index.AliasKey(nil, name, label), nil
}

func refAliases(raw json.RawMessage) ([][]byte, error) {
	a, err := refArray(raw)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(a))
	for _, e := range a {
		k, err := refAlias(e)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

func refChange(raw json.RawMessage) (*changeObject, error) {
	m, err := refObject(raw)
	if err != nil {
		return nil, err
	}
	c := new(changeObject)
	if v, ok := m["user_ids"]; ok {
		if c.UserIDs, err = refStrings(v); err != nil {
			return nil, err
		}
	}
	if v, ok := m["device_ids"]; ok {
		if c.DeviceIDs, err = refStrings(v); err != nil {
			return nil, err
		}
	}
	if v, ok := m["aliases"]; ok {
		if c.Aliases, err = refAliases(v); err != nil {
			return nil, err
		}
	}
	if v, ok := m["should_remove"]; ok {
		switch string(bytes.TrimSpace(v)) {
		case "true":
			c.Remove = true
		case "false":
		default:
			return nil, errRef
		}
	}
	if v, ok := m["timestamp"]; ok {
		s, err := refString(v)
		if err != nil {
			return nil, err
		}
		t, ok := parseTime(s)
		if !ok {
			return nil, errRef
		}
		c.HasTime, c.Time = true, t
	}
	return c, nil
}

func refUser(raw json.RawMessage) (*userRecord, error) {
	m, err := refObject(raw)
	if err != nil {
		return nil, err
	}
	r := new(userRecord)
	if v, ok := m["external_id"]; ok {
		if r.ExternalID, err = refString(v); err != nil {
			return nil, err
		}
	}
	if v, ok := m["device_id"]; ok {
		if r.DeviceID, err = refString(v); err != nil {
			return nil, err
		}
	}
	if v, ok := m["aliases"]; ok {
		if r.Aliases, err = refAliases(v); err != nil {
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
			c, err := refChange(e)
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
		c, err := refChange(raw)
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
		var k index.Kind
		switch key {
		case "user_ids":
			k = index.KindExternal
			ids, err = refStrings(raw)
		case "device_ids":
			k = index.KindDevice
			ids, err = refStrings(raw)
		case "aliases":
			k = index.KindAlias
			ids, err = refAliases(raw)
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
		m, err := refObject(raw)
		if err != nil {
			return err
		}
		ext, hasExt := m["external_id"]
		dev, hasDev := m["device_id"]
		_, hasName := m["alias_name"]
		_, hasLabel := m["alias_label"]
		alias := hasName || hasLabel
		switch {
		case hasExt && !hasDev && !alias:
			s, err := refString(ext)
			if err != nil {
				return err
			}
			d.addMember(index.KindExternal, s)
		case hasDev && !hasExt && !alias:
			s, err := refString(dev)
			if err != nil {
				return err
			}
			d.addMember(index.KindDevice, s)
		case hasName && hasLabel && !hasExt && !hasDev:
			k, err := refAlias(raw)
			if err != nil {
				return err
			}
			d.addMember(index.KindAlias, k)
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
			r, err := refUser(e)
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
		r, err := refUser(raw)
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
	fn := func(k index.Kind, keys [][]byte) error {
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
	case gotErr == nil && got.String() != want.String():
		return fmt.Errorf("mismatch:\nscanner:\n%s\nreference:\n%s", got, want)
	case gotErr != nil && wantErr == nil && !want.broken && !want.fffd:
		return fmt.Errorf("scanner rejected (%v) what the reference accepted:\n%s", gotErr, want)
	}
	return nil
}
