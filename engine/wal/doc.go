// Package wal is cohortd's write-ahead log: a segmented, append-only file
// format with group commit.
//
// # Format
//
// The log is a directory of segment files, each named after the LSN (log
// sequence number) of its first record as 20 zero-padded decimal digits plus
// ".wal" (00000000000000000001.wal), so lexical order is numeric order. A
// segment starts with a 16-byte header (magic "CDWL", version 1, first LSN)
// followed by records:
//
//	length uint32 | type uint8 | lsn uint64 | payload [length]byte | crc32c uint32
//
// All integers are little endian. The checksum is CRC-32C (Castagnoli) of
// the payload followed by the 13 header bytes (length, type, lsn), so it
// covers every byte of the record. LSNs start at 1 and increase by one per
// record across segments. docs/FORMATS.md documents the layout byte by byte.
//
// # Concurrency
//
// All methods of Log are safe for concurrent use. Append is cheap: it
// assigns the LSN and copies the encoded record into a pending buffer under
// a mutex. Wait and Commit make records durable with leader-style group
// commit: concurrent waiters share one write and one fdatasync. No
// goroutine runs in the background except, under SyncInterval, the one
// that Open starts and Close stops.
//
// Replay must be called exactly once, after Open and before the first
// Append. Payloads passed to its callback are valid only during the call.
//
// # Durability
//
// What Wait (and Commit) promise when they return nil depends on SyncMode:
//
//   - SyncAlways: the record and all before it are written and fdatasync'ed;
//     they survive a power loss.
//   - SyncInterval: they are written to the OS and survive a process crash
//     (kill -9); a background goroutine fdatasyncs every SyncInterval, so a
//     power loss loses at most about one interval.
//   - SyncOff: they are written to the OS and survive a process crash; only
//     segment rolls, Cut and Close sync.
//
// Segments are always synced when they are closed, and the directory is
// synced after a segment is created or removed. On Linux syncing is
// fdatasync(2) (syscall.Fdatasync): appends change the file size, so it
// persists everything needed to read the data back, while skipping the
// mtime-only inode writes of fsync(2). Elsewhere it is (*os.File).Sync.
//
// A failed write or sync is fatal: Options.OnFatal is called and the Log
// returns the error from every later call. A failed fsync is never retried,
// because the kernel may have dropped the dirty pages it could not write;
// the process must restart and recover from the log.
//
// # Recovery
//
// Replay trims a torn tail in the last segment (a crash in the middle of a
// write) and returns a *codec.CorruptError (package engine/codec) naming
// the file and offset for any other damage; see Log.Replay for the exact
// rule.
//
// # Caveats
//
// The Log does not lock its directory; the caller must make sure only one
// process opens it. Replay reads one whole segment into memory at a time.
package wal
