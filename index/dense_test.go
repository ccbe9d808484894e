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
