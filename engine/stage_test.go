package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cohortd/cohortd/index"
)

func TestSortByUserIsStableByUID(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 5, 63, 64, 65, 1000, 100_000} {
		for _, maxUID := range []uint32{0, 1, 1000, 1 << 20, 1<<27 - 1, 1<<32 - 2} {
			ops := make([]uint64, n)
			for i := range ops {
				uid := uint32(0)
				if maxUID > 0 {
					uid = uint32(r.Uint64N(uint64(maxUID) + 1))
				}
				ops[i] = uint64(uid)<<32 | uint64(i)<<1 | uint64(r.IntN(2))
			}
			want := slices.Clone(ops)
			slices.SortStableFunc(want, func(a, b uint64) int { return int(a>>32) - int(b>>32) })
			// The sort needs the true maximum, as finalSets computes it.
			var m uint32
			for _, op := range ops {
				m = max(m, uint32(op>>32))
			}
			got, _ := sortByUser(slices.Clone(ops), nil, m)
			if !slices.Equal(got, want) {
				t.Fatalf("n=%d maxUID=%d: sortByUser differs from a stable sort", n, maxUID)
			}
		}
	}
}

// TestSortOpsRuns: ops made of k ascending runs (the adds, then the
// removes, of a partner batch, and more) come out of sortOps exactly as a
// full sort, whichever sort it picks for them.
func TestSortOpsRuns(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{2, 63, 64, 1000, 5000} {
		for _, k := range []int{1, 2, 3, 7, 31, 32, 33, 40} {
			ops := make([]uint64, 0, n)
			var m uint32
			for run := range k {
				size := n / k
				if run == k-1 {
					size = n - len(ops)
				}
				uids := make([]uint32, size)
				for i := range uids {
					uids[i] = uint32(r.IntN(1 << 20))
				}
				slices.Sort(uids)
				for _, uid := range uids {
					m = max(m, uid)
					ops = append(ops, uint64(uid)<<32|uint64(len(ops))<<1|uint64(r.IntN(2)))
				}
			}
			want := slices.Clone(ops)
			slices.Sort(want)
			got, spare := sortOps(slices.Clone(ops), make([]uint64, 0, 1), m)
			if !slices.Equal(got, want) {
				t.Fatalf("n=%d runs=%d: sortOps differs from a full sort", n, k)
			}
			if len(got) > 0 && len(spare) > 0 && &got[0] == &spare[0] {
				t.Fatalf("n=%d runs=%d: sorted and spare share an array", n, k)
			}
		}
	}
}

func TestSortIDs(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 63, 64, 500, 70_000} {
		for _, span := range []uint32{1, 100, 1 << 24, 1<<32 - 1} {
			ids := make([]uint32, n)
			for i := range ids {
				ids[i] = uint32(r.Uint64N(uint64(span)))
			}
			want := slices.Clone(ids)
			slices.Sort(want)
			got, _ := sortIDs(ids, nil)
			if !slices.Equal(got, want) {
				t.Fatalf("n=%d span=%d: sortIDs wrong", n, span)
			}
		}
	}
}

// stageWorkspace returns a workspace with users u0…u(n-1) (external ids),
// anonymous users holding dev0…dev(m-1), and identified users holding
// idev0…idev(m-1) beside external ids iu0…iu(m-1), m = max(n/10, 10).
func stageWorkspace(t *testing.T, n int) *Workspace {
	t.Helper()
	e, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.CreateWorkspace("ws")
	w := e.Workspace("ws")
	var b UserBatch
	for i := 0; i < n; i++ {
		b.Add(fmt.Appendf(nil, "u%d", i), nil, nil)
	}
	for i := 0; i < max(n/10, 10); i++ {
		b.Add(nil, fmt.Appendf(nil, "dev%d", i), nil)
		b.Add(fmt.Appendf(nil, "iu%d", i), fmt.Appendf(nil, "idev%d", i), nil)
	}
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
	return w
}

// TestOneIdentifierALineEqualsGrouped stages the same random changes (with
// many repeated users, unknown ids and device ids of identified users) one
// identifier per AddMany call and grouped by runs, and checks the two give
// the same result and the same members.
func TestOneIdentifierALineEqualsGrouped(t *testing.T) {
	w := stageWorkspace(t, 3000)
	r := rand.New(rand.NewPCG(5, 6))
	type change struct {
		kind   index.Kind
		key    []byte
		remove bool
	}
	for round := 0; round < 20; round++ {
		var changes []change
		for n := 100 + r.IntN(3000); n > 0; n-- {
			c := change{remove: r.IntN(3) == 0}
			switch r.IntN(10) {
			case 0:
				c.kind, c.key = index.KindDevice, fmt.Appendf(nil, "dev%d", r.IntN(300))
			case 1:
				c.kind, c.key = index.KindDevice, fmt.Appendf(nil, "idev%d", r.IntN(300))
			case 2:
				c.kind, c.key = index.KindExternal, fmt.Appendf(nil, "nobody%d", r.IntN(50))
			default:
				c.kind, c.key = index.KindExternal, fmt.Appendf(nil, "u%d", r.IntN(400)) // repeats
			}
			changes = append(changes, c)
		}
		perLine := w.NewChangeSet()
		for _, c := range changes {
			perLine.AddMany(c.kind, [][]byte{c.key}, c.remove)
		}
		grouped := w.NewChangeSet()
		for i := 0; i < len(changes); {
			j := i
			var keys [][]byte
			for j < len(changes) && changes[j].kind == changes[i].kind && changes[j].remove == changes[i].remove {
				keys = append(keys, changes[j].key)
				j++
			}
			grouped.AddMany(changes[i].kind, keys, changes[i].remove)
			i = j
		}
		a1, r1 := perLine.finalSets()
		a2, r2 := grouped.finalSets()
		if !slices.Equal(a1, a2) || !slices.Equal(r1, r2) || perLine.res != grouped.res {
			t.Fatalf("round %d: per line %v/%v %+v, grouped %v/%v %+v", round, len(a1), len(r1), perLine.res, len(a2), len(r2), grouped.res)
		}
		// And the last change of each user wins.
		last := map[index.UserID]bool{}
		for _, c := range changes {
			id := w.Resolve(c.kind, c.key)
			if id == index.NoUser || (c.kind == index.KindDevice && !w.users.Anonymous(id)) {
				continue
			}
			last[id] = c.remove
		}
		for _, u := range a1 {
			if last[index.UserID(u)] {
				t.Fatalf("round %d: user %d added, but its last change removes", round, u)
			}
		}
		if len(a1)+len(r1) != len(last) {
			t.Fatalf("round %d: %d final users, want %d", round, len(a1)+len(r1), len(last))
		}
	}
}

// TestImportRacingMergeIsStale is issue 9.6: an anonymous user is matched
// by its device id, then merged into an identified user before the import
// applies. Before the fix the import answered "matched 1, added 0" (the
// merged-away user is not live), which no serial order gives. Now the apply
// refuses the stale batch, and staging again gives a serial answer.
func TestImportRacingMergeIsStale(t *testing.T) {
	w := stageWorkspace(t, 10)
	cs := w.NewChangeSet()
	keys := [][]byte{[]byte("dev3")}
	for len(keys) < stageChunk { // a full chunk: resolved now, as a body streams
		keys = append(keys, fmt.Appendf(nil, "unknown%d", len(keys)))
	}
	cs.AddMany(index.KindDevice, keys, false)
	if cs.q.n != 0 {
		t.Fatal("the chunk was not resolved while staging")
	}
	// Identify: dev3's anonymous user is merged into u1.
	var b UserBatch
	b.Add([]byte("u1"), []byte("dev3"), nil)
	if res, err := w.UpsertUsers(&b); err != nil || res.Merged != 1 {
		t.Fatalf("merge: %+v %v", res, err)
	}
	res, err := w.ApplyChanges("p", "c", cs)
	if !errors.Is(err, ErrUsersChanged) {
		t.Fatalf("stale batch applied: %+v, err %v", res, err)
	}
	if c := w.Cohort("p", "c"); c != nil && !c.Members().IsEmpty() {
		t.Fatal("a refused batch changed the cohort")
	}
	// Staged again: dev3 belongs to u1 now, an identified user (rule 3).
	cs = w.NewChangeSet()
	cs.AddMany(index.KindDevice, keys, false)
	res, err = w.ApplyChanges("p", "c", cs)
	if err != nil || res.Matched != 0 || res.DeviceIdentified != 1 || res.Added != 0 {
		t.Fatalf("restaged: %+v %v", res, err)
	}
}

// TestStaleDetection covers what makes a batch stale and what does not.
func TestStaleDetection(t *testing.T) {
	stage := func(w *Workspace, kind index.Kind, key string) *ChangeSet {
		cs := w.NewChangeSet()
		cs.AddMany(kind, [][]byte{[]byte(key)}, false)
		cs.flush()
		return cs
	}
	upsert := func(w *Workspace, ext, dev string) {
		var b UserBatch
		var e, d []byte
		if ext != "" {
			e = []byte(ext)
		}
		if dev != "" {
			d = []byte(dev)
		}
		b.Add(e, d, nil)
		if _, err := w.UpsertUsers(&b); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("unrelated user change", func(t *testing.T) {
		w := stageWorkspace(t, 10)
		cs := stage(w, index.KindExternal, "u2")
		upsert(w, "someone-new", "")
		upsert(w, "u5", "dev1") // a merge of users the batch never saw
		if res, err := w.ApplyChanges("p", "c", cs); err != nil || res.Added != 1 {
			t.Fatalf("%+v %v", res, err)
		}
	})
	t.Run("unknown key created meanwhile", func(t *testing.T) {
		w := stageWorkspace(t, 10)
		cs := stage(w, index.KindExternal, "late")
		upsert(w, "late", "")
		if _, err := w.ApplyChanges("p", "c", cs); !errors.Is(err, ErrUsersChanged) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("matched user deleted meanwhile", func(t *testing.T) {
		w := stageWorkspace(t, 10)
		cs := stage(w, index.KindExternal, "u4")
		if _, err := w.DeleteUsers(IdentifierSet{ExternalIDs: [][]byte{[]byte("u4")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.ApplyChanges("p", "c", cs); !errors.Is(err, ErrUsersChanged) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("anonymous user identified meanwhile", func(t *testing.T) {
		w := stageWorkspace(t, 10)
		cs := stage(w, index.KindDevice, "dev0")
		upsert(w, "brand-new", "dev0") // identifies dev0's user
		if _, err := w.ApplyChanges("p", "c", cs); !errors.Is(err, ErrUsersChanged) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("identified holder deleted meanwhile", func(t *testing.T) {
		w := stageWorkspace(t, 10)
		cs := stage(w, index.KindDevice, "idev0") // unmatched: identified holder
		if _, err := w.DeleteUsers(IdentifierSet{ExternalIDs: [][]byte{[]byte("iu0")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.ApplyChanges("p", "c", cs); !errors.Is(err, ErrUsersChanged) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("snapshot sync", func(t *testing.T) {
		w := stageWorkspace(t, 10)
		ms := w.NewMemberSet()
		ms.AddMany(index.KindDevice, [][]byte{[]byte("dev2")})
		ms.flush()
		upsert(w, "u1", "dev2") // merge
		if _, err := w.ReplaceMembers("p", "c", ms); !errors.Is(err, ErrUsersChanged) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("held users keep changes out", func(t *testing.T) {
		w := stageWorkspace(t, 10)
		release := w.HoldUsers()
		done := make(chan struct{})
		go func() {
			upsert(w, "u1", "dev2")
			close(done)
		}()
		cs := stage(w, index.KindDevice, "dev2")
		res, err := w.ApplyChanges("p", "c", cs)
		release()
		<-done
		if err != nil || res.Added != 1 {
			t.Fatalf("%+v %v", res, err)
		}
		// Serial: the import, then the merge, which ORs the membership into u1.
		if !w.Cohort("p", "c").Members().Contains(uint32(w.Resolve(index.KindExternal, []byte("u1")))) {
			t.Fatal("the merge did not carry the membership")
		}
	})
}

// TestDeleteSeveralKeysOfOneUser: the delete pre-pass resolves every key up
// front; a later key of a user deleted by an earlier one must not delete it
// twice.
func TestDeleteSeveralKeysOfOneUser(t *testing.T) {
	w := stageWorkspace(t, 10)
	res, err := w.DeleteUsers(IdentifierSet{
		ExternalIDs: [][]byte{[]byte("iu1"), []byte("u3")},
		DeviceIDs:   [][]byte{[]byte("idev1"), []byte("dev9")},
	})
	if err != nil || res.Deleted != 3 || res.Unmatched != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if err := w.e.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestLookupKeepsOrder(t *testing.T) {
	w := stageWorkspace(t, 600)
	lk := w.NewLookup()
	for round := 0; round < 2; round++ {
		lk.Reset(w)
		var want []index.UserID
		for i := 0; i < 1000; i++ {
			kind, key := index.KindExternal, fmt.Appendf(nil, "u%d", (i*7)%700)
			if i%3 == 0 {
				kind, key = index.KindDevice, fmt.Appendf(nil, "idev%d", i%70)
			}
			lk.Add(kind, key)
			want = append(want, w.Resolve(kind, key))
		}
		if got := lk.IDs(); !slices.Equal(got, want) {
			t.Fatalf("round %d: lookup differs from Resolve", round)
		}
	}
}

// TestPageDoesNotBuildTheSegment is issue 9.15: a page of a segment used to
// materialise the whole segment (O(N) a page); it now walks the
// expression's candidates from the cursor. The bytes a page allocates show
// it: a few kilobytes, where building "A and not B" over a 2M-user universe
// allocated megabytes.
func TestPageDoesNotBuildTheSegment(t *testing.T) {
	const universe = 2_000_000
	w := syntheticWorkspace(universe)
	for i, name := range []string{"A", "B"} {
		c := w.applyCohortUpsert("p", name, name, time.Now(), time.Now())
		c.members.Reset(cohortBitmap("uniform", universe/5, universe, uint64(20+i)))
	}
	seg, err := parseSegment([]byte(`{"and":[{"cohort":"p/A"},{"not":{"cohort":"p/B"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	b := w.Bind(seg)
	want := b.Bitmap()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	cursor, seen := "", 0
	for range 20 {
		ids, next, err := b.Page(cursor, 100)
		if err != nil || len(ids) != 100 {
			t.Fatalf("page: %d ids, %v", len(ids), err)
		}
		for _, id := range ids {
			if !want.Contains(uint32(id)) {
				t.Fatalf("page holds %d, not a member", id)
			}
		}
		seen += len(ids)
		cursor = next
	}
	runtime.ReadMemStats(&ms)
	if per := (ms.TotalAlloc - before) / 20; per > 64<<10 {
		t.Fatalf("a page of 100 allocated %d bytes: the segment was built", per)
	}
	// The pages are the segment's first members, in order.
	first := want.ToArray()[:seen]
	var paged []uint32
	cursor = ""
	for len(paged) < seen {
		ids, next, _ := b.Page(cursor, 100)
		for _, id := range ids {
			paged = append(paged, uint32(id))
		}
		cursor = next
	}
	if !slices.Equal(paged, first) {
		t.Fatal("pages differ from the segment's members")
	}
}

// TestUserLogOnlyForStagers checks that the user-change log keeps entries
// only while a stager is leased, and that every way a stager ends (apply,
// replace, a webhook page, a refused page, Discard) gives its lease back:
// a lost lease would keep up to 16 MiB of key hashes for nobody.
func TestUserLogOnlyForStagers(t *testing.T) {
	w := stageWorkspace(t, 10)
	n := 0
	upsert := func() {
		t.Helper()
		var b UserBatch
		b.Add(fmt.Appendf(nil, "new%d", n), nil, nil)
		n++
		if _, err := w.UpsertUsers(&b); err != nil {
			t.Fatal(err)
		}
	}
	logged := func() int {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.ulog.entries)
	}
	idle := func(what string) {
		t.Helper()
		if s := w.ulog.stagers.Load(); s != 0 {
			t.Fatalf("after %s: %d stagers leased", what, s)
		}
		upsert()
		if e := logged(); e != 0 {
			t.Fatalf("after %s: %d log entries with no stager", what, e)
		}
	}
	idle("seeding")

	cs := w.NewChangeSet()
	cs.AddMany(index.KindExternal, [][]byte{[]byte("u1")}, false)
	upsert()
	upsert()
	if e := logged(); e != 2 {
		t.Fatalf("%d log entries with a stager leased, want 2", e)
	}
	if res, err := w.ApplyChanges("p", "c", cs); err != nil || res.Added != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	idle("ApplyChanges")

	w.NewChangeSet().Discard()
	idle("ChangeSet.Discard")

	ms := w.NewMemberSet()
	ms.AddMany(index.KindExternal, [][]byte{[]byte("u2")})
	if _, err := w.ReplaceMembers("p", "c", ms); err != nil {
		t.Fatal(err)
	}
	idle("ReplaceMembers")

	ms = w.NewMemberSet()
	if _, err := w.StagePage("p", "c", "", "s1", 1, 1, ms); err != nil {
		t.Fatal(err)
	}
	idle("StagePage")

	ms = w.NewMemberSet()
	if _, err := w.StagePage("p", "c", "", "s2", 3, 2, ms); err == nil {
		t.Fatal("page 3 of 2 accepted")
	}
	idle("a refused StagePage")

	ms = w.NewMemberSet()
	ms.Discard()
	ms.Discard()
	idle("MemberSet.Discard twice")
}
