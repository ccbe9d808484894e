package engine

import (
	"sync"

	"github.com/cohortd/cohortd/index"
)

// Lookup resolves the identifiers of a query (batch contains) in arrival
// order, lookupChunk at a time like the import stagers (stage.go), so that a
// batch costs one ResolveMany per chunk and kind however its users are
// spelled. Any user holding an identifier is found: the anonymous-only
// rule of device ids is for import.
//
// A Lookup is used by one goroutine. Reset readies it for another query, so
// callers may pool them.
type Lookup struct {
	w   *Workspace
	in  *BoundSegment // the segment the users will be tested against, if known yet
	q   keyQueue
	ids []index.UserID
}

// NewLookup starts a lookup in w.
func (w *Workspace) NewLookup() *Lookup { return &Lookup{w: w} }

// Reset empties l for a lookup in w, keeping its buffers.
func (l *Lookup) Reset(w *Workspace) {
	l.w, l.in = w, nil
	l.ids = l.ids[:0]
	l.q.reset()
}

// lookupChunk is how many queued identifiers a Lookup resolves at once.
// Larger than the stagers' stageChunk: a query keeps nothing but the ids,
// and the longer batches overlap more misses. Measured cross-process at 1M
// users, batch contains of 1,000 users objects: 5.6–6.0 M ids per server
// CPU-second at 256, 6.2–6.9 M at 1,024 (three alternating runs each).
// Imports showed no difference either way, so they keep 256.
const lookupChunk = 1024

// Add queues key (copied) of kind; its answer is IDs()[Len() before Add].
func (l *Lookup) Add(kind index.Kind, key []byte) {
	pos := len(l.ids)
	l.ids = append(l.ids, index.NoUser)
	l.q.push(kind, key, uint32(pos))
	if l.q.n >= lookupChunk {
		l.flush()
	}
}

// AddMany adds keys of one kind, as Add would one by one, but resolves them
// at once in place: nothing is copied, so the keys need to live only for
// the call (a compact batch, whose keys the decoder has already gathered,
// skips the queue's copy: ~8% of a 1,000-id request's CPU).
func (l *Lookup) AddMany(kind index.Kind, keys [][]byte) {
	if l.in != nil {
		l.ids = l.in.Resolve(kind, keys, l.ids)
		return
	}
	l.ids = l.w.users.ResolveMany(kind, keys, l.ids)
}

// Within tells l that its users will only be tested for membership in b, a
// segment bound in l's workspace, so that the external ids added from now
// on are resolved with b.Resolve: those a key filter proves are in no
// member's hands are not looked up (index/keyfilter.go), and their ids are
// index.NoUser, good for b.Contains and nothing else.
func (l *Lookup) Within(b *BoundSegment) { l.in = b }

// Len is the number of identifiers added.
func (l *Lookup) Len() int { return len(l.ids) }

func (l *Lookup) flush() {
	l.q.resolve(l.w.users, l.in, func(_ index.Kind, tags []uint32, ids []index.UserID, _ [][]byte) {
		for i, tag := range tags {
			l.ids[tag] = ids[i]
		}
	})
}

// IDs resolves what is queued and returns one id per identifier added, in
// order (index.NoUser for unknown ones). The slice is owned by l.
func (l *Lookup) IDs() []index.UserID {
	l.flush()
	return l.ids
}

// segmentCache keeps parsed segments of a workspace by their JSON text, so
// that an evaluator asking the same expression again (the usual case: a
// segment is asked about user after user) skips parsing it. Binding is
// per query: cohorts change under it.
type segmentCache struct {
	sync.RWMutex
	m map[string]*Segment
}

// maxCachedSegments bounds a workspace's parsed segments; when full the
// cache starts over (a tenant cycling through more expressions than this
// gains nothing from keeping them).
const maxCachedSegments = 256

// Segment returns the segment written raw, parsed by parse the first time
// the workspace is asked it (parse holds the syntax: server/segment). The
// hit path allocates nothing. A Segment is shared: bind it with Bind, never
// change it.
func (w *Workspace) Segment(raw []byte, parse func(raw []byte) (*Segment, error)) (*Segment, error) {
	w.segs.RLock()
	s := w.segs.m[string(raw)]
	w.segs.RUnlock()
	if s != nil {
		return s, nil
	}
	s, err := parse(raw)
	if err != nil {
		return nil, err
	}
	w.segs.Lock()
	if w.segs.m == nil || len(w.segs.m) >= maxCachedSegments {
		w.segs.m = make(map[string]*Segment)
	}
	w.segs.m[string(raw)] = s
	w.segs.Unlock()
	return s, nil
}
