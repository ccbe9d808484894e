package engine

import (
	"errors"
	"testing"
	"time"

	"github.com/cohortd/cohortd/index"
)

// fixture is a workspace with a few users of every kind:
//
//	u0 ext "e1"            u1 ext "e2" + device "d-ident" (identified later)
//	u2 anonymous "d-anon"  u3 alias (email, a@x)
func fixture(t *testing.T) (*Engine, *Workspace) {
	t.Helper()
	e, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateWorkspace("ws"); err != nil {
		t.Fatal(err)
	}
	w := e.Workspace("ws")
	var b UserBatch
	b.Add([]byte("e1"), nil, nil)
	b.Add(nil, []byte("d-ident"), nil)
	b.Add(nil, []byte("d-anon"), nil)
	b.Add(nil, nil, [][]byte{index.AliasKey(nil, []byte("email"), []byte("a@x"))})
	b.Add([]byte("e2"), []byte("d-ident"), nil) // identifies u1
	res, err := w.UpsertUsers(&b)
	if err != nil {
		t.Fatal(err)
	}
	if (res != UpsertResult{Created: 4, Identified: 1}) {
		t.Fatalf("fixture upsert: %+v", res)
	}
	return e, w
}

type change struct {
	kind   index.Kind
	key    string
	remove bool
}

func apply(t *testing.T, w *Workspace, cohort string, changes ...change) ApplyResult {
	t.Helper()
	cs := w.NewChangeSet()
	for _, c := range changes {
		cs.AddMany(c.kind, [][]byte{[]byte(c.key)}, c.remove)
	}
	res, err := w.ApplyChanges("p", cohort, cs)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func members(w *Workspace, cohort string) []uint32 {
	c := w.Cohort("p", cohort)
	if c == nil {
		return nil
	}
	return c.Members().ToArray()
}

func ext(k string) change   { return change{kind: index.KindExternal, key: k} }
func dev(k string) change   { return change{kind: index.KindDevice, key: k} }
func rmExt(k string) change { return change{kind: index.KindExternal, key: k, remove: true} }
func alias(n, l string) change {
	return change{kind: index.KindAlias, key: string(index.AliasKey(nil, []byte(n), []byte(l)))}
}

func TestMatchingRules(t *testing.T) {
	tests := []struct {
		name    string
		changes []change
		want    ApplyResult
		members []uint32
	}{
		{"rule 1: unknown ids are skipped and counted, never created",
			[]change{ext("nobody"), dev("nodev"), alias("email", "b@x")},
			ApplyResult{Unmatched: 3, Unknown: 3}, []uint32{}},
		{"rule 2: external ids and exact alias pairs",
			[]change{ext("e1"), alias("email", "a@x")},
			ApplyResult{Matched: 2, Added: 2, DataPoints: 2}, []uint32{0, 3}},
		{"rule 2: an alias never matches swapped",
			[]change{alias("a@x", "email")},
			ApplyResult{Unmatched: 1, Unknown: 1}, []uint32{}},
		{"rule 3: device ids match anonymous users only",
			[]change{dev("d-anon"), dev("d-ident")},
			ApplyResult{Matched: 1, Unmatched: 1, DeviceIdentified: 1, Added: 1, DataPoints: 1}, []uint32{2}},
		{"rule 4: the last change for a user wins (add then remove)",
			[]change{ext("e1"), rmExt("e1")},
			ApplyResult{Matched: 2}, []uint32{}},
		{"rule 4: the last change for a user wins (remove then add)",
			[]change{rmExt("e1"), ext("e1")},
			ApplyResult{Matched: 2, Added: 1, DataPoints: 1}, []uint32{0}},
		{"rule 6: duplicates count as sent",
			[]change{ext("e1"), ext("e1"), ext("e1")},
			ApplyResult{Matched: 3, Added: 1, DataPoints: 1}, []uint32{0}},
		{"an empty batch is a no-op that creates the cohort",
			nil, ApplyResult{}, []uint32{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, w := fixture(t)
			got := apply(t, w, "c", tc.changes...)
			if got != tc.want {
				t.Fatalf("result %+v, want %+v", got, tc.want)
			}
			m := members(w, "c")
			if m == nil {
				t.Fatal("cohort not created lazily")
			}
			if len(m) != len(tc.members) {
				t.Fatalf("members %v, want %v", m, tc.members)
			}
			for i := range m {
				if m[i] != tc.members[i] {
					t.Fatalf("members %v, want %v", m, tc.members)
				}
			}
			if c := w.Cohort("p", "c"); c.Info().Name != "c" {
				t.Fatalf("lazily created cohort name %q, want the cohort id", c.Info().Name)
			}
			if err := e.Check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRule7DataPointsOnlyForEffectiveChanges(t *testing.T) {
	_, w := fixture(t)
	first := apply(t, w, "c", ext("e1"), ext("e2"), ext("nobody"))
	retry := apply(t, w, "c", ext("e1"), ext("e2"), ext("nobody"))
	if first.DataPoints != 2 || retry.DataPoints != 0 {
		t.Fatalf("data points first %d retry %d, want 2 and 0", first.DataPoints, retry.DataPoints)
	}
	rm := apply(t, w, "c", rmExt("e1"))
	if rm.DataPoints != 1 || rm.Removed != 1 {
		t.Fatalf("remove: %+v", rm)
	}
	ms := w.NewMemberSet()
	ms.AddMany(index.KindExternal, [][]byte{[]byte("e1")})
	rep, err := w.ReplaceMembers("p", "c", ms)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Added != 1 || rep.Removed != 1 || rep.DataPoints != 2 {
		t.Fatalf("replace: %+v", rep)
	}
	// User upserts, deletes and cohort deletes cost nothing.
	var b UserBatch
	b.Add([]byte("e9"), nil, nil)
	if _, err := w.UpsertUsers(&b); err != nil {
		t.Fatal(err)
	}
	if _, err := w.DeleteUsers(IdentifierSet{ExternalIDs: [][]byte{[]byte("e1")}}); err != nil {
		t.Fatal(err)
	}
	if err := w.DeleteCohort("p", "c"); err != nil {
		t.Fatal(err)
	}
	if u := w.Usage(); u.Total != 5 || u.Partners["p"].Total != 5 {
		t.Fatalf("usage %+v, want 5 data points", u)
	}
}

func TestUsersIdentifyKeepsCohortsAndStopsDeviceMatching(t *testing.T) {
	_, w := fixture(t)
	apply(t, w, "c", dev("d-anon"))
	var b UserBatch
	b.Add([]byte("e-new"), []byte("d-anon"), nil)
	res, _ := w.UpsertUsers(&b)
	if res.Identified != 1 {
		t.Fatalf("upsert %+v, want identified", res)
	}
	if m := members(w, "c"); len(m) != 1 || m[0] != 2 {
		t.Fatalf("identified user lost its cohort: %v", m)
	}
	got := apply(t, w, "c", change{kind: index.KindDevice, key: "d-anon", remove: true})
	if got.DeviceIdentified != 1 || got.Removed != 0 {
		t.Fatalf("device of identified user matched: %+v", got)
	}
	// Lookup still finds it by device id.
	if id := w.Resolve(index.KindDevice, []byte("d-anon")); id != 2 {
		t.Fatalf("lookup by device id: %d", id)
	}
}

func TestUsersMergeOrsMembershipsAndRemovesAnonymous(t *testing.T) {
	e, w := fixture(t)
	apply(t, w, "a", dev("d-anon"))
	apply(t, w, "b", ext("e1"))
	var b UserBatch
	b.Add([]byte("e1"), []byte("d-anon"), nil)
	res, _ := w.UpsertUsers(&b)
	if res.Merged != 1 {
		t.Fatalf("upsert %+v, want merged", res)
	}
	if m := members(w, "a"); len(m) != 1 || m[0] != 0 {
		t.Fatalf("cohort a after merge: %v, want [0]", m)
	}
	if !w.users.Deleted(2) {
		t.Fatal("anonymous user not removed after merge")
	}
	if id := w.Resolve(index.KindDevice, []byte("d-anon")); id != 0 {
		t.Fatalf("device moved to %d, want 0", id)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestDeleteClearsMembershipsAndFreesIdentifiers(t *testing.T) {
	e, w := fixture(t)
	apply(t, w, "a", ext("e1"), ext("e2"))
	res, err := w.DeleteUsers(IdentifierSet{ExternalIDs: [][]byte{[]byte("e1"), []byte("zz")}})
	if err != nil || res.Deleted != 1 || res.Unmatched != 1 {
		t.Fatalf("delete %+v %v", res, err)
	}
	if m := members(w, "a"); len(m) != 1 || m[0] != 1 {
		t.Fatalf("members after delete: %v", m)
	}
	if w.Resolve(index.KindExternal, []byte("e1")) != index.NoUser {
		t.Fatal("identifier not freed")
	}
	// Import does not resurrect the user; a new upsert creates a new one.
	if r := apply(t, w, "a", ext("e1")); r.Unknown != 1 {
		t.Fatalf("import after delete: %+v", r)
	}
	var b UserBatch
	b.Add([]byte("e1"), nil, nil)
	if res, _ := w.UpsertUsers(&b); res.Created != 1 {
		t.Fatalf("re-create: %+v", res)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestCohortUpsertKeepsFirstCreatedAt(t *testing.T) {
	_, w := fixture(t)
	t1 := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := w.UpsertCohort("p", "c", "one", t1); err != nil {
		t.Fatal(err)
	}
	if err := w.UpsertCohort("p", "c", "two", t1.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	info := w.Cohort("p", "c").Info()
	if info.Name != "two" || !info.CreatedAt.Equal(t1) {
		t.Fatalf("info %+v", info)
	}
	if err := w.DeleteCohort("p", "c"); err != nil {
		t.Fatal(err)
	}
	if err := w.DeleteCohort("p", "c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestSegments(t *testing.T) {
	_, w := fixture(t)
	apply(t, w, "a", ext("e1"), ext("e2"))
	apply(t, w, "b", ext("e2"), dev("d-anon"))
	count := func(js string) (uint64, []string) {
		t.Helper()
		s, err := parseSegment([]byte(js))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		b := w.Bind(s)
		if c, bm := b.Count(), b.Bitmap().GetCardinality(); c != bm {
			t.Fatalf("%s: Count %d != Bitmap %d", js, c, bm)
		}
		return b.Count(), b.Warnings
	}
	for js, want := range map[string]uint64{
		`{"cohort":"p/a"}`: 2,
		`{"and":[{"cohort":"p/a"},{"cohort":"p/b"}]}`:                 1,
		`{"or":[{"cohort":"p/a"},{"cohort":"p/b"}]}`:                  3,
		`{"and":[{"cohort":"p/a"},{"not":{"cohort":"p/b"}}]}`:         1,
		`{"not":{"cohort":"p/a"}}`:                                    2,
		`{"all":true}`:                                                4,
		`{"or":[{"not":{"cohort":"p/a"}},{"cohort":"p/b"}]}`:          3,
		`{"and":[{"not":{"cohort":"p/a"}},{"not":{"cohort":"p/b"}}]}`: 1,
	} {
		if got, _ := count(js); got != want {
			t.Errorf("%s = %d, want %d", js, got, want)
		}
	}
	if n, warn := count(`{"and":[{"cohort":"p/a"},{"cohort":"x/nope"}]}`); n != 0 || len(warn) != 1 || warn[0] != "unknown cohort x/nope" {
		t.Fatalf("unknown cohort: %d %v", n, warn)
	}
}

func TestSegmentPages(t *testing.T) {
	e, w := fixture(t)
	var b UserBatch
	for i := 0; i < 50; i++ {
		b.Add([]byte("bulk-"+string(rune('a'+i%26))+string(rune('a'+i/26))), nil, nil)
	}
	w.UpsertUsers(&b)
	s, _ := parseSegment([]byte(`{"all":true}`))
	bs := w.Bind(s)
	var all []index.UserID
	cursor := ""
	for pages := 0; ; pages++ {
		ids, next, err := bs.Page(cursor, 7)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ids...)
		if next == "" {
			break
		}
		cursor = next
		if pages > 20 {
			t.Fatal("too many pages")
		}
	}
	if len(all) != 54 {
		t.Fatalf("paged %d users, want 54", len(all))
	}
	if _, _, err := bs.Page("garbage", 5); err == nil {
		t.Fatal("garbage cursor accepted")
	}
	// A cursor of one workspace is refused by another.
	e.CreateWorkspace("other")
	_, next, _ := bs.Page("", 5)
	if _, _, err := e.Workspace("other").Bind(s).Page(next, 5); err == nil {
		t.Fatal("cursor accepted by another workspace")
	}
}

func TestAuthPartner(t *testing.T) {
	e, w := fixture(t)
	pk, _ := e.CreatePartner("amp")
	ok, _ := e.CreatePartner("other")
	_, secret, _ := w.CreateImportKey("amp")
	if got, err := e.AuthPartner("amp", []byte(pk), []byte(secret)); err != nil || got != w {
		t.Fatalf("valid credentials: %v", err)
	}
	if _, err := e.AuthPartner("amp", []byte("bad"), []byte(secret)); !errors.Is(err, ErrBadPartnerKey) {
		t.Fatalf("bad partner key: %v", err)
	}
	if _, err := e.AuthPartner("nope", []byte(pk), []byte(secret)); !errors.Is(err, ErrBadPartnerKey) {
		t.Fatalf("unknown partner: %v", err)
	}
	var pne *PartnerNotEnabledError
	if _, err := e.AuthPartner("other", []byte(ok), []byte(secret)); !errors.As(err, &pne) || pne.Prefix != secret[:4] {
		t.Fatalf("other partner: %v", err)
	}
	keys := w.ImportKeys("amp")
	if len(keys) != 1 || keys[0].LastUsedAt.IsZero() {
		t.Fatalf("keys %+v: last use not recorded", keys)
	}
	if err := w.RevokeImportKey("amp", keys[0].KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AuthPartner("amp", []byte(pk), []byte(secret)); !errors.Is(err, ErrBadClientSecret) {
		t.Fatalf("revoked key: %v", err)
	}
	if e.WorkspaceByAPIKey([]byte("nope")) != nil {
		t.Fatal("bad api key accepted")
	}
}
