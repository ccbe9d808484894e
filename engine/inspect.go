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
	Partners   int    // registered partners
	Workspaces int    // workspaces
	Users      int    // live users
	Cohorts    int    // cohorts, over every workspace
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
	File   string      // the snapshot's path
	LSN    uint64      // the last WAL record it covers
	Bytes  int64       // its size
	Counts StateCounts // what it holds (when Err is nil)
	Err    error       // corruption, nil if the file is good
}

// CheckReport is what CheckDir found.
type CheckReport struct {
	// Snapshots lists every snapshot file, newest first, each read in
	// full.
	Snapshots []SnapshotCheck
	// SetAside lists the snapshot-*.snap.corrupt files an earlier start-up
	// set aside after they failed to load; neither start-up nor CheckDir
	// reads them.
	SetAside []string
	// WAL summarizes the whole log (WAL.Torn: a torn tail start-up will
	// trim).
	WAL wal.ScanReport
	// Records counts the WAL's records by type name.
	Records map[string]int

	// RecoverFrom is the snapshot start-up would load: the newest that
	// reads back whole (a newer, damaged one is set aside), or "" when it
	// would rebuild from the WAL alone.
	RecoverFrom string
	// ReplayFrom is the first WAL record start-up would replay onto it.
	ReplayFrom uint64
	// Replayed is the number of records read from ReplayFrom on, as
	// recovery would.
	Replayed int
	// Recoverable says that start-up would rebuild a whole and consistent
	// state — from RecoverFrom and the WAL — even when CheckDir found
	// damage elsewhere (a newest snapshot start-up sets aside, a damaged
	// older snapshot or WAL segment it does not need).
	Recoverable bool
	// State counts the state start-up would rebuild (when Recoverable).
	State StateCounts
}

// CheckDir verifies a data directory offline without changing anything.
// It reads every snapshot file in full (checksums, bounds, bitmaps, then
// Engine.Check on what it holds) and every WAL record (framing, checksum,
// lsn sequence, payload), and reports any damage in its error. It then
// rebuilds the state the way recovery would (Engine.loadNewestSnapshot and
// the replay after it), in a scratch in-memory engine:
//
//   - from the newest snapshot that reads back whole — a damaged newer one
//     is what start-up sets aside as *.corrupt before it falls back to the
//     previous snapshot and the WAL since it;
//   - replaying the WAL from where that snapshot ends, skipping, like
//     recovery, the segments it does not need;
//
// and cross-checks the result's identity tables and cohorts. The report
// says which path recovery would take and whether it succeeds
// (Recoverable): a data dir can be damaged (a non-nil error) and still
// start with all its acknowledged state.
//
// The WAL is read twice, once whole and once from ReplayFrom; CheckDir
// needs about as much memory as the state itself (two snapshots' worth
// while an older snapshot is read). It takes the directory's lock while it
// runs and returns ErrDataDirInUse (wrapped) when a cohortd holds it.
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
	aside, _ := filepath.Glob(filepath.Join(dir, snapPrefix+"*"+snapSuffix+".corrupt"))
	for _, p := range aside {
		rep.SetAside = append(rep.SetAside, filepath.Base(p))
	}
	var errs []error

	// Every WAL record, whatever recovery needs of them.
	walDir := filepath.Join(dir, "wal")
	_, err = os.Stat(walDir)
	hasWAL := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("engine: check: %w", err))
	}
	var walErr error
	if hasWAL {
		rep.WAL, walErr = wal.Scan(walDir, 1, func(typ uint8, lsn uint64, payload []byte) error {
			rep.Records[RecordTypeName(typ)]++
			_, err := AppendRecordJSON(nil, typ, lsn, payload, false)
			return err
		})
		if walErr != nil {
			errs = append(errs, walErr)
		}
	}

	// Every snapshot; recovery loads the first that reads back whole.
	var (
		st     *Engine
		chosen snapFile
	)
	for _, sn := range snaps {
		e, sc := loadSnapshotChecked(filepath.Join(dir, sn.name), sn.lsn)
		rep.Snapshots = append(rep.Snapshots, sc)
		switch {
		case sc.Err != nil:
			errs = append(errs, sc.Err)
		case st == nil:
			st, chosen = e, sn
		default:
			_ = e.Close()
		}
	}

	// The path recovery would take, and whether it gets through.
	fatal := planRecovery(&rep, snaps, st, chosen)
	if st == nil && fatal == nil {
		st = scratchEngine()
	}
	if fatal == nil && rep.WAL.Segments > 0 {
		fatal = replayChecked(st, walDir, &rep)
		if fatal != nil && walErr != nil && fatal.Error() == walErr.Error() {
			fatal = errRecoveryStops // the damage is reported once, above
		}
	}
	if fatal == nil {
		if err := st.Check(); err != nil {
			fatal = fmt.Errorf("engine: recovered state is inconsistent: %w", err)
		}
	}
	switch {
	case fatal == nil:
		rep.Recoverable = true
		rep.State = countState(st)
	case fatal != errRecoveryStops:
		errs = append(errs, fatal)
	}
	if st != nil {
		_ = st.Close()
	}
	return rep, errors.Join(errs...)
}

// errRecoveryStops marks a recovery path that stops at damage already
// reported.
var errRecoveryStops = errors.New("engine: recovery stops at the damage above")

// planRecovery fills in where recovery would start (RecoverFrom,
// ReplayFrom) from st, the newest snapshot that loaded (nil: none), or
// returns why recovery would refuse to start, as Engine.recover does.
func planRecovery(rep *CheckReport, snaps []snapFile, st *Engine, chosen snapFile) error {
	walFirst := rep.WAL.FirstLSN // 0: no segment at all
	switch {
	case st != nil:
		rep.RecoverFrom = chosen.name
		from, ok := replayStart(chosen.lsn, st.maxScopeLSN(), walFirst)
		if !ok {
			return fmt.Errorf("engine: snapshot %s covers up to record %d, but the WAL starts at record %d: the records in between are missing", chosen.name, st.maxScopeLSN(), walFirst)
		}
		rep.ReplayFrom = from
	case len(snaps) > 0 && walFirst == 0:
		return errors.New("engine: no snapshot reads back whole, and there is no WAL to rebuild from")
	case len(snaps) > 0 && walFirst != 1:
		return fmt.Errorf("engine: no snapshot reads back whole, and the WAL does not hold the whole history (its first record is %d)", walFirst)
	default:
		rep.ReplayFrom = 1
	}
	if rep.WAL.Segments > 0 && rep.ReplayFrom < walFirst {
		return fmt.Errorf("engine: replay would start at record %d, but the WAL starts at record %d: records were retired", rep.ReplayFrom, walFirst)
	}
	return nil
}

// replayStart is where recovery starts replaying after a snapshot named
// snapLSN whose scopes cover up to top, on a WAL whose first record is
// walFirst (0: no WAL); false when the WAL starts past everything the
// snapshot covers. It mirrors Engine.loadNewestSnapshot.
func replayStart(snapLSN, top, walFirst uint64) (uint64, bool) {
	switch {
	case walFirst == 0:
		return top + 1, true
	case walFirst <= snapLSN+1:
		return snapLSN + 1, true
	case walFirst <= top+1:
		return walFirst, true
	}
	return 0, false
}

// replayChecked replays the WAL from rep.ReplayFrom onto st, reading only
// the segments recovery reads, and returns why recovery would fail there.
func replayChecked(st *Engine, walDir string, rep *CheckReport) error {
	var replayErr error
	sr, err := wal.Scan(walDir, rep.ReplayFrom, func(typ uint8, lsn uint64, payload []byte) error {
		if replayErr != nil {
			return nil
		}
		if err := st.replayRecord(typ, lsn, payload); err != nil {
			replayErr = fmt.Errorf("engine: replay record %d (%s): %w", lsn, RecordTypeName(typ), err)
			return nil
		}
		rep.Replayed++
		return nil
	})
	switch {
	case err != nil:
		return err
	case replayErr != nil:
		return replayErr
	case rep.ReplayFrom > sr.NextLSN:
		return fmt.Errorf("engine: replay would start at record %d, but the WAL ends at record %d", rep.ReplayFrom, sr.NextLSN-1)
	}
	return nil
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
		_ = e.Close()
		return nil, sc
	}
	if err := e.Check(); err != nil {
		sc.Err = fmt.Errorf("engine: snapshot %s is inconsistent: %w", sc.File, err)
		_ = e.Close()
		return nil, sc
	}
	sc.Counts = countState(e)
	return e, sc
}
