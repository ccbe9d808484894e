package engine

import (
	"slices"
	"testing"
)

func TestReadViews(t *testing.T) {
	_, w := fixture(t)
	if n := w.UserCount(); n != 4 {
		t.Fatalf("UserCount = %d, want 4", n)
	}
	id := func(k Kind, key string) UserID {
		t.Helper()
		u := w.Resolve(k, []byte(key))
		if u == NoUser {
			t.Fatalf("%q: no user", key)
		}
		return u
	}
	e1, e2, anon := id(KindExternal, "e1"), id(KindExternal, "e2"), id(KindDevice, "d-anon")

	var got []string
	w.Identifiers(e2, func(k Kind, key []byte) { got = append(got, string(rune('0'+k))+string(key)) })
	if want := []string{"1e2", "3d-ident"}; !slices.Equal(got, want) {
		t.Fatalf("Identifiers(e2) = %q, want %q", got, want)
	}
	got = got[:0]
	w.Identifiers(id(KindAlias, string(AliasKey(nil, []byte("email"), []byte("a@x")))), func(k Kind, key []byte) {
		n, l := SplitAlias(key)
		got = append(got, string(n)+"/"+string(l))
	})
	if want := []string{"email/a@x"}; !slices.Equal(got, want) {
		t.Fatalf("Identifiers(alias) = %q, want %q", got, want)
	}

	apply(t, w, "a", ext("e1"), ext("e2"))
	apply(t, w, "b", ext("e2"), dev("d-anon"))
	apply(t, w, "c", ext("e1"), ext("e2"), dev("d-anon"))
	a, b, c := w.Cohort("p", "a").Set(), w.Cohort("p", "b").Set(), w.Cohort("p", "c").Set()
	if a.Len() != 2 || !a.Contains(e1) || !a.Contains(e2) || a.Contains(anon) || a.Contains(NoUser) {
		t.Fatalf("cohort a: Len %d", a.Len())
	}
	var each []UserID
	c.Each(func(u UserID) bool { each = append(each, u); return true })
	if want := []UserID{e1, e2, anon}; !slices.Equal(each, slices.Sorted(slices.Values(want))) {
		t.Fatalf("Each = %v, want %v sorted", each, want)
	}
	each = each[:0]
	c.Each(func(u UserID) bool { each = append(each, u); return len(each) < 2 })
	if len(each) != 2 {
		t.Fatalf("Each went on after false: %v", each)
	}
	for _, tc := range []struct {
		sets []Set
		want uint64
	}{
		{nil, 0},
		{[]Set{c}, 3},
		{[]Set{a, b}, 1},
		{[]Set{a, b, c}, 1},
		{[]Set{a, c, c, c}, 2},
		{[]Set{a, {}}, 0},
		{[]Set{a, c, {}}, 0},
	} {
		if got := IntersectionLen(tc.sets...); got != tc.want {
			t.Errorf("IntersectionLen(%d sets) = %d, want %d", len(tc.sets), got, tc.want)
		}
	}
	var zero Set
	zero.Each(func(UserID) bool { t.Fatal("the zero Set has a member"); return false })
	if zero.Len() != 0 || zero.Contains(e1) {
		t.Fatal("the zero Set is not empty")
	}
	if l := w.Live(); l.Len() != 4 || !l.Contains(anon) {
		t.Fatalf("Live: Len %d", l.Len())
	}
	bs := w.Bind(NewSegment(AndExpr(CohortExpr("p", "c"), NotExpr(CohortExpr("p", "b")))))
	defer bs.Release()
	if s := bs.Set(); s.Len() != 1 || !s.Contains(e1) || s.Len() != bs.Count() {
		t.Fatalf("segment set: Len %d, Count %d", s.Len(), bs.Count())
	}
}
