package index

import (
	"github.com/RoaringBitmap/roaring/v2"
)

// Op is the operator of an Expr node.
type Op uint8

// Expression operators of a segment (SPEC §4): a set, its complement
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
	Op   Op
	Set  *roaring.Bitmap // OpSet
	Kids []*Expr         // OpNot: one; OpAnd, OpOr: at least one
}

var emptySet = roaring.New()

// Contains reports whether x (a live user) is in the expression, with a
// few bitmap probes per clause and nothing materialised.
func (e *Expr) Contains(x uint32) bool {
	switch e.Op {
	case OpSet:
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
// building the result (roaring's AndCardinality / OrCardinality).
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
	return e.Bitmap(live).GetCardinality()
}

// Bitmap materialises the expression as a new bitmap owned by the caller.
// Member sets hold live users only, so live is needed just for negations.
func (e *Expr) Bitmap(live *roaring.Bitmap) *roaring.Bitmap {
	set, neg := e.eval()
	if neg {
		return roaring.AndNot(live, set)
	}
	return set
}

// eval returns a private set S and a flag: when neg is false the result is
// S, when true it is live \ S. Keeping negations symbolic turns "A and not
// B" into one AndNot instead of a complement over every live user.
func (e *Expr) eval() (set *roaring.Bitmap, neg bool) {
	switch e.Op {
	case OpSet:
		// A private copy that shares the containers copy-on-write: Or only
		// reads its operands (their shared flags are already set).
		return roaring.Or(e.Set, emptySet), false
	case OpAll:
		return roaring.New(), true
	case OpNot:
		s, ng := e.Kids[0].eval()
		return s, !ng
	}
	var pos, negs []*roaring.Bitmap
	for _, k := range e.Kids {
		s, ng := k.eval()
		if ng {
			negs = append(negs, s)
		} else {
			pos = append(pos, s)
		}
	}
	if e.Op == OpAnd {
		// ∩pos \ ∪negs; with no positive operand: live \ ∪negs.
		if len(pos) == 0 {
			return roaring.FastOr(negs...), true
		}
		acc := smallestFirst(pos)
		for _, p := range pos[1:] {
			acc.And(p)
		}
		for _, s := range negs {
			acc.AndNot(s)
		}
		return acc, false
	}
	// OpOr: ∪pos; with negatives, live \ (∩negs \ ∪pos).
	if len(negs) == 0 {
		return roaring.FastOr(pos...), false
	}
	acc := negs[0]
	for _, s := range negs[1:] {
		acc.And(s)
	}
	for _, p := range pos {
		acc.AndNot(p)
	}
	return acc, true
}

// smallestFirst moves the smallest set to the front (intersections shrink
// fastest from it) and returns it.
func smallestFirst(sets []*roaring.Bitmap) *roaring.Bitmap {
	min := 0
	for i, s := range sets {
		if s.GetCardinality() < sets[min].GetCardinality() {
			min = i
		}
	}
	sets[0], sets[min] = sets[min], sets[0]
	return sets[0]
}
