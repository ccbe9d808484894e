// Package server is cohortd's HTTP front end: the partner cohort import
// endpoints (docs/API.md §3), the native /v1 API (docs/API.md §4) and the operational
// endpoints (/livez, /readyz, /metrics, /debug/pprof/), served by fasthttp
// over an engine.Engine.
//
// # Files
//
//   - server.go: Options, Server, the request life cycle (readiness gate,
//     graceful shutdown, panic recovery, logging, metrics).
//   - routes.go: the route table, built in New, and path matching.
//   - middleware.go: the chain every matched route runs (Content-Type,
//     auth, rate limit, Idempotency-Key, handler).
//   - auth.go: bearer tokens (admin token, workspace API keys).
//   - errors.go: error replies and the mapping of engine errors to them.
//   - handlers_*.go: the endpoints, one file per resource or API family;
//     handlers_v1.go has the overview of the /v1 reply shapes.
//   - idempotency.go, ratelimit.go: the Idempotency-Key store and the use
//     of the token buckets of server/ratelimit.
//   - metrics*.go: /metrics, the per-route counters and histograms, the
//     engine's gauges.
//   - body.go, decode*.go: bounded decompression and the request body
//     decoders.
//   - ui.go: the embedded page (ui/).
//
// Subpackages: ratelimit (token buckets shared with the Redis-protocol
// listener), resp (that listener) and segment (the JSON syntax of segment
// expressions, for both listeners).
//
// # Concurrency
//
// A Server is safe for concurrent use; fasthttp calls Handler from many
// goroutines. The engine is installed once with SetEngine (an atomic
// pointer), and every piece of shared state (idempotency store, rate
// limiters, metric caches) has its own lock. Handlers never keep a
// *fasthttp.RequestCtx past their return, except streamed replies, which
// only keep an engine.Set (one immutable version) and the workspace they
// read from.
//
// # Caveats
//
//   - Bodies are read through the request body stream (fasthttp's
//     StreamRequestBody): partner and small /v1 bodies are buffered once
//     (bounded by their decoded-size caps), bulk /v1 bodies are decoded as
//     they stream and never buffered whole.
//   - Only successful (2xx) replies are remembered for an Idempotency-Key:
//     a request that failed applied nothing, so its retry is evaluated
//     afresh.
//   - The admin token is valid but powerless on workspace endpoints: it
//     gets 403 there, just as a workspace key gets 403 on admin endpoints.
package server
