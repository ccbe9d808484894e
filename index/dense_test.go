package index

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
)

// earn is how many lookups earn bm its view.
func earn(bm *roaring.Bitmap) int {
	return max(denseMinAsked, int(bm.DenseSize())*64/denseAskPerBit)
}

func TestDenseViewEarnedAndExact(t *testing.T) {
	b := NewDenseBudget(1 << 30)
	m := NewMembers(b)
	add := roaring.New()
	r := rand.New(rand.NewPCG(1, 2))
	for range 20_000 {
		add.Add(uint32(r.IntN(600_000)))
	}
	add.AddRange(70_000, 140_000) // a run container too
	m.Apply(add, roaring.New())
	pub := m.Load()

	need := earn(pub)
	if d := m.Dense(pub, need-1); d != nil {
		t.Fatalf("view built after %d lookups, want it after %d", need-1, need)
	}
	d := m.Dense(pub, 1)
	if d == nil {
		t.Fatalf("no view after %d lookups", need)
	}
	if again := m.Dense(pub, 1); again != d {
		t.Fatal("a second view of the same version")
	}
	for x := uint32(0); x <= pub.Maximum()+200; x++ {
		if d.Contains(x) != pub.Contains(x) {
			t.Fatalf("Contains(%d) = %v, bitmap says %v", x, d.Contains(x), pub.Contains(x))
		}
	}
	if d.Contains(uint32(NoUser)) {
		t.Fatal("NoUser is in the view")
	}
	if b.Used() != d.Bytes() || m.DenseBytes() != d.Bytes() || b.Views() != 1 {
		t.Fatalf("budget used %d (%d views), members report %d, view is %d bytes", b.Used(), b.Views(), m.DenseBytes(), d.Bytes())
	}

	// A change publishes a version without a view; the old version's
	// view is no longer handed out, even to a reader that still holds it.
	m.Apply(roaring.BitmapOf(7), roaring.New())
	if m.Dense(pub, need) != nil {
		t.Fatal("the previous version's view is handed out after a change")
	}
	if m.DenseBytes() != 0 {
		t.Fatalf("DenseBytes after a change = %d, want 0", m.DenseBytes())
	}
	pub2 := m.Load()
	if m.Dense(pub2, need-1) != nil {
		t.Fatal("the new version has a view it has not earned")
	}
	d2 := m.Dense(pub2, 1)
	if d2 == nil || !d2.Contains(7) || d.Contains(7) {
		t.Fatal("the new version's view does not hold the change")
	}
}

func TestDenseViewLive(t *testing.T) {
	b := NewDenseBudget(1 << 30)
	u := NewUsers(Options{DenseBudget: b})
	defer u.Close()
	first := u.CreateMany(50_000)
	for id := first; id < first+50_000; id += 3 {
		u.Delete(id)
	}
	u.Publish()
	live := u.Live()
	d := u.LiveDense(live, earn(live))
	if d == nil {
		t.Fatal("no view of the live users")
	}
	for x := uint32(0); x < 50_100; x++ {
		if d.Contains(x) != live.Contains(x) {
			t.Fatalf("Contains(%d) = %v, live says %v", x, d.Contains(x), live.Contains(x))
		}
	}
	if u.LiveDenseBytes() != d.Bytes() {
		t.Fatalf("LiveDenseBytes = %d, want %d", u.LiveDenseBytes(), d.Bytes())
	}
	u.Create()
	u.Publish()
	if u.LiveDense(live, 1<<20) != nil || u.LiveDenseBytes() != 0 {
		t.Fatal("a view survived Publish")
	}
}

func TestDenseViewBudget(t *testing.T) {
	// A view larger than the budget is never built, however often asked.
	b := NewDenseBudget(1000)
	m := NewMembers(b)
	m.Apply(roaring.BitmapOf(100_000), roaring.New()) // a 12.5 KB view
	pub := m.Load()
	for range 10 {
		if m.Dense(pub, 1<<20) != nil {
			t.Fatal("a view over budget was built")
		}
	}
	if b.Used() != 0 || b.Views() != 0 {
		t.Fatalf("refused view left used=%d views=%d", b.Used(), b.Views())
	}
	// A nil budget builds nothing.
	n := NewMembers(nil)
	n.Apply(roaring.BitmapOf(5), roaring.New())
	if n.Dense(n.Load(), 1<<20) != nil {
		t.Fatal("a view without a budget")
	}
	// A negative or zero limit builds nothing either.
	z := NewMembers(NewDenseBudget(0))
	z.Apply(roaring.BitmapOf(5), roaring.New())
	if z.Dense(z.Load(), 1<<20) != nil {
		t.Fatal("a view with a zero budget")
	}
}

func TestDenseViewBytesReturnWhenFreed(t *testing.T) {
	b := NewDenseBudget(1 << 30)
	m := NewMembers(b)
	m.Apply(roaring.BitmapOf(1<<20), roaring.New())
	if m.Dense(m.Load(), 1<<20) == nil {
		t.Fatal("no view")
	}
	if b.Used() == 0 {
		t.Fatal("a view took no budget")
	}
	m.Apply(roaring.BitmapOf(3), roaring.New()) // drops it
	deadline := time.Now().Add(10 * time.Second)
	for b.Used() != 0 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if b.Used() != 0 || b.Views() != 0 {
		t.Fatalf("after the view was freed: used=%d views=%d", b.Used(), b.Views())
	}
}

// TestDenseViewConcurrent asks for a view from many readers while the
// writer publishes versions: each version is built at most once, and every
// view handed out answers as its version does.
func TestDenseViewConcurrent(t *testing.T) {
	b := NewDenseBudget(1 << 30)
	m := NewMembers(b)
	m.Apply(roaring.BitmapOf(1, 50_000), roaring.New())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var mu sync.Mutex
	seen := map[*roaring.Bitmap]*Dense{}
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for {
				select {
				case <-stop:
					return
				default:
				}
				pub := m.Load()
				d := m.Dense(pub, 1<<20)
				if d == nil {
					continue
				}
				x := uint32(r.IntN(60_000))
				if d.Contains(x) != pub.Contains(x) {
					t.Errorf("view disagrees with its version at %d", x)
					return
				}
				mu.Lock()
				if prev, ok := seen[pub]; ok && prev != d {
					t.Errorf("two views of one version")
				}
				seen[pub] = d
				mu.Unlock()
			}
		})
	}
	for i := range 200 {
		m.Apply(roaring.BitmapOf(uint32(i*97%60_000)), roaring.BitmapOf(uint32(i*31%60_000)))
		time.Sleep(50 * time.Microsecond)
	}
	close(stop)
	wg.Wait()
}

// TestCountDenseExact compares CountAndNot and CountOr with roaring's own
// operations over sets of different lengths (views end at each set's
// maximum), for every arity the fused loops handle and more.
func TestCountDenseExact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	randomSet := func() *roaring.Bitmap {
		bm := roaring.New()
		universe := 1 + r.IntN(300_000)
		switch r.IntN(4) {
		case 0: // empty
		case 1: // a run
			lo := r.IntN(universe)
			bm.AddRange(uint64(lo), uint64(lo+r.IntN(universe-lo)+1))
		default:
			for range r.IntN(universe / 4) {
				bm.Add(uint32(r.IntN(universe)))
			}
		}
		return bm
	}
	view := func(bm *roaring.Bitmap) *Dense {
		d := &Dense{words: make([]uint64, bm.DenseSize())}
		bm.WriteDenseTo(d.words)
		return d
	}
	for round := range 300 {
		nin, nout := 1+round%3, (round/3)%3
		if round%50 == 49 {
			nin, nout = 4, 3 // past the fused loops
		}
		var in, out []*Dense
		want := roaring.New()
		var union *roaring.Bitmap
		for i := range nin {
			bm := randomSet()
			in = append(in, view(bm))
			if i == 0 {
				want = bm.Clone()
				union = bm.Clone()
			} else {
				want.And(bm)
				union.Or(bm)
			}
		}
		for range nout {
			bm := randomSet()
			out = append(out, view(bm))
			want.AndNot(bm)
		}
		if got := CountAndNot(in, out); got != want.GetCardinality() {
			t.Fatalf("round %d: CountAndNot of %d and %d views = %d, roaring says %d", round, nin, nout, got, want.GetCardinality())
		}
		if got := CountOr(in); got != union.GetCardinality() {
			t.Fatalf("round %d: CountOr of %d views = %d, roaring says %d", round, nin, got, union.GetCardinality())
		}
	}
}

// TestCountViewEarnedForBitmapShapedSets checks which sets counts ask
// views of, and that DenseCountsToEarn counts of a version build one.
func TestCountViewEarnedForBitmapShapedSets(t *testing.T) {
	b := NewDenseBudget(1 << 30)
	r := rand.New(rand.NewPCG(5, 6))
	uniform, clustered, sparse := NewMembers(b), NewMembers(b), NewMembers(b)
	add := roaring.New()
	for range 100_000 {
		add.Add(uint32(r.IntN(1_000_000))) // ~10%: bitmap containers
	}
	uniform.Apply(add, roaring.New())
	runs := roaring.New()
	for blk := range 100 {
		runs.AddRange(uint64(blk*10_000), uint64(blk*10_000+1_000))
	}
	runs.RunOptimize()
	clustered.Apply(runs, roaring.New())
	few := roaring.New()
	for range 10_000 {
		few.Add(uint32(r.IntN(1_000_000))) // ~1%: array containers
	}
	sparse.Apply(few, roaring.New())

	pub := uniform.Load()
	for i := 1; i < DenseCountsToEarn; i++ {
		if uniform.CountView(pub) != nil {
			t.Fatalf("a view after %d counts, want it after %d", i, DenseCountsToEarn)
		}
	}
	d := uniform.CountView(pub)
	if d == nil {
		t.Fatalf("no view after %d counts of a set in bitmap containers", DenseCountsToEarn)
	}
	if got, want := CountAndNot([]*Dense{d}, nil), pub.GetCardinality(); got != want {
		t.Fatalf("count over the view %d, set has %d", got, want)
	}
	for name, m := range map[string]*Members{"clustered": clustered, "sparse": sparse} {
		for range 10 * DenseCountsToEarn {
			if m.CountView(m.Load()) != nil {
				t.Fatalf("a %s set got a count view: roaring counts it for less", name)
			}
		}
	}
	// A view the set earned by lookups is not used for counts of a set
	// that is not bitmap-shaped.
	cp := clustered.Load()
	if clustered.Dense(cp, earn(cp)) == nil {
		t.Fatal("no lookup view for the clustered set")
	}
	if clustered.CountView(cp) != nil {
		t.Fatal("a count used the clustered set's lookup view")
	}
}
