package engine

import (
	"github.com/cohortd/cohortd/index"
)

// Staging resolves identifiers in batches across change objects and lines.
//
// # Why
//
// Resolution dominates an import (docs/DESIGN.md): each lookup is a cache
// miss in the identity table, and index.Users.ResolveMany overlaps the misses
// of the keys it is given. A stager that resolves each change object on its
// own hands ResolveMany one key per call when an exporter writes one user a
// line, so no miss overlaps another (42% of the CPU of such an import went
// to resolveManyLocked). Stagers therefore queue the keys they are given
// (copying them: the decoder reuses its buffers) and resolve stageChunk at
// a time, whatever the shape of the body.
//
// Order is kept by the caller: each queued key carries a tag (the change's
// position in arrival order for a ChangeSet), and the resolved id is written
// back to that position.

// stageChunk is how many queued identifiers trigger a resolution: enough to
// keep ResolveMany's group of independent lookups full, few enough that the
// copied keys stay in cache.
const stageChunk = 256

// keyQueue holds identifiers waiting to be resolved, per kind. The zero
// value is ready to use; it is owned by one stager.
type keyQueue struct {
	buf  [4][]byte   // key bytes, back to back, per index.Kind
	ends [4][]uint32 // end offset in buf of each key
	tags [4][]uint32 // the caller's tag of each key
	n    int         // keys queued over all kinds

	keys [][]byte       // scratch: the keys of one kind, handed to ResolveMany
	ids  []index.UserID // scratch: their ids
}

// push queues key (copied) of kind with the caller's tag and reports
// whether the queue is full.
func (q *keyQueue) push(kind index.Kind, key []byte, tag uint32) bool {
	k := kind & 3
	q.buf[k] = append(q.buf[k], key...)
	q.ends[k] = append(q.ends[k], uint32(len(q.buf[k])))
	q.tags[k] = append(q.tags[k], tag)
	q.n++
	return q.n >= stageChunk
}

// reset drops every queued key.
func (q *keyQueue) reset() {
	for k := range q.buf {
		q.buf[k], q.ends[k], q.tags[k] = q.buf[k][:0], q.ends[k][:0], q.tags[k][:0]
	}
	q.n = 0
}

// resolve resolves every queued key, one ResolveMany per kind, calls fn
// with each kind's tags, ids and keys (owned by the queue, valid during the
// call) and empties the queue.
func (q *keyQueue) resolve(users *index.Users, in *BoundSegment, fn func(kind index.Kind, tags []uint32, ids []index.UserID, keys [][]byte)) {
	if q.n == 0 {
		return
	}
	for k := index.KindExternal; k <= index.KindDevice; k++ {
		ends := q.ends[k]
		if len(ends) == 0 {
			continue
		}
		q.keys = q.keys[:0]
		off := uint32(0)
		for _, end := range ends {
			q.keys = append(q.keys, q.buf[k][off:end:end])
			off = end
		}
		if in != nil {
			q.ids = in.Resolve(k, q.keys, q.ids[:0])
		} else {
			q.ids = users.ResolveMany(k, q.keys, q.ids[:0])
		}
		fn(k, q.tags[k], q.ids, q.keys)
		q.buf[k] = q.buf[k][:0]
		q.ends[k] = q.ends[k][:0]
		q.tags[k] = q.tags[k][:0]
	}
	clear(q.keys) // drop references into buf
	q.n = 0
}
