package engine

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// Offline inspection of a data directory: `cohortd check` (CheckDir) and
// `cohortd wal dump` (DumpWAL). Neither changes a file: the WAL is read
// with wal.Scan, snapshots and records are decoded into a scratch
// in-memory engine.

// recordNames are the names of the record types, as `cohortd wal dump`
// and `cohortd check` print them.
var recordNames = map[uint8]string{
	recWorkspace:       "workspace",
	recPartner:         "partner",
	recImportKey:       "import_key",
	recRevokeKey:       "revoke_key",
	recUsers:           "users",
	recCohortUpsert:    "cohort_upsert",
	recCohortDelete:    "cohort_delete",
	recMembers:         "members",
	recSession:         "webhook_page",
	recSessionDrop:     "webhook_drop",
	recCohortUpsertV2:  "cohort_upsert",
	recIdempotency:     "idempotency_reply",
	recSync:            "sync",
	recSyncPage:        "sync_page",
	recWorkspaceCreate: "workspace_create",
	recPartnerCreate:   "partner_create",
	recWorkspaceDelete: "workspace_delete",
	recPartnerDelete:   "partner_delete",
	recWorkspaceKey:    "workspace_key",
	recPartnerKey:      "partner_key",
}

// RecordTypeName returns the name of a WAL record type ("type_N" for a
// type this build does not know).
func RecordTypeName(typ uint8) string {
	if n, ok := recordNames[typ]; ok {
		return n
	}
	return fmt.Sprintf("type_%d", typ)
}

// jsonObject builds a JSON object with its fields in insertion order.
type jsonObject struct{ b []byte }

func (o *jsonObject) add(name string, v any) {
	if len(o.b) == 0 {
		o.b = append(o.b, '{')
	} else {
		o.b = append(o.b, ',')
	}
	o.b = appendJSONValue(o.b, name)
	o.b = append(o.b, ':')
	o.b = appendJSONValue(o.b, v)
}

func (o *jsonObject) raw() json.RawMessage {
	if len(o.b) == 0 {
		return json.RawMessage("{}")
	}
	return append(o.b, '}')
}

func appendJSONValue(dst []byte, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("BUG: marshal %T: %v", v, err))
	}
	return append(dst, b...)
}

func jsonTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// digestPrefix shows enough of a key digest to tell keys apart (a digest
// of a random key reveals nothing about it).
func digestPrefix(d [32]byte) string { return hex.EncodeToString(d[:8]) }

// AppendRecordJSON appends one JSON object describing a WAL record: "lsn",
// "type" (RecordTypeName), "workspace" for workspace-scoped records, then
// the decoded fields. Bitmaps of dense user ids are given as counts, or
// also as id lists when ids is set. A payload that does not decode returns
// an error and dst unchanged.
func AppendRecordJSON(dst []byte, typ uint8, lsn uint64, payload []byte, ids bool) ([]byte, error) {
	var o jsonObject
	o.add("lsn", lsn)
	o.add("type", RecordTypeName(typ))
	d := &recordDecoder{b: payload}
	bitmap := func(name string) {
		bm := d.bitmap()
		if d.err != nil {
			return
		}
		o.add(name, bm.GetCardinality())
		if ids {
			o.add(name+"_ids", bm.ToArray())
		}
	}
	switch typ {
	case recWorkspace, recPartner, recWorkspaceCreate, recPartnerCreate:
		name, dg := d.str(), d.digest()
		if typ == recWorkspace || typ == recWorkspaceCreate {
			o.add("workspace", name)
		} else {
			o.add("partner", name)
		}
		o.add("key_digest", digestPrefix(dg))
		if typ >= recWorkspaceCreate {
			o.add("created_at", jsonTime(d.time()))
		}
	case recWorkspaceDelete:
		o.add("workspace", d.str())
	case recPartnerDelete:
		o.add("partner", d.str())
	case recPartnerKey:
		o.add("partner", d.str())
		o.add("key_digest", digestPrefix(d.digest()))
	case recWorkspaceKey:
		o.add("workspace", d.str())
		o.add("key_digest", digestPrefix(d.digest()))
	case recImportKey:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("key_id", d.str())
		o.add("key_digest", digestPrefix(d.digest()))
		o.add("created_at", jsonTime(time.Unix(d.varint(), 0)))
	case recRevokeKey:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("key_id", d.str())
	case recUsers:
		o.add("workspace", d.str())
		o.add("ops", describeUserOps(d))
	case recCohortUpsert:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("cohort_id", d.str())
		o.add("name", d.str())
		o.add("created_at", jsonTime(time.Unix(0, d.varint())))
		o.add("updated_at", jsonTime(time.Unix(0, d.varint())))
	case recCohortUpsertV2:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("cohort_id", d.str())
		o.add("name", d.str())
		o.add("created_at", jsonTime(d.time()))
		o.add("updated_at", jsonTime(d.time()))
	case recIdempotency:
		scope := d.str()
		if scope != "" {
			o.add("workspace", scope)
		}
		o.add("key", d.str())
		o.add("request_digest", digestPrefix(d.digest()))
		o.add("status", d.uvarint())
		o.add("content_type", d.str())
		o.add("body_bytes", len(d.bytes()))
		o.add("at", jsonTime(d.time()))
	case recSync:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("cohort_id", d.str())
		o.add("source", SyncSource(d.u8()).String())
		o.add("whole_session", d.u8()&1 != 0)
		o.add("started_at", jsonTime(d.time()))
		o.add("ended_at", jsonTime(d.time()))
		for _, name := range [...]string{"requests", "matched", "unknown", "device_id_identified", "dropped_before_floor", "added", "removed"} {
			o.add(name, d.uvarint())
		}
	case recSyncPage:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("cohort_id", d.str())
		o.add("session", d.str())
		o.add("at", jsonTime(d.time()))
		o.add("matched", d.uvarint())
		o.add("unmatched", d.uvarint())
	case recCohortDelete:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("cohort_id", d.str())
	case recMembers:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("cohort_id", d.str())
		o.add("at", jsonTime(time.Unix(0, d.varint())))
		bitmap("added")
		bitmap("removed")
	case recSession:
		o.add("workspace", d.str())
		o.add("partner", d.str())
		o.add("cohort_id", d.str())
		o.add("session", d.str())
		o.add("total_pages", d.uvarint())
		o.add("page", d.uvarint())
		o.add("seq", d.uvarint())
		o.add("at", jsonTime(time.Unix(0, d.varint())))
		bitmap("members")
	case recSessionDrop:
		o.add("workspace", d.str())
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			d.fail(errShortRecord)
		}
		dropped := []json.RawMessage{}
		for i := uint64(0); i < n && d.err == nil; i++ {
			dropped = append(dropped, describeSessionKey(d))
		}
		o.add("dropped", dropped)
		committed := describeSessionKey(d)
		o.add("committed", committed)
		o.add("at", jsonTime(time.Unix(0, d.varint())))
	default:
		o.add("bytes", len(payload))
		return append(dst, o.raw()...), nil
	}
	if err := d.done(); err != nil {
		return dst, fmt.Errorf("engine: record %d (%s): %w", lsn, RecordTypeName(typ), err)
	}
	return append(dst, o.raw()...), nil
}

func describeSessionKey(d *recordDecoder) json.RawMessage {
	var o jsonObject
	o.add("partner", d.str())
	o.add("cohort_id", d.str())
	o.add("session", d.str())
	return o.raw()
}

// describeUserOps decodes the operations of a users record.
func describeUserOps(d *recordDecoder) []json.RawMessage {
	ops := []json.RawMessage{}
	key := func(o *jsonObject, kind index.Kind, k []byte) {
		o.add("kind", kind.String())
		if kind == index.KindAlias {
			n, l := index.SplitAlias(k)
			o.add("alias_name", string(n))
			o.add("alias_label", string(l))
			return
		}
		o.add("key", string(k))
	}
	for d.err == nil && len(d.b) > 0 {
		var o jsonObject
		switch op := d.u8(); op {
		case opCreate:
			o.add("op", "create")
			o.add("id", d.u32())
		case opAttach:
			o.add("op", "attach")
			o.add("id", d.u32())
			kind := index.Kind(d.u8())
			key(&o, kind, d.bytes())
		case opDetach:
			o.add("op", "detach")
			kind := index.Kind(d.u8())
			key(&o, kind, d.bytes())
		case opMerge:
			o.add("op", "merge")
			o.add("from", d.u32())
			o.add("into", d.u32())
		case opDelete:
			o.add("op", "delete")
			o.add("id", d.u32())
		default:
			d.fail(fmt.Errorf("engine: unknown user op %d", op))
		}
		if d.err == nil {
			ops = append(ops, o.raw())
		}
	}
	return ops
}

// DumpWAL writes every record of the WAL in dataDir with lsn >= from to out
// as JSON lines (AppendRecordJSON). A record that does not decode is
// written as {"lsn","type","error"} and the dump goes on; the error
// returned then names the first one. Corruption of the log itself stops
// the dump with a *wal.CorruptionError.
func DumpWAL(dataDir string, from uint64, out io.Writer, ids bool) (wal.ScanReport, error) {
	var (
		line     []byte
		firstBad error
	)
	rep, err := wal.Scan(filepath.Join(dataDir, "wal"), from, func(typ uint8, lsn uint64, payload []byte) error {
		var derr error
		line, derr = AppendRecordJSON(line[:0], typ, lsn, payload, ids)
		if derr != nil {
			if firstBad == nil {
				firstBad = derr
			}
			var o jsonObject
			o.add("lsn", lsn)
			o.add("type", RecordTypeName(typ))
			o.add("error", derr.Error())
			line = append(line[:0], o.raw()...)
		}
		line = append(line, '\n')
		_, werr := out.Write(line)
		return werr
	})
	return rep, errors.Join(err, firstBad)
}

// StateCounts counts what a state holds.
type StateCounts struct {
	Partners   int
	Workspaces int
	Users      int // live users
	Cohorts    int
	Members    uint64 // memberships, over every cohort
	ImportKeys int    // revoked ones included
	Sessions   int    // open webhook sessions
}

func countState(e *Engine) StateCounts {
	c := StateCounts{Partners: len(e.ListPartners())}
	for _, w := range e.Workspaces() {
		c.Workspaces++
		c.Users += w.users.Len()
		for _, co := range w.Cohorts() {
			c.Cohorts++
			c.Members += co.Members().GetCardinality()
		}
		w.keys.RLock()
		c.ImportKeys += len(w.keys.byID)
		w.keys.RUnlock()
		c.Sessions += len(w.sessions.m)
	}
	return c
}

// SnapshotCheck is the verdict on one snapshot file.
type SnapshotCheck struct {
	File   string
	LSN    uint64
	Bytes  int64
	Counts StateCounts // what it holds (when Err is nil)
	Err    error       // corruption, nil if the file is good
}

// CheckReport is what CheckDir found.
type CheckReport struct {
	// Snapshots lists every snapshot file, newest first; recovery starts
	// from the first.
	Snapshots []SnapshotCheck
	// WAL summarizes the log (WAL.Torn: a torn tail start-up will trim).
	WAL wal.ScanReport
	// Records counts the WAL's records by type name.
	Records map[string]int
	// Replayed is the number of records applied on top of the newest
	// snapshot, as recovery would.
	Replayed int
	// State counts the recovered state (newest snapshot + replay).
	State StateCounts
}

// CheckDir verifies a data directory offline, the way recovery reads it
// but without changing anything: every snapshot file is read in full
// (checksum, bounds, bitmaps validated), every WAL record is checked
// (framing, checksum, lsn sequence) and decoded, the records after the
// newest snapshot are replayed onto it in a scratch in-memory engine, and
// the result's identity tables and cohorts are cross-checked
// (Engine.Check). It needs about as much memory as the state itself.
//
// CheckDir takes the directory's lock while it runs and returns
// ErrDataDirInUse (wrapped) when a cohortd holds it. Otherwise the error
// is nil only if nothing is corrupt; the report says what was read either
// way.
func CheckDir(dir string) (CheckReport, error) {
	rep := CheckReport{Records: map[string]int{}}
	if _, err := os.Stat(dir); err != nil {
		return rep, fmt.Errorf("engine: check: %w", err)
	}
	// A running cohortd always holds the lock file; without it nobody does.
	if _, err := os.Stat(filepath.Join(dir, lockName)); err == nil {
		lock, err := lockDir(dir)
		if err != nil {
			return rep, err
		}
		defer lock.Close()
	}
	snaps, err := listSnapshots(dir)
	if err != nil {
		return rep, fmt.Errorf("engine: check: list snapshots: %w", err)
	}
	var errs []error
	var st *Engine // the newest snapshot, then the replay
	for i, s := range snaps {
		e, sc := loadSnapshotChecked(filepath.Join(dir, s.name), s.lsn)
		rep.Snapshots = append(rep.Snapshots, sc)
		if sc.Err != nil {
			errs = append(errs, sc.Err)
		}
		if i == 0 {
			st = e
		}
	}
	from := uint64(1)
	if len(snaps) > 0 {
		from = snaps[0].lsn + 1
	}
	if st == nil {
		if len(snaps) > 0 {
			// Recovery would refuse the newest snapshot; replaying the WAL
			// onto nothing would only report follow-on errors.
			return rep, errors.Join(errs...)
		}
		st = scratchEngine()
	}
	walDir := filepath.Join(dir, "wal")
	var replayErr error
	if _, err := os.Stat(walDir); err == nil {
		rep.WAL, err = wal.Scan(walDir, 1, func(typ uint8, lsn uint64, payload []byte) error {
			rep.Records[RecordTypeName(typ)]++
			if _, err := AppendRecordJSON(nil, typ, lsn, payload, false); err != nil {
				return err
			}
			if lsn < from || replayErr != nil {
				return nil
			}
			if err := st.replayRecord(typ, lsn, payload); err != nil {
				replayErr = fmt.Errorf("engine: replay record %d (%s): %w", lsn, RecordTypeName(typ), err)
				return nil
			}
			rep.Replayed++
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
		if replayErr != nil {
			errs = append(errs, replayErr)
		}
		if err == nil && rep.WAL.Segments > 0 {
			switch {
			case rep.WAL.FirstLSN > from:
				errs = append(errs, fmt.Errorf("engine: the WAL starts at lsn %d but the newest snapshot covers only up to lsn %d: records are missing", rep.WAL.FirstLSN, from-1))
			case rep.WAL.NextLSN < from:
				errs = append(errs, fmt.Errorf("engine: the newest snapshot covers lsn %d but the WAL ends at lsn %d", from-1, rep.WAL.NextLSN-1))
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("engine: check: %w", err))
	}
	if err := st.Check(); err != nil {
		errs = append(errs, fmt.Errorf("engine: recovered state is inconsistent: %w", err))
	}
	rep.State = countState(st)
	return rep, errors.Join(errs...)
}

// scratchEngine is an in-memory engine that snapshots and records are
// loaded into for checking.
func scratchEngine() *Engine {
	e, err := Open(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		panic("BUG: in-memory engine: " + err.Error())
	}
	return e
}

// loadSnapshotChecked reads one snapshot file in full into a scratch
// engine and returns it (nil if the file is corrupt) with the verdict.
func loadSnapshotChecked(path string, lsn uint64) (*Engine, SnapshotCheck) {
	sc := SnapshotCheck{File: filepath.Base(path), LSN: lsn}
	if fi, err := os.Stat(path); err == nil {
		sc.Bytes = fi.Size()
	}
	e := scratchEngine()
	if err := e.loadSnapshot(path); err != nil {
		sc.Err = err
		return nil, sc
	}
	if err := e.Check(); err != nil {
		sc.Err = fmt.Errorf("engine: snapshot %s is inconsistent: %w", sc.File, err)
		return nil, sc
	}
	sc.Counts = countState(e)
	return e, sc
}
