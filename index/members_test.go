package index

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
)

func TestMembersPublishedVersionsNeverChange(t *testing.T) {
	m := NewMembers(nil)
	r := rand.New(rand.NewPCG(1, 2))
	var versions []*roaring.Bitmap
	var copies [][]uint32
	for i := 0; i < 200; i++ {
		add, rem := roaring.New(), roaring.New()
		for k := 0; k < 50; k++ {
			add.Add(uint32(r.IntN(300_000)))
			rem.Add(uint32(r.IntN(300_000)))
		}
		rem.AndNot(add)
		a, d := m.Diff(add, rem)
		m.Apply(a, d)
		if !m.Consistent() {
			t.Fatal("published differs from master")
		}
		versions = append(versions, m.Load())
		copies = append(copies, m.Load().ToArray())
	}
	for i, v := range versions {
		got := v.ToArray()
		if len(got) != len(copies[i]) {
			t.Fatalf("version %d changed after later writes: %d members, was %d", i, len(got), len(copies[i]))
		}
		for j := range got {
			if got[j] != copies[i][j] {
				t.Fatalf("version %d changed at %d", i, j)
			}
		}
	}
}

func TestMembersDiffAndMerge(t *testing.T) {
	m := NewMembers(nil)
	m.Reset(roaring.BitmapOf(1, 2, 3))
	a, d := m.DiffTo(roaring.BitmapOf(2, 3, 4))
	if !a.Equals(roaring.BitmapOf(4)) || !d.Equals(roaring.BitmapOf(1)) {
		t.Fatalf("DiffTo: +%v -%v", a, d)
	}
	m.Apply(a, d)
	if !m.MergeAndRemove([][2]uint32{{2, 10}, {7, 11}}, roaring.BitmapOf(2, 7)) {
		t.Fatal("merge reported no change")
	}
	if want := roaring.BitmapOf(3, 4, 10); !m.Load().Equals(want) {
		t.Fatalf("after merge %v, want %v", m.Load(), want)
	}
	if m.MergeAndRemove(nil, roaring.BitmapOf(99)) {
		t.Fatal("no-op merge reported a change")
	}
}

// TestExprAgainstNaive evaluates random expressions over random sets with
// Contains, Count and Bitmap and compares them with a naive evaluation.
func TestExprAgainstNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const universe = 5000
	live := roaring.New()
	for i := 0; i < universe; i++ {
		if r.IntN(10) != 0 {
			live.Add(uint32(i))
		}
	}
	sets := make([]*roaring.Bitmap, 4)
	for i := range sets {
		s := roaring.New()
		for k := 0; k < 1+r.IntN(3000); k++ {
			s.Add(uint32(r.IntN(universe)))
		}
		s.And(live) // member sets hold live users only
		sets[i] = publishedCopy(s)
	}
	var gen func(depth int) *Expr
	gen = func(depth int) *Expr {
		switch k := r.IntN(6); {
		case k <= 1 || depth > 3:
			return &Expr{Op: OpSet, Set: sets[r.IntN(len(sets))]}
		case k == 2:
			return &Expr{Op: OpNot, Kids: []*Expr{gen(depth + 1)}}
		case k == 5 && r.IntN(3) == 0:
			return &Expr{Op: OpAll}
		default:
			op := OpAnd
			if k == 4 {
				op = OpOr
			}
			x := &Expr{Op: op}
			for n := 1 + r.IntN(3); n > 0; n-- {
				x.Kids = append(x.Kids, gen(depth+1))
			}
			return x
		}
	}
	var naive func(x *Expr, v uint32) bool
	naive = func(x *Expr, v uint32) bool {
		switch x.Op {
		case OpSet:
			return x.Set.Contains(v)
		case OpNot:
			return !naive(x.Kids[0], v)
		case OpAll:
			return true
		case OpAnd:
			for _, k := range x.Kids {
				if !naive(k, v) {
					return false
				}
			}
			return true
		}
		for _, k := range x.Kids {
			if naive(k, v) {
				return true
			}
		}
		return false
	}
	for i := 0; i < 500; i++ {
		x := gen(0)
		want := roaring.New()
		it := live.Iterator()
		for it.HasNext() {
			v := it.Next()
			if naive(x, v) {
				want.Add(v)
			}
			if x.Contains(v) != naive(x, v) {
				t.Fatalf("expr %d: Contains(%d) disagrees", i, v)
			}
		}
		if got := x.Bitmap(live); !got.Equals(want) {
			t.Fatalf("expr %d: Bitmap has %d members, naive %d", i, got.GetCardinality(), want.GetCardinality())
		}
		if got := x.Count(live); got != want.GetCardinality() {
			t.Fatalf("expr %d: Count %d, naive %d", i, got, want.GetCardinality())
		}
	}
	for i, s := range sets {
		if err := s.Validate(); err != nil {
			t.Fatalf("set %d damaged by evaluation: %v", i, err)
		}
	}
}

// publishedCopy returns s as Members publishes it (copy-on-write flags set).
func publishedCopy(s *roaring.Bitmap) *roaring.Bitmap {
	m := NewMembers(nil)
	m.Reset(s)
	return m.Load()
}

// TestExprConcurrentWithWriter evaluates expressions on published sets
// while the writer keeps changing them (run with -race).
func TestExprConcurrentWithWriter(t *testing.T) {
	a, b := NewMembers(nil), NewMembers(nil)
	live := roaring.New()
	live.AddRange(0, 100_000)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				x := &Expr{Op: OpAnd, Kids: []*Expr{{Op: OpSet, Set: a.Load()}, {Op: OpNot, Kids: []*Expr{{Op: OpSet, Set: b.Load()}}}}}
				_ = x.Count(live)
				_ = x.Contains(77)
				y := &Expr{Op: OpOr, Kids: []*Expr{{Op: OpSet, Set: a.Load()}, {Op: OpSet, Set: b.Load()}, {Op: OpSet, Set: a.Load()}}}
				_ = y.Bitmap(live)
			}
		}()
	}
	r := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 300; i++ {
		for _, m := range []*Members{a, b} {
			add := roaring.New()
			for k := 0; k < 200; k++ {
				add.Add(uint32(r.IntN(100_000)))
			}
			rem := roaring.New()
			rem.AddRange(uint64(r.IntN(90_000)), uint64(r.IntN(90_000)+5_000))
			rem.AndNot(add)
			m.Apply(m.Diff(add, rem))
		}
	}
	close(stop)
	wg.Wait()
}
