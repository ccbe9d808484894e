package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// recover loads the newest snapshot that reads back whole, then replays
// the WAL records it does not cover, then opens the WAL for appends.
func (e *Engine) recover() error {
	if err := os.MkdirAll(e.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("engine: data dir: %w", err)
	}
	lock, err := lockDir(e.opts.Dir)
	if err != nil {
		return err
	}
	e.lock = lock
	if err := e.prepareDir(); err != nil {
		return errors.Join(err, e.unlock())
	}
	secret, err := loadOrCreateCursorSecret(e.opts.Dir)
	if err != nil {
		return errors.Join(err, e.unlock())
	}
	e.cursor = newCursorCodec(secret)
	l, err := wal.Open(wal.Options{
		Dir:         filepath.Join(e.opts.Dir, "wal"),
		Sync:        e.opts.Sync,
		SegmentSize: e.opts.WALSegmentSize,
		Logger:      e.log,
		OnFatal:     e.opts.OnFatal,
		OnSync:      e.opts.OnWALSync,
	})
	if err != nil {
		return errors.Join(fmt.Errorf("engine: open wal: %w", err), e.unlock())
	}
	walFirst, err := l.FirstLSN()
	from := walFirst
	if err == nil {
		from, err = e.loadNewestSnapshot(walFirst)
	}
	if err != nil {
		return errors.Join(err, l.Close(), e.unlock())
	}
	n := 0
	err = l.Replay(from, func(typ uint8, lsn uint64, payload []byte) error {
		n++
		if err := e.replayRecord(typ, lsn, payload); err != nil {
			return fmt.Errorf("engine: replay record %d (type %d): %w", lsn, typ, err)
		}
		return nil
	})
	if err != nil {
		return errors.Join(err, l.Close(), e.unlock())
	}
	e.wal = l
	e.log.Info("wal replayed", "records", n, "last_lsn", l.LastLSN())
	return nil
}

// loadNewestSnapshot loads the newest snapshot that reads back whole and
// returns the first WAL record to replay after it. A snapshot that fails
// (a bad checksum, a damaged field, an I/O error) is logged loudly,
// renamed *.corrupt (kept for inspection, never read again) and the next
// older one is tried: the snapshot writer keeps the previous snapshot and
// the WAL since it for exactly this. With no snapshot left, recovery
// replays the WAL from its first record, which is only the whole history
// when no segment was ever retired (walFirst is 1; 0 means no WAL at all).
//
// # Where replay starts
//
// A snapshot is named after the lowest position of its scopes (the engine,
// each workspace), each captured at its own position, so a scope may cover
// records past the name. Replay starts after the name and skips, per
// scope, what the scope covers. A WAL may start later than that only when
// the data dir was restored from the snapshot alone: recovery then started
// a new WAL after the highest position any scope covers (so that new
// records are never taken for records inside the snapshot), and the
// records in between are either inside the snapshot or were never part of
// the backup. A WAL that starts past every scope has lost records: the
// snapshot is unusable with it.
func (e *Engine) loadNewestSnapshot(walFirst uint64) (uint64, error) {
	snaps, err := listSnapshots(e.opts.Dir)
	if err != nil {
		return 0, fmt.Errorf("engine: list snapshots: %w", err)
	}
	var failed []error
	for _, sn := range snaps {
		p := filepath.Join(e.opts.Dir, sn.name)
		t := time.Now()
		err := e.loadSnapshot(p)
		if err == nil && e.loadedRepl != nil {
			e.resetState()
			return 0, fmt.Errorf("engine: snapshot %s was written by a node of a replicated group (-log kafka): start it with -log kafka, or restore a single node's backup", sn.name)
		}
		if err == nil {
			e.noteLoadedSnapshot(p, sn.lsn)
			top := e.maxScopeLSN()
			switch {
			case walFirst == 0:
				return e.loaded(sn, t, failed, top+1), nil
			case walFirst <= sn.lsn+1:
				return e.loaded(sn, t, failed, sn.lsn+1), nil
			case walFirst <= top+1:
				return e.loaded(sn, t, failed, walFirst), nil
			}
			// Not damaged, just too old for this WAL: try no further.
			e.resetState()
			failed = append(failed, fmt.Errorf("snapshot %s covers up to record %d, but the WAL starts at record %d", sn.name, top, walFirst))
			break
		}
		e.log.Error("SNAPSHOT UNREADABLE: falling back to the previous snapshot and the WAL", "file", sn.name, "err", err)
		failed = append(failed, err)
		e.resetState()
		if rerr := os.Rename(p, p+".corrupt"); rerr != nil {
			e.log.Error("cannot set the unreadable snapshot aside", "file", sn.name, "err", rerr)
		}
	}
	if len(failed) > 0 && walFirst != 1 {
		return 0, fmt.Errorf("engine: no usable snapshot, and the WAL does not hold the whole history (first record %d): %w", walFirst, errors.Join(failed...))
	}
	return 1, nil
}

// loaded logs a successful snapshot load and returns from.
func (e *Engine) loaded(sn snapFile, start time.Time, failed []error, from uint64) uint64 {
	if len(failed) > 0 {
		e.log.Error("recovered from an older snapshot after newer ones failed", "file", sn.name, "failed", errors.Join(failed...).Error())
	}
	e.log.Info("snapshot loaded", "file", sn.name, "duration", time.Since(start).String(), "replay_from", from)
	return from
}

// maxScopeLSN is the highest WAL position any scope (the engine, a
// workspace) has applied.
func (e *Engine) maxScopeLSN() uint64 {
	m := e.mu.lsn
	for _, w := range e.mu.workspaces {
		m = max(m, w.lsn)
	}
	return m
}

// resetState forgets everything a failed snapshot load may have built.
func (e *Engine) resetState() {
	e.releaseUsers()
	e.mu.workspaces = make(map[string]*Workspace)
	e.mu.partners = make(map[string]*partner)
	e.mu.lsn = 0
	e.keys.api = make(map[[32]byte]*Workspace)
	e.keys.imports = make(map[[32]byte]*importKey)
	e.idem.s = idemStore{}
	e.loadedRepl = nil
}

// prepareDir removes what a crash may have left (snapshot-*.tmp files of
// an unfinished snapshot) and makes the data directory private: every
// tenant's identifiers are in it, so directories are 0700 and files 0600.
// Looser modes left by an older version or an operator are tightened, and
// logged.
func (e *Engine) prepareDir() error {
	dir := e.opts.Dir
	tmps, _ := filepath.Glob(filepath.Join(dir, snapPrefix+"*.tmp"))
	for _, t := range tmps {
		if err := os.Remove(t); err != nil {
			return fmt.Errorf("engine: remove unfinished snapshot: %w", err)
		}
		e.log.Warn("removed an unfinished snapshot left by a crash", "file", filepath.Base(t))
	}
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir && d.IsDir() && filepath.Dir(p) != dir {
			return filepath.SkipDir // only the data dir and its direct subdirectories (wal/)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		} else if !fi.Mode().IsRegular() {
			return nil
		}
		if fi.Mode().Perm()&^want != 0 {
			if err := os.Chmod(p, fi.Mode().Perm()&want); err != nil {
				return fmt.Errorf("engine: tighten permissions of %s: %w", p, err)
			}
			e.log.Warn("tightened permissions in the data dir", "path", p, "was", fi.Mode().Perm().String(), "now", (fi.Mode().Perm() & want).String())
		}
		return nil
	})
}

// unlock releases the data directory lock.
func (e *Engine) unlock() error {
	if e.lock == nil {
		return nil
	}
	err := e.lock.Close()
	e.lock = nil
	return err
}

// cursorKeyFile holds the key of member-page cursors, so that cursors
// handed out stay valid across restarts.
const cursorKeyFile = "cursor.key"

// loadOrCreateCursorSecret returns the cursor key, creating it (written
// to a temporary file, synced, renamed, directory synced) on first start.
// A key of the wrong size is refused: silently replacing it would
// invalidate every open cursor, and it means the data dir was damaged.
func loadOrCreateCursorSecret(dir string) ([]byte, error) {
	p := filepath.Join(dir, cursorKeyFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil && len(b) == 32:
		return b, nil
	case err == nil:
		return nil, fmt.Errorf("engine: %s is corrupt (%d bytes, want 32): restore it from a backup, or delete it to start with a new key (open member-page cursors become invalid)", p, len(b))
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("engine: read cursor key: %w", err)
	}
	b = randomBytes(32)
	if err := writeFileAtomic(p, b); err != nil {
		return nil, fmt.Errorf("engine: write cursor key: %w", err)
	}
	return b, nil
}

// writeFileAtomic writes a 0600 file so that a crash leaves either no file
// or the whole of it.
func writeFileAtomic(p string, data []byte) error {
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(p))
}

// replayRecord applies one WAL record unless the snapshot already holds it.
func (e *Engine) replayRecord(typ uint8, lsn uint64, payload []byte) error {
	if typ >= recAdminFirst && typ <= recAdminLast {
		return e.replayAdmin(typ, lsn, payload)
	}
	d := codec.NewDecoder(payload)
	switch typ {
	case recWorkspace, recPartner:
		name := d.Str()
		dg := d.Digest()
		if err := d.Done(); err != nil {
			return err
		}
		if lsn <= e.mu.lsn {
			return nil
		}
		if typ == recWorkspace {
			if _, ok := e.mu.workspaces[name]; !ok {
				e.applyWorkspaceLocked(name, dg, time.Time{}, lsn)
			}
		} else {
			e.mu.partners[name] = newPartner(name, dg, time.Time{})
		}
		e.mu.lsn = lsn
		return nil
	}
	wsID := d.Str()
	if d.Err() != nil {
		return d.Err()
	}
	if typ == recIdempotency && wsID == "" {
		// The admin scope's replies belong to the engine, not a workspace.
		key, r, err := decodeIdempotency(d)
		if err != nil || lsn <= e.mu.lsn {
			return err
		}
		e.applyIdempotency(key, r)
		e.mu.lsn = lsn
		return nil
	}
	w := e.mu.workspaces[wsID]
	if w == nil {
		return fmt.Errorf("unknown workspace %q", wsID)
	}
	if lsn <= w.lsn {
		return nil // inside the snapshot
	}
	w.lsn = lsn
	switch typ {
	case recImportKey:
		p, kid := d.Str(), d.Str()
		dg := d.Digest()
		created := time.Unix(d.Varint(), 0).UTC()
		if err := d.Done(); err != nil {
			return err
		}
		w.applyImportKey(p, kid, dg, created, false, 0)
	case recRevokeKey:
		p, kid := d.Str(), d.Str()
		if err := d.Done(); err != nil {
			return err
		}
		w.keys.RLock()
		k := w.keys.byID[p+"/"+kid]
		w.keys.RUnlock()
		if k != nil {
			k.revoked.Store(true)
		}
	case recUsers:
		return w.replayUsers(d)
	case recCohortUpsert, recCohortUpsertV2:
		p, cid, name := d.Str(), d.Str(), d.Str()
		var created, now time.Time
		if typ == recCohortUpsert {
			created = time.Unix(0, d.Varint()).UTC()
			now = time.Unix(0, d.Varint()).UTC()
		} else {
			created, now = d.Time(), d.Time()
		}
		if err := d.Done(); err != nil {
			return err
		}
		w.applyCohortUpsert(p, cid, name, created, now)
	case recCohortDelete:
		p, cid := d.Str(), d.Str()
		if err := d.Done(); err != nil {
			return err
		}
		w.applyCohortDelete(p, cid)
	case recMembers:
		p, cid := d.Str(), d.Str()
		now := time.Unix(0, d.Varint()).UTC()
		add := d.Bitmap()
		rem := d.Bitmap()
		if err := d.Done(); err != nil {
			return err
		}
		c := w.Cohort(p, cid)
		if c == nil {
			return fmt.Errorf("members of unknown cohort %s/%s", p, cid)
		}
		w.applyMembers(c, add, rem, now)
	case recSession, recSessionDrop:
		return w.replaySession(typ, d)
	case recIdempotency:
		key, r, err := decodeIdempotency(d)
		if err != nil {
			return err
		}
		w.applyIdempotency(key, r)
	case recSync, recSyncPage:
		return w.replaySync(typ, d)
	default:
		return fmt.Errorf("unknown record type %d", typ)
	}
	return nil
}

// Check verifies that the identity tables, the user table and every
// cohort's members agree: members are live users, published sets equal the
// writer's masters. Tests call it after every scenario.
func (e *Engine) Check() error {
	var errs []error
	for _, w := range e.Workspaces() {
		if err := w.Check(); err != nil {
			errs = append(errs, fmt.Errorf("workspace %s: %w", w.id, err))
		}
	}
	return errors.Join(errs...)
}

// Check verifies one workspace (see Engine.Check).
func (w *Workspace) Check() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	if err := w.users.Check(); err != nil {
		errs = append(errs, err)
	}
	live := w.users.Live()
	for _, c := range w.Cohorts() {
		pub := c.Members()
		if !c.members.Consistent() {
			errs = append(errs, fmt.Errorf("cohort %s/%s: published members differ from the master", c.partner, c.id))
		}
		if extra := pub.GetCardinality() - pub.AndCardinality(live); extra != 0 {
			errs = append(errs, fmt.Errorf("cohort %s/%s: %d members are not live users", c.partner, c.id, extra))
		}
		if err := pub.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("cohort %s/%s: %w", c.partner, c.id, err))
		}
		if c.meta.Load() == nil {
			errs = append(errs, fmt.Errorf("cohort %s/%s: no metadata", c.partner, c.id))
		}
	}
	for id := index.UserID(0); id < w.users.NextID(); id++ {
		if w.users.Deleted(id) == live.Contains(uint32(id)) {
			errs = append(errs, fmt.Errorf("user %d: deleted=%v but live=%v", id, w.users.Deleted(id), live.Contains(uint32(id))))
			break
		}
	}
	return errors.Join(errs...)
}
