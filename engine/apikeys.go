package engine

import (
	"crypto/sha256"
	"crypto/subtle"
)

// SecretDigest returns the SHA-256 digest under which the engine stores a
// secret (a workspace API key, a partner key, an import key) and finds it
// again; the server digests the secrets it compares or counts (the admin
// token, rate-limit keys) with it too. A long-lived session (a
// Redis-protocol connection) keeps the digest, never the key, and finds its
// workspace again with WorkspaceByKeyDigest before each batch of commands,
// so that a key that was rotated or whose workspace was deleted stops
// working at once.
func SecretDigest(secret []byte) [32]byte { return sha256.Sum256(secret) }

// WorkspaceByKeyDigest returns the workspace whose API key has digest d (see
// SecretDigest), or nil. It is one map lookup under a read lock.
func (e *Engine) WorkspaceByKeyDigest(d [32]byte) *Workspace {
	e.keys.RLock()
	w := e.keys.api[d]
	e.keys.RUnlock()
	if w == nil || subtle.ConstantTimeCompare(w.keyDigest[:], d[:]) != 1 {
		return nil
	}
	return w
}
