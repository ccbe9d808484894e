// Package engine is cohortd's domain: workspaces, partners and their keys,
// users (upsert, identify, merge, delete), cohorts, the matching rules of
// docs/API.md §2, atomic change batches and snapshot replaces, segment queries,
// data-point metering, Mixpanel webhook sessions, the sync history and sync
// health of cohorts (syncs.go), and durability (WAL records, snapshots,
// recovery). It knows nothing of HTTP or flags.
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
// # Caveats
//
// Identity lookups see a user as soon as an upsert creates it, before the
// upsert's reply; cohort memberships become visible per batch. Dense user
// ids never leave the process (member-page cursors are encrypted).
package engine
