package index

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/xxh3"
)

func TestAliasKey(t *testing.T) {
	for _, tc := range []struct{ name, label string }{
		{"email", "a@example.com"},
		{"x", "y"},
		{"email", ""},
		{"", "label"},
		{"name with spaces", "ünïcödé"},
	} {
		k := AliasKey([]byte("prefix"), []byte(tc.name), []byte(tc.label))
		if !bytes.HasPrefix(k, []byte("prefix")) {
			t.Fatalf("AliasKey dropped dst: %q", k)
		}
		n, l := SplitAlias(k[len("prefix"):])
		if string(n) != tc.name || string(l) != tc.label {
			t.Errorf("SplitAlias(AliasKey(%q, %q)) = %q, %q", tc.name, tc.label, n, l)
		}
	}
	// Swapped pairs are different keys.
	if bytes.Equal(AliasKey(nil, []byte("a"), []byte("b")), AliasKey(nil, []byte("b"), []byte("a"))) {
		t.Error("AliasKey(a, b) == AliasKey(b, a)")
	}
	if n, l := SplitAlias([]byte("nonul")); string(n) != "nonul" || l != nil {
		t.Errorf("SplitAlias(no NUL) = %q, %q", n, l)
	}
}

func TestUsersBasics(t *testing.T) {
	u := NewUsers(Options{})
	if got := u.Resolve(KindExternal, []byte("nobody")); got != NoUser {
		t.Fatalf("Resolve on empty = %d", got)
	}
	if got := u.ResolveMany(KindExternal, [][]byte{[]byte("a"), []byte("b")}, nil); !slices.Equal(got, []UserID{NoUser, NoUser}) {
		t.Fatalf("ResolveMany on empty = %v", got)
	}
	a, b, c := u.Create(), u.Create(), u.Create()
	if a != 0 || b != 1 || c != 2 || u.NextID() != 3 || u.Len() != 3 {
		t.Fatalf("ids %d %d %d next %d len %d", a, b, c, u.NextID(), u.Len())
	}
	for _, id := range []UserID{a, b, c} {
		if !u.Anonymous(id) || u.Deleted(id) {
			t.Fatalf("new user %d: anonymous %v deleted %v", id, u.Anonymous(id), u.Deleted(id))
		}
	}
	if u.Live().GetCardinality() != 0 {
		t.Fatal("Live changed before Publish")
	}
	u.Publish()
	if got := u.Live().ToArray(); !slices.Equal(got, []uint32{0, 1, 2}) {
		t.Fatalf("Live = %v", got)
	}

	mustAttach := func(id UserID, kind Kind, key string) {
		t.Helper()
		if err := u.Attach(id, kind, []byte(key)); err != nil {
			t.Fatalf("Attach(%d, %v, %q): %v", id, kind, key, err)
		}
	}
	mustAttach(a, KindDevice, "dev-a")
	if !u.Anonymous(a) {
		t.Fatal("a device id made the user identified")
	}
	mustAttach(a, KindExternal, "user-a")
	if u.Anonymous(a) {
		t.Fatal("user with an external id is anonymous")
	}
	alias := AliasKey(nil, []byte("email"), []byte("a@example.com"))
	mustAttach(a, KindAlias, string(alias))
	mustAttach(a, KindDevice, "dev-a2")
	mustAttach(b, KindExternal, "user-b")
	// Same bytes, different kind: a different key.
	mustAttach(c, KindDevice, "user-b")

	// Errors.
	if err := u.Attach(c, KindExternal, []byte("user-a")); !errors.Is(err, ErrKeyHeld) {
		t.Fatalf("Attach held key: %v", err)
	}
	if err := u.Attach(a, KindExternal, []byte("user-a")); !errors.Is(err, ErrKeyHeld) {
		t.Fatalf("Attach own key again: %v", err)
	}
	if err := u.Attach(99, KindExternal, []byte("x")); !errors.Is(err, ErrNoUser) {
		t.Fatalf("Attach to unknown user: %v", err)
	}
	if err := u.Attach(a, KindExternal, nil); !errors.Is(err, ErrBadKey) {
		t.Fatalf("Attach empty key: %v", err)
	}
	if err := u.Attach(a, 7, []byte("x")); !errors.Is(err, ErrBadKey) {
		t.Fatalf("Attach bad kind: %v", err)
	}
	if err := u.Attach(a, KindExternal, make([]byte, MaxKeyLen+1)); !errors.Is(err, ErrBadKey) {
		t.Fatalf("Attach long key: %v", err)
	}
	long := bytes.Repeat([]byte("L"), 512)
	mustAttach(b, KindDevice, string(long))

	for _, tc := range []struct {
		kind Kind
		key  string
		want UserID
	}{
		{KindExternal, "user-a", a},
		{KindAlias, string(alias), a},
		{KindDevice, "dev-a", a},
		{KindDevice, "dev-a2", a},
		{KindExternal, "user-b", b},
		{KindDevice, "user-b", c},
		{KindDevice, string(long), b},
		{KindAlias, "user-a", NoUser},
		{KindExternal, "dev-a", NoUser},
	} {
		if got := u.Resolve(tc.kind, []byte(tc.key)); got != tc.want {
			t.Errorf("Resolve(%v, %q) = %d, want %d", tc.kind, tc.key, got, tc.want)
		}
	}

	var ids []string
	u.Identifiers(a, func(kind Kind, key []byte) { ids = append(ids, kind.String()+"="+string(key)) })
	want := []string{"external_id=user-a", "alias=" + string(alias), "device_id=dev-a", "device_id=dev-a2"}
	if !slices.Equal(ids, want) {
		t.Fatalf("Identifiers(a) = %q, want %q", ids, want)
	}

	// Detach.
	if id, ok := u.Detach(KindExternal, []byte("user-a")); id != a || !ok {
		t.Fatalf("Detach = %d %v", id, ok)
	}
	if _, ok := u.Detach(KindExternal, []byte("user-a")); ok {
		t.Fatal("Detach twice succeeded")
	}
	if u.Anonymous(a) {
		t.Fatal("a still has an alias, so it is not anonymous")
	}
	if id, _ := u.Detach(KindAlias, alias); id != a || !u.Anonymous(a) {
		t.Fatalf("after detaching every identifying key: anonymous %v", u.Anonymous(a))
	}
	// A freed key can be attached to another user.
	mustAttach(c, KindExternal, "user-a")
	if got := u.Resolve(KindExternal, []byte("user-a")); got != c {
		t.Fatalf("reattached key resolves to %d", got)
	}

	// Delete.
	if !u.Delete(a) || u.Delete(a) {
		t.Fatal("Delete(a) twice")
	}
	if !u.Deleted(a) || u.Anonymous(a) || u.Len() != 2 {
		t.Fatalf("after delete: deleted %v anonymous %v len %d", u.Deleted(a), u.Anonymous(a), u.Len())
	}
	if got := u.Resolve(KindDevice, []byte("dev-a2")); got != NoUser {
		t.Fatalf("deleted user's key resolves to %d", got)
	}
	if err := u.Attach(a, KindExternal, []byte("zombie")); !errors.Is(err, ErrNoUser) {
		t.Fatalf("Attach to deleted user: %v", err)
	}
	n := 0
	u.Identifiers(a, func(Kind, []byte) { n++ })
	if n != 0 {
		t.Fatalf("deleted user has %d identifiers", n)
	}
	if d := u.Create(); d != 3 {
		t.Fatalf("id after delete = %d, want 3 (no reuse)", d)
	}
	u.Publish()
	if got := u.Live().ToArray(); !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Fatalf("Live = %v", got)
	}
	if err := u.Check(); err != nil {
		t.Fatal(err)
	}
	if u.MemoryBytes() <= 0 {
		t.Fatal("MemoryBytes <= 0")
	}
}

func TestUsersCreateManyAndAt(t *testing.T) {
	u := NewUsers(Options{})
	if first := u.CreateMany(100_000); first != 0 || u.Len() != 100_000 {
		t.Fatalf("CreateMany: first %d len %d", first, u.Len())
	}
	if err := u.CreateAt(100_005); err != nil {
		t.Fatal(err)
	}
	if err := u.CreateAt(100_001); !errors.Is(err, ErrIDTaken) {
		t.Fatalf("CreateAt below next: %v", err)
	}
	for id := UserID(100_000); id < 100_005; id++ {
		if !u.Deleted(id) {
			t.Fatalf("skipped id %d not deleted", id)
		}
	}
	if u.Deleted(100_005) || !u.Anonymous(100_005) || u.NextID() != 100_006 || u.Len() != 100_001 {
		t.Fatal("CreateAt state wrong")
	}
	u.Publish()
	if u.Live().GetCardinality() != 100_001 {
		t.Fatalf("Live cardinality %d", u.Live().GetCardinality())
	}
	if err := u.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestUsersPublishedIsImmutable checks that writes after Publish leave the published
// bitmap alone (copy-on-write).
func TestUsersPublishedIsImmutable(t *testing.T) {
	u := NewUsers(Options{})
	u.CreateMany(200_000)
	u.Publish()
	snap := u.Live()
	u.Delete(5)
	u.Delete(150_000)
	u.CreateMany(10)
	if snap.GetCardinality() != 200_000 || !snap.Contains(5) || snap.Contains(200_001) {
		t.Fatal("published bitmap changed")
	}
	u.Publish()
	if l := u.Live(); l.GetCardinality() != 200_008 || l.Contains(5) {
		t.Fatalf("new bitmap cardinality %d", l.GetCardinality())
	}
}

// weakHashes force collisions: every key of one length (or one class) shares a hash.
var weakHashes = map[string]func([]byte) uint64{
	"len":   func(k []byte) uint64 { return uint64(len(k)) },
	"and7":  func(k []byte) uint64 { return uint64(k[len(k)-1]) & 7 },
	"const": func([]byte) uint64 { return 42 },
	// Every external id hashes to 0 after the kind salt, the stale hash of free slots.
	"zero": func([]byte) uint64 { return kindSalt[KindExternal] },
}

// TestUsersForcedCollisions proves that hash matches are confirmed against the key:
// with hashes that collide all the time, every key still resolves to its own user,
// through detaches, deletes, tombstone reuse and growth.
func TestUsersForcedCollisions(t *testing.T) {
	for name, h := range weakHashes {
		t.Run(name, func(t *testing.T) {
			u := NewUsers(Options{Hash: h})
			m := newUsersModel()
			const n = 600
			for i := range n {
				id := u.Create()
				m.create()
				kind := Kind(i%3) + 1
				key := fmt.Sprintf("key-%d", i%200) // same bytes under different kinds too
				if err := u.Attach(id, kind, []byte(key)); err != nil {
					t.Fatalf("Attach %d: %v", i, err)
				}
				if err := m.attach(id, modelKey{kind, key}); err != nil {
					t.Fatal(err)
				}
			}
			check := func(stage string) {
				t.Helper()
				keys := make([][]byte, 0, n)
				var want []UserID
				for kind := KindExternal; kind <= KindDevice; kind++ {
					keys, want = keys[:0], want[:0]
					for i := range 250 {
						k := fmt.Sprintf("key-%d", i)
						keys = append(keys, []byte(k))
						id, ok := m.byKey[modelKey{kind, k}]
						if !ok {
							id = NoUser
						}
						want = append(want, id)
					}
					if got := u.ResolveMany(kind, keys, nil); !slices.Equal(got, want) {
						t.Fatalf("%s: ResolveMany(%v) = %v, want %v", stage, kind, got, want)
					}
				}
				u.Publish()
				if err := m.compare(u); err != nil {
					t.Fatalf("%s: %v", stage, err)
				}
			}
			check("inserted")
			for i := 0; i < n; i += 3 {
				kind := Kind(i%3) + 1
				key := fmt.Sprintf("key-%d", i%200)
				id, ok := u.Detach(kind, []byte(key))
				wid, wok := m.detach(modelKey{kind, key})
				if id != wid || ok != wok {
					t.Fatalf("Detach(%v, %q) = %d %v, model %d %v", kind, key, id, ok, wid, wok)
				}
			}
			for id := UserID(1); id < n; id += 5 {
				if u.Delete(id) != m.delete(id) {
					t.Fatalf("Delete(%d) disagrees", id)
				}
			}
			check("after detach and delete")
			// Reuse tombstones and grow again.
			for i := range 2 * n {
				id := u.Create()
				m.create()
				kind := Kind(i%3) + 1
				key := fmt.Sprintf("key-%d", i%250)
				err := u.Attach(id, kind, []byte(key))
				werr := m.attach(id, modelKey{kind, key})
				if (err == nil) != (werr == nil) {
					t.Fatalf("Attach(%v, %q) = %v, model %v", kind, key, err, werr)
				}
			}
			check("after reuse and growth")
		})
	}
}

// TestUsersModel runs random operations against Users and a map model.
func TestUsersModel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		hash     func([]byte) uint64
		keySpace int
		ops      int
	}{
		{"xxhash", nil, 3000, 30_000},
		{"xxhash-dense", nil, 100, 10_000},
		{"weak-and7", weakHashes["and7"], 300, 10_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			r := rand.New(rand.NewPCG(seed, seed))
			u := NewUsers(Options{Hash: tc.hash})
			m := newUsersModel()
			for i := range tc.ops {
				a := byte(r.IntN(256))
				key := r.IntN(tc.keySpace)
				modelOpKey(t, u, m, byte(r.IntN(8)), a, byte(r.IntN(256)), key, seed)
				if i%2000 == 1999 {
					u.Publish()
					if err := m.compare(u); err != nil {
						t.Fatalf("seed %d op %d: %v", seed, i, err)
					}
				}
			}
			u.Publish()
			if err := m.compare(u); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
		})
	}
}

// modelOpKey is modelOp with a wider key space than one byte allows.
func modelOpKey(t *testing.T, u *Users, m *usersModel, op, a, b byte, key int, seed uint64) {
	t.Helper()
	kind := Kind(b%3) + 1
	k := fmt.Sprintf("user-%014d", key)
	switch op % 8 {
	case 2, 3, 4:
		var id UserID
		if m.next > 0 {
			id = UserID(int(a)*131+key) % (m.next + 1)
		}
		err := u.Attach(id, kind, []byte(k))
		want := m.attach(id, modelKey{kind, k})
		if !errors.Is(err, want) && (err != nil || want != nil) {
			t.Fatalf("seed %d: Attach(%d, %v, %q) = %v, model %v", seed, id, kind, k, err, want)
		}
	case 5:
		id, ok := u.Detach(kind, []byte(k))
		wid, wok := m.detach(modelKey{kind, k})
		if id != wid || ok != wok {
			t.Fatalf("seed %d: Detach(%v, %q) = %d %v, model %d %v", seed, kind, k, id, ok, wid, wok)
		}
	default:
		modelOp(t, u, m, op, a, b, 64)
	}
}

// TestUsersConcurrentResolve resolves keys from several goroutines while the writer
// inserts through several table growths and detaches; run it with -race.
func TestUsersConcurrentResolve(t *testing.T) {
	n := 200_000
	if testing.Short() {
		n = 50_000
	}
	u := NewUsers(Options{})
	key := func(i int) []byte { return fmt.Appendf(nil, "user-%014d", i) }
	var done atomic.Bool
	var inserted atomic.Int64 // keys [0, inserted) are attached to user i, except detached ones
	var wg sync.WaitGroup
	for r := range 3 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			keys := make([][]byte, 64)
			want := make([]int, 64)
			dst := make([]UserID, 0, 64)
			for !done.Load() {
				hi := int(inserted.Load())
				if hi == 0 {
					continue
				}
				for j := range keys {
					want[j] = rng.IntN(hi)
					keys[j] = key(want[j])
				}
				dst = u.ResolveMany(KindExternal, keys, dst[:0])
				for j, id := range dst {
					// Every 10th key is detached again by the writer.
					if id != UserID(want[j]) && !(want[j]%10 == 0 && id == NoUser) {
						t.Errorf("key %d resolved to %d", want[j], id)
						return
					}
				}
				if id := u.Resolve(KindExternal, keys[0]); id != UserID(want[0]) && want[0]%10 != 0 {
					t.Errorf("Resolve key %d = %d", want[0], id)
					return
				}
				_ = u.Anonymous(UserID(want[0]))
				u.Identifiers(UserID(want[0]), func(Kind, []byte) {})
				_ = u.Live().GetCardinality()
			}
		})
	}
	grows := 0
	for i := range n {
		id := u.Create()
		nb := len(u.mu.st.buckets)
		if err := u.Attach(id, KindExternal, key(i)); err != nil {
			t.Fatal(err)
		}
		if len(u.mu.st.buckets) != nb {
			grows++
		}
		inserted.Store(int64(i + 1))
		if i%10 == 0 {
			u.Detach(KindExternal, key(i))
		}
		if i%1000 == 0 {
			u.Publish()
		}
	}
	done.Store(true)
	wg.Wait()
	if grows < 5 {
		t.Errorf("only %d growths", grows)
	}
	if err := u.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestResolveManyAllocs(t *testing.T) {
	u := NewUsers(Options{})
	keys := make([][]byte, 1000)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "user-%014d", i)
		if err := u.Attach(u.Create(), KindExternal, keys[i]); err != nil {
			t.Fatal(err)
		}
	}
	dst := make([]UserID, 0, len(keys))
	allocs := testing.AllocsPerRun(100, func() {
		dst = u.ResolveMany(KindExternal, keys, dst[:0])
	})
	if allocs != 0 {
		t.Fatalf("ResolveMany allocates %.1f times a call", allocs)
	}
	for i, id := range dst {
		if id != UserID(i) {
			t.Fatalf("key %d resolved to %d", i, id)
		}
	}
	if a := testing.AllocsPerRun(100, func() { _ = u.Resolve(KindExternal, keys[7]) }); a != 0 {
		t.Fatalf("Resolve allocates %.1f times a call", a)
	}
}

// TestResolveManyBatchSizes resolves batches of every size around the group and
// lock-span boundaries (a batch's first, middle and last groups) and checks each
// id against Resolve, over a table with detached keys, absent keys and, with a weak
// hash (100 values, each shared by 50 keys), keys displaced from their home bucket
// and full hash collisions.
func TestResolveManyBatchSizes(t *testing.T) {
	weak := func(k []byte) uint64 { return xxh3.Hash(k[len(k)-2:]) }
	for name, h := range map[string]func([]byte) uint64{"xxh3": nil, "weak": weak} {
		t.Run(name, func(t *testing.T) {
			u := NewUsers(Options{Hash: h})
			defer u.Close()
			key := func(i int) []byte { return fmt.Appendf(nil, "user-%014d", i) }
			const n = 5000
			for i := range n {
				if err := u.Attach(u.Create(), KindExternal, key(i)); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < n; i += 7 {
				u.Detach(KindExternal, key(i))
			}
			r := rand.New(rand.NewPCG(3, 4))
			for _, size := range []int{1, 2, 5, 63, 64, 65, 127, 128, 129, 191, 192, 193, 255, 256, 257, 511, 512, 513, 1000, 1100} {
				keys := make([][]byte, size)
				for j := range keys {
					keys[j] = key(r.IntN(n + n/4)) // a fifth absent
				}
				got := u.ResolveMany(KindExternal, keys, []UserID{7})
				if len(got) != size+1 || got[0] != 7 {
					t.Fatalf("size %d: ResolveMany did not append to dst", size)
				}
				for j, k := range keys {
					if want := u.Resolve(KindExternal, k); got[j+1] != want {
						t.Fatalf("size %d, key %d (%s): ResolveMany %d, Resolve %d", size, j, k, got[j+1], want)
					}
				}
			}
		})
	}
}
