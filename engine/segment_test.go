package engine

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// parseSegment builds the segment written js in the API's JSON syntax, for
// tests that state expressions as the API does. It reads well-formed
// expressions only: the syntax and its errors are server/segment's (and
// tested there).
func parseSegment(js []byte) (*Segment, error) {
	e, err := exprJSON(js)
	if err != nil {
		return nil, err
	}
	return NewSegment(e), nil
}

func exprJSON(js []byte) (*SegmentExpr, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	if len(m) != 1 {
		return nil, fmt.Errorf("%s: want one operator", js)
	}
	for op, v := range m {
		switch op {
		case "cohort":
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, err
			}
			p, id, _ := strings.Cut(s, "/")
			return CohortExpr(p, id), nil
		case "not":
			e, err := exprJSON(v)
			if err != nil {
				return nil, err
			}
			return NotExpr(e), nil
		case "and", "or":
			var raws []json.RawMessage
			if err := json.Unmarshal(v, &raws); err != nil {
				return nil, err
			}
			var kids []*SegmentExpr
			for _, r := range raws {
				e, err := exprJSON(r)
				if err != nil {
					return nil, err
				}
				kids = append(kids, e)
			}
			if op == "or" {
				return OrExpr(kids...), nil
			}
			return AndExpr(kids...), nil
		case "all":
			return AllExpr(), nil
		}
	}
	return nil, fmt.Errorf("%s: unknown operator", js)
}

func TestSegmentExprCohortSplit(t *testing.T) {
	s := NewSegment(CohortExpr("p", "x/y"))
	if s.root.partner != "p" || s.root.id != "x/y" || s.flat[0].warning != "unknown cohort p/x/y" {
		t.Fatalf("cohort expr: %+v", s.root)
	}
}
