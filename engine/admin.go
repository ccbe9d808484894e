package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"
)

// Tenant administration (docs/API.md §4 "Admin"): listing, deleting and
// re-keying workspaces and partners, and snapshots on request.
//
// Every change here is one WAL record whose apply is a function of the
// record and the state alone (no clock, no randomness, no map order), so
// replay — and a replica replaying the same log — reaches the same state.
// Record types 30–39 belong to this file; the layouts are in
// docs/FORMATS.md.
const (
	recWorkspaceCreate uint8 = 30 // id | api key digest | created_at (supersedes type 1)
	recPartnerCreate   uint8 = 31 // slug | partner_api_key digest | created_at (supersedes type 2)
	recWorkspaceDelete uint8 = 32 // id
	recPartnerDelete   uint8 = 33 // slug: its import keys are revoked in every workspace
	recWorkspaceKey    uint8 = 34 // id | new api key digest (workspace-scoped, like types 3–10)
	recPartnerKey      uint8 = 35 // slug | new partner_api_key digest

	recAdminFirst       = recWorkspaceCreate
	recAdminLast  uint8 = 39
)

// Errors of tenant administration.
var (
	// ErrNoDataDir is returned by SnapshotNow for an engine without a data
	// directory.
	ErrNoDataDir = errors.New("engine: no data directory")
)

// NotEmptyError refuses to delete a workspace that still holds users or
// cohorts without force.
type NotEmptyError struct {
	Workspace      string // the workspace id
	Users, Cohorts int    // live users and cohorts it holds
}

func (e *NotEmptyError) Error() string {
	return fmt.Sprintf("engine: workspace %q holds %d users and %d cohorts", e.Workspace, e.Users, e.Cohorts)
}

// WorkspaceInfo describes a workspace for the admin listing.
type WorkspaceInfo struct {
	ID        string    // the workspace id
	CreatedAt time.Time // zero if the workspace predates recorded creation times
	Users     int       // live users
	Cohorts   int       // cohorts of every partner
}

// ListWorkspaces describes every workspace, sorted by id.
func (e *Engine) ListWorkspaces() []WorkspaceInfo {
	wss := e.Workspaces()
	out := make([]WorkspaceInfo, len(wss))
	for i, w := range wss {
		out[i] = WorkspaceInfo{ID: w.id, CreatedAt: w.createdAt, Users: w.users.Len(), Cohorts: w.cohortCount()}
	}
	return out
}

// CreatedAt is when the workspace was created (zero if unknown).
func (w *Workspace) CreatedAt() time.Time { return w.createdAt }

// Scope names this workspace for state kept outside the engine (the
// server's Idempotency-Key replies): unlike the id, it differs for a
// workspace created again under the id of a deleted one.
func (w *Workspace) Scope() string {
	return w.id + "@" + strconv.FormatInt(w.createdAt.UnixNano(), 10)
}

func (w *Workspace) cohortCount() int {
	w.cohorts.RLock()
	defer w.cohorts.RUnlock()
	return len(w.cohorts.m)
}

// DeleteWorkspace deletes a workspace with everything in it: its users,
// cohorts, keys and usage. Unless force is set, a workspace that holds
// users or cohorts is refused with *NotEmptyError. Its API key and data
// import keys fail from the next request on; requests already running
// finish against the detached workspace but can change nothing durable.
func (e *Engine) DeleteWorkspace(id string, force bool) error {
	if e.repl != nil {
		_, err := e.proposeAdmin(id, 0, admWorkspaceDelete, func(enc *recordEncoder) { enc.u8(boolByte(force)) })
		return err
	}
	var enc recordEncoder
	enc.str(id)
	e.mu.Lock()
	w := e.mu.workspaces[id]
	if w == nil {
		e.mu.Unlock()
		return fmt.Errorf("%w: workspace %q", ErrNotFound, id)
	}
	// w.mu orders the deletion after every record of the workspace and,
	// through deleted, before none.
	w.mu.Lock()
	if users, cohorts := w.users.Len(), w.cohortCount(); !force && (users > 0 || cohorts > 0) {
		w.mu.Unlock()
		e.mu.Unlock()
		return &NotEmptyError{Workspace: id, Users: users, Cohorts: cohorts}
	}
	lsn, err := e.appendRecord(recWorkspaceDelete, enc.b)
	if err == nil {
		e.applyWorkspaceDeleteLocked(w, lsn)
	}
	w.mu.Unlock()
	e.mu.Unlock()
	if err != nil {
		return err
	}
	// The identity tables live off the Go heap: release them now. Requests
	// still holding w see empty tables (index.Users.Close swaps them out
	// under its lock), and deleted keeps them from writing. A snapshot that
	// listed w before the deletion still writes it whole (replay of the
	// deletion record then removes it), so the release waits for it.
	e.snapMu.Lock()
	w.releaseUsers()
	e.snapMu.Unlock()
	return e.waitDurable(lsn)
}

// applyWorkspaceDeleteLocked detaches w from the engine: no map of the
// engine refers to it any more, so its Go memory is freed once the
// requests still holding it finish; the caller releases its identity
// tables (releaseUsers) once it has dropped w.mu. The caller holds e.mu
// and w.mu (or replays).
func (e *Engine) applyWorkspaceDeleteLocked(w *Workspace, lsn uint64) {
	delete(e.mu.workspaces, w.id)
	e.keys.Lock()
	if e.keys.api[w.keyDigest] == w {
		delete(e.keys.api, w.keyDigest)
	}
	w.keys.RLock()
	for _, k := range w.keys.byID {
		if e.keys.imports[k.digest] == k {
			delete(e.keys.imports, k.digest)
		}
	}
	w.keys.RUnlock()
	e.keys.Unlock()
	w.deleted = true
	e.mu.lsn = max(e.mu.lsn, lsn)
}

// RotateWorkspaceKey gives the workspace a new API key and returns it
// (shown once). The old key fails from the next lookup on, on every
// listener: the digest index swaps both keys under one lock.
func (e *Engine) RotateWorkspaceKey(id string) (string, error) {
	key := newSecret("cwk_")
	d := digestOf([]byte(key))
	if e.repl != nil {
		_, err := e.proposeAdmin(id, 0, admWorkspaceKey, func(enc *recordEncoder) { enc.digest(d) })
		return key, err
	}
	w := e.Workspace(id)
	if w == nil {
		return "", fmt.Errorf("%w: workspace %q", ErrNotFound, id)
	}
	w.mu.Lock()
	w.enc.reset()
	w.enc.str(w.id)
	w.enc.digest(d)
	lsn, err := w.commitLocked(recWorkspaceKey, func(uint64) { w.applyKeyRotation(d) })
	w.mu.Unlock()
	if err != nil {
		return "", err
	}
	return key, e.waitDurable(lsn)
}

// applyKeyRotation replaces the workspace's API key digest (under w.mu, or
// in replay).
func (w *Workspace) applyKeyRotation(d [32]byte) {
	e := w.e
	e.keys.Lock()
	if e.keys.api[w.keyDigest] == w {
		delete(e.keys.api, w.keyDigest)
	}
	w.keyDigest = d
	e.keys.api[d] = w
	e.keys.Unlock()
}

// PartnerInfo describes a partner for the admin listing.
type PartnerInfo struct {
	Slug      string    // the partner slug, [a-z0-9_-]{1,64}
	CreatedAt time.Time // zero if the partner predates recorded creation times
}

// ListPartners describes every partner, sorted by slug.
func (e *Engine) ListPartners() []PartnerInfo {
	e.mu.RLock()
	out := make([]PartnerInfo, 0, len(e.mu.partners))
	for _, p := range e.mu.partners {
		out = append(out, PartnerInfo{Slug: p.slug, CreatedAt: p.createdAt})
	}
	e.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Slug < out[j].Slug })
	return out
}

// DeletePartner removes a partner: its partner_api_key fails at once and
// every data import key issued for it, in every workspace, is revoked for
// good (re-registering the slug later does not revive them). Cohorts the
// partner imported stay.
func (e *Engine) DeletePartner(slug string) error {
	if e.repl != nil {
		_, err := e.proposeAdmin("", 0, admPartnerDelete, func(enc *recordEncoder) { enc.str(slug) })
		return err
	}
	var enc recordEncoder
	enc.str(slug)
	e.mu.Lock()
	p := e.mu.partners[slug]
	if p == nil {
		e.mu.Unlock()
		return fmt.Errorf("%w: partner %q", ErrNotFound, slug)
	}
	// Every writer lock is held while the record is appended and applied,
	// so that each workspace's snapshot sees the revocations exactly when
	// its position covers the record (see applyPartnerDeleteLocked). Only
	// this path holds more than one writer lock, always under e.mu.
	wss := make([]*Workspace, 0, len(e.mu.workspaces))
	for _, w := range e.mu.workspaces {
		wss = append(wss, w)
	}
	sort.Slice(wss, func(i, j int) bool { return wss[i].id < wss[j].id })
	for _, w := range wss {
		w.mu.Lock()
	}
	lsn, err := e.appendRecord(recPartnerDelete, enc.b)
	if err == nil {
		e.applyPartnerDeleteLocked(p, lsn)
	}
	for _, w := range wss {
		w.mu.Unlock()
	}
	e.mu.Unlock()
	if err != nil {
		return err
	}
	return e.waitDurable(lsn)
}

// applyPartnerDeleteLocked removes the partner and revokes its import keys
// in every workspace whose state does not include the record yet: in
// replay, a workspace restored from a snapshot taken after the record
// (w.lsn >= lsn) holds the revocations already, and any key issued later
// (after the slug was registered again) must stay valid. On the live path
// lsn is new (or 0 without a WAL), so every workspace is concerned.
func (e *Engine) applyPartnerDeleteLocked(p *partner, lsn uint64) {
	delete(e.mu.partners, p.slug)
	p.deleted.Store(true)
	for _, w := range e.mu.workspaces {
		if lsn == 0 || lsn > w.lsn {
			w.revokePartnerKeys(p.slug)
		}
	}
	e.mu.lsn = max(e.mu.lsn, lsn)
}

// revokePartnerKeys marks every import key of partner revoked.
func (w *Workspace) revokePartnerKeys(partnerSlug string) {
	w.keys.RLock()
	defer w.keys.RUnlock()
	for _, k := range w.keys.byID {
		if k.partner == partnerSlug {
			k.revoked.Store(true)
		}
	}
}

// RotatePartnerKey gives the partner a new partner_api_key and returns it
// (shown once); the old one fails from the next request on.
func (e *Engine) RotatePartnerKey(slug string) (string, error) {
	key := newSecret("cpk_")
	d := digestOf([]byte(key))
	if e.repl != nil {
		_, err := e.proposeAdmin("", 0, admPartnerKey, func(enc *recordEncoder) { enc.str(slug); enc.digest(d) })
		return key, err
	}
	var enc recordEncoder
	enc.str(slug)
	enc.digest(d)
	e.mu.Lock()
	p := e.mu.partners[slug]
	if p == nil {
		e.mu.Unlock()
		return "", fmt.Errorf("%w: partner %q", ErrNotFound, slug)
	}
	lsn, err := e.appendRecord(recPartnerKey, enc.b)
	if err == nil {
		p.digest.Store(&d)
		e.mu.lsn = max(e.mu.lsn, lsn)
	}
	e.mu.Unlock()
	if err != nil {
		return "", err
	}
	return key, e.waitDurable(lsn)
}

// replayAdmin applies a record of types 30–39 during recovery. Engine-level
// records are skipped when the snapshot's engine section covers them,
// workspace-scoped ones when the workspace's section does.
func (e *Engine) replayAdmin(typ uint8, lsn uint64, payload []byte) error {
	d := &recordDecoder{b: payload}
	name := d.str()
	switch typ {
	case recWorkspaceCreate, recPartnerCreate:
		dg := d.digest()
		created := d.time()
		if err := d.done(); err != nil {
			return err
		}
		if lsn <= e.mu.lsn {
			return nil
		}
		if typ == recWorkspaceCreate {
			if !ValidWorkspaceID(name) {
				return fmt.Errorf("invalid workspace id %q", name)
			}
			if e.mu.workspaces[name] != nil {
				return fmt.Errorf("workspace %q created twice", name)
			}
			e.applyWorkspaceLocked(name, dg, created, lsn)
			return nil
		}
		if e.mu.partners[name] != nil {
			return fmt.Errorf("partner %q created twice", name)
		}
		e.mu.partners[name] = newPartner(name, dg, created)
		e.mu.lsn = lsn
		return nil
	case recWorkspaceDelete:
		if err := d.done(); err != nil {
			return err
		}
		if lsn <= e.mu.lsn {
			return nil
		}
		w := e.mu.workspaces[name]
		if w == nil {
			return fmt.Errorf("delete of unknown workspace %q", name)
		}
		e.applyWorkspaceDeleteLocked(w, lsn)
		w.releaseUsers()
		return nil
	case recPartnerDelete:
		if err := d.done(); err != nil {
			return err
		}
		if lsn <= e.mu.lsn {
			return nil
		}
		p := e.mu.partners[name]
		if p == nil {
			return fmt.Errorf("delete of unknown partner %q", name)
		}
		e.applyPartnerDeleteLocked(p, lsn)
		return nil
	case recPartnerKey:
		dg := d.digest()
		if err := d.done(); err != nil {
			return err
		}
		if lsn <= e.mu.lsn {
			return nil
		}
		p := e.mu.partners[name]
		if p == nil {
			return fmt.Errorf("key of unknown partner %q", name)
		}
		p.digest.Store(&dg)
		e.mu.lsn = lsn
		return nil
	case recWorkspaceKey:
		dg := d.digest()
		if err := d.done(); err != nil {
			return err
		}
		w := e.mu.workspaces[name]
		if w == nil {
			return fmt.Errorf("unknown workspace %q", name)
		}
		if lsn <= w.lsn {
			return nil
		}
		w.lsn = lsn
		w.applyKeyRotation(dg)
		return nil
	}
	return fmt.Errorf("unknown record type %d", typ)
}

// ---- snapshots ----

// SnapshotInfo describes a snapshot file.
type SnapshotInfo struct {
	File  string    // base name, inside the data directory
	Bytes int64     // file size
	LSN   uint64    // every WAL record at or below it is inside
	At    time.Time // when it was written (for a loaded one: its modification time)
}

// SnapshotNow writes a snapshot at once and returns it: a consistent point
// to copy for a backup (until a later snapshot replaces the file).
func (e *Engine) SnapshotNow() (SnapshotInfo, error) {
	if e.closed.Load() {
		return SnapshotInfo{}, ErrClosed
	}
	if e.wal == nil && (e.repl == nil || e.opts.Dir == "") {
		return SnapshotInfo{}, ErrNoDataDir
	}
	return e.snapshotInfo(false)
}

// snapshotLocked writes a snapshot (see writeSnapshotFile).
func (e *Engine) snapshotLocked(final bool) error {
	_, err := e.snapshotInfo(final)
	return err
}

// snapshotInfo writes a snapshot and counts a failure in
// Stats.SnapshotFailures.
func (e *Engine) snapshotInfo(final bool) (SnapshotInfo, error) {
	info, err := e.writeSnapshotFile(final)
	if err != nil {
		e.Stats.SnapshotFailures.Add(1)
	}
	return info, err
}

// LastSnapshot returns the newest snapshot written by this process or
// loaded at start-up; ok is false when there was none.
func (e *Engine) LastSnapshot() (info SnapshotInfo, ok bool) {
	if p := e.lastSnap.Load(); p != nil {
		return *p, true
	}
	return SnapshotInfo{}, false
}

// ReadyAt is when recovery finished.
func (e *Engine) ReadyAt() time.Time { return e.readyAt }

// noteLoadedSnapshot records the snapshot recovery started from as the
// last good one.
func (e *Engine) noteLoadedSnapshot(path string, lsn uint64) {
	info := SnapshotInfo{File: filepath.Base(path), LSN: lsn}
	if fi, err := os.Stat(path); err == nil {
		info.Bytes, info.At = fi.Size(), fi.ModTime()
	}
	e.lastSnap.Store(&info)
}
