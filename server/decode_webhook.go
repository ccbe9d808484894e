package server

import (
	"strconv"

	"github.com/valyala/fastjson"
)

// The body of Mixpanel's cohort webhook (docs/API.md §3b), parsed whole with a
// pooled fastjson parser (bounded by -partner-max-body):
//
//	{"action": "members"|"add_members"|"remove_members",
//	 "parameters": {"mixpanel_project_id", "mixpanel_cohort_id", "mixpanel_cohort_name",
//	                "mixpanel_cohort_description", "mixpanel_session_id",
//	                "page_info": {"total_pages", "page_count"}, "members": [{…}]}}
//
// Everything but the member identifiers is validated here (malformed → 400,
// which pauses the customer's sync, so only what is truly malformed fails);
// a member whose identifier is missing, not a string or number, or breaks
// the identifier rule is not an error: it is counted unmatched.

// Webhook actions.
const (
	actionMembers = "members"
	actionAdd     = "add_members"
	actionRemove  = "remove_members"
)

// webhookReq is a decoded webhook body. members points into the parser.
type webhookReq struct {
	Action     string // "" when missing or unknown (the reply's action is then null)
	CohortID   string
	CohortName string // "" when absent: no rename
	SessionID  string // members only
	TotalPages int    // members only
	PageCount  int    // members only
	members    []*fastjson.Value
}

// parseWebhook parses and validates a webhook body. On error the returned
// request still carries Action when it was recognised, for the reply.
func parseWebhook(p *fastjson.Parser, body []byte) (webhookReq, error) {
	var r webhookReq
	o, err := parseJSONObject(p, body)
	if err != nil {
		return r, err
	}
	switch a := stringOf(o.Get("action")); a {
	case actionMembers, actionAdd, actionRemove:
		r.Action = a
	default:
		return r, badRequest("action must be one of members, add_members, remove_members")
	}
	pv := o.Get("parameters")
	if pv == nil || pv.Type() != fastjson.TypeObject {
		return r, badRequest("parameters must be an object")
	}
	id, ok := decimalOrString(pv.Get("mixpanel_cohort_id"))
	if !ok || !validText([]byte(id)) || len(id) > maxIDLen {
		return r, badRequest("parameters.mixpanel_cohort_id must be a non-empty string or an integer")
	}
	r.CohortID = id
	if nv := pv.Get("mixpanel_cohort_name"); nv != nil && nv.Type() != fastjson.TypeNull {
		b, err := nv.StringBytes()
		if err != nil || !validText(b) {
			return r, badRequest("parameters.mixpanel_cohort_name must be a string")
		}
		r.CohortName = string(b)
	}
	mv := pv.Get("members")
	if mv == nil || mv.Type() != fastjson.TypeArray {
		return r, badRequest("parameters.members must be an array of objects")
	}
	r.members, _ = mv.Array()
	for _, m := range r.members {
		if m.Type() != fastjson.TypeObject {
			return r, badRequest("parameters.members must be an array of objects")
		}
	}
	if r.Action != actionMembers {
		return r, nil
	}
	sid, ok := decimalOrString(pv.Get("mixpanel_session_id"))
	if !ok || !validText([]byte(sid)) || len(sid) > maxIDLen {
		return r, badRequest("parameters.mixpanel_session_id must be a non-empty string for action members")
	}
	r.SessionID = sid
	pi := pv.Get("page_info")
	if pi == nil || pi.Type() != fastjson.TypeObject {
		return r, badRequest("parameters.page_info must be an object with total_pages and page_count")
	}
	total, ok := positiveInt(pi.Get("total_pages"))
	if !ok {
		return r, badRequest("parameters.page_info.total_pages must be an integer of at least 1")
	}
	page, ok := positiveInt(pi.Get("page_count"))
	if !ok || page > total {
		return r, badRequest("parameters.page_info.page_count must be an integer from 1 to total_pages")
	}
	r.TotalPages, r.PageCount = total, page
	return r, nil
}

// maxPages bounds total_pages: a sync of 1e9 users in pages of 1,000 needs
// a million; anything beyond is malformed.
const maxPages = 1 << 24

// positiveInt returns v as an int in [1, maxPages].
func positiveInt(v *fastjson.Value) (int, bool) {
	if v == nil || v.Type() != fastjson.TypeNumber {
		return 0, false
	}
	n, err := v.Int64()
	if err != nil || n < 1 || n > maxPages {
		return 0, false
	}
	return int(n), true
}

// decimalOrString returns a string value, or an integer as its decimal
// string (Mixpanel sends cohort ids as numbers).
func decimalOrString(v *fastjson.Value) (string, bool) {
	if v == nil {
		return "", false
	}
	switch v.Type() {
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return string(b), len(b) > 0
	case fastjson.TypeNumber:
		n, err := v.Int64()
		if err != nil {
			return "", false
		}
		return strconv.FormatInt(n, 10), true
	}
	return "", false
}

// memberID appends the identifier property prop of member m to dst: a
// string as is, a number as its JSON text. ok is false when the property is
// missing, of another type, or breaks the identifier rule (docs/API.md §2.6).
func memberID(dst []byte, m *fastjson.Value, prop string) (_ []byte, ok bool) {
	v := m.Get(prop)
	if v == nil {
		return dst, false
	}
	var b []byte
	switch v.Type() {
	case fastjson.TypeString:
		b, _ = v.StringBytes()
	case fastjson.TypeNumber:
		b = v.MarshalTo(nil)
	default:
		return dst, false
	}
	if !validID(b) {
		return dst, false
	}
	return append(dst, b...), true
}

// eachMember calls fn with every member's external id (nil when it has
// none usable) and, when aliasProp is set, its alias label (nil when none).
// The slices are valid only during fn.
func (r *webhookReq) eachMember(extProp, aliasProp string, fn func(ext, aliasLabel []byte)) {
	var eb, ab []byte
	for _, m := range r.members {
		var ext, label []byte
		var ok bool
		if eb, ok = memberID(eb[:0], m, extProp); ok {
			ext = eb
		}
		if aliasProp != "" {
			if ab, ok = memberID(ab[:0], m, aliasProp); ok {
				label = ab
			}
		}
		fn(ext, label)
	}
}

// Len is the number of members in the page.
func (r *webhookReq) Len() int { return len(r.members) }
