package loadgen

import (
	"encoding/json"
	"regexp"
	"slices"
	"testing"
)

func TestBlockKindsExactShares(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		for b := range 50 {
			counts := map[Kind]int{}
			for _, k := range BlockKinds(seed, b) {
				counts[k]++
			}
			want := map[Kind]int{KindExternal: 15, KindAlias: 2, KindDevice: 2, KindIdentifiedLater: 1}
			if !maps(counts, want) {
				t.Fatalf("seed %d block %d: shares %v, want %v", seed, b, counts, want)
			}
		}
	}
	if BlockKinds(1, 0) == BlockKinds(1, 1) && BlockKinds(1, 1) == BlockKinds(1, 2) {
		t.Error("blocks are not shuffled independently")
	}
}

func maps(a, b map[Kind]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestUniverseDeterministic(t *testing.T) {
	u1, u2 := Universe{Users: 1000, Seed: 7}, Universe{Users: 1000, Seed: 7}
	u3 := Universe{Users: 1000, Seed: 8}
	differ := false
	for n := 1; n <= 1000; n++ {
		if u1.Kind(n) != u2.Kind(n) || u1.DeviceID(n) != u2.DeviceID(n) {
			t.Fatalf("user %d differs for the same seed", n)
		}
		if u1.Kind(n) != u3.Kind(n) || u1.DeviceID(n) != u3.DeviceID(n) {
			differ = true
		}
	}
	if !differ {
		t.Error("seeds 7 and 8 give the same users")
	}
	a := u1.CohortMembers(0, 300, FlavourUniform)
	b := u2.CohortMembers(0, 300, FlavourUniform)
	if !slices.Equal(a, b) {
		t.Error("uniform members differ for the same seed")
	}
}

func TestIdentifiers(t *testing.T) {
	if got := ExternalID(42); got != "user-00000000000042" || len(got) != 19 {
		t.Errorf("ExternalID(42) = %q", got)
	}
	if got := AliasLabel(3); got != "3@example.com" {
		t.Errorf("AliasLabel(3) = %q", got)
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	u := Universe{Users: 100, Seed: 1}
	seen := map[string]bool{}
	for n := 1; n <= 100; n++ {
		d := u.DeviceID(n)
		if !uuid.MatchString(d) {
			t.Fatalf("DeviceID(%d) = %q is not a UUID v4", n, d)
		}
		if seen[d] {
			t.Fatalf("duplicate device id %q", d)
		}
		seen[d] = true
	}
}

func TestMemberRef(t *testing.T) {
	u := Universe{Users: 200, Seed: 1}
	for n := 1; n <= 200; n++ {
		ref := u.MemberRef(n)
		want := map[Kind]Kind{KindExternal: KindExternal, KindIdentifiedLater: KindExternal, KindAlias: KindAlias, KindDevice: KindDevice}[u.Kind(n)]
		if ref.Kind != want || ref.N != uint64(n) || !u.Matches(ref) {
			t.Fatalf("user %d (%v): ref %+v", n, u.Kind(n), ref)
		}
		if u.Kind(n) == KindIdentifiedLater && u.Matches(Ref{KindDevice, uint64(n)}) {
			t.Fatalf("device of identified-later user %d matches", n)
		}
	}
}

func TestClusteredRuns(t *testing.T) {
	u := Universe{Users: 100_000, Seed: 1}
	if c := u.ClusteredCapacity(); c != 10_000 {
		t.Fatalf("capacity %d, want 10000", c)
	}
	m := u.CohortMembers(3, 4_500, FlavourClustered)
	if len(m) != 4_500 || !slices.IsSorted(m) {
		t.Fatalf("got %d members (sorted %v)", len(m), slices.IsSorted(m))
	}
	// Runs: maximal sequences of consecutive users, each inside one block
	// of 10,000, at most one run per block.
	runs := map[uint32]int{}
	for i, v := range m {
		if i > 0 && m[i-1]+1 == v {
			continue
		}
		runs[(v-1)/clusterBlock]++
	}
	if len(runs) != 5 {
		t.Fatalf("%d runs, want 5 (4 full, 1 partial): %v", len(runs), runs)
	}
	for b, n := range runs {
		if n != 1 {
			t.Errorf("block %d has %d runs", b, n)
		}
	}
	for _, v := range m {
		if v < 1 || int(v) > u.Users {
			t.Fatalf("member %d outside the universe", v)
		}
	}
	// A universe smaller than a block still works.
	small := Universe{Users: 2_500, Seed: 1}
	if got := small.CohortMembers(0, small.CohortSize(0, FlavourClustered), FlavourClustered); len(got) != 1000 {
		t.Errorf("small universe: %d members, want 1000", len(got))
	}
}

func TestCohortSizes(t *testing.T) {
	u := Universe{Users: 100_000_000, Seed: 1}
	for i := range 200 {
		s := u.CohortSize(i, FlavourUniform)
		if s < minCohortSize || s > maxCohortSize {
			t.Fatalf("cohort %d: size %d", i, s)
		}
	}
	if s := (Universe{Users: 5000, Seed: 1}).CohortSize(0, FlavourUniform); s > 5000 {
		t.Errorf("size %d exceeds users", s)
	}
}

func TestUniformSample(t *testing.T) {
	u := Universe{Users: 10_000, Seed: 1}
	for _, k := range []int{0, 1, 100, 5_000, 9_999, 10_000} {
		m := u.CohortMembers(1, k, FlavourUniform)
		if len(m) != k || !slices.IsSorted(m) || len(slices.Compact(slices.Clone(m))) != k {
			t.Fatalf("k=%d: %d members, sorted %v", k, len(m), slices.IsSorted(m))
		}
	}
}

func TestUnmatchedRatio(t *testing.T) {
	u := Universe{Users: 10_000, Seed: 1}
	users := u.CohortMembers(0, 970, FlavourUniform)
	refs := u.newUnmatchedSource(0, FlavourUniform).withUnmatched(users)
	if len(refs) != 1000 {
		t.Fatalf("%d refs, want 970 members + 30 unmatched", len(refs))
	}
	var members, unknown, devices int
	for i, r := range refs {
		switch {
		case r.Kind == KindUnknown:
			unknown++
		case !u.Matches(r):
			devices++
			if r.Kind != KindDevice || u.Kind(int(r.N)) != KindIdentifiedLater {
				t.Fatalf("ref %d: %+v is not a device of an identified-later user", i, r)
			}
		default:
			members++
		}
		// Every group of 100 is 97 members then 2 unknown then 1 device.
		if pos := i % 100; pos == 97 || pos == 98 {
			if r.Kind != KindUnknown {
				t.Fatalf("ref %d: %+v, want unknown", i, r)
			}
		}
	}
	if members != 970 || unknown != 20 || devices != 10 {
		t.Errorf("members %d unknown %d devices %d, want 970/20/10", members, unknown, devices)
	}
	seen := map[string]bool{}
	for _, r := range refs {
		if r.Kind == KindUnknown {
			v := u.Value(r)
			if seen[v] {
				t.Fatalf("unknown id %q repeats", v)
			}
			seen[v] = true
		}
	}
}

func TestChurn(t *testing.T) {
	u := Universe{Users: 50_000, Seed: 1}
	members := u.CohortMembers(2, 10_000, FlavourUniform)
	cs := u.Churn(2, 1, members, 0.01, 0.01)
	if len(cs.Leave) != 100 || len(cs.Join) != 400 {
		t.Fatalf("leave %d join %d, want 100 and 400", len(cs.Leave), len(cs.Join))
	}
	in := map[uint32]bool{}
	for _, m := range members {
		in[m] = true
	}
	if !slices.IsSorted(cs.Leave) || !slices.IsSorted(cs.Join) {
		t.Fatal("change set not sorted")
	}
	for _, v := range cs.Leave {
		if !in[v] {
			t.Fatalf("leaver %d is not a member", v)
		}
	}
	for _, v := range cs.Join {
		if in[v] || v < 1 || int(v) > u.Users {
			t.Fatalf("joiner %d is a member or outside the universe", v)
		}
	}
	if len(slices.Compact(slices.Clone(cs.Join))) != len(cs.Join) {
		t.Fatal("duplicate joiners")
	}
	after := cs.Apply(members)
	if len(after) != 10_300 || !slices.IsSorted(after) {
		t.Fatalf("after: %d members, want 10300", len(after))
	}
	// Without a join share, as many join as leave: the size stays level.
	level := u.Churn(2, 1, members, 0.01, 0)
	if len(level.Leave) != 100 || len(level.Join) != 100 || len(level.Apply(members)) != len(members) {
		t.Fatalf("level churn: leave %d join %d", len(level.Leave), len(level.Join))
	}
	for _, v := range cs.Leave {
		if _, ok := slices.BinarySearch(after, v); ok {
			t.Fatalf("leaver %d still a member", v)
		}
	}
	for _, v := range cs.Join {
		if _, ok := slices.BinarySearch(after, v); !ok {
			t.Fatalf("joiner %d not a member", v)
		}
	}
	again := u.Churn(2, 1, members, 0.01, 0.01)
	if !slices.Equal(again.Join, cs.Join) || !slices.Equal(again.Leave, cs.Leave) {
		t.Error("churn is not deterministic")
	}
	next := u.Churn(2, 2, members, 0.01, 0.01)
	if slices.Equal(next.Join, cs.Join) {
		t.Error("intervals give the same change set")
	}
}

func TestPartnerBodyShape(t *testing.T) {
	u := Universe{Users: 100, Seed: 1}
	adds := u.refsOf([]uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
	body := u.appendPartnerChanges(nil, &Credentials{PartnerAPIKey: "pk", ClientSecret: "cs"}, "c1", adds, u.refsOf([]uint32{11}))
	var in struct {
		CohortID string `json:"cohort_id"`
		Changes  []map[string]json.RawMessage
	}
	if err := json.Unmarshal(body, &struct {
		CohortID *string                       `json:"cohort_id"`
		Changes  *[]map[string]json.RawMessage `json:"cohort_changes"`
	}{&in.CohortID, &in.Changes}); err != nil {
		t.Fatalf("invalid body %s: %v", body, err)
	}
	if in.CohortID != "c1" || len(in.Changes) != 2 {
		t.Fatalf("body %s", body)
	}
	for i, c := range in.Changes {
		for _, k := range []string{"user_ids", "device_ids", "aliases"} {
			if _, ok := c[k]; !ok {
				t.Errorf("change %d lacks %s", i, k)
			}
		}
		if want := []string{"false", "true"}[i]; string(c["should_remove"]) != want {
			t.Errorf("change %d should_remove %s, want %s (adds first)", i, c["should_remove"], want)
		}
	}
}
