package index

import (
	"math"
	"math/bits"
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
	shape   atomic.Uint32 // countable or not (countShaped); 0 until a count asks
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

// # Counts
//
// A count of "A and B and not C" over cohorts whose members are spread
// over the whole universe reads every container of each set. Roaring's
// public API counts two sets without building anything (AndCardinality),
// but any operation on three builds its intermediate: at 10M-member
// uniform cohorts in 100M users, building A∩B (~1M members, in array
// containers) is most of a 12–13 ms count. The same sets as dense views
// are counted in one pass that builds nothing, |a & b &^ c| word by word:
// 1.8 ms there, the memory traffic of reading three 12.5 MB bitsets
// (BenchmarkCountBound). A view costs a bit per id of the universe, what
// bitmap containers cost anyway, so counts ask views only of sets held
// mostly in bitmap containers (countShaped); a clustered cohort (runs) or
// a sparse one (arrays) is cheaper for roaring to count as it is. Counts
// earn views as lookups do (view), DenseCountsToEarn counts a version.

const (
	// DenseCountsToEarn is how many counts asking for a set's view at
	// one version build it. A build writes the view once (WriteDenseTo,
	// a few ms at 100M users, less than a count that builds through
	// roaring), so two counts pay for it.
	DenseCountsToEarn = 2

	shapeCountable   = 1
	shapeUncountable = 2
)

// countView returns the view of src for a count, or nil; src is the
// version the caller loaded. It is view, asked for as many lookups as
// make DenseCountsToEarn counts build it, for countable sets only.
func (c *denseCache) countView(src *roaring.Bitmap) *Dense {
	s := c.slot.Load()
	if s == nil || s.src != src || !s.countShaped() {
		return nil
	}
	bits := int64(src.DenseSize()) * 64
	return c.view(src, int(bits/denseAskPerBit/DenseCountsToEarn)+1)
}

// countShaped reports whether s's version is held mostly in bitmap
// containers, its roaring size at least half its dense view's: then a pass
// over the view reads at most twice the bytes roaring's own count would.
func (s *denseSlot) countShaped() bool {
	switch s.shape.Load() {
	case shapeCountable:
		return true
	case shapeUncountable:
		return false
	}
	ok := s.src.GetSizeInBytes()*2 >= s.src.DenseSize()*8
	if ok {
		s.shape.Store(shapeCountable)
	} else {
		s.shape.Store(shapeUncountable)
	}
	return ok
}

// CountAndNot returns how many ids are in every view of in and in no view
// of out; in must not be empty. Views of member sets hold live users only,
// so this is |in[0] ∩ … \ (out[0] ∪ …)| relative to the live users too.
//
// Three views, the usual count ("A and B and not C"), go through one loop
// that reads each word once: the general fold (countBlocks) costs 2.2–3.1
// ms against 1.8 for the fused loop at 10M of 100M users
// (BenchmarkCountBound, impl=count_views before this).
func CountAndNot(in, out []*Dense) uint64 {
	n := len(in[0].words)
	for _, d := range in[1:] {
		n = min(n, len(d.words))
	}
	m := n // where every view has words: the fused loops' stretch
	for _, d := range out {
		m = min(m, len(d.words))
	}
	var total int
	switch {
	case len(in) == 2 && len(out) == 1:
		total = countAnd2Not1(in[0].words[:m], in[1].words[:m], out[0].words[:m])
	case len(in) == 3 && len(out) == 0:
		total = countAnd3(in[0].words[:m], in[1].words[:m], in[2].words[:m])
	case len(in) == 1 && len(out) == 2:
		total = countAnd1Not2(in[0].words[:m], out[0].words[:m], out[1].words[:m])
	default:
		m = 0
	}
	return uint64(total + countBlocks(in, out, false, m, n))
}

// CountOr returns how many ids are in any view of in.
func CountOr(in []*Dense) uint64 {
	n, m := 0, math.MaxInt
	for _, d := range in {
		n, m = max(n, len(d.words)), min(m, len(d.words))
	}
	var total int
	if len(in) == 3 {
		total = countOr3(in[0].words[:m], in[1].words[:m], in[2].words[:m])
	} else {
		m = 0
	}
	return uint64(total + countBlocks(in, nil, true, m, n))
}

func countAnd2Not1(a, b, c []uint64) int {
	b, c = b[:len(a)], c[:len(a)] // lets the compiler drop the bounds checks
	n := 0
	for i, x := range a {
		n += bits.OnesCount64(x & b[i] &^ c[i])
	}
	return n
}

func countAnd3(a, b, c []uint64) int {
	b, c = b[:len(a)], c[:len(a)]
	n := 0
	for i, x := range a {
		n += bits.OnesCount64(x & b[i] & c[i])
	}
	return n
}

func countAnd1Not2(a, b, c []uint64) int {
	b, c = b[:len(a)], c[:len(a)]
	n := 0
	for i, x := range a {
		n += bits.OnesCount64(x &^ (b[i] | c[i]))
	}
	return n
}

func countOr3(a, b, c []uint64) int {
	b, c = b[:len(a)], c[:len(a)]
	n := 0
	for i, x := range a {
		n += bits.OnesCount64(x | b[i] | c[i])
	}
	return n
}

// countBlock is how many words countBlocks folds at a time: the fold stays
// in L1 while each view's stretch streams in.
const countBlock = 256

// countBlocks counts words [from, to) of any number of views of any
// lengths, a block at a time: the union of in when or is set, else the
// intersection of in minus the union of out. Words past the end of a view
// are zero; the caller bounds to by the shortest of in for an intersection.
func countBlocks(in, out []*Dense, or bool, from, to int) int {
	var acc [countBlock]uint64
	total := 0
	for base := from; base < to; base += countBlock {
		end := min(base+countBlock, to)
		a := acc[:end-base]
		rest := in
		if or {
			clear(a)
		} else {
			copy(a, in[0].words[base:end])
			rest = in[1:]
		}
		for _, d := range rest {
			if base >= len(d.words) {
				continue // a shorter view (union only): no id of it this far
			}
			w := d.words[base:min(end, len(d.words))]
			a := a[:len(w)] // lets the compiler drop the bounds checks
			if or {
				for i := range a {
					a[i] |= w[i]
				}
			} else {
				for i := range a {
					a[i] &= w[i]
				}
			}
		}
		for _, d := range out {
			if base >= len(d.words) {
				continue
			}
			w := d.words[base:min(end, len(d.words))]
			a := a[:len(w)]
			for i := range a {
				a[i] &^= w[i]
			}
		}
		for _, x := range a {
			total += bits.OnesCount64(x)
		}
	}
	return total
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
