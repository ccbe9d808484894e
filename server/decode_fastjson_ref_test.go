package server

import (
	"fmt"

	"github.com/valyala/fastjson"

	"github.com/cohortd/cohortd/engine"
)

// The fastjson decoder of user deletes that the streaming one
// (decodeUsersDelete) replaced, kept as the reference of its fuzz target.

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
			arena = engine.AliasKey(arena, name, label)
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
