// Package segment parses the JSON syntax of segment expressions
// (docs/API.md §4 "Segments") into engine.Segment values:
//
//	{"cohort":"<partner>/<cohort_id>"} · {"not":E} · {"and":[E,…]} · {"or":[E,…]} · {"all":true}
//
// It is shared by the HTTP API (server) and the RESP front end
// (server/resp), which both take expressions from clients; the engine holds
// expressions as trees and knows nothing of JSON. Parse is safe for
// concurrent use.
package segment

import (
	"fmt"
	"strings"

	"github.com/valyala/fastjson"

	"github.com/cohortd/cohortd/engine"
)

// Limits that keep a hostile expression from costing unbounded stack or
// time: real segment builders produce a few levels and tens of operands.
const (
	maxDepth    = 32
	maxOperands = 1024
)

// Parse parses a segment expression from JSON. A malformed expression is
// an *engine.InvalidError whose message names the offending path (the API
// answers 400 with it). The Segment does not refer to data.
func Parse(data []byte) (*engine.Segment, error) {
	var p fastjson.Parser
	v, err := p.ParseBytes(data)
	if err != nil {
		return nil, invalidf("segment must be a JSON expression: %v", err)
	}
	operands := 0
	root, err := parseExpr(v, 0, &operands, "segment")
	if err != nil {
		return nil, err
	}
	return engine.NewSegment(root), nil
}

func invalidf(format string, args ...any) error {
	return &engine.InvalidError{Message: fmt.Sprintf(format, args...)}
}

func parseExpr(v *fastjson.Value, depth int, operands *int, path string) (*engine.SegmentExpr, error) {
	if depth > maxDepth {
		return nil, invalidf("%s: expression nested deeper than %d levels", path, maxDepth)
	}
	*operands++
	if *operands > maxOperands {
		return nil, invalidf("segment: more than %d operands", maxOperands)
	}
	obj, err := v.Object()
	if err != nil {
		return nil, invalidf("%s must be an object with one of cohort, not, and, or, all", path)
	}
	var n *engine.SegmentExpr
	var ferr error
	found := 0
	obj.Visit(func(k []byte, fv *fastjson.Value) {
		if ferr != nil {
			return
		}
		key := string(k)
		switch key {
		case "cohort", "not", "and", "or", "all":
		default:
			return // unknown fields are ignored
		}
		found++
		if found > 1 {
			ferr = invalidf("%s must have exactly one of cohort, not, and, or, all", path)
			return
		}
		sub := path + "." + key
		switch key {
		case "cohort":
			s, err := fv.StringBytes()
			if err != nil {
				ferr = invalidf("%s must be a string \"<partner>/<cohort_id>\"", sub)
				return
			}
			p, id, ok := strings.Cut(string(s), "/")
			if !ok || !engine.ValidPartnerSlug(p) || id == "" {
				ferr = invalidf("%s must be \"<partner>/<cohort_id>\" with a partner slug [a-z0-9_-]{1,64} and a non-empty cohort id", sub)
				return
			}
			n = engine.CohortExpr(p, id)
		case "not":
			kid, err := parseExpr(fv, depth+1, operands, sub)
			if err != nil {
				ferr = err
				return
			}
			n = engine.NotExpr(kid)
		case "and", "or":
			arr, err := fv.Array()
			if err != nil {
				ferr = invalidf("%s must be an array of expressions", sub)
				return
			}
			if len(arr) == 0 {
				ferr = invalidf("%s needs at least one operand", sub)
				return
			}
			kids := make([]*engine.SegmentExpr, 0, len(arr))
			for i, e := range arr {
				kid, err := parseExpr(e, depth+1, operands, fmt.Sprintf("%s[%d]", sub, i))
				if err != nil {
					ferr = err
					return
				}
				kids = append(kids, kid)
			}
			if key == "or" {
				n = engine.OrExpr(kids...)
			} else {
				n = engine.AndExpr(kids...)
			}
		case "all":
			if fv.Type() != fastjson.TypeTrue {
				ferr = invalidf("%s must be true", sub)
				return
			}
			n = engine.AllExpr()
		}
	})
	if ferr != nil {
		return nil, ferr
	}
	if n == nil {
		return nil, invalidf("%s must have one of cohort, not, and, or, all", path)
	}
	return n, nil
}
