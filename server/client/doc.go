// Package client is a Go client for cohortd's HTTP API: the /v1 endpoints
// of docs/API.md §4 (users, cohorts, segments, usage, the admin endpoints
// that create workspaces, partners and keys) and the two partner endpoints
// of §3, for programs that embed cohortd calls.
//
//	c := client.New("http://127.0.0.1:8080", client.Options{Token: apiKey})
//	n, err := c.Count(ctx, client.And(client.Cohort("amplitude/power_users"), client.Not(client.Cohort("amplitude/churn_risk"))))
//
// # Transport
//
// The client is built on net/http, not on fasthttp as the server is:
// callers pass a context to every call and cancelling it aborts the
// request; any *http.Client works (TLS, proxies, tracing round trippers,
// an in-memory dialer in tests); a members stream is read from the reply
// body as it arrives, in bounded memory. loadgen's load loops keep their
// own fasthttp client for its pooled, allocation-free requests (a load
// generator must not be the bottleneck); they share this package's Error,
// Backoff, Positions and Compressor.
//
// # Errors
//
// A reply with a status other than the call's success status is an *Error
// carrying the status and the JSON error body {"message", "errors"}
// (docs/API.md §5); use errors.As to read it. Transport failures are
// returned wrapped with the method and path.
//
// # Retries
//
// Options.MaxRetries (default 0: none) retries a call on 429, 5xx and
// connection errors, waiting as Backoff says and honouring Retry-After.
// Every write of the API may be retried: changes and upserts a second time
// are no-ops, a second creation answers 409 (docs/API.md, "Idempotency").
// Bodies given as an io.Reader are streamed and never retried.
//
// # Groups
//
// Against the nodes of a replicated group (docs/API.md §7), give the
// Clients of all nodes one *Positions: every reply's X-Cohortd-Position is
// recorded and every request carries them as X-Cohortd-Min-Position, so a
// read on any node sees the writes made through the others.
//
// # Concurrency
//
// A Client is safe for concurrent use and holds no goroutines of its own;
// WithToken returns a copy sharing the transport. Request and reply values
// belong to the caller.
package client
