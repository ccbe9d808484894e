package engine

import (
	"math/bits"

	"github.com/cohortd/cohortd/index"
)

// User upserts and deletes apply their records one by one, in order, and
// each record's outcome depends on what the records before it did, so
// their lookups cannot all be answered up front. But most lookups are of
// keys no earlier record touched: userCache resolves the keys of the next
// stageChunk records (or keys) in one ResolveMany per kind, overlapping
// the identity table's cache misses, and the serial logic consults it.
//
// A cached answer is used at most once, by the first lookup of its key
// after the prefill; that lookup sees the key exactly as the prefill did
// unless an earlier record of the chunk changed it, which it can only do
// by naming the key (then that record's lookup took the entry first) or by
// merging or deleting the user that held it (then the cached user is
// deleted and the lookup goes to the table). Every other lookup goes to the
// table, which is warm by then.
type userCache struct {
	q     keyQueue
	refs  [][]byte // tag → key (bytes owned by the batch, stable for the call)
	kinds []index.Kind
	slots []cacheSlot // open addressing, len a power of two
}

type cacheSlot struct {
	hash  uint64
	key   []byte
	id    index.UserID
	kind  index.Kind
	used  bool
	taken bool
}

// reset empties the cache for n keys.
func (c *userCache) reset(n int) {
	c.refs, c.kinds = c.refs[:0], c.kinds[:0]
	size := 1 << bits.Len(uint(2*n))
	if cap(c.slots) < size {
		c.slots = make([]cacheSlot, size)
	} else {
		c.slots = c.slots[:size]
		clear(c.slots)
	}
}

// add queues a key for the next resolve.
func (c *userCache) add(kind index.Kind, key []byte) {
	if key == nil {
		return
	}
	c.q.push(kind, key, uint32(len(c.refs)))
	c.refs = append(c.refs, key)
	c.kinds = append(c.kinds, kind)
}

// resolve resolves the queued keys into the table.
func (c *userCache) resolve(users *index.Users) {
	c.q.resolve(users, nil, func(kind index.Kind, tags []uint32, ids []index.UserID, _ [][]byte) {
		for i, tag := range tags {
			c.insert(kind, c.refs[tag], ids[i])
		}
	})
}

func (c *userCache) insert(kind index.Kind, key []byte, id index.UserID) {
	h := keyHash(kind, key)
	mask := len(c.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &c.slots[i]
		if !s.used {
			*s = cacheSlot{hash: h, key: key, id: id, kind: kind, used: true}
			return
		}
		if s.hash == h && s.kind == kind && string(s.key) == string(key) {
			return // a repeated key: the first answer stands
		}
	}
}

// take returns the cached answer for (kind, key) if there is one that was
// not taken yet, and marks it taken.
func (c *userCache) take(kind index.Kind, key []byte) (index.UserID, bool) {
	if len(c.slots) == 0 {
		return index.NoUser, false
	}
	h := keyHash(kind, key)
	mask := len(c.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &c.slots[i]
		if !s.used {
			return index.NoUser, false
		}
		if s.hash == h && s.kind == kind && string(s.key) == string(key) {
			if s.taken {
				return index.NoUser, false
			}
			s.taken = true
			return s.id, true
		}
	}
}

// resolve answers a lookup of the serial logic: from the prefilled cache
// when that answer still stands, else from the identity table.
func (o *userOps) resolve(kind index.Kind, key []byte) index.UserID {
	if o.cache != nil {
		if id, ok := o.cache.take(kind, key); ok && (id == index.NoUser || !o.w.users.Deleted(id)) {
			return id
		}
	}
	return o.w.users.Resolve(kind, key)
}

// prefillRecords resolves the keys of the records of b from i on, up to
// stageChunk of them, when i starts a chunk.
func (o *userOps) prefillRecords(b *UserBatch, i int) {
	if o.cache == nil || i%stageChunk != 0 {
		return
	}
	recs := b.recs[i:min(i+stageChunk, len(b.recs))]
	n := 0
	for r := range recs {
		n += 2 + len(recs[r].aliases)
	}
	o.cache.reset(n)
	for r := range recs {
		rec := &recs[r]
		o.cache.add(index.KindExternal, b.get(rec.ext))
		o.cache.add(index.KindDevice, b.get(rec.dev))
		for _, a := range rec.aliases {
			o.cache.add(index.KindAlias, b.get(a))
		}
	}
	o.cache.resolve(o.w.users)
}

// prefillKeys resolves keys[i:i+stageChunk] of one kind when i starts a
// chunk (deletes).
func (o *userOps) prefillKeys(kind index.Kind, keys [][]byte, i int) {
	if o.cache == nil || i%stageChunk != 0 {
		return
	}
	chunk := keys[i:min(i+stageChunk, len(keys))]
	o.cache.reset(len(chunk))
	for _, k := range chunk {
		o.cache.add(kind, k)
	}
	o.cache.resolve(o.w.users)
}
