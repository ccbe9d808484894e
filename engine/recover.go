package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

func newByteReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// recover loads the newest snapshot, then replays the WAL records it does
// not cover, then opens the WAL for appends.
func (e *Engine) recover() error {
	if err := os.MkdirAll(e.opts.Dir, 0o755); err != nil {
		return fmt.Errorf("engine: data dir: %w", err)
	}
	lock, err := lockDir(e.opts.Dir)
	if err != nil {
		return err
	}
	e.lock = lock
	secret, err := loadOrCreateCursorSecret(e.opts.Dir)
	if err != nil {
		return errors.Join(err, e.unlock())
	}
	e.cursor = newCursorCodec(secret)
	snaps, err := listSnapshots(e.opts.Dir)
	if err != nil {
		return errors.Join(fmt.Errorf("engine: list snapshots: %w", err), e.unlock())
	}
	from := uint64(1)
	if len(snaps) > 0 {
		from = snaps[0].lsn + 1
		p := filepath.Join(e.opts.Dir, snaps[0].name)
		t := time.Now()
		if err := e.loadSnapshot(p); err != nil {
			return errors.Join(err, e.unlock())
		}
		e.noteLoadedSnapshot(p, snaps[0].lsn)
		e.log.Info("snapshot loaded", "file", snaps[0].name, "duration", time.Since(t).String())
	}
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

// unlock releases the data directory lock.
func (e *Engine) unlock() error {
	if e.lock == nil {
		return nil
	}
	err := e.lock.Close()
	e.lock = nil
	return err
}

// loadOrCreateCursorSecret keeps the key of member-page cursors stable
// across restarts.
func loadOrCreateCursorSecret(dir string) ([]byte, error) {
	p := filepath.Join(dir, "cursor.key")
	b, err := os.ReadFile(p)
	if err == nil && len(b) == 32 {
		return b, nil
	}
	b = randomBytes(32)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return nil, fmt.Errorf("engine: write cursor key: %w", err)
	}
	return b, nil
}

// replayRecord applies one WAL record unless the snapshot already holds it.
func (e *Engine) replayRecord(typ uint8, lsn uint64, payload []byte) error {
	if typ >= recAdminFirst && typ <= recAdminLast {
		return e.replayAdmin(typ, lsn, payload)
	}
	d := &recordDecoder{b: payload}
	switch typ {
	case recWorkspace, recPartner:
		name := d.str()
		dg := d.digest()
		if err := d.done(); err != nil {
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
	wsID := d.str()
	if d.err != nil {
		return d.err
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
		p, kid := d.str(), d.str()
		dg := d.digest()
		created := time.Unix(d.varint(), 0).UTC()
		if err := d.done(); err != nil {
			return err
		}
		w.applyImportKey(p, kid, dg, created, false, 0)
	case recRevokeKey:
		p, kid := d.str(), d.str()
		if err := d.done(); err != nil {
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
	case recCohortUpsert:
		p, cid, name := d.str(), d.str(), d.str()
		created := time.Unix(0, d.varint()).UTC()
		now := time.Unix(0, d.varint()).UTC()
		if err := d.done(); err != nil {
			return err
		}
		w.applyCohortUpsert(p, cid, name, created, now)
	case recCohortDelete:
		p, cid := d.str(), d.str()
		if err := d.done(); err != nil {
			return err
		}
		w.applyCohortDelete(p, cid)
	case recMembers:
		p, cid := d.str(), d.str()
		now := time.Unix(0, d.varint()).UTC()
		add := d.bitmap()
		rem := d.bitmap()
		if err := d.done(); err != nil {
			return err
		}
		c := w.Cohort(p, cid)
		if c == nil {
			return fmt.Errorf("members of unknown cohort %s/%s", p, cid)
		}
		w.applyMembers(c, add, rem, now)
	case recSession, recSessionDrop:
		return w.replaySession(typ, d)
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
