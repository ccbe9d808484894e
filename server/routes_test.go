package server

import (
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// TestMatchAgreesWithFullScan checks the static map and the segment-count
// index against a scan of the whole table, in table order: the same route
// wins, and a path with no route for its method gets the same Allow list.
func TestMatchAgreesWithFullScan(t *testing.T) {
	s := &Server{}
	s.routes = s.buildRoutes()
	s.static, s.byLen = staticRoutes(s.routes), routesByLen(s.routes)

	var paths []string
	for _, rt := range s.routes {
		var segs []string
		for _, seg := range rt.segs {
			if isParam(seg) {
				seg = "x"
			}
			segs = append(segs, seg)
		}
		p := strings.Join(segs, "/")
		paths = append(paths, p, p+"/extra", strings.TrimSuffix(p, "/"+segs[len(segs)-1]))
	}
	paths = append(paths, "/", "", "/debug/pprof/a/b/c/d/e/f/g/h/i", "/v1/a/b/c/d/e/f/g/h/i",
		"/v1/cohorts//c", "//partners/p/cohorts")

	for _, p := range paths {
		for _, m := range []string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"} {
			ctx := new(fasthttp.RequestCtx)
			ctx.Request.Header.SetMethod(m)
			ctx.Request.SetRequestURI(p)
			got, _, gotAllowed, err := s.match(ctx)
			if err != nil {
				t.Fatalf("%s %s: %v", m, p, err)
			}
			want, wantAllowed := fullScan(s.routes, ctx)
			if got != want || gotAllowed != wantAllowed {
				t.Errorf("%s %q: route %v allow %q, full scan %v allow %q", m, p, name(got), gotAllowed, name(want), wantAllowed)
			}
		}
	}
}

// fullScan is the reference: every route in table order.
func fullScan(rs []*route, ctx *fasthttp.RequestCtx) (*route, string) {
	path := ctx.Request.URI().PathOriginal()
	if strings.HasPrefix(string(path), "//partners/") {
		path = path[1:]
	}
	segs := splitPath(path, nil)
	var methods []string
	for _, rt := range rs {
		if !rt.matches(segs) {
			continue
		}
		if m := string(ctx.Method()); m == rt.method || (rt.method == "GET" && m == "HEAD") {
			return rt, ""
		}
		if !slices.Contains(methods, rt.method) {
			methods = append(methods, rt.method)
		}
	}
	return nil, strings.Join(methods, ", ")
}

func name(rt *route) string {
	if rt == nil {
		return "none"
	}
	return rt.method + " " + rt.pattern
}

// BenchmarkMatch is the route lookup of the two hottest paths.
func BenchmarkMatch(b *testing.B) {
	s := &Server{}
	s.routes = s.buildRoutes()
	s.static, s.byLen = staticRoutes(s.routes), routesByLen(s.routes)
	for _, p := range []string{"/livez", "/v1/segments/contains", "/v1/cohorts/p/c/changes"} {
		b.Run(strings.ReplaceAll(p[1:], "/", "_"), func(b *testing.B) {
			ctx := new(fasthttp.RequestCtx)
			ctx.Request.Header.SetMethod("POST")
			if p == "/livez" {
				ctx.Request.Header.SetMethod("GET")
			}
			ctx.Request.SetRequestURI(p)
			for b.Loop() {
				if rt, _, _, _ := s.match(ctx); rt == nil {
					b.Fatal("no route")
				}
			}
		})
	}
}
