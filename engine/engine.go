package engine

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/engine/kafkalog"
	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/index"
)

// Errors returned by the engine. The server maps them to HTTP statuses.
var (
	ErrClosed          = errors.New("engine: closed")
	ErrExists          = errors.New("engine: already exists")
	ErrNotFound        = errors.New("engine: not found")
	ErrBadPartnerKey   = errors.New("engine: invalid partner API key")
	ErrBadClientSecret = errors.New("engine: invalid client secret")
	// ErrCapacity is returned, before anything changes, by a write that
	// would not fit in the workspace's identity tables (8 GiB of identifier
	// bytes, or 2³²−1 users).
	ErrCapacity = errors.New("engine: workspace identity tables are full")
)

// InvalidError is a request the engine refuses as malformed; Message is
// meant for the client (the server answers 400 with it).
type InvalidError struct {
	Message string // the explanation for the client
}

func (e *InvalidError) Error() string { return e.Message }

func invalidf(format string, args ...any) error {
	return &InvalidError{Message: fmt.Sprintf(format, args...)}
}

// PartnerNotEnabledError is returned by AuthPartner when the client secret is
// valid but belongs to another partner. Prefix holds the first four
// characters of the secret, as the wire contract's message shows them.
type PartnerNotEnabledError struct {
	Prefix string // the secret's first four characters
}

func (e *PartnerNotEnabledError) Error() string {
	return "engine: partner not enabled for client with client secret: " + e.Prefix + "..."
}

// DefaultRetentionFloor is the default retention floor of docs/API.md §2 rule 8.
var DefaultRetentionFloor = time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC)

// Options configure an Engine.
type Options struct {
	// Dir is the data directory. Empty means a purely in-memory engine
	// without WAL or snapshots (tests and benchmarks).
	Dir string
	// Sync is the WAL durability mode.
	Sync wal.SyncMode
	// RetentionFloor drops change records stamped before it. Zero means
	// DefaultRetentionFloor.
	RetentionFloor time.Time
	// SnapshotEvery and SnapshotWALBytes trigger a snapshot after that much
	// time or WAL growth (zero disables the trigger); see Engine.RunSnapshots.
	SnapshotEvery    time.Duration
	SnapshotWALBytes int64
	// WebhookSessionTTL drops an incomplete webhook snapshot session after
	// this long without a page. Zero means one hour.
	WebhookSessionTTL time.Duration
	// IdempotencyTTL is how long the reply to a write with an
	// Idempotency-Key is kept. Zero means 24 hours.
	IdempotencyTTL time.Duration
	// Logger receives the engine's logs. Nil means slog.Default().
	Logger *slog.Logger
	// Now returns the current time. Nil means time.Now; tests inject a clock.
	Now func() time.Time
	// WALSegmentSize overrides the WAL segment size (tests use small ones).
	WALSegmentSize int64
	// OnFatal is called when durable storage fails (an fsync error) or a
	// record cannot be appended after its change reached memory: the
	// process must stop and recover from the log. Nil panics.
	OnFatal func(error)
	// OnWALSync, if set, receives the duration of every WAL fdatasync on
	// the commit path (the fsync latency metric).
	OnWALSync func(time.Duration)

	// Log, when set, makes the engine a node of a replicated group
	// (docs/API.md §7, replication.go): every state change is a command
	// record on the log, applied by RunLog on every node; there is no WAL,
	// and snapshots carry the applied offsets.
	Log *kafkalog.Log
	// NodeID names the node in its replication status.
	NodeID string
	// CursorSecret keys member-page cursors instead of <Dir>/cursor.key.
	// Every node of a group must use the same one, so that a cursor from
	// one node pages on another.
	CursorSecret []byte
	// ApplyTimeout bounds how long a write waits for its committed record
	// to be applied by this node (log mode); zero means 30 seconds.
	ApplyTimeout time.Duration
	// DenseViewBytes bounds the dense views and key filters of published
	// sets that batch lookups build (index/dense.go, index/keyfilter.go);
	// zero means DefaultDenseViewBytes,
	// negative builds none.
	DenseViewBytes int64
}

// DefaultDenseViewBytes is the process's budget for dense views: twenty
// sets at 100M users, two thousand at 1M.
const DefaultDenseViewBytes = 256 << 20

// Engine holds every workspace of one cohortd process.
//
// # Concurrency
//
// Engine-level state (workspaces, partners) is guarded by mu. Each workspace
// has one writer lock: every state change of a workspace — user upserts,
// imports, snapshot replaces, key changes — takes it for the short time it
// needs to append its WAL record and apply the change to memory, and then
// waits for durability after releasing it, so concurrent requests share one
// fsync (group commit). Readers never take a writer lock: cohort members are
// immutable bitmaps published through atomic pointers, and the identity
// tables are safe for concurrent lookups.
//
// # Durability
//
// With a data directory every change is a WAL record appended before the
// change is applied, and the caller's reply waits for the record to be as
// durable as Options.Sync promises. Snapshots bound the replay work; see
// snapshot.go.
type Engine struct {
	opts   Options
	log    *slog.Logger
	wal    *wal.Log
	now    func() time.Time
	floor  time.Time
	cursor cursorCodec
	dense  *index.DenseBudget // every workspace's dense views

	mu struct {
		sync.RWMutex
		workspaces map[string]*Workspace
		partners   map[string]*partner
		// lsn is the last engine-level record applied (workspaces, partners).
		lsn uint64
	}

	lock *os.File // flock on <dir>/LOCK

	// keys indexes every secret by its SHA-256 digest, so that a request's
	// credentials are found with one map lookup whatever the number of
	// workspaces (the digest leaks nothing about the secret).
	keys struct {
		sync.RWMutex
		api     map[[32]byte]*Workspace
		imports map[[32]byte]*importKey
	}

	// idem holds the replies of admin writes with an Idempotency-Key;
	// written under mu.
	idem idemLocked

	// snapMu serializes snapshots.
	snapMu sync.Mutex

	ready    atomic.Bool
	closed   atomic.Bool
	recovery time.Duration
	readyAt  time.Time // when recovery finished

	// lastSnap is the newest snapshot written or loaded (admin.go).
	lastSnap atomic.Pointer[SnapshotInfo]

	// repl is the log-mode state (replication.go), nil on a single node;
	// loadedRepl is the replication section of the snapshot recovery
	// loaded.
	repl       *replicator
	loadedRepl *replLoaded
	openedAt   time.Time

	// Counters read by the server's /metrics.
	Stats Stats
}

// Stats are cumulative counters of the engine, exported as metrics.
type Stats struct {
	IdentifiersReceived atomic.Uint64 // identifiers of applied change batches, as sent
	IdentifiersMatched  atomic.Uint64 // of those, the ones that matched a user
	IdentifiersUnknown  atomic.Uint64 // unmatched: no user holds the identifier
	IdentifiedDevice    atomic.Uint64 // unmatched: a device id of an identified user
	DataPoints          atomic.Uint64 // effective membership changes metered
	DroppedBeforeFloor  atomic.Uint64 // identifiers of changes stamped before the retention floor
	Snapshots           atomic.Uint64 // snapshots written
	// SessionsEvicted counts open webhook sessions dropped to stay within
	// the per-cohort and per-workspace limits (not expiries).
	SessionsEvicted  atomic.Uint64
	SnapshotFailures atomic.Uint64 // snapshot attempts that failed
}

type partner struct {
	slug      string
	createdAt time.Time // zero for partners recorded before creation times were
	// gen tells this registration of the slug from earlier ones in log
	// mode (the offset + 1 of its creation record; 0 on a single node):
	// an import key works only while the generation it was issued under
	// exists.
	gen uint64
	// digest is the partner_api_key's digest; a rotation swaps it.
	digest atomic.Pointer[[32]byte]
	// deleted is set, with every workspace's writer lock held, when the
	// partner is deleted: an import key being issued concurrently checks it.
	deleted atomic.Bool
}

func newPartner(slug string, d [32]byte, created time.Time) *partner {
	p := &partner{slug: slug, createdAt: created}
	p.digest.Store(&d)
	return p
}

// ValidPartnerSlug reports whether s is a partner slug ([a-z0-9_-]{1,64}).
// It runs on every segment query (once per cohort named), so it is a byte
// loop, not a regexp.
func ValidPartnerSlug(s string) bool { return validName(s, false) }

// ValidWorkspaceID reports whether s is a workspace id ([a-zA-Z0-9_-]{1,64}).
func ValidWorkspaceID(s string) bool { return validName(s, true) }

// validName reports whether s matches [a-z0-9_-]{1,64}, or with upper
// [a-zA-Z0-9_-]{1,64}.
func validName(s string, upper bool) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_', c == '-':
		case upper && c >= 'A' && c <= 'Z':
		default:
			return false
		}
	}
	return true
}

// Open creates the engine and, with a data directory, recovers its state
// from the newest snapshot and the WAL. Open returns once recovery is done;
// callers that want to answer /livez during recovery call it in a goroutine
// and use Ready.
func Open(opts Options) (*Engine, error) {
	e := &Engine{opts: opts, log: opts.Logger, now: opts.Now, floor: opts.RetentionFloor}
	if e.log == nil {
		e.log = slog.Default()
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.floor.IsZero() {
		e.floor = DefaultRetentionFloor
	}
	switch {
	case e.opts.DenseViewBytes == 0:
		e.dense = index.NewDenseBudget(DefaultDenseViewBytes)
	case e.opts.DenseViewBytes > 0:
		e.dense = index.NewDenseBudget(e.opts.DenseViewBytes)
	}
	if e.opts.WebhookSessionTTL <= 0 {
		e.opts.WebhookSessionTTL = time.Hour
	}
	if e.opts.IdempotencyTTL <= 0 {
		e.opts.IdempotencyTTL = 24 * time.Hour
	}
	e.mu.workspaces = make(map[string]*Workspace)
	e.mu.partners = make(map[string]*partner)
	e.keys.api = make(map[[32]byte]*Workspace)
	e.keys.imports = make(map[[32]byte]*importKey)
	e.openedAt = time.Now()
	if opts.Log != nil {
		// Log mode: recovery loads the newest snapshot; RunLog applies the
		// log from its offsets and makes the engine ready once caught up.
		e.repl = newReplicator(e.opts)
		if err := e.openLog(); err != nil {
			e.releaseUsers()
			return nil, err
		}
		e.recovery = time.Since(e.openedAt)
		return e, nil
	}
	if opts.Dir == "" {
		e.cursor = newCursorCodec(randomBytes(32))
		e.readyAt = time.Now()
		e.ready.Store(true)
		return e, nil
	}
	start := time.Now()
	if err := e.recover(); err != nil {
		return nil, err
	}
	e.recovery = time.Since(start)
	e.readyAt = time.Now()
	e.log.Info("recovery done", "dir", opts.Dir, "duration", e.recovery.String(), "workspaces", len(e.mu.workspaces))
	e.ready.Store(true)
	return e, nil
}

// Ready reports whether recovery has finished.
func (e *Engine) Ready() bool { return e.ready.Load() }

// RecoveryDuration is how long the last recovery took.
func (e *Engine) RecoveryDuration() time.Duration { return e.recovery }

// RetentionFloor is the configured retention floor.
func (e *Engine) RetentionFloor() time.Time { return e.floor }

// Close takes a final snapshot (with a data directory), closes the WAL and
// releases every workspace's identity tables (their memory is outside the Go
// heap: see index.Users.Close).
func (e *Engine) Close() error {
	if e.repl != nil {
		return e.closeLog()
	}
	if e.closed.Swap(true) {
		return nil
	}
	defer e.releaseUsers()
	if e.wal == nil {
		return nil
	}
	var errs []error
	if _, err := e.takeSnapshot(true); err != nil {
		errs = append(errs, fmt.Errorf("final snapshot: %w", err))
	}
	errs = append(errs, e.wal.Close(), e.unlock())
	return errors.Join(errs...)
}

// appendRecord appends a record to the WAL (if any) and returns its LSN,
// 0 without a WAL. The caller holds the writer lock of the state the
// record changes, checked that the engine is open when it took the lock
// (Close snapshots under every writer lock before it closes the WAL, so an
// append by a writer that got in before Close never meets a closed WAL),
// and applies the change after a successful append.
func (e *Engine) appendRecord(typ uint8, payload []byte) (uint64, error) {
	if e.wal == nil {
		return 0, nil
	}
	lsn, err := e.wal.Append(typ, payload)
	if err != nil {
		return 0, fmt.Errorf("engine: wal append: %w", err)
	}
	return lsn, nil
}

// fatal reports a failure that leaves memory ahead of the log (a record
// that could not be appended after its change was applied): answering
// would acknowledge state that a restart cannot rebuild, and carrying on
// would make later records disagree with replay. The process must stop and
// recover from the log.
func (e *Engine) fatal(err error) {
	e.log.Error("fatal: memory and log disagree, stopping", "err", err)
	if e.opts.OnFatal != nil {
		e.opts.OnFatal(err)
		return
	}
	panic(fmt.Sprintf("engine: fatal: %v", err))
}

// waitDurable waits until the record at lsn is durable per the sync mode.
func (e *Engine) waitDurable(lsn uint64) error {
	if e.wal == nil || lsn == 0 {
		return nil
	}
	if err := e.wal.Wait(lsn); err != nil {
		return fmt.Errorf("engine: wal sync: %w", err)
	}
	return nil
}

// newSecret returns a random secret with a readable prefix.
func newSecret(prefix string) string { return prefix + hex.EncodeToString(randomBytes(24)) }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("BUG: crypto/rand failed: %v", err))
	}
	return b
}

// CreateWorkspace creates a workspace and returns its API key (shown once).
func (e *Engine) CreateWorkspace(id string) (string, error) {
	if !ValidWorkspaceID(id) {
		return "", invalidf("workspace id must match [a-zA-Z0-9_-]{1,64}")
	}
	if e.repl != nil {
		key := newSecret("cwk_")
		d := SecretDigest([]byte(key))
		_, err := e.proposeAdmin(id, 0, admWorkspaceCreate, func(enc *codec.Encoder) { enc.Digest(d) })
		return key, err
	}
	return e.createKeyed(recWorkspaceCreate, "workspace", id, "cwk_",
		func() bool { _, ok := e.mu.workspaces[id]; return ok },
		func(d [32]byte, created time.Time, lsn uint64) { e.applyWorkspaceLocked(id, d, created, lsn) })
}

func (e *Engine) applyWorkspaceLocked(id string, d [32]byte, created time.Time, lsn uint64) *Workspace {
	return e.applyWorkspaceSeeded(id, d, created, lsn, 0)
}

// applyWorkspaceSeeded is applyWorkspaceLocked with the seed of the
// identity table hash (0: random).
func (e *Engine) applyWorkspaceSeeded(id string, d [32]byte, created time.Time, lsn, seed uint64) *Workspace {
	w := newWorkspace(e, id, d, seed)
	w.createdAt = created
	e.mu.workspaces[id] = w
	e.keys.Lock()
	e.keys.api[d] = w
	e.keys.Unlock()
	e.mu.lsn = max(e.mu.lsn, lsn)
	return w
}

// CreatePartner registers a partner slug and returns its partner_api_key.
func (e *Engine) CreatePartner(slug string) (string, error) {
	if !ValidPartnerSlug(slug) {
		return "", invalidf("partner slug must match [a-z0-9_-]{1,64}")
	}
	if e.repl != nil {
		key := newSecret("cpk_")
		d := SecretDigest([]byte(key))
		_, err := e.proposeAdmin("", 0, admPartnerCreate, func(enc *codec.Encoder) { enc.Str(slug); enc.Digest(d) })
		return key, err
	}
	return e.createKeyed(recPartnerCreate, "partner", slug, "cpk_",
		func() bool { _, ok := e.mu.partners[slug]; return ok },
		func(d [32]byte, created time.Time, lsn uint64) {
			e.mu.partners[slug] = newPartner(slug, d, created)
			e.mu.lsn = max(e.mu.lsn, lsn)
		})
}

// createKeyed creates an engine-level object that owns a secret (a
// workspace and its API key, a partner and its partner_api_key): a
// `name str | digest | created_at` record under e.mu, then apply. exists
// and apply run with e.mu held. It returns the secret, shown once.
func (e *Engine) createKeyed(typ uint8, what, name, prefix string, exists func() bool, apply func(d [32]byte, created time.Time, lsn uint64)) (string, error) {
	key := newSecret(prefix)
	d := SecretDigest([]byte(key))
	created := e.now().UTC()
	var enc codec.Encoder
	enc.Str(name)
	enc.Digest(d)
	enc.Time(created)
	e.mu.Lock()
	if e.closed.Load() {
		e.mu.Unlock()
		return "", ErrClosed
	}
	if exists() {
		e.mu.Unlock()
		return "", fmt.Errorf("%w: %s %q", ErrExists, what, name)
	}
	lsn, err := e.appendRecord(typ, enc.Bytes())
	if err != nil {
		e.mu.Unlock()
		return "", err
	}
	apply(d, created, lsn)
	e.mu.Unlock()
	return key, e.waitDurable(lsn)
}

// PartnerExists reports whether slug is a registered partner.
func (e *Engine) PartnerExists(slug string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	_, ok := e.mu.partners[slug]
	return ok
}

// Workspace returns the workspace with the given id, or nil.
func (e *Engine) Workspace(id string) *Workspace {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.mu.workspaces[id]
}

// Workspaces returns every workspace, sorted by id.
func (e *Engine) Workspaces() []*Workspace {
	e.mu.RLock()
	out := make([]*Workspace, 0, len(e.mu.workspaces))
	for _, w := range e.mu.workspaces {
		out = append(out, w)
	}
	e.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// WorkspaceByAPIKey returns the workspace whose API key is key, or nil.
// Keys are compared as SHA-256 digests in constant time.
func (e *Engine) WorkspaceByAPIKey(key []byte) *Workspace {
	if len(key) == 0 {
		return nil
	}
	d := SecretDigest(key)
	// The digest is compared under the lock: a rotation swaps keyDigest and
	// the index together, so the old key fails from the next lookup on.
	e.keys.RLock()
	w := e.keys.api[d]
	ok := w != nil && subtle.ConstantTimeCompare(w.keyDigest[:], d[:]) == 1
	e.keys.RUnlock()
	if !ok {
		return nil
	}
	return w
}

// AuthPartner checks the credentials of a partner request: the partner's
// partner_api_key and a client secret (a data import key), which selects the
// workspace. It returns ErrBadPartnerKey (also for an unknown partner),
// ErrBadClientSecret (unknown or revoked secret) or *PartnerNotEnabledError
// (a secret of another partner). A successful call records the key's use.
func (e *Engine) AuthPartner(slug string, partnerKey, secret []byte) (*Workspace, error) {
	pd := SecretDigest(partnerKey)
	e.mu.RLock()
	p := e.mu.partners[slug]
	e.mu.RUnlock()
	if p == nil || subtle.ConstantTimeCompare(p.digest.Load()[:], pd[:]) != 1 {
		return nil, ErrBadPartnerKey
	}
	return e.AuthImportKey(slug, secret)
}

// AuthImportKey finds the workspace of a data import key issued for partner
// slug (the Mixpanel webhook authenticates with the key alone).
func (e *Engine) AuthImportKey(slug string, secret []byte) (*Workspace, error) {
	if len(secret) == 0 {
		return nil, ErrBadClientSecret
	}
	d := SecretDigest(secret)
	e.keys.RLock()
	k := e.keys.imports[d]
	e.keys.RUnlock()
	if k == nil || k.revoked.Load() || !e.keyGenLive(k) {
		return nil, ErrBadClientSecret
	}
	if k.partner != slug {
		prefix := string(secret)
		if len(prefix) > 4 {
			prefix = prefix[:4]
		}
		return nil, &PartnerNotEnabledError{Prefix: prefix}
	}
	k.lastUsed.Store(e.now().UnixNano())
	return k.ws, nil
}

// keyGenLive reports whether the partner generation an import key was
// issued under still exists (log mode: deleting a partner does not touch
// its keys, which live on other partitions of the log). Always true on a
// single node, where the deletion revokes them.
func (e *Engine) keyGenLive(k *importKey) bool {
	if e.repl == nil {
		return true
	}
	e.mu.RLock()
	p := e.mu.partners[k.partner]
	e.mu.RUnlock()
	return p != nil && p.gen == k.partnerGen
}

// Now is the engine's clock (Options.Now).
func (e *Engine) Now() time.Time { return e.now() }
