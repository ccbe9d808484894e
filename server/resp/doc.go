// Package resp is cohortd's read-only Redis-protocol listener (docs/API.md
// §6): segment evaluators that ask Redis sets whether a user is in an
// audience (SISMEMBER, SMISMEMBER, …) ask cohortd the same way, with any
// Redis client, redis-cli or redis-benchmark.
//
// Keys name cohorts as "<partner>/<cohort_id>" and members are external
// ids; COHORT.CONTAINS and COHORT.COUNT take a segment expression. A
// connection authenticates with a workspace API key and sees that
// workspace only.
//
// # Files
//
//   - server.go: Options, Server, accept loop, graceful shutdown.
//   - conn.go: a connection's read–execute–write loop, batching of
//     membership runs, auth state, rate limits, labels, metrics.
//   - parse.go: the request parser (multibulk and inline).
//   - commands.go: the command table and the commands.
//   - docs.go: COMMAND and COMMAND DOCS (what redis-cli reads for hints).
//   - reply.go: the replies that differ between RESP2 and RESP3.
//   - metrics.go: commands, errors and latency in the HTTP server's set.
//   - loop_linux.go: the epoll event loops that serve plain TCP connections.
//
// # Protocol layer
//
// Replies are encoded with github.com/tidwall/redcon's Append functions,
// inline commands parsed with its parser. The connection loop and the
// multibulk parser are this package's: see reader for why.
//
// # Concurrency
//
// A Server is safe for concurrent use. On Linux, plain TCP connections are
// served by epoll event loops, one goroutine per GOMAXPROCS each owning its
// connections (loop_linux.go); TLS connections, other systems and
// Options.NoEventLoop get a goroutine per connection. Either way a
// connection's state belongs to one goroutine. Commands read published bitmaps and
// the identity tables, which the engine makes safe for concurrent readers;
// they never take a workspace's writer lock.
package resp
