package server

// Native API /v1, workspace endpoints (Authorization: Bearer <workspace
// API key>; the key selects the workspace, nothing in a path or body can
// widen it; the admin token gets 403 here). Response shapes, exactly:
//
//	POST   /v1/users (JSON {"users":[R…]} or NDJSON of R, R = {"external_id"?,"device_id"?,"aliases"?:[{"alias_name","alias_label"}]})
//	       → 200 {"created":N,"identified":N,"merged":N,"updated":N,"unchanged":N}
//	POST   /v1/users/delete {"user_ids"?:[…],"device_ids"?:[…],"aliases"?:[{"alias_name","alias_label"}]}
//	       → 200 {"deleted":N,"unmatched":N}
//	GET    /v1/users/lookup?external_id=… | ?device_id=… | ?alias_name=…&alias_label=…
//	       → 200 {"user":{"external_id":string|null,"aliases":[{"alias_name","alias_label"}],"device_ids":[string],"anonymous":bool},
//	              "cohorts":[{"partner","cohort_id","name"}]}
//	         (every key always present: external_id null when absent, arrays [] when empty); 404 if no user
//	GET    /v1/cohorts → 200 {"cohorts":[C…]}
//	GET    /v1/cohorts/{partner}/{cohort_id} → 200 C; 404 if unknown
//	       C = {"partner","cohort_id","name","created_at","updated_at","size":N,"health":H} (times RFC 3339, UTC;
//	       H, the sync health, in handlers_syncs.go)
//	DELETE /v1/cohorts/{partner}/{cohort_id} → 204; 404 if unknown
//	POST   /v1/cohorts/{partner}/{cohort_id}/changes (JSON {"cohort_changes":[…]} or NDJSON of change objects)
//	       → 200 {"message":"success","matched":N,"unmatched":N,"unmatched_by_reason":{"unknown":N,"device_id_identified":N},
//	              "added":N,"removed":N,"dropped_before_floor":N,"data_points":N}
//	PUT    /v1/cohorts/{partner}/{cohort_id}/members (JSON {"user_ids","device_ids","aliases"} or NDJSON lines
//	       {"external_id"} | {"device_id"} | {"alias_name","alias_label"})
//	       → 200 {"added":N,"removed":N,"unchanged":N,"unmatched":N,"data_points":N}
//	GET    /v1/cohorts/{partner}/{cohort_id}/members → 200 NDJSON of M (Content-Type application/x-ndjson;
//	       Content-Encoding gzip or zstd when Accept-Encoding asks); 404 if unknown
//	POST   /v1/segments/count {"segment":E} → 200 {"count":N} (+ "warnings":[string…] when non-empty)
//	POST   /v1/segments/contains {"segment":E,"users":[{"external_id"}|{"device_id"}|{"alias_name","alias_label"}]}
//	       → 200 {"results":[bool…]} (+ "warnings")
//	POST   /v1/segments/members {"segment":E,"limit"?:N,"cursor"?:string|null}
//	       with limit (1–10000): 200 {"members":[M…],"next_cursor":string|null} (+ "warnings")
//	       without: 200 NDJSON of M (as the member listing; no warnings)
//	GET    /v1/usage → 200 {"total":N,"partners":{"<slug>":{"total":N,"days":{"YYYY-MM-DD":N}}}}
//
// M = {"external_id"?:string,"aliases"?:[{"alias_name","alias_label"}],"device_ids"?:[string]}: a member's
// identifiers, absent keys omitted (an anonymous user has only device_ids).
//
// In paths {partner} must match [a-z0-9_-]{1,64} (need not be registered;
// else 400) and {cohort_id} is percent-encoded and follows the identifier
// rule (else 400).
//
// The handlers are split by resource: handlers_users.go, handlers_cohorts.go
// (with the member stream, M), handlers_segments.go; usage is here.

import "github.com/valyala/fasthttp"

// handleUsage serves GET /v1/usage: data points per partner and UTC day.
func (s *Server) handleUsage(r *request) error {
	type partnerJSON struct {
		Total uint64            `json:"total"`
		Days  map[string]uint64 `json:"days"`
	}
	u := r.ws.Usage()
	out := struct {
		Total    uint64                 `json:"total"`
		Partners map[string]partnerJSON `json:"partners"`
	}{Total: u.Total, Partners: make(map[string]partnerJSON, len(u.Partners))}
	for slug, pu := range u.Partners {
		out.Partners[slug] = partnerJSON{pu.Total, pu.Days}
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, out)
}
