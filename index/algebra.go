package index

import (
	"slices"

	"github.com/RoaringBitmap/roaring/v2"
)

// Op is the operator of an Expr node.
type Op uint8

// Expression operators of a segment (docs/API.md §4): a set, its complement
// relative to the live users, intersection, union, and every live user.
const (
	OpSet Op = iota
	OpNot
	OpAnd
	OpOr
	OpAll
)

// Expr is a boolean expression over member sets, evaluated relative to a
// set of live users. Set leaves hold published bitmaps (never mutated);
// every result is a new bitmap owned by the caller.
type Expr struct {
	Op    Op
	Set   *roaring.Bitmap // OpSet
	Dense *Dense          // OpSet, optional: Set's dense view, which Contains prefers
	Kids  []*Expr         // OpNot: one; OpAnd, OpOr: at least one
}

var emptySet = roaring.New()

// Contains reports whether x (a live user) is in the expression, with a
// few bitmap probes per clause and nothing materialised.
func (e *Expr) Contains(x uint32) bool {
	switch e.Op {
	case OpSet:
		if e.Dense != nil {
			return e.Dense.Contains(x)
		}
		return e.Set.Contains(x)
	case OpNot:
		return !e.Kids[0].Contains(x)
	case OpAnd:
		for _, k := range e.Kids {
			if !k.Contains(x) {
				return false
			}
		}
		return true
	case OpOr:
		for _, k := range e.Kids {
			if k.Contains(x) {
				return true
			}
		}
		return false
	default: // OpAll
		return true
	}
}

// Count returns the number of live users in the expression. A single set,
// all users, and two-set intersections and unions are counted without
// building the result (roaring's AndCardinality / OrCardinality); a
// negated result is counted as |live| − |live ∩ S| instead of being built.
func (e *Expr) Count(live *roaring.Bitmap) uint64 {
	switch {
	case e.Op == OpSet:
		return e.Set.GetCardinality()
	case e.Op == OpAll:
		return live.GetCardinality()
	case (e.Op == OpAnd || e.Op == OpOr) && len(e.Kids) == 2 && e.Kids[0].Op == OpSet && e.Kids[1].Op == OpSet:
		if e.Op == OpAnd {
			return e.Kids[0].Set.AndCardinality(e.Kids[1].Set)
		}
		return e.Kids[0].Set.OrCardinality(e.Kids[1].Set)
	}
	if e.Op == OpAnd || e.Op == OpOr {
		// The top level is counted, not built: ∩ins \ ∪outs costs one
		// materialised operation less (countMinus).
		// Operands of up to eight kids stay on the stack.
		var pb, nb [8]*roaring.Bitmap
		var po, no [8]bool
		pos, posOwned, negs, negOwned := e.operands(pb[:0], po[:0], nb[:0], no[:0])
		if e.Op == OpAnd && len(pos) > 0 {
			smallestFirst(pos, posOwned)
			return countMinus(pos, posOwned, negs)
		}
		if e.Op == OpOr && len(negs) == 0 && len(pos) >= 2 {
			return countUnion(pos)
		}
		if e.Op == OpOr && len(negs) > 0 {
			// live \ (∩negs \ ∪pos); ∩negs \ ∪pos holds live users only.
			smallestFirst(negs, negOwned)
			return live.GetCardinality() - countMinus(negs, negOwned, pos)
		}
	}
	set, neg, _ := e.eval()
	if neg {
		return live.GetCardinality() - live.AndCardinality(set)
	}
	return set.GetCardinality()
}

// operands evaluates the kids of an and/or node into positive sets and
// sets whose complement (relative to live) is meant, appending to the
// slices given.
func (e *Expr) operands(pos []*roaring.Bitmap, posOwned []bool, negs []*roaring.Bitmap, negOwned []bool) ([]*roaring.Bitmap, []bool, []*roaring.Bitmap, []bool) {
	for _, k := range e.Kids {
		s, ng, own := k.eval()
		if ng {
			negs, negOwned = append(negs, s), append(negOwned, own)
		} else {
			pos, posOwned = append(pos, s), append(posOwned, own)
		}
	}
	return pos, posOwned, negs, negOwned
}

// countMinus returns |∩ins \ ∪outs| (len(ins) ≥ 1, ins[0] the smallest)
// materialising as little as roaring's public API allows: the last
// operation is a cardinality (|acc| − |acc ∩ out|, or AndCardinality for
// two sets), never a built result. Everything before it is built as
// intersectMinus builds it. (A count of several operands in one pass over
// the containers, which would build nothing, needs an API roaring lacks:
// see BenchmarkCount.)
func countMinus(ins []*roaring.Bitmap, insOwned []bool, outs []*roaring.Bitmap) uint64 {
	switch {
	case len(outs) == 0 && len(ins) == 1:
		return ins[0].GetCardinality()
	case len(outs) == 0 && len(ins) == 2:
		return ins[0].AndCardinality(ins[1])
	case len(outs) == 0:
		acc := intersectMinus(ins[:len(ins)-1], insOwned[:len(ins)-1], nil)
		return acc.AndCardinality(ins[len(ins)-1])
	case len(ins) == 1 && len(outs) == 1:
		return ins[0].GetCardinality() - ins[0].AndCardinality(outs[0])
	}
	acc := intersectMinus(ins, insOwned, outs[:len(outs)-1])
	return acc.GetCardinality() - acc.AndCardinality(outs[len(outs)-1])
}

// countUnion returns |∪sets| (len(sets) ≥ 2), building every union but
// the last (newUnion) and counting the last; without run containers
// FastOr over all of them, which is the cheaper there.
func countUnion(sets []*roaring.Bitmap) uint64 {
	last := len(sets) - 1
	switch {
	case last == 1:
		return sets[0].OrCardinality(sets[1])
	case !hasRuns(sets):
		return roaring.FastOr(sets...).GetCardinality()
	}
	return newUnion(sets[:last]).OrCardinality(sets[last])
}

// Bitmap materialises the expression as a new bitmap owned by the caller.
// Member sets hold live users only, so live is needed just for negations.
func (e *Expr) Bitmap(live *roaring.Bitmap) *roaring.Bitmap {
	set, neg, owned := e.eval()
	switch {
	case neg:
		return roaring.AndNot(live, set)
	case !owned:
		// A private bitmap sharing the published containers copy-on-write:
		// Or only reads its operands (never Clone a published bitmap).
		return roaring.Or(set, emptySet)
	}
	return set
}

// eval returns a set S and a flag: when neg is false the result is S, when
// true it is live \ S. Keeping negations symbolic turns "A and not B" into
// one AndNot instead of a complement over every live user. owned tells
// whether S is a new bitmap eval may mutate; otherwise it is a published
// operand, which is only ever read: the first operation on operands is a
// non-in-place one (roaring.And, AndNot, FastOr), which builds its result
// containers directly — an in-place And on a copy-on-write copy would
// first clone every 8 KiB bitmap container it touches.
func (e *Expr) eval() (set *roaring.Bitmap, neg, owned bool) {
	switch e.Op {
	case OpSet:
		return e.Set, false, false
	case OpAll:
		return emptySet, true, false
	case OpNot:
		s, ng, own := e.Kids[0].eval()
		return s, !ng, own
	}
	var pos, negs []*roaring.Bitmap
	var posOwned, negOwned []bool
	for _, k := range e.Kids {
		s, ng, own := k.eval()
		if ng {
			negs, negOwned = append(negs, s), append(negOwned, own)
		} else {
			pos, posOwned = append(pos, s), append(posOwned, own)
		}
	}
	if e.Op == OpAnd {
		// ∩pos \ ∪negs; with no positive operand: live \ ∪negs.
		if len(pos) == 0 {
			u, own := union(negs, negOwned)
			return u, true, own
		}
		smallestFirst(pos, posOwned)
		return intersectMinus(pos, posOwned, negs), false, true
	}
	// OpOr: ∪pos; with negatives, live \ (∩negs \ ∪pos).
	if len(negs) == 0 {
		u, own := union(pos, posOwned)
		return u, false, own
	}
	smallestFirst(negs, negOwned)
	return intersectMinus(negs, negOwned, pos), true, true
}

// intersectMinus returns a new bitmap ∩ins \ ∪outs (len(ins) ≥ 1). ins[0]
// should be the smallest: every later operation shrinks from it.
func intersectMinus(ins []*roaring.Bitmap, insOwned []bool, outs []*roaring.Bitmap) *roaring.Bitmap {
	var acc *roaring.Bitmap
	switch {
	case insOwned[0]:
		acc, ins = ins[0], ins[1:]
	case len(ins) >= 2:
		acc, ins = roaring.And(ins[0], ins[1]), ins[2:]
	case len(outs) >= 1:
		acc, outs = roaring.AndNot(ins[0], outs[0]), outs[1:]
	default:
		return roaring.Or(ins[0], emptySet)
	}
	for _, s := range ins {
		acc.And(s)
	}
	for _, s := range outs {
		acc.AndNot(s)
	}
	return acc
}

// union returns ∪sets and whether the result is a new bitmap: one set is
// passed through as is (FastOr of a single bitmap would Clone it).
func union(sets []*roaring.Bitmap, owned []bool) (*roaring.Bitmap, bool) {
	if len(sets) == 1 {
		return sets[0], owned[0]
	}
	return newUnion(sets), true
}

// newUnion returns a new bitmap ∪sets (len(sets) ≥ 2). With run containers
// in any set it is built pairwise, which keeps runs as runs: FastOr's lazy
// union makes every container it touches an 8 KiB bitmap (12 MB built and
// 4.1 ms for a count of three clustered cohorts in 100M users, 0.64 ms
// pairwise: BenchmarkSegmentCount or_or). Without runs FastOr is the
// cheaper: 25 against 40 µs for three uniform cohorts of 100k in 1M users.
func newUnion(sets []*roaring.Bitmap) *roaring.Bitmap {
	if !hasRuns(sets) {
		return roaring.FastOr(sets...)
	}
	acc := roaring.Or(sets[0], sets[1])
	for _, s := range sets[2:] {
		acc.Or(s)
	}
	return acc
}

// hasRuns reports whether any of sets holds a run container.
func hasRuns(sets []*roaring.Bitmap) bool {
	return slices.ContainsFunc(sets, (*roaring.Bitmap).HasRunCompression)
}

// smallestFirst moves the smallest set (and its ownership flag) to the
// front: intersections shrink fastest from it.
func smallestFirst(sets []*roaring.Bitmap, owned []bool) {
	m := 0
	for i, s := range sets {
		if s.GetCardinality() < sets[m].GetCardinality() {
			m = i
		}
	}
	sets[0], sets[m] = sets[m], sets[0]
	owned[0], owned[m] = owned[m], owned[0]
}

// Page appends to dst, in increasing order, up to limit live members of the
// expression that are at least start, and returns dst. Nothing is
// materialised: it walks a candidate set (a superset of the result) from
// start and keeps the candidates the expression contains, so a page costs
// about its size when the result is dense in its candidates. Candidates:
// a set's members; for "and", the candidates of its smallest positive
// operand; for "or", the union of its operands' candidates (merged on the
// fly); live users for "not" and "all".
func (e *Expr) Page(live *roaring.Bitmap, start uint32, limit int, dst []uint32) []uint32 {
	if limit <= 0 {
		return dst
	}
	it := e.candidates(live)
	it.AdvanceIfNeeded(start)
	var last uint32
	first := true
	for it.HasNext() && limit > 0 {
		x := it.Next()
		if !first && x == last {
			continue // the union iterator may repeat a value
		}
		first, last = false, x
		if live.Contains(x) && e.Contains(x) {
			dst = append(dst, x)
			limit--
		}
	}
	return dst
}

// candidates returns an iterator over a superset of the expression's
// members.
func (e *Expr) candidates(live *roaring.Bitmap) roaring.IntPeekable {
	switch e.Op {
	case OpSet:
		return e.Set.Iterator()
	case OpAnd:
		var best *Expr
		for _, k := range e.Kids {
			if k.Op == OpSet && (best == nil || k.Set.GetCardinality() < best.Set.GetCardinality()) {
				best = k
			}
		}
		if best != nil {
			return best.Set.Iterator()
		}
		for _, k := range e.Kids {
			if k.Op == OpAnd || k.Op == OpOr {
				return k.candidates(live)
			}
		}
	case OpOr:
		its := make([]roaring.IntPeekable, 0, len(e.Kids))
		for _, k := range e.Kids {
			if k.Op == OpNot || k.Op == OpAll {
				return live.Iterator()
			}
			its = append(its, k.candidates(live))
		}
		if len(its) == 1 {
			return its[0]
		}
		return &unionIterator{its: its}
	}
	return live.Iterator()
}

// unionIterator merges sorted iterators; a value held by several is
// returned once per holder (Page skips repeats).
type unionIterator struct {
	its []roaring.IntPeekable
}

func (u *unionIterator) HasNext() bool {
	for _, it := range u.its {
		if it.HasNext() {
			return true
		}
	}
	return false
}

// min returns the iterator with the smallest next value.
func (u *unionIterator) min() roaring.IntPeekable {
	var best roaring.IntPeekable
	for _, it := range u.its {
		if it.HasNext() && (best == nil || it.PeekNext() < best.PeekNext()) {
			best = it
		}
	}
	return best
}

func (u *unionIterator) Next() uint32     { return u.min().Next() }
func (u *unionIterator) PeekNext() uint32 { return u.min().PeekNext() }

func (u *unionIterator) AdvanceIfNeeded(minval uint32) {
	for _, it := range u.its {
		it.AdvanceIfNeeded(minval)
	}
}
