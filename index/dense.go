package index

import (
	"runtime"
	"sync/atomic"

	"github.com/RoaringBitmap/roaring/v2"
)

// Dense views: a published set (a cohort's members, the live users) as a
// plain bitset, for the queries that test many users against it one at a
// time (batch contains, SMISMEMBER, pipelined SISMEMBER).
//
// A roaring Contains is a binary search over the container keys, then a
// probe of the container: measured here with random ids over a 1M-user
// universe, 18 ns for a cohort at 10% density and 33 ns with the live-users
// check. A bitset answers with one load. It costs a bit per id of the
// universe (128 KiB at 1M users, 12.5 MiB at 100M) and a build
// (roaring's WriteDenseTo: ~47 µs at 1M, ~8 ms at 100M), so a set gets a view
// only once the lookups asked of its current version would have paid for
// the build: denseAskPerBit ids of universe per lookup, and at least
// denseMinAsked. Every published version starts without a view (publishing
// drops the old one), so a view is always exactly its version's set.
//
// Views are Go heap memory, counted against a DenseBudget shared by the
// process: a set whose view would pass it keeps answering through roaring.
// A view's bytes return to the budget when the garbage collector frees it
// (runtime.AddCleanup), not when it is dropped: a query that loaded it may
// still be using it, and the budget is meant to bound what the process
// holds.

// DenseBudget bounds the bytes of every dense view and key filter
// (keyfilter.go) it is given to; both count as views. It is safe for
// concurrent use.
type DenseBudget struct {
	limit int64
	used  atomic.Int64
	views atomic.Int64
}

// NewDenseBudget returns a budget of limit bytes; limit ≤ 0 builds no view.
func NewDenseBudget(limit int64) *DenseBudget { return &DenseBudget{limit: limit} }

// Used returns the bytes of views built and not yet freed.
func (b *DenseBudget) Used() int64 { return b.used.Load() }

// Views returns how many views are built and not yet freed.
func (b *DenseBudget) Views() int64 { return b.views.Load() }

const (
	// denseAskPerBit: a view is built once its version has been asked
	// about one user per this many ids of universe. The build costs
	// ~0.05 ns an id of universe and saves ~15–30 ns a lookup, so
	// 256 pays it back about twice over.
	denseAskPerBit = 256
	// denseMinAsked keeps tiny workspaces from building views for a
	// handful of queries.
	denseMinAsked = 1024
)

// Dense is the bitset of one published set. It is immutable.
type Dense struct{ words []uint64 }

// Contains reports whether x is in the set.
func (d *Dense) Contains(x uint32) bool {
	w := x >> 6
	return int(w) < len(d.words) && d.words[w]&(1<<(x&63)) != 0
}

// Bytes returns the view's size.
func (d *Dense) Bytes() int64 { return int64(len(d.words)) * 8 }

// denseSlot is the view state of one published version: its dense view,
// and the key filter of its members (keyfilter.go).
type denseSlot struct {
	src     *roaring.Bitmap
	viewErn earning
	view    atomic.Pointer[Dense]

	card    atomic.Uint64 // src's cardinality + 1; 0 until a filter asks it
	keysErn earning
	keys    atomic.Pointer[KeyFilter]
}

// earning counts the lookups asked of one version for a structure built
// for them, and lets one caller build it once they pass its threshold.
type earning struct {
	asked    atomic.Int64
	building atomic.Bool
}

// add notes n more lookups and returns how many were asked in all.
func (e *earning) add(n int) int64 { return e.asked.Add(int64(n)) }

// claim reports whether the caller is the one to build: true once.
func (e *earning) claim() bool { return e.building.CompareAndSwap(false, true) }

// again starts the count over after a build was refused (over budget) or
// its result dropped, so that as many lookups again earn another try.
func (e *earning) again() {
	e.asked.Store(0)
	e.building.Store(false)
}

// denseCache is the view of the set a writer publishes: reset with every
// version published, asked by readers with the version they loaded.
type denseCache struct {
	budget *DenseBudget // nil: no views
	slot   atomic.Pointer[denseSlot]
}

// reset starts version src without a view. Writer only, right after
// publishing src.
func (c *denseCache) reset(src *roaring.Bitmap) {
	if c.budget != nil {
		c.slot.Store(&denseSlot{src: src})
	}
}

// view returns the dense view of src, the version the caller loaded, or
// nil, after noting that n lookups are about to be made in it. The call
// whose lookups cross the threshold builds the view, once per version.
func (c *denseCache) view(src *roaring.Bitmap, n int) *Dense {
	s := c.slot.Load()
	if s == nil || s.src != src {
		return nil // no views, or a version newer than the caller's
	}
	if v := s.view.Load(); v != nil {
		return v
	}
	asked := s.viewErn.add(n)
	if asked < denseMinAsked {
		return nil
	}
	size := int64(src.DenseSize()) * 8
	if size == 0 || asked < size*8/denseAskPerBit || !s.viewErn.claim() {
		return nil
	}
	v := c.budget.build(src, size)
	if v == nil {
		s.viewErn.again() // over budget
		return nil
	}
	s.view.Store(v)
	return v
}

// keyFilter returns the filter of the keys of kind that src's members
// hold, for lookups of users in u, or nil, after noting that n lookups are
// about to be made; src is the version the caller loaded. The call whose
// lookups cross the threshold builds it, once per version and epoch of u's
// keys (keyfilter.go). A version has a filter of one kind at a time.
func (c *denseCache) keyFilter(src *roaring.Bitmap, u *Users, kind Kind, n int) *KeyFilter {
	s := c.slot.Load()
	if s == nil || s.src != src {
		return nil
	}
	if f := s.keys.Load(); f != nil {
		if f.usable(u, kind) {
			return f
		}
		if f.kind == kind && s.keys.CompareAndSwap(f, nil) {
			s.keysErn.again() // stale: the members' keys changed
		}
		return nil
	}
	asked := s.keysErn.add(n)
	if asked < denseMinAsked {
		return nil
	}
	card := s.card.Load()
	if card == 0 {
		card = src.GetCardinality() + 1
		s.card.Store(card)
	}
	if uint64(asked) < (card-1)*keyAskPerMember || !s.keysErn.claim() {
		return nil
	}
	f := u.buildKeyFilter(c.budget, src, kind, card-1)
	if f == nil {
		s.keysErn.again() // over budget
		return nil
	}
	s.keys.Store(f)
	return f
}

// bytes returns the size of the current version's view and key filter, or 0.
func (c *denseCache) bytes() int64 {
	var n int64
	if s := c.slot.Load(); s != nil {
		if v := s.view.Load(); v != nil {
			n += v.Bytes()
		}
		if f := s.keys.Load(); f != nil {
			n += f.Bytes()
		}
	}
	return n
}

// build makes the view of src (size bytes) if the budget has room.
func (b *DenseBudget) build(src *roaring.Bitmap, size int64) *Dense {
	if !b.take(size) {
		return nil
	}
	v := &Dense{words: make([]uint64, size/8)}
	track(b, v, size)
	src.WriteDenseTo(v.words)
	return v
}

// take reserves size bytes of the budget, reporting whether there was room.
func (b *DenseBudget) take(size int64) bool {
	if b.used.Add(size) > b.limit {
		b.used.Add(-size)
		return false
	}
	return true
}

// track counts obj, size bytes that b.take reserved, as a view until the
// collector frees it; then its bytes return to the budget.
func track[T any](b *DenseBudget, obj *T, size int64) {
	b.views.Add(1)
	runtime.AddCleanup(obj, func(n int64) {
		b.used.Add(-n)
		b.views.Add(-1)
	}, size)
}
