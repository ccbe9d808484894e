package server

import (
	"bytes"
	"net/url"
	"slices"
	"strings"

	"github.com/valyala/fasthttp"
)

// authKind is how a route authenticates.
type authKind uint8

const (
	authNone      authKind = iota
	authAdmin              // Authorization: Bearer <admin token>
	authWorkspace          // Authorization: Bearer <workspace API key>
	authPartner            // credentials in the JSON body (the handler checks them)
)

// bodyKind is what Content-Type a route accepts on its body.
type bodyKind uint8

const (
	bodyNone bodyKind = iota // no check (GET, operational routes)
	bodyJSON                 // application/json or none
	bodyBulk                 // application/json, application/x-ndjson or none
)

// route is one entry of the route table. A pattern is a path whose
// segments are literals or {name} parameters; parameters match one
// percent-encoded segment and reach the handler decoded, in order.
type route struct {
	method  string
	pattern string
	segs    []string
	auth    authKind
	body    bodyKind
	write   bool // a write: the Idempotency-Key protocol applies
	ungated bool // answers before SetEngine and during shutdown
	prefix  bool // matches any path under pattern (pprof)
	h       func(r *request) error
}

// buildRoutes returns the route table (docs/API.md §3–§5).
func (s *Server) buildRoutes() []*route {
	var rs []*route
	add := func(method, pattern string, auth authKind, body bodyKind, h func(r *request) error) *route {
		rt := &route{method: method, pattern: pattern, auth: auth, body: body, h: h,
			segs:  strings.Split(pattern, "/"),
			write: method == "POST" || method == "PUT" || method == "DELETE"}
		if n := strings.Count(pattern, "{"); n > len(request{}.params) {
			panic("BUG: route " + pattern + " has more parameters than request.params holds")
		}
		rs = append(rs, rt)
		return rt
	}
	add("GET", "/livez", authNone, bodyNone, s.handleLivez).ungated = true
	// Mixpanel's webhook authenticates with Basic auth and answers its own
	// reply shape, also for not-ready and shutdown (handlers_webhook.go).
	wh := add("POST", "/webhooks/mixpanel", authNone, bodyNone, s.handleMixpanel)
	wh.ungated, wh.write = true, false
	add("GET", "/readyz", authNone, bodyNone, s.handleReadyz).ungated = true
	add("GET", "/metrics", authNone, bodyNone, s.handleMetrics).ungated = true
	pp := add("GET", "/debug/pprof/", authAdmin, bodyNone, s.handlePprof)
	pp.prefix, pp.write = true, false
	pp = add("POST", "/debug/pprof/", authAdmin, bodyNone, s.handlePprof) // pprof symbol lookups
	pp.prefix, pp.write = true, false

	// Partner endpoints (docs/API.md §3).
	add("POST", "/partners/{partner}/cohorts", authPartner, bodyJSON, s.handlePartnerCohort)
	add("POST", "/partners/{partner}/cohorts/users", authPartner, bodyJSON, s.handlePartnerUsers)

	// Admin (docs/API.md §4).
	add("POST", "/v1/workspaces", authAdmin, bodyJSON, s.handleCreateWorkspace)
	add("POST", "/v1/partners", authAdmin, bodyJSON, s.handleCreatePartner)
	add("POST", "/v1/workspaces/{ws}/partners/{partner}/keys", authAdmin, bodyJSON, s.handleCreateKey)
	add("GET", "/v1/workspaces/{ws}/partners/{partner}/keys", authAdmin, bodyNone, s.handleListKeys)
	add("DELETE", "/v1/workspaces/{ws}/partners/{partner}/keys/{key_id}", authAdmin, bodyJSON, s.handleRevokeKey)
	add("GET", "/v1/admin/memory", authAdmin, bodyNone, s.handleAdminMemory)
	add("GET", "/v1/workspaces", authAdmin, bodyNone, s.handleListWorkspaces)
	add("DELETE", "/v1/workspaces/{ws}", authAdmin, bodyJSON, s.handleDeleteWorkspace)
	add("POST", "/v1/workspaces/{ws}/api-key", authAdmin, bodyJSON, s.handleRotateWorkspaceKey)
	add("GET", "/v1/partners", authAdmin, bodyNone, s.handleListPartners)
	add("DELETE", "/v1/partners/{slug}", authAdmin, bodyJSON, s.handleDeletePartner)
	add("POST", "/v1/partners/{slug}/api-key", authAdmin, bodyJSON, s.handleRotatePartnerKey)
	add("POST", "/v1/admin/snapshot", authAdmin, bodyJSON, s.handleAdminSnapshot)
	// Replication (docs/API.md §7, handlers_replication.go).
	add("GET", "/v1/admin/snapshot", authAdmin, bodyNone, s.handleGetSnapshot)
	add("GET", "/v1/admin/replication", authAdmin, bodyNone, s.handleReplication)
	add("GET", "/v1/admin/digest", authAdmin, bodyNone, s.handleDigest)

	// Users.
	add("POST", "/v1/users", authWorkspace, bodyBulk, s.handleUpsertUsers)
	add("POST", "/v1/users/delete", authWorkspace, bodyJSON, s.handleDeleteUsers)
	add("GET", "/v1/users/lookup", authWorkspace, bodyNone, s.handleLookupUser)

	// Cohorts.
	add("GET", "/v1/cohorts", authWorkspace, bodyNone, s.handleListCohorts)
	add("GET", "/v1/cohorts/{partner}/{cohort_id}", authWorkspace, bodyNone, s.handleGetCohort)
	add("DELETE", "/v1/cohorts/{partner}/{cohort_id}", authWorkspace, bodyJSON, s.handleDeleteCohort)
	add("POST", "/v1/cohorts/{partner}/{cohort_id}/changes", authWorkspace, bodyBulk, s.handleCohortChanges)
	add("PUT", "/v1/cohorts/{partner}/{cohort_id}/members", authWorkspace, bodyBulk, s.handleReplaceMembers)
	add("GET", "/v1/cohorts/{partner}/{cohort_id}/members", authWorkspace, bodyNone, s.handleListMembers)
	add("GET", "/v1/cohorts/{partner}/{cohort_id}/syncs", authWorkspace, bodyNone, s.handleCohortSyncs)
	add("GET", "/v1/health/cohorts", authWorkspace, bodyNone, s.handleHealthCohorts)

	// Segments: POST, but queries, not writes.
	add("POST", "/v1/segments/count", authWorkspace, bodyJSON, s.handleSegmentCount).write = false
	add("POST", "/v1/segments/contains", authWorkspace, bodyJSON, s.handleSegmentContains).write = false
	add("POST", "/v1/segments/members", authWorkspace, bodyJSON, s.handleSegmentMembers).write = false

	add("GET", "/v1/usage", authWorkspace, bodyNone, s.handleUsage)

	// The built-in page (docs/API.md §8): static files, no auth (the page
	// signs in to /v1 with a workspace key), served during recovery too.
	add("GET", "/ui", authNone, bodyNone, s.handleUIRedirect).ungated = true
	ui := add("GET", "/ui/", authNone, bodyNone, s.handleUI)
	ui.prefix, ui.ungated = true, true
	return rs
}

// match finds the route of ctx. With no route for the method but some for
// the path, allowed lists their methods (for 405 + Allow). A parameter
// that is not valid percent-encoding is a 400.
func (s *Server) match(ctx *fasthttp.RequestCtx) (rt *route, params [3]string, allowed string, err error) {
	path := ctx.Request.URI().PathOriginal()
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	// Senders configured with a trailing slash post to //partners/….
	if bytes.HasPrefix(path, []byte("//partners/")) {
		path = path[1:]
	}
	method := ctx.Method()
	var raw [8][]byte
	segs := splitPath(path, raw[:0])
	var methods []string
	cands, ok := s.static[string(path)]
	if !ok {
		cands = s.byLen[min(len(segs), len(s.byLen)-1)]
	}
	for _, cand := range cands {
		if !cand.matches(segs) {
			continue
		}
		if string(method) == cand.method || (cand.method == "GET" && string(method) == "HEAD") {
			// The first route in table order wins; the methods are
			// needed only when none does.
			rt = cand
			break
		}
		if !slices.Contains(methods, cand.method) {
			methods = append(methods, cand.method)
		}
	}
	if rt == nil {
		return nil, params, strings.Join(methods, ", "), nil
	}
	n := 0
	for i, seg := range rt.segs {
		if !isParam(seg) {
			continue
		}
		v, uerr := url.PathUnescape(string(segs[i]))
		if uerr != nil {
			return nil, params, "", errorf(fasthttp.StatusBadRequest, "malformed percent-encoding in path parameter %s", seg)
		}
		params[n] = v
		n++
	}
	return rt, params, "", nil
}

// routesByLen indexes the table by segment count, so that a request is
// compared only with the patterns that can fit it (the full scan of 40
// routes cost a single contains query 0.4 µs). Bucket n
// holds, in table order, the routes of n segments and the prefix routes
// of at most n; the last bucket, for longer paths, holds prefix routes
// only.
func routesByLen(rs []*route) [][]*route {
	longest := 0
	for _, rt := range rs {
		longest = max(longest, len(rt.segs))
	}
	byLen := make([][]*route, longest+2)
	for n := range byLen {
		for _, rt := range rs {
			if (rt.prefix && len(rt.segs) <= n) || (!rt.prefix && len(rt.segs) == n) {
				byLen[n] = append(byLen[n], rt)
			}
		}
	}
	return byLen
}

// staticRoutes maps each parameterless pattern to the routes, in table
// order, that match it as a path, so that the hottest paths (queries,
// probes, user imports) cost one map lookup. Parameter and prefix routes
// that also fit such a path are in its list: precedence is unchanged.
func staticRoutes(rs []*route) map[string][]*route {
	static := make(map[string][]*route)
	for _, rt := range rs {
		if rt.prefix || strings.Contains(rt.pattern, "{") {
			continue
		}
		if _, done := static[rt.pattern]; done {
			continue
		}
		segs := splitPath([]byte(rt.pattern), nil)
		for _, cand := range rs {
			if cand.matches(segs) {
				static[rt.pattern] = append(static[rt.pattern], cand)
			}
		}
	}
	return static
}

func isParam(seg string) bool { return strings.HasPrefix(seg, "{") }

// splitPath splits path on '/' into dst (the slices alias path).
func splitPath(path []byte, dst [][]byte) [][]byte {
	for {
		i := bytes.IndexByte(path, '/')
		if i < 0 {
			return append(dst, path)
		}
		dst = append(dst, path[:i])
		path = path[i+1:]
	}
}

// matches reports whether the split path fits the pattern: same number of
// segments, equal literals, non-empty parameters.
func (rt *route) matches(segs [][]byte) bool {
	if rt.prefix {
		// "/debug/pprof/" splits to ["", "debug", "pprof", ""]: the last
		// pattern segment matches any remainder.
		n := len(rt.segs) - 1
		if len(segs) < len(rt.segs) {
			return false
		}
		for i := 0; i < n; i++ {
			if string(segs[i]) != rt.segs[i] {
				return false
			}
		}
		return true
	}
	if len(segs) != len(rt.segs) {
		return false
	}
	for i, p := range rt.segs {
		if isParam(p) {
			if len(segs[i]) == 0 {
				return false
			}
			continue
		}
		if string(segs[i]) != p {
			return false
		}
	}
	return true
}
