package engine

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// tableMagic is how a users table array of table version 2 starts (index/image.go).
const tableMagic = "cohortd-idtable\x00"

// tableArrays returns the first 64 bytes of every users table array of the
// version 2 snapshot in b.
func tableArrays(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for _, s := range sectionsOf(t, b) {
		if s.kind == secArray+uint32(index.ArrayTable) && s.to-s.at >= 64 {
			out = append(out, b[s.at:s.at+64])
		}
	}
	return out
}

// TestUpgradeTableV1 opens a data dir written before the identity table's
// eight-slot buckets — a version 2 snapshot whose users table is table
// version 1 (five-slot buckets, no header line), a WAL tail after it, then
// kill -9 — and checks that everything is intact, that the next snapshot
// writes table version 2, and that it loads to the same state.
//
// testdata/table-v1 was generated at commit 871b18c (the last with table
// version 1) by a test in package engine that ran
// runModel(13, 400, Options{Dir: dir, Sync: wal.SyncOff}, hook) with a hook
// calling e.Snapshot() at op 300, wrote dumpState(e) to state.txt, called
// crash(e), and copied the snapshot, cursor.key and the WAL segment after
// the snapshot into data/.
func TestUpgradeTableV1(t *testing.T) {
	src := filepath.Join("testdata", "table-v1")
	want, err := os.ReadFile(filepath.Join(src, "state.txt"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(src, "data"))); err != nil {
		t.Fatal(err)
	}
	snaps, _ := listSnapshots(dir)
	old, err := os.ReadFile(filepath.Join(dir, snaps[0].name))
	if err != nil {
		t.Fatal(err)
	}
	tabs := tableArrays(t, old)
	if len(tabs) == 0 {
		t.Fatal("the old snapshot has no users table")
	}
	for _, tab := range tabs {
		if bytes.HasPrefix(tab, []byte(tableMagic)) || !bytes.Equal(tab[60:], make([]byte, 4)) {
			t.Fatalf("the old snapshot's table is not table version 1: % x", tab)
		}
	}
	if err := checkSnapshotFile(filepath.Join(dir, snaps[0].name)); err != nil {
		t.Fatalf("check of the old snapshot: %v", err)
	}

	opts := Options{Dir: dir, Sync: wal.SyncOff}
	e, err := Open(opts)
	if err != nil {
		t.Fatalf("open a data dir with a table version 1 snapshot: %v", err)
	}
	if got := dumpState(e); got != string(want) {
		t.Fatalf("state after upgrade differs: %s", firstDiff(string(want), got))
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
	if err := e.Snapshot(); err != nil {
		t.Fatal(err)
	}
	snaps, _ = listSnapshots(dir)
	newest := filepath.Join(dir, snaps[0].name)
	b, err := os.ReadFile(newest)
	if err != nil {
		t.Fatal(err)
	}
	for _, tab := range tableArrays(t, b) {
		if !bytes.HasPrefix(tab, []byte(tableMagic)) {
			t.Fatalf("the next snapshot's table is not table version 2: % x", tab)
		}
	}
	if err := checkSnapshotFile(newest); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	if got := dumpState(e2); got != string(want) {
		t.Fatalf("state after the table version 2 snapshot differs: %s", firstDiff(string(want), got))
	}
	if err := e2.Check(); err != nil {
		t.Fatal(err)
	}
}
