// Package engine is cohortd's domain: workspaces, partners and their keys,
// users (upsert, identify, merge, delete), cohorts, the matching rules of
// docs/API.md §2, atomic change batches and snapshot replaces, segment queries,
// data-point metering, Mixpanel webhook sessions, the sync history and sync
// health of cohorts (syncs.go), and durability (WAL records, snapshots,
// recovery). It knows nothing of HTTP, JSON request bodies or flags.
//
// It is the only package above index that touches index: callers get the
// identifier vocabulary as aliases (Kind, UserID, AliasKey) and read-only
// views (Set, Workspace.Identifiers, Resolve), never the user table or a
// mutable bitmap (identifiers.go). Segment expressions arrive as
// SegmentExpr trees; their JSON syntax is parsed by server/segment.
//
// # Write path
//
// A request's identifiers are resolved as its body streams in and staged as
// compact dense ids (ChangeSet, MemberSet, UserBatch); nothing is applied
// until the whole body was read. Then, under the workspace's writer lock,
// the effective change is computed, appended to the WAL as one record and
// applied to memory; the caller waits for durability after the lock is
// released, so concurrent requests share one fsync. Every state change is a
// record (record.go), and replay applies records through the same code as
// the live path.
//
// # Concurrency
//
// One writer per workspace at a time; readers take no writer lock: cohort
// members are immutable published bitmaps (index.Members) and the identity
// tables are safe for concurrent lookups. Snapshots capture each workspace
// at one WAL position holding the writer lock for pointer copies only
// (snapshot.go).
//
// # Administration and inspection
//
// admin.go lists, deletes and re-keys workspaces and partners (each change
// a record, like every other) and takes snapshots on request; inspect.go
// checks a data directory offline (CheckDir) and dumps its WAL (DumpWAL)
// without changing a file.
//
// # Replication
//
// With Options.Log the engine is a node of a group sharing a Kafka-protocol
// log (docs/API.md §7): a public write method encodes what the request
// asked as a command record (commands.go, types 40–49) and produces it;
// RunLog, the only writer, applies every partition's records in order
// through the same single-node code, with the record's log timestamp as
// the clock, and hands each producer the result of its own record's apply
// (replication.go). State is a deterministic function of the log: no map
// order, wall clock or randomness reaches an apply, and Digest hashes the
// state to compare nodes. There is no WAL in that mode; snapshots carry
// the offset each partition resumes from.
//
// # Caveats
//
// Identity lookups see a user as soon as an upsert creates it, before the
// upsert's reply; cohort memberships become visible per batch. Dense user
// ids never leave the process (member-page cursors are encrypted).
package engine
