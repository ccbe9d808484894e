// Package index holds one workspace's users and cohort member sets in
// memory: the identity tables that turn identifiers into dense user ids,
// the user table, and roaring bitmaps with the algebra of segments. It does
// no I/O, starts no goroutines and reads no clock.
//
// # Identity tables (users.go, idmap.go, arena.go, region.go, image.go)
//
// External ids, aliases (alias_name NUL alias_label, never swapped) and
// device ids map to a dense UserID given in arrival order, so users created
// together sit together and cohorts exported together form runs that
// roaring compresses. The table is flat open addressing without pointers
// (64-byte buckets of five hash/arena-ref slots), keyed by XXH3 seeded per
// table and tagged with the kind; key bytes live in an arena beside the user
// id. A hash match is confirmed against the arena, so a 64-bit collision
// never resolves to the wrong user. Deletion leaves tombstones that inserts
// reuse; detached arena entries are reused by size and compacted away.
// ResolveMany resolves a batch in passes so independent cache misses overlap.
//
// The big arrays (table, arena, user table, overflow lists) live in regions
// mapped outside the Go heap on huge pages (region.go), owned by their Users
// and released by Close. Growth builds the new array beside the old one while
// readers go on using the old one. Image and LoadUsers turn the tables into raw
// arrays and back, for snapshots that load at disk speed.
//
// # Member sets and algebra (members.go, algebra.go)
//
// Members is one cohort's set: a copy-on-write master for the writer and an
// immutable published bitmap for readers. Expr evaluates and/or/not over
// published sets relative to the live users: Contains probes without
// materialising, Count uses roaring's cardinality operations where it can,
// Bitmap keeps negations symbolic so "A and not B" is one AndNot.
//
// # Concurrency
//
// One writer at a time (the engine holds a per-workspace lock) and any
// number of readers: lookups on Users run concurrently with the writer and
// see each change at once; Users.Live and Members.Load return the last
// published version, which never changes afterwards and must never be
// mutated or Cloned.
package index
