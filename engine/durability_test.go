package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// dumpState renders everything a client can observe, in a canonical order,
// so that two engines can be compared after recovery.
func dumpState(e *Engine) string {
	var b strings.Builder
	e.mu.RLock()
	var parts []string
	for s := range e.mu.partners {
		parts = append(parts, s)
	}
	e.mu.RUnlock()
	sort.Strings(parts)
	fmt.Fprintf(&b, "partners %v\n", parts)
	for _, w := range e.Workspaces() {
		fmt.Fprintf(&b, "ws %s next=%d live=%d\n", w.id, w.users.NextID(), w.users.Live().GetCardinality())
		for id := index.UserID(0); id < w.users.NextID(); id++ {
			if w.users.Deleted(id) {
				fmt.Fprintf(&b, " u%d deleted\n", id)
				continue
			}
			fmt.Fprintf(&b, " u%d %+v\n", id, w.UserInfo(id))
		}
		for _, c := range w.Cohorts() {
			info := c.Info()
			fmt.Fprintf(&b, " cohort %s/%s %q created=%d members=%v\n", info.Partner, info.CohortID, info.Name, info.CreatedAt.UnixNano(), c.Members().ToArray())
			for _, s := range c.Syncs(MaxSyncs) {
				fmt.Fprintf(&b, "  sync %+v\n", s)
			}
		}
		u := w.Usage()
		var ps []string
		for p := range u.Partners {
			ps = append(ps, p)
		}
		sort.Strings(ps)
		for _, p := range ps {
			var days []string
			for d, n := range u.Partners[p].Days {
				days = append(days, fmt.Sprintf("%s=%d", d, n))
			}
			sort.Strings(days)
			fmt.Fprintf(&b, " usage %s %v\n", p, days)
		}
		for _, p := range parts {
			for _, k := range w.ImportKeys(p) {
				fmt.Fprintf(&b, " key %s %s revoked=%v\n", p, k.KeyID, k.Revoked)
			}
		}
	}
	return b.String()
}

func TestRecoverAfterCrashAndClose(t *testing.T) {
	for _, mode := range []wal.SyncMode{wal.SyncOff, wal.SyncAlways} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, Sync: mode, WALSegmentSize: 64 << 10}
			ops := 4000
			if mode == wal.SyncAlways {
				ops = 1500
			}
			var keyID string
			e, err := runModel(7, ops, opts, func(i int, e *Engine) error {
				switch i {
				case 10:
					if _, err := e.CreatePartner("p"); err != nil {
						return err
					}
					id, _, err := e.Workspace("ws").CreateImportKey("p")
					keyID = id
					return err
				case 20:
					_, _, err := e.Workspace("ws").CreateImportKey("p")
					if err != nil {
						return err
					}
					return e.Workspace("ws").RevokeImportKey("p", keyID)
				case ops / 3, 2 * ops / 3:
					return e.Snapshot()
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			want := dumpState(e)
			crash(e)
			// Crash: a second engine opens the same directory without the
			// first one closing (nothing flushed at exit).
			e2, err := Open(opts)
			if err != nil {
				t.Fatalf("reopen after crash: %v", err)
			}
			if got := dumpState(e2); got != want {
				t.Fatalf("state after crash differs:\n%s", firstDiff(want, got))
			}
			if err := e2.Check(); err != nil {
				t.Fatal(err)
			}
			if err := e2.Close(); err != nil {
				t.Fatal(err)
			}
			crash(e)
			e3, err := Open(opts)
			if err != nil {
				t.Fatalf("reopen after close: %v", err)
			}
			if got := dumpState(e3); got != want {
				t.Fatalf("state after close differs:\n%s", firstDiff(want, got))
			}
			if err := e3.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d:\nwant %s\ngot  %s", i, al[i], bl[i])
		}
	}
	return fmt.Sprintf("lengths %d vs %d", len(al), len(bl))
}

// TestSnapshotCorruptionFallsBack: a damaged snapshot is never loaded.
// Recovery sets it aside (*.corrupt), logs it and rebuilds the same state
// from the previous snapshot (or the whole WAL) and the WAL since; when
// nothing older can rebuild it, start-up is refused with an error naming
// the file.
func TestSnapshotCorruptionFallsBack(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff, WALSegmentSize: 16 << 10}
	e, err := runModel(3, 800, opts, func(i int, e *Engine) error {
		if i == 300 || i == 600 {
			return e.Snapshot()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := dumpState(e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	snaps, _ := listSnapshots(dir)
	if len(snaps) != 2 {
		t.Fatalf("want the newest snapshot and the one before, have %v", snaps)
	}
	flip := func(name string) {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x40
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	flip(snaps[0].name)
	e2, err := Open(opts)
	if err != nil {
		t.Fatalf("fallback to the previous snapshot: %v", err)
	}
	if got := dumpState(e2); got != want {
		t.Fatalf("state after fallback differs:\n%s", firstDiff(want, got))
	}
	if _, err := os.Stat(filepath.Join(dir, snaps[0].name+".corrupt")); err != nil {
		t.Fatalf("damaged snapshot not set aside: %v", err)
	}
	if err := e2.Close(); err != nil { // writes a good snapshot again
		t.Fatal(err)
	}

	// Damage every snapshot: the WAL was retired below the previous one,
	// so nothing can rebuild the state and start-up is refused.
	snaps, _ = listSnapshots(dir)
	for _, sn := range snaps {
		flip(sn.name)
	}
	_, err = Open(opts)
	var ce *codec.CorruptError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), snaps[0].name) {
		t.Fatalf("want a *codec.CorruptError naming %s, got %v", snaps[0].name, err)
	}
}

// FuzzReadSnapshot feeds arbitrary bytes to the snapshot loader: it must
// refuse them with an error, never panic, and accept valid bitmaps only.
func FuzzReadSnapshot(f *testing.F) {
	dir := f.TempDir()
	e, err := runModel(5, 300, Options{Dir: dir, Sync: wal.SyncOff}, nil)
	if err != nil {
		f.Fatal(err)
	}
	e.Close()
	snaps, _ := listSnapshots(dir)
	valid, _ := os.ReadFile(filepath.Join(dir, snaps[0].name))
	f.Add(valid)
	f.Add([]byte(snapMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, _ := Open(Options{})
		if err := e.readSnapshot(bytes.NewReader(data), int64(len(data)), "fuzz.snap"); err == nil {
			if err := e.Check(); err != nil {
				t.Fatalf("accepted snapshot fails Check: %v", err)
			}
		}
	})
}

// FuzzReplayRecord feeds arbitrary record payloads to replay: errors are
// fine, panics are not, and what is accepted leaves a consistent engine.
func FuzzReplayRecord(f *testing.F) {
	var enc codec.Encoder
	enc.Str("ws")
	enc.Str("p")
	enc.Str("c")
	enc.Varint(1)
	f.Add(recCohortUpsert, append(bytes.Clone(enc.Bytes()), 0x02, 0x02))
	enc.Reset()
	enc.Str("ws")
	enc.U8(opCreate)
	enc.Uvarint(0)
	enc.U8(opAttach)
	enc.Uvarint(0)
	enc.U8(1)
	enc.Str("user-1")
	f.Add(recUsers, bytes.Clone(enc.Bytes()))
	f.Add(recMembers, []byte("\x02ws\x01p\x01c\x02\x08"))
	f.Fuzz(func(t *testing.T, typ uint8, payload []byte) {
		e, _ := Open(Options{})
		e.CreateWorkspace("ws")
		e.Workspace("ws").UpsertCohort("p", "c", "c", e.now())
		_ = e.replayRecord(typ, 1<<40, payload)
		// A rejected record may have applied a prefix (replay refuses to
		// start then), but nothing may be left inconsistent or panic.
		_ = e.Check()
	})
}

// crash abandons an engine as kill -9 would: nothing is flushed or closed,
// only the data directory lock is dropped (the kernel does that for a dead
// process) so that the test can open the directory again.
func crash(e *Engine) { e.unlock() }

func TestDataDirLock(t *testing.T) {
	dir := t.TempDir()
	e, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open of a locked dir: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e2, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	e2.Close()
}
