package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestUsersChurnKeepsMemoryLevel attaches, moves, detaches and deletes identifiers of
// many sizes in a loop over a steady population, and checks that the arena, the
// regions and the live heap stay level: detached entries are reused or compacted away
// (before, the arena kept every key ever attached and grew with every round).
func TestUsersChurnKeepsMemoryLevel(t *testing.T) {
	u := NewUsers(Options{})
	defer u.Close()
	r := rand.New(rand.NewPCG(1, 2))
	const pop = 5000
	ids := make([]UserID, pop)
	for i := range ids {
		ids[i] = u.Create()
	}
	key := func(round, i int) []byte {
		// Sizes from 1 to 600 bytes, changing every round, so exact-size reuse alone
		// would not keep up: compaction must.
		n := 1 + (i*7+round*13)%600
		return bytes.Repeat([]byte{byte('a' + i%26)}, n)[:n:n]
	}
	held := make([][]byte, pop)
	var heap0 uint64
	var reserved0, arena0 int64
	rounds := 60
	if testing.Short() {
		rounds = 30
	}
	for round := range rounds {
		for i := range pop {
			if held[i] != nil {
				if id, ok := u.Detach(KindAlias, held[i]); !ok || id != ids[i] {
					t.Fatalf("round %d: detach %d = %d %v", round, i, id, ok)
				}
			}
			k := append(key(round, i), fmt.Sprintf("-%d", i)...)
			if err := u.Attach(ids[i], KindAlias, k); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			held[i] = k
		}
		// Move some keys between users, and replace some users.
		for j := range pop / 10 {
			a, b := r.IntN(pop), r.IntN(pop)
			if a == b || held[a] == nil || held[b] != nil {
				continue
			}
			u.Detach(KindAlias, held[a])
			if err := u.Attach(ids[b], KindAlias, held[a]); err != nil {
				t.Fatal(err)
			}
			held[a], held[b] = nil, held[a]
			_ = j
		}
		for range pop / 50 {
			i := r.IntN(pop)
			u.Delete(ids[i])
			ids[i], held[i] = u.Create(), nil
		}
		u.Publish()
		if round == 5 {
			m := u.Memory()
			reserved0, arena0 = m.Reserved, m.ArenaBytes
			heap0 = liveHeap()
		}
	}
	if err := u.Check(); err != nil {
		t.Fatal(err)
	}
	m := u.Memory()
	heap1 := liveHeap()
	t.Logf("after round 5: reserved %d, arena %d, heap %d; after %d rounds: reserved %d, arena %d (free %d), heap %d",
		reserved0, arena0, heap0, rounds, m.Reserved, m.ArenaBytes, m.ArenaFree, heap1)
	// Live keys average ~300 bytes: ~1.5 MB. Level means within a factor of
	// the early rounds (compaction keeps the arena under about twice the live bytes).
	if m.ArenaBytes > 3*arena0 || m.Reserved > 3*reserved0 {
		t.Errorf("memory grew with churn: arena %d -> %d, reserved %d -> %d", arena0, m.ArenaBytes, reserved0, m.Reserved)
	}
	if heap1 > heap0+8<<20 {
		t.Errorf("live heap grew with churn: %d -> %d", heap0, heap1)
	}
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// unseededHash is the table hash before seeding: xxhash64 of the key XOR the kind salt.
func unseededHash(kind Kind, key []byte) uint64 { return xxhash.Sum64(key) ^ kindSalt[kind] }

// floodKeys returns n external ids whose unseeded hash has its top topZero bits zero:
// what an attacker computes offline to send every id to the first buckets.
func floodKeys(n, topZero int) [][]byte {
	var keys [][]byte
	for i := 0; len(keys) < n; i++ {
		k := strconv.AppendInt([]byte("flood-"), int64(i), 10)
		if bits.LeadingZeros64(unseededHash(KindExternal, k)) >= topZero {
			keys = append(keys, k)
		}
	}
	return keys
}

// probeBuckets returns how many buckets a lookup of (kind, key) visits.
func probeBuckets(u *Users, kind Kind, key []byte) int {
	b := u.mu.st.buckets
	h := u.hashKey(kind, key)
	i := homeBucket(h, len(b))
	for n := 1; n <= len(b); n++ {
		for s := range bucketSlots {
			if b[i].ref[s] > refTomb && b[i].tag[s] == tagOf(h) {
				if _, k, kb := decodeEntry(u.mu.st.arena, b[i].ref[s]); k == kind && bytes.Equal(kb, key) {
					return n
				}
			}
		}
		if i++; i == len(b) {
			i = 0
		}
	}
	return len(b) + 1
}

// TestHashFloodingSeeded builds identifiers that all share the top 10 bits of the old,
// unseeded hash, so that with it they would all sit in the first 1/1024 of the table and
// lookups would probe long runs (quadratic inserts under the writer lock). With the
// seeded hash they spread like random keys.
func TestHashFloodingSeeded(t *testing.T) {
	const n, topZero = 3000, 10
	keys := floodKeys(n, topZero)
	u := NewUsers(Options{})
	defer u.Close()
	for _, k := range keys {
		if err := u.Attach(u.Create(), KindExternal, k); err != nil {
			t.Fatal(err)
		}
	}
	nb := len(u.mu.st.buckets)
	// The keys are adversarial for the unseeded hash: all in the first buckets.
	homes := map[int]bool{}
	for _, k := range keys {
		homes[homeBucket(unseededHash(KindExternal, k), nb)] = true
	}
	if len(homes) > nb>>topZero+1 {
		t.Fatalf("test keys are not adversarial: %d home buckets of %d under the unseeded hash", len(homes), nb)
	}
	total, worst := 0, 0
	for _, k := range keys {
		p := probeBuckets(u, KindExternal, k)
		total += p
		worst = max(worst, p)
	}
	mean := float64(total) / n
	t.Logf("%d keys in %d buckets: mean %.2f buckets probed, worst %d (unseeded: %d home buckets)", n, nb, mean, worst, len(homes))
	// Random keys at this load probe ~1.3 buckets on average and a few dozen at worst;
	// clustered in one bucket of 772 they probe ~300 on average (a run of 600 buckets).
	if mean > 2 || worst > 60 {
		t.Fatalf("keys cluster: mean %.2f, worst %d buckets probed", mean, worst)
	}
	// Another Users gets another seed.
	if v := NewUsers(Options{}); v.Seed() == u.Seed() {
		t.Fatalf("two tables share the seed %#x", u.Seed())
	}
}

// TestReserveAndFull fills a small arena: Reserve and Attach report ErrFull before
// changing anything, and detaching makes room again through compaction.
func TestReserveAndFull(t *testing.T) {
	u := NewUsers(Options{MaxArenaBytes: 1 << 20})
	defer u.Close()
	var keys [][]byte
	for i := 0; ; i++ {
		k := fmt.Appendf(nil, "%0100d", i)
		if err := u.Reserve(1, 1, len(k)); err != nil {
			if !errors.Is(err, ErrFull) {
				t.Fatal(err)
			}
			break
		}
		id := u.Create()
		if err := u.Attach(id, KindExternal, k); err != nil {
			t.Fatalf("attach %d after a successful Reserve: %v", i, err)
		}
		keys = append(keys, k)
	}
	id := u.Create()
	big := bytes.Repeat([]byte("x"), 4000)
	if err := u.Attach(id, KindDevice, big); !errors.Is(err, ErrFull) {
		t.Fatalf("Attach to a full arena: %v", err)
	}
	if err := u.Check(); err != nil {
		t.Fatalf("a failed Attach left a trace: %v", err)
	}
	if u.Resolve(KindDevice, big) != NoUser || u.Anonymous(id) == false {
		t.Fatal("a failed Attach is visible")
	}
	for _, k := range keys[:len(keys)/2] {
		u.Detach(KindExternal, k)
	}
	if err := u.Reserve(0, 1, len(big)); err != nil {
		t.Fatalf("Reserve after detaching half: %v", err)
	}
	if err := u.Attach(id, KindDevice, big); err != nil {
		t.Fatal(err)
	}
	u.Publish()
	if err := u.Check(); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys[len(keys)/2:] {
		if u.Resolve(KindExternal, k) == NoUser {
			t.Fatalf("%s lost by compaction", k)
		}
	}
}

// TestImageRoundTrip loads a Users from its image and compares it with the model,
// then checks that each array's bounds are enforced.
func TestImageRoundTrip(t *testing.T) {
	u, m, r := modelUsers(t, 3)
	defer u.Close()
	h, arrays := u.Image()
	v, err := loadImage(h, arrays)
	if err != nil {
		t.Fatal(err)
	}
	loadedWorks(t, v, m, r)
	v.Close()

	// Streaming checks accept the image in odd-sized pieces.
	for a := ArrayTable; a <= ArrayPool; a++ {
		c := NewArrayCheck(h, a)
		b := arrays[a-1]
		for len(b) > 0 {
			k := min(len(b), 1+r.IntN(999))
			c.Write(b[:k])
			b = b[k:]
		}
		if err := c.Close(); err != nil {
			t.Fatalf("%v in pieces: %v", a, err)
		}
	}
	// Broken bounds are refused.
	bad := func(name string, h ImageHeader, mutate func(arrays *[NumArrays][]byte)) {
		t.Helper()
		var cp [NumArrays][]byte
		for i := range arrays {
			cp[i] = bytes.Clone(arrays[i])
		}
		mutate(&cp)
		if v, err := loadImage(h, cp); !errors.Is(err, ErrImage) {
			if v != nil {
				v.Close()
			}
			t.Errorf("%s: load = %v, want ErrImage", name, err)
		}
	}
	bad("zero seed", ImageHeader{}, func(*[NumArrays][]byte) {})
	h2 := h
	h2.Live++
	bad("live count", h2, func(*[NumArrays][]byte) {})
	bad("table ref past the arena", h, func(a *[NumArrays][]byte) {
		tab := a[ArrayTable-1]
		for i := bucketBytes + 4*bucketSlots; i < len(tab); i += 4 {
			if v := tab[i]; v > 1 || tab[i+1] > 0 {
				tab[i], tab[i+1], tab[i+2], tab[i+3] = 0xff, 0xff, 0xff, 0x7f
				return
			}
		}
	})
	bad("arena entry of a user past next", h, func(a *[NumArrays][]byte) {
		ar := a[ArrayArena-1]
		for off := arenaStart; off < len(ar); {
			_, kind, _, size, _ := parseEntry(ar, uint64(off))
			if kind != 0 {
				ar[off], ar[off+1], ar[off+2], ar[off+3] = 0xfe, 0xff, 0xff, 0xff
				return
			}
			off += size
		}
	})
	bad("unknown flag", h, func(a *[NumArrays][]byte) { a[ArrayFlags-1][0] |= 0x80 })
	bad("unknown table version", h, func(a *[NumArrays][]byte) { a[ArrayTable-1][bucketBytes-1] = 9 })
	bad("damaged table header", h, func(a *[NumArrays][]byte) { a[ArrayTable-1][3]++ })
	bad("live slot without a tag", h, func(a *[NumArrays][]byte) {
		tab := a[ArrayTable-1]
		for i := bucketBytes; i < len(tab); i += 4 {
			if i%bucketBytes < 4*bucketSlots && tab[i]&1 != 0 {
				tab[i], tab[i+1], tab[i+2], tab[i+3] = 0, 0, 0, 0
				return
			}
		}
	})
	h3 := h
	h3.ArenaUsed++
	bad("odd arena", h3, func(*[NumArrays][]byte) {})
}

// modelUsers returns a Users and its model after 20,000 random operations from
// seed, and the random source to go on with.
func modelUsers(t *testing.T, seed uint64) (*Users, *usersModel, *rand.Rand) {
	u := NewUsers(Options{})
	m := newUsersModel()
	r := rand.New(rand.NewPCG(seed, seed+1))
	for range 20_000 {
		modelOpKey(t, u, m, byte(r.IntN(8)), byte(r.IntN(256)), byte(r.IntN(256)), r.IntN(3000), 3)
	}
	u.Publish()
	return u, m, r
}

// loadImage loads the image (h, arrays) into a new Users.
func loadImage(h ImageHeader, arrays [NumArrays][]byte) (*Users, error) {
	return LoadUsers(h, Options{}, func(a Array, dst []byte, got func([]byte)) error {
		if len(arrays[a-1]) != len(dst) {
			return fmt.Errorf("%v: %d bytes, want %d", a, len(arrays[a-1]), len(dst))
		}
		// In parts of an odd size, so that elements and entries straddle them.
		for off := 0; off < len(dst); {
			n := copy(dst[off:min(off+4093, len(dst))], arrays[a-1][off:])
			got(dst[off : off+n])
			off += n
		}
		return nil
	})
}

// loadedWorks checks a Users loaded from an image against the model it was built
// with, and that it goes on working: more operations against the model.
func loadedWorks(t *testing.T, v *Users, m *usersModel, r *rand.Rand) {
	t.Helper()
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	if err := m.compare(v); err != nil {
		t.Fatal(err)
	}
	for range 5000 {
		modelOpKey(t, v, m, byte(r.IntN(8)), byte(r.IntN(256)), byte(r.IntN(256)), r.IntN(3000), 3)
	}
	v.Publish()
	if err := m.compare(v); err != nil {
		t.Fatal(err)
	}
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
}

// v1Table returns u's table in the layout of table version 1 (five slots of a full
// 64-bit hash and a ref a bucket, no header line), as snapshots held it before the
// eight-slot buckets, and its line count for the image header.
func v1Table(u *Users) ([]byte, uint64) {
	nb := int(float64(u.live)/0.7/v1Slots) + 1
	tab := make([]byte, nb*bucketBytes)
	for bi := range u.mu.st.buckets {
		bk := &u.mu.st.buckets[bi]
		for s := range bucketSlots {
			r := bk.ref[s]
			if r <= refTomb {
				continue
			}
			_, kind, key := decodeEntry(u.mu.st.arena, r)
			h := u.hashKey(kind, key)
		probe:
			for i := homeBucket(h, nb); ; i = (i + 1) % nb {
				line := tab[i*bucketBytes:]
				for s := range v1Slots {
					if binary.LittleEndian.Uint32(line[40+4*s:]) == 0 {
						binary.LittleEndian.PutUint64(line[8*s:], h)
						binary.LittleEndian.PutUint32(line[40+4*s:], uint32(r))
						break probe
					}
				}
			}
		}
	}
	return tab, uint64(nb)
}

// TestImageTableV1 loads an image whose table has the version 1 layout, as snapshots
// written before the eight-slot buckets hold it: the table is rebuilt from the arena,
// every key resolves, and the next image is version 2.
func TestImageTableV1(t *testing.T) {
	u, m, r := modelUsers(t, 5)
	defer u.Close()
	h, arrays := u.Image()
	if tableVersionOf(arrays[ArrayTable-1]) != tableVersion {
		t.Fatalf("image table is not version %d", tableVersion)
	}
	arrays[ArrayTable-1], h.Buckets = v1Table(u)
	h.Tombs = 0
	if tableVersionOf(arrays[ArrayTable-1]) != 1 {
		t.Fatal("v1 table not recognised")
	}
	c := NewArrayCheck(h, ArrayTable)
	c.Write(arrays[ArrayTable-1])
	if err := c.Close(); err != nil {
		t.Fatalf("check of a version 1 table: %v", err)
	}
	v, err := loadImage(h, arrays)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	loadedWorks(t, v, m, r)
	if _, arrays := v.Image(); tableVersionOf(arrays[ArrayTable-1]) != tableVersion {
		t.Fatalf("image after a version 1 load is not version %d", tableVersion)
	}
}

// TestUsersConcurrentGrowthAndCompaction runs readers (ResolveMany, Identifiers,
// Anonymous, Memory) while the writer grows every array and churns keys so that the
// arena is compacted several times; every region swapped out is released (unmapped)
// at once, so a reader that still used one would fault. Run it with -race (and with
// -tags cohortd_heapmem, where the race detector sees every access).
func TestUsersConcurrentGrowthAndCompaction(t *testing.T) {
	n := 60_000
	if testing.Short() {
		n = 20_000
	}
	u := NewUsers(Options{})
	defer u.Close()
	key := func(i, gen int) []byte { return fmt.Appendf(nil, "user-%09d-%s", i, strings.Repeat("g", gen)) }
	var stable atomic.Int64 // keys key(i, 0) for i < stable are attached to user i for good
	var done atomic.Bool
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 9))
			keys := make([][]byte, 64)
			want := make([]int, 64)
			dst := make([]UserID, 0, 64)
			for !done.Load() {
				hi := int(stable.Load())
				if hi == 0 {
					runtime.Gosched()
					continue
				}
				for j := range keys {
					want[j] = rng.IntN(hi)
					keys[j] = key(want[j], 0)
				}
				dst = u.ResolveMany(KindExternal, keys, dst[:0])
				for j, id := range dst {
					if id != UserID(want[j]) {
						t.Errorf("key %d resolved to %d", want[j], id)
						return
					}
				}
				found := false
				u.Identifiers(UserID(want[0]), func(k Kind, b []byte) {
					if k == KindExternal && bytes.Equal(b, keys[0]) {
						found = true
					}
				})
				if !found {
					t.Errorf("user %d lost its external id", want[0])
					return
				}
				_ = u.Anonymous(UserID(want[0]))
				_ = u.Memory()
			}
		})
	}
	compactions := 0
	for i := range n {
		id := u.Create()
		if err := u.Attach(id, KindExternal, key(i, 0)); err != nil {
			t.Fatal(err)
		}
		stable.Store(int64(i + 1))
		// Churn device ids of growing sizes on the same users: garbage that exact-size
		// reuse cannot take back, so the arena compacts.
		before := u.compactions
		dev := key(i, i/20+1)
		if err := u.Attach(id, KindDevice, dev); err != nil {
			t.Fatal(err)
		}
		if i >= 100 {
			u.Detach(KindDevice, key(i-100, (i-100)/20+1))
		}
		compactions += u.compactions - before
		if i%1000 == 0 {
			u.Publish()
		}
	}
	done.Store(true)
	wg.Wait()
	u.Publish()
	if err := u.Check(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d compactions", compactions)
	if compactions < 2 {
		t.Errorf("only %d compactions: the test does not exercise them", compactions)
	}
}

// TestRegionsOnHugePages checks that a big table is mapped outside the heap on
// 2 MiB-aligned regions, and logs how much of the process is on huge pages.
func TestRegionsOnHugePages(t *testing.T) {
	if !mapRegions {
		t.Skip("heap regions in this build")
	}
	u := NewUsers(Options{Capacity: 500_000})
	defer u.Close()
	st := &u.mu.st
	if !st.tabR.mmap || len(st.tabR.b)%hugePage != 0 {
		t.Fatalf("table region: mapped %v, %d bytes", st.tabR.mmap, len(st.tabR.b))
	}
	if p := uintptr(unsafePointer(st.tabR.b)); p%hugePage != 0 {
		t.Fatalf("table region at %#x is not 2 MiB aligned", p)
	}
	for i := range st.tabR.b {
		st.tabR.b[i] = 0 // touch every page
	}
	t.Logf("table %d MiB; %s", len(st.tabR.b)>>20, anonHugePages())
}

// anonHugePages returns the AnonHugePages line of /proc/self/smaps_rollup.
func anonHugePages() string {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return "smaps_rollup: " + err.Error()
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "AnonHugePages:") {
			return strings.Join(strings.Fields(line), " ")
		}
	}
	return "no AnonHugePages line"
}

// TestArrayCheckCutAtPadding feeds an arena of odd-sized entries (each with a
// padding byte) to the streaming check in pieces of every size up to 300, so
// that some Write ends right after a key and before its padding: the check
// once sliced past its buffer there and panicked, which the snapshot's
// read-back check (1 MiB pieces) could hit on any arena with odd entries.
func TestArrayCheckCutAtPadding(t *testing.T) {
	u := NewUsers(Options{Seed: 7})
	defer u.Close()
	for i := range 3000 {
		if err := u.Attach(u.Create(), KindDevice, fmt.Appendf(nil, "%0*d", 30+i%7, i)); err != nil {
			t.Fatal(err)
		}
	}
	u.Publish()
	h, arrays := u.Image()
	for piece := 1; piece <= 300; piece++ {
		c := NewArrayCheck(h, ArrayArena)
		for b := arrays[ArrayArena-1]; len(b) > 0; b = b[min(piece, len(b)):] {
			c.Write(b[:min(piece, len(b))])
		}
		if err := c.Close(); err != nil {
			t.Fatalf("pieces of %d: %v", piece, err)
		}
	}
}
