package engine

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/engine/wal"
)

// inspectDir builds a data dir with every kind of record, a snapshot in the
// middle (if snapshot) and WAL records after it, and abandons the engine as a crash
// would. It returns the dir and the live state's counts.
func inspectDir(t *testing.T, snapshot bool) (string, StateCounts) {
	t.Helper()
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff, WALSegmentSize: 4 << 10, Logger: quietLogger()}
	e, err := runModel(11, 600, opts, func(i int, e *Engine) error {
		switch i {
		case 5:
			if _, err := e.CreatePartner("p"); err != nil {
				return err
			}
			_, _, err := e.Workspace("ws").CreateImportKey("p")
			return err
		case 300:
			if !snapshot {
				return nil
			}
			_, err := e.SnapshotNow()
			return err
		case 400:
			if _, err := e.RotateWorkspaceKey("ws"); err != nil {
				return err
			}
			if _, err := e.CreateWorkspace("gone"); err != nil {
				return err
			}
			return e.DeleteWorkspace("gone", false)
		case 450:
			if _, err := e.RotatePartnerKey("p"); err != nil {
				return err
			}
			return e.DeletePartner("p")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := countState(e)
	crash(e)
	return dir, want
}

func TestCheckDir(t *testing.T) {
	for _, snapshot := range []bool{true, false} {
		dir, want := inspectDir(t, snapshot)
		rep, err := CheckDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if rep.State != want {
			t.Fatalf("state %+v, want %+v", rep.State, want)
		}
		if snapshot && (len(rep.Snapshots) != 1 || rep.Snapshots[0].Err != nil || rep.Snapshots[0].Counts.Users == 0) {
			t.Fatalf("snapshots %+v", rep.Snapshots)
		}
		if !snapshot && (len(rep.Snapshots) != 0 || rep.Replayed != rep.WAL.Records) {
			t.Fatalf("WAL only: %+v", rep)
		}
		if rep.Replayed == 0 || rep.WAL.Records < rep.Replayed || rep.WAL.Torn != nil {
			t.Fatalf("wal %+v, replayed %d", rep.WAL, rep.Replayed)
		}
		for _, n := range []string{"users", "members", "workspace_key", "workspace_delete", "partner_delete", "partner_key"} {
			if rep.Records[n] == 0 {
				t.Errorf("no %s record counted: %v", n, rep.Records)
			}
		}
		// The check agrees with a real recovery.
		e, err := Open(Options{Dir: dir, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if got := countState(e); got != want {
			t.Fatalf("recovered %+v, want %+v", got, want)
		}
		if _, err := CheckDir(dir); !errors.Is(err, ErrDataDirInUse) {
			t.Fatalf("check of a dir in use: %v", err)
		}
		crash(e)
	}
}

func TestCheckDirFindsCorruption(t *testing.T) {
	src, _ := inspectDir(t, true)
	snaps, _ := listSnapshots(src)
	segs, err := wal.Scan(filepath.Join(src, "wal"), 1, func(uint8, uint64, []byte) error { return nil })
	if err != nil || segs.Segments < 3 {
		t.Fatalf("want several segments: %+v, %v", segs, err)
	}
	walFiles, _ := filepath.Glob(filepath.Join(src, "wal", "*.wal"))

	flip := func(t *testing.T, p string, off int) string {
		t.Helper()
		dir := copyTree(t, src)
		p = filepath.Join(dir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if off < 0 {
			off += len(b)
		}
		b[off] ^= 0x20
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	t.Run("snapshot", func(t *testing.T) {
		dir := flip(t, snaps[0].name, 100)
		rep, err := CheckDir(dir)
		var ce *codec.CorruptError
		if !errors.As(err, &ce) || rep.Snapshots[0].Err == nil {
			t.Fatalf("want *codec.CorruptError, got %v", err)
		}
	})
	t.Run("wal record in an older segment", func(t *testing.T) {
		dir := flip(t, filepath.Join("wal", filepath.Base(walFiles[1])), 40)
		_, err := CheckDir(dir)
		var ce *codec.CorruptError
		if !errors.As(err, &ce) {
			t.Fatalf("want *codec.CorruptError, got %v", err)
		}
	})
	t.Run("torn tail is not corruption", func(t *testing.T) {
		dir := copyTree(t, src)
		last := filepath.Join(dir, "wal", filepath.Base(walFiles[len(walFiles)-1]))
		fi, _ := os.Stat(last)
		if err := os.Truncate(last, fi.Size()-2); err != nil {
			t.Fatal(err)
		}
		rep, err := CheckDir(dir)
		if err != nil || rep.WAL.Torn == nil {
			t.Fatalf("torn tail: %+v, %v", rep.WAL.Torn, err)
		}
		if fi2, _ := os.Stat(last); fi2.Size() != fi.Size()-2 {
			t.Fatal("check trimmed the tail")
		}
	})
	t.Run("missing WAL segment", func(t *testing.T) {
		dir := copyTree(t, src)
		if err := os.Remove(filepath.Join(dir, "wal", filepath.Base(walFiles[len(walFiles)-2]))); err != nil {
			t.Fatal(err)
		}
		if _, err := CheckDir(dir); err == nil {
			t.Fatal("a gap in the WAL passed")
		}
	})
}

// copyTree copies a data dir (files and the wal/ directory).
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestDumpWAL(t *testing.T) {
	dir, _ := inspectDir(t, false)
	for _, ids := range []bool{false, true} {
		var out bytes.Buffer
		rep, err := DumpWAL(dir, 1, &out, ids)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(&out)
		sc.Buffer(nil, 1<<24)
		var n int
		last := uint64(0)
		types := map[string]int{}
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Fatalf("line %q: %v", sc.Bytes(), err)
			}
			lsn := uint64(m["lsn"].(float64))
			if last != 0 && lsn != last+1 {
				t.Fatalf("lsn %d after %d", lsn, last)
			}
			last = lsn
			typ, _ := m["type"].(string)
			types[typ]++
			if _, bad := m["error"]; bad {
				t.Fatalf("record did not decode: %s", sc.Bytes())
			}
			if typ != "workspace_create" && typ != "partner_create" && typ != "partner_delete" && typ != "partner_key" && m["workspace"] == nil {
				t.Fatalf("no workspace in %s", sc.Bytes())
			}
			if typ == "members" {
				if _, ok := m["added_ids"]; ok != ids {
					t.Fatalf("ids=%v but %s", ids, sc.Bytes())
				}
			}
			if typ == "users" && len(m["ops"].([]any)) > 0 {
				types["users with ops"]++
			}
			n++
		}
		if n != rep.Records || n == 0 {
			t.Fatalf("%d lines for %d records", n, rep.Records)
		}
		for _, typ := range []string{"workspace_create", "partner_create", "import_key", "users", "members", "cohort_upsert", "workspace_key", "workspace_delete", "partner_key", "partner_delete", "users with ops"} {
			if types[typ] == 0 {
				t.Errorf("no %s line: %v", typ, types)
			}
		}
	}
}

// FuzzAppendRecordJSON feeds arbitrary payloads to the dump decoder: an
// error or valid JSON, never a panic.
func FuzzAppendRecordJSON(f *testing.F) {
	var enc codec.Encoder
	enc.Str("ws")
	enc.U8(opCreate)
	enc.Uvarint(0)
	enc.U8(opAttach)
	enc.Uvarint(0)
	enc.U8(2)
	enc.Str("email\x00a@x")
	f.Add(recUsers, bytes.Clone(enc.Bytes()))
	f.Add(recMembers, []byte("\x02ws\x01p\x01c\x02\x08"))
	f.Add(recSessionDrop, []byte("\x02ws\x01\x01p\x01c\x01s\x00\x00\x00\x02"))
	f.Add(recWorkspaceCreate, append([]byte("\x02ws"), make([]byte, 34)...))
	f.Fuzz(func(t *testing.T, typ uint8, payload []byte) {
		out, err := AppendRecordJSON([]byte("x"), typ, 7, payload, true)
		if err != nil {
			if string(out) != "x" {
				t.Fatalf("failed decode appended %q", out)
			}
			return
		}
		if !json.Valid(out[1:]) {
			t.Fatalf("invalid JSON %q", out[1:])
		}
	})
}

// treeState maps every path under dir to its mode and contents.
func treeState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		if !fi.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += string(b)
		}
		out[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// twoSnapshotDir builds a data dir as a long-running server leaves it: the
// newest snapshot, the previous one, the WAL since the previous one (the
// segments before it retired, so the WAL alone no longer holds the whole
// history) and records after the newest; then a crash. It returns the dir
// and the live state's counts.
func twoSnapshotDir(t *testing.T) (string, StateCounts) {
	t.Helper()
	dir := t.TempDir()
	opts := Options{Dir: dir, Sync: wal.SyncOff, WALSegmentSize: 4 << 10, Logger: quietLogger()}
	e, err := runModel(23, 700, opts, func(i int, e *Engine) error {
		switch i {
		case 200, 300, 450:
			_, err := e.SnapshotNow()
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := countState(e)
	crash(e)
	snaps, _ := listSnapshots(dir)
	rep, err := wal.Scan(filepath.Join(dir, "wal"), 1, func(uint8, uint64, []byte) error { return nil })
	if err != nil || len(snaps) != 2 || rep.FirstLSN <= 1 || rep.FirstLSN > snaps[1].lsn+1 || rep.Segments < 4 {
		t.Fatalf("setup: snapshots %v, wal %+v, %v", snaps, rep, err)
	}
	return dir, want
}

// recoverCopy runs a real recovery on a copy of dir: the oracle CheckDir
// must agree with.
func recoverCopy(t *testing.T, dir string) (StateCounts, error) {
	t.Helper()
	e, err := Open(Options{Dir: copyTree(t, dir), Logger: quietLogger()})
	if err != nil {
		return StateCounts{}, err
	}
	defer e.Close()
	return countState(e), nil
}

// TestCheckDirMirrorsRecovery damages a data dir in each way recovery
// handles and checks that CheckDir reports the damage, takes the path
// start-up takes (a damaged newest snapshot set aside, the previous one and
// the WAL since it), says whether that path gets through, and agrees with a
// real recovery of a copy on both the verdict and the state, without
// changing a byte of the directory.
func TestCheckDirMirrorsRecovery(t *testing.T) {
	src, want := twoSnapshotDir(t)
	snaps, _ := listSnapshots(src)
	newest, previous := snaps[0], snaps[1]
	walFiles, _ := filepath.Glob(filepath.Join(src, "wal", "*.wal"))
	// segmentOf returns the WAL file holding record lsn.
	segmentOf := func(lsn uint64) string {
		var name string
		for _, f := range walFiles {
			var first uint64
			fmt.Sscanf(filepath.Base(f), "%d.wal", &first)
			if first <= lsn {
				name = filepath.Base(f)
			}
		}
		return filepath.Join("wal", name)
	}
	flip := func(dir, rel string, off int) {
		p := filepath.Join(dir, rel)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if off < 0 {
			off += len(b)
		}
		b[off] ^= 0x20
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name        string
		damage      func(dir string)
		damaged     bool   // CheckDir's error is non-nil
		recoverable bool   // and yet start-up rebuilds everything
		from        string // the snapshot recovery loads
	}{
		{"sound", func(string) {}, false, true, newest.name},
		{"newest snapshot damaged", func(d string) { flip(d, newest.name, 200) }, true, true, previous.name},
		{"newest snapshot cut short", func(d string) {
			p := filepath.Join(d, newest.name)
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()/2)
		}, true, true, previous.name},
		{"previous snapshot damaged", func(d string) { flip(d, previous.name, 200) }, true, true, newest.name},
		{"both snapshots damaged", func(d string) {
			flip(d, newest.name, 200)
			flip(d, previous.name, 200)
		}, true, false, ""},
		{"WAL damaged where only the fallback needs it", func(d string) { flip(d, segmentOf(previous.lsn+1), 40) }, true, true, newest.name},
		{"WAL damaged after the newest snapshot", func(d string) { flip(d, segmentOf(newest.lsn+2), 40) }, true, false, newest.name},
		{"newest snapshot and the WAL after the previous damaged", func(d string) {
			flip(d, newest.name, 200)
			flip(d, segmentOf(previous.lsn+1), 40)
		}, true, false, previous.name},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyTree(t, src)
			tc.damage(dir)
			before := treeState(t, dir)
			rep, err := CheckDir(dir)
			if (err != nil) != tc.damaged || rep.Recoverable != tc.recoverable || rep.RecoverFrom != tc.from {
				t.Fatalf("err %v, recoverable %v, from %q; want damaged %v, recoverable %v, from %q",
					err, rep.Recoverable, rep.RecoverFrom, tc.damaged, tc.recoverable, tc.from)
			}
			if !maps.Equal(before, treeState(t, dir)) {
				t.Fatal("CheckDir changed the data dir")
			}
			got, rerr := recoverCopy(t, dir)
			if (rerr == nil) != rep.Recoverable {
				t.Fatalf("CheckDir says recoverable=%v, recovery says %v", rep.Recoverable, rerr)
			}
			if rep.Recoverable && (rep.State != want || got != want) {
				t.Fatalf("state: check %+v, recovery %+v, want %+v", rep.State, got, want)
			}
			if tc.from == previous.name && rep.ReplayFrom != previous.lsn+1 {
				t.Fatalf("replay from %d, want %d", rep.ReplayFrom, previous.lsn+1)
			}
		})
	}

	// After a start-up set the damaged snapshot aside, the check names it
	// and the directory is sound again.
	dir := copyTree(t, src)
	flip(dir, newest.name, 200)
	e, err := Open(Options{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := CheckDir(dir)
	if err != nil || !rep.Recoverable || len(rep.SetAside) != 1 || rep.SetAside[0] != newest.name+".corrupt" || rep.State != want {
		t.Fatalf("after recovery: %v, %+v", err, rep)
	}
}

// TestCheckDirRestoredFromSnapshotAlone: a data dir restored from a
// snapshot alone, then written to, is sound. Its WAL starts after the
// highest record any scope of the snapshot covers, past the snapshot's
// name when a workspace was written while the snapshot ran; recovery
// accepts that, and so must the check.
func TestCheckDirRestoredFromSnapshotAlone(t *testing.T) {
	src := t.TempDir()
	e, err := Open(Options{Dir: src, Sync: wal.SyncOff, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := e.CreateWorkspace(id); err != nil {
			t.Fatal(err)
		}
	}
	a, b := e.Workspace("a"), e.Workspace("b")
	// As in TestRestoreFromSnapshotAlone: workspace b takes writes while
	// the snapshot waits for a, so b's scope covers records past the name.
	a.mu.Lock()
	done := make(chan error, 1)
	go func() { done <- e.Snapshot() }()
	time.Sleep(100 * time.Millisecond)
	for i := range 5 {
		if err := b.UpsertCohort("p", fmt.Sprint("during-", i), "x", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	a.mu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	snaps, _ := listSnapshots(src)
	e.Close()

	dst := t.TempDir()
	raw, err := os.ReadFile(filepath.Join(src, snaps[0].name))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, snaps[0].name), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if rep, err := CheckDir(dst); err != nil || !rep.Recoverable {
		t.Fatalf("the snapshot alone: %v, %+v", err, rep)
	}
	e2, err := Open(Options{Dir: dst, Sync: wal.SyncOff, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Workspace("b").UpsertCohort("p", "after-restore", "x", time.Now()); err != nil {
		t.Fatal(err)
	}
	want := countState(e2)
	crash(e2)
	rep, err := CheckDir(dst)
	if err != nil || !rep.Recoverable || rep.State != want || rep.Replayed != 1 {
		t.Fatalf("restored and written: %v, %+v (want %+v)", err, rep, want)
	}
	if rep.ReplayFrom <= snaps[0].lsn+1 {
		t.Fatalf("setup: the WAL starts at %d, not past the snapshot's name %d", rep.ReplayFrom, snaps[0].lsn)
	}
}
