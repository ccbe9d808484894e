package engine

import (
	"github.com/cohortd/cohortd/index"
)

// WorkspaceMemory is the memory one workspace holds, by structure (GET
// /v1/admin/memory and /metrics; docs/MEMORY.md).
type WorkspaceMemory struct {
	ID    string
	Users int // live users
	Keys  int // identifiers held
	// Identity is the index's account: table, arena, user table, live bitmap,
	// and what its regions reserve (mapped ones outside the Go heap).
	Identity index.Memory
	// CohortBitmaps is the serialized size of every cohort's published members.
	CohortBitmaps int64
	// DenseViews is the dense views of the published cohorts and live users
	// that batch lookups have built (index/dense.go).
	DenseViews int64
	// Staging is what open webhook sessions hold (staged ids and page sets).
	Staging int64
	// UserLog is what the user-change log holds for imports in flight
	// (nothing while none is).
	UserLog int64
}

// Total returns the bytes the workspace's structures take.
func (m *WorkspaceMemory) Total() int64 {
	id := &m.Identity
	return id.TableBytes + id.ArenaBytes + id.UserTable + id.LiveBitmap + m.CohortBitmaps + m.DenseViews + m.Staging + m.UserLog
}

// Memory returns each workspace's memory, sorted by workspace id, without
// blocking writers (the cohort map's read lock is taken briefly).
func (e *Engine) Memory() []WorkspaceMemory {
	wss := e.Workspaces()
	out := make([]WorkspaceMemory, 0, len(wss))
	for _, w := range wss {
		m := WorkspaceMemory{ID: w.id, Identity: w.users.Memory()}
		m.Users, m.Keys = m.Identity.Users, m.Identity.Keys
		w.cohorts.RLock()
		for _, c := range w.cohorts.m {
			m.CohortBitmaps += c.members.Bytes()
			m.DenseViews += c.members.DenseBytes()
		}
		w.cohorts.RUnlock()
		m.DenseViews += w.users.LiveDenseBytes()
		m.Staging = int64(w.stagingBytes())
		m.UserLog = w.ulog.bytes.Load()
		out = append(out, m)
	}
	return out
}
