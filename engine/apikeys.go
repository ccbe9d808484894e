package engine

import "crypto/subtle"

// APIKeyDigest returns the digest under which the engine indexes a workspace
// API key. A long-lived session (a Redis-protocol connection) keeps the
// digest, never the key, and finds its workspace again with
// WorkspaceByKeyDigest before each batch of commands, so that a key that was
// rotated or whose workspace was deleted stops working at once.
func APIKeyDigest(key []byte) [32]byte { return digestOf(key) }

// WorkspaceByKeyDigest returns the workspace whose API key has digest d (see
// APIKeyDigest), or nil. It is one map lookup under a read lock.
func (e *Engine) WorkspaceByKeyDigest(d [32]byte) *Workspace {
	e.keys.RLock()
	w := e.keys.api[d]
	e.keys.RUnlock()
	if w == nil || subtle.ConstantTimeCompare(w.keyDigest[:], d[:]) != 1 {
		return nil
	}
	return w
}
