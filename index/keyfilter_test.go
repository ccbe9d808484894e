package index

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
)

// filterFixture is a Users of n users with external ids ext(i), and a
// cohort of a seeded tenth of them.
func filterFixture(t testing.TB, n int, opts Options) (*Users, *Members, func(i int) []byte) {
	ext := func(i int) []byte { return fmt.Appendf(nil, "user-%014d", i) }
	u := NewUsers(opts)
	t.Cleanup(u.Close)
	first := u.CreateMany(n)
	for i := range n {
		if err := u.Attach(first+UserID(i), KindExternal, ext(i)); err != nil {
			t.Fatal(err)
		}
	}
	u.Publish()
	m := NewMembers(opts.DenseBudget)
	add := roaring.New()
	r := rand.New(rand.NewPCG(3, 4))
	for i := range n {
		if r.IntN(10) == 0 {
			add.Add(uint32(first) + uint32(i))
		}
	}
	m.Apply(add, roaring.New())
	return u, m, ext
}

// earnFilter is how many lookups earn bm its key filter.
func earnFilter(bm *roaring.Bitmap) int {
	return max(denseMinAsked, int(bm.GetCardinality())*keyAskPerMember)
}

func TestKeyFilterEarnedAndExact(t *testing.T) {
	const n = 50_000
	b := NewDenseBudget(1 << 30)
	u, m, ext := filterFixture(t, n, Options{DenseBudget: b})
	pub := m.Load()
	need := earnFilter(pub)
	if f := m.KeyFilter(pub, u, KindExternal, need-1); f != nil {
		t.Fatalf("filter built after %d lookups, want it after %d", need-1, need)
	}
	f := m.KeyFilter(pub, u, KindExternal, 1)
	if f == nil {
		t.Fatalf("no filter after %d lookups", need)
	}
	if again := m.KeyFilter(pub, u, KindExternal, 1); again != f {
		t.Fatal("a second filter of the same version")
	}
	if f.keys != int(pub.GetCardinality()) || m.DenseBytes() != f.Bytes() || b.Used() != f.Bytes() {
		t.Fatalf("filter of %d keys for %d members; %d bytes, members report %d, budget %d",
			f.keys, pub.GetCardinality(), f.Bytes(), m.DenseBytes(), b.Used())
	}
	if f.Bytes() > int64(pub.GetCardinality())*keyFilterBits/8+64 {
		t.Fatalf("filter of %d members takes %d bytes", pub.GetCardinality(), f.Bytes())
	}

	// Every user, and unknown ids, in batches of odd sizes: a member always
	// resolves to itself; a non-member resolves to itself or to NoUser.
	var keys [][]byte
	for i := range n + 2_000 {
		keys = append(keys, ext(i))
	}
	keys = append(keys, []byte("device-is-not-external"), nil)
	skipped, nonMembers := 0, 0
	for off := 0; off < len(keys); {
		end := min(off+1+off%1_300, len(keys))
		got := u.ResolveManyIn(f, KindExternal, keys[off:end], []UserID{42})
		if got[0] != 42 || len(got) != 1+end-off {
			t.Fatalf("ResolveManyIn did not append: %v", got[:1])
		}
		for j, id := range got[1:] {
			want := u.Resolve(KindExternal, keys[off+j])
			member := want != NoUser && pub.Contains(uint32(want))
			switch {
			case member && id != want:
				t.Fatalf("member %q resolved to %d, want %d", keys[off+j], id, want)
			case !member && id != want && id != NoUser:
				t.Fatalf("non-member %q resolved to %d, want %d or NoUser", keys[off+j], id, want)
			}
			if !member {
				nonMembers++
				if id == NoUser {
					skipped++
				}
			}
		}
		off = end
	}
	// ~0.25% false positives at 16 bits a member; 2% would be a broken filter.
	if passed := nonMembers - skipped; passed*50 > nonMembers {
		t.Fatalf("%d of %d non-members passed the filter", passed, nonMembers)
	}
	// The filter of another kind is not used for it.
	if m.KeyFilter(pub, u, KindDevice, 1<<20) != nil {
		t.Fatal("a version has filters of two kinds")
	}
	if got := u.ResolveManyIn(f, KindDevice, [][]byte{ext(1)}, nil); got[0] != NoUser {
		t.Fatalf("device lookup with an external-id filter = %d", got[0])
	}

	// A change publishes a version without a filter.
	m.Apply(roaring.BitmapOf(uint32(u.Resolve(KindExternal, ext(0)))), roaring.New())
	if m.KeyFilter(pub, u, KindExternal, 1<<20) != nil {
		t.Fatal("the previous version's filter is handed out after a change")
	}
	if m.KeyFilter(m.Load(), u, KindExternal, 1<<20) == nil {
		t.Fatal("the new version did not earn its filter")
	}
}

// TestKeyFilterKeyGained: a member that gains an external id after the
// build must be found; the stale filter is dropped and earned again.
func TestKeyFilterKeyGained(t *testing.T) {
	u := NewUsers(Options{})
	defer u.Close()
	anon := u.Create() // a member known only by its device
	if err := u.Attach(anon, KindDevice, []byte("dev-1")); err != nil {
		t.Fatal(err)
	}
	known := u.Create()
	if err := u.Attach(known, KindExternal, []byte("known")); err != nil {
		t.Fatal(err)
	}
	u.Publish()
	m := NewMembers(NewDenseBudget(1 << 20))
	m.Apply(roaring.BitmapOf(uint32(anon), uint32(known)), roaring.New())
	pub := m.Load()
	f := m.KeyFilter(pub, u, KindExternal, 1<<20)
	if f == nil {
		t.Fatal("no filter")
	}
	if got := u.ResolveManyIn(f, KindExternal, [][]byte{[]byte("late")}, nil); got[0] != NoUser {
		t.Fatalf("unknown id resolved to %d", got[0])
	}

	// A user created after the build gains keys: nothing a filter covers.
	fresh := u.Create()
	if err := u.Attach(fresh, KindExternal, []byte("fresh")); err != nil {
		t.Fatal(err)
	}
	u.Publish()
	if !f.usable(u, KindExternal) {
		t.Fatal("a new user's key made the filter stale")
	}

	// A known member gains a device id: a filter of external ids is
	// still exact.
	if err := u.Attach(known, KindDevice, []byte("dev-2")); err != nil {
		t.Fatal(err)
	}
	if !f.usable(u, KindExternal) {
		t.Fatal("a device id made the filter of external ids stale")
	}

	// The member is identified later.
	if err := u.Attach(anon, KindExternal, []byte("late")); err != nil {
		t.Fatal(err)
	}
	if got := u.ResolveManyIn(f, KindExternal, [][]byte{[]byte("late")}, nil); got[0] != anon {
		t.Fatalf("member identified after the build resolved to %d, want %d", got[0], anon)
	}
	if m.KeyFilter(pub, u, KindExternal, 1) != nil {
		t.Fatal("a stale filter is handed out")
	}
	g := m.KeyFilter(pub, u, KindExternal, 1<<20)
	if g == nil || g == f {
		t.Fatal("the filter was not built again")
	}
	if got := u.ResolveManyIn(g, KindExternal, [][]byte{[]byte("late"), []byte("fresh")}, nil); got[0] != anon || got[1] != NoUser {
		t.Fatalf("rebuilt filter: late -> %d (want %d), fresh -> %d (want NoUser)", got[0], anon, got[1])
	}
	// A filter of another Users is never used.
	other := NewUsers(Options{})
	defer other.Close()
	if g.usable(other, KindExternal) {
		t.Fatal("a filter is usable for another Users")
	}
}

func TestKeyFilterBudget(t *testing.T) {
	u, m, _ := filterFixture(t, 20_000, Options{DenseBudget: NewDenseBudget(100)})
	pub := m.Load()
	for range 5 {
		if m.KeyFilter(pub, u, KindExternal, 1<<20) != nil {
			t.Fatal("a filter over budget was built")
		}
	}
	if b := m.dense.budget; b.Used() != 0 || b.Views() != 0 {
		t.Fatalf("refused filter left used=%d views=%d", b.Used(), b.Views())
	}
	n := NewMembers(nil)
	n.Apply(pub, roaring.New())
	if n.KeyFilter(n.Load(), u, KindExternal, 1<<20) != nil {
		t.Fatal("a filter without a budget")
	}
}

// TestKeyFilterConcurrent resolves through filters while the writer
// identifies members later (also while a filter is being built), adds users
// and publishes versions: a member identified before a batch starts is
// never missed.
func TestKeyFilterConcurrent(t *testing.T) {
	u := NewUsers(Options{})
	defer u.Close()
	const n = 20_000
	first := u.CreateMany(n)
	for i := 0; i < n; i += 2 { // odd users are anonymous until identified
		if err := u.Attach(first+UserID(i), KindExternal, fmt.Appendf(nil, "u%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	u.Publish()
	all := roaring.New()
	all.AddRange(uint64(first), uint64(first)+n)
	m := NewMembers(NewDenseBudget(1 << 30))
	m.Apply(all, roaring.New())          // everyone is a member
	identified := make([]atomic.Bool, n) // set once Attach has returned
	for i := 0; i < n; i += 2 {
		identified[i].Store(true)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 3 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 5))
			keys := make([][]byte, 256)
			idx := make([]int, 256)
			for {
				select {
				case <-stop:
					return
				default:
				}
				for j := range keys {
					idx[j] = r.IntN(n)
					keys[j] = fmt.Appendf(keys[j][:0], "u%d", idx[j])
				}
				known := make([]bool, len(idx))
				for j, i := range idx {
					known[j] = identified[i].Load() // before the filter is asked for
				}
				pub := m.Load()
				got := u.ResolveManyIn(m.KeyFilter(pub, u, KindExternal, len(keys)), KindExternal, keys, nil)
				for j, id := range got {
					if known[j] && id != first+UserID(idx[j]) {
						t.Errorf("member u%d resolved to %d", idx[j], id)
						return
					}
				}
			}
		})
	}
	for i := 1; i < n; i += 2 {
		if err := u.Attach(first+UserID(i), KindExternal, fmt.Appendf(nil, "u%d", i)); err != nil {
			t.Fatal(err)
		}
		identified[i].Store(true)
		if i%500 == 1 {
			u.Create()
			u.Publish()
			m.Apply(roaring.New(), roaring.New())
		}
	}
	close(stop)
	wg.Wait()
}

// BenchmarkMembership answers "is this external id in the cohort" for random
// existing users against a cohort of a tenth of them, as SMISMEMBER does:
// resolve, then test the dense view. impl=resolve resolves every id;
// impl=filter resolves only the ids the cohort's key filter lets through.
// cpu-ns/id is the thread's CPU time per id.
func BenchmarkMembership(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("users_%d", n), func(b *testing.B) {
			f := getResolveFixture(b, n)
			budget := NewDenseBudget(1 << 30)
			m := NewMembers(budget)
			add := roaring.New()
			r := rand.New(rand.NewPCG(5, 6))
			for i := range n {
				if r.IntN(10) == 0 {
					add.Add(uint32(i))
				}
			}
			m.Apply(add, roaring.New())
			pub := m.Load()
			d := m.Dense(pub, 1<<30)
			kf := m.KeyFilter(pub, f.users, KindExternal, 1<<30)
			if d == nil || kf == nil {
				b.Fatal("no dense view or key filter")
			}
			nb := len(f.queries) / benchBatch
			for _, impl := range []string{"resolve", "filter"} {
				b.Run("impl="+impl, func(b *testing.B) {
					var filter *KeyFilter
					if impl == "filter" {
						filter = kf
					}
					dst := make([]UserID, 0, benchBatch)
					i, in := 0, 0
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
					cpu := threadCPUNanos()
					for b.Loop() {
						q := f.queries[(i%nb)*benchBatch:][:benchBatch]
						dst = f.users.ResolveManyIn(filter, KindExternal, q, dst[:0])
						for _, id := range dst {
							if d.Contains(uint32(id)) {
								in++
							}
						}
						i++
					}
					ids := float64(i) * benchBatch
					if in == 0 || float64(in) > ids/5 {
						b.Fatalf("%d of %.0f ids are members, want about a tenth", in, ids)
					}
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/ids, "ns/id")
					b.ReportMetric(float64(threadCPUNanos()-cpu)/ids, "cpu-ns/id")
					b.ReportMetric(0, "ns/op")
				})
			}
		})
	}
}
