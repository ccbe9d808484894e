package engine

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/cohortd/cohortd/index"
)

// model is a naive map-of-sets engine: the reference the model test
// compares cohortd's answers with.
type model struct {
	users   []*mUser
	keys    map[string]int // kind-tagged key → user
	cohorts map[string]map[int]bool
}

type mUser struct {
	ext     string
	aliases []string
	devs    []string
	deleted bool
}

func newModel() *model {
	return &model{keys: map[string]int{}, cohorts: map[string]map[int]bool{}}
}

func mkey(kind index.Kind, k string) string { return strconv.Itoa(int(kind)) + ":" + k }

func (m *model) resolve(kind index.Kind, k string) int {
	if id, ok := m.keys[mkey(kind, k)]; ok {
		return id
	}
	return -1
}

func (m *model) anonymous(id int) bool {
	u := m.users[id]
	return !u.deleted && u.ext == "" && len(u.aliases) == 0
}

func (m *model) create() int {
	m.users = append(m.users, &mUser{})
	return len(m.users) - 1
}

func (m *model) attach(id int, kind index.Kind, k string) {
	m.keys[mkey(kind, k)] = id
	u := m.users[id]
	switch kind {
	case index.KindExternal:
		u.ext = k
	case index.KindAlias:
		u.aliases = append(u.aliases, k)
	default:
		u.devs = append(u.devs, k)
	}
}

func (m *model) detach(kind index.Kind, k string) {
	id, ok := m.keys[mkey(kind, k)]
	if !ok {
		return
	}
	delete(m.keys, mkey(kind, k))
	u := m.users[id]
	switch kind {
	case index.KindExternal:
		u.ext = ""
	case index.KindAlias:
		u.aliases = slices.DeleteFunc(u.aliases, func(s string) bool { return s == k })
	default:
		u.devs = slices.DeleteFunc(u.devs, func(s string) bool { return s == k })
	}
}

func (m *model) move(id int, kind index.Kind, k string) bool {
	if m.resolve(kind, k) == id {
		return false
	}
	m.detach(kind, k)
	m.attach(id, kind, k)
	return true
}

func (m *model) deleteUser(id int) {
	u := m.users[id]
	if u.ext != "" {
		m.detach(index.KindExternal, u.ext)
	}
	for _, a := range slices.Clone(u.aliases) {
		m.detach(index.KindAlias, a)
	}
	for _, d := range slices.Clone(u.devs) {
		m.detach(index.KindDevice, d)
	}
	u.deleted = true
	for _, set := range m.cohorts {
		delete(set, id)
	}
}

// upsert mirrors docs/API.md §4 "Users" naively; returns the outcome name.
func (m *model) upsert(ext, dev string, aliases []string) string {
	if ext == "" && len(aliases) == 0 {
		if dev == "" || m.resolve(index.KindDevice, dev) >= 0 {
			return "unchanged"
		}
		m.attach(m.create(), index.KindDevice, dev)
		return "created"
	}
	target := -1
	if ext != "" {
		target = m.resolve(index.KindExternal, ext)
	} else {
		for _, a := range aliases {
			if t := m.resolve(index.KindAlias, a); t >= 0 {
				target = t
				break
			}
		}
	}
	devUser := -1
	if dev != "" {
		devUser = m.resolve(index.KindDevice, dev)
	}
	out := "unchanged"
	switch {
	case target < 0 && devUser >= 0 && m.anonymous(devUser):
		target, out = devUser, "identified"
	case target < 0:
		target, out = m.create(), "created"
	case devUser >= 0 && devUser != target && m.anonymous(devUser):
		for _, d := range slices.Clone(m.users[devUser].devs) {
			m.move(target, index.KindDevice, d)
		}
		for _, set := range m.cohorts {
			if set[devUser] {
				set[target] = true
			}
		}
		m.deleteUser(devUser)
		out = "merged"
	}
	changed := false
	if ext != "" && m.resolve(index.KindExternal, ext) != target {
		m.attach(target, index.KindExternal, ext)
		changed = true
	}
	for _, a := range aliases {
		if m.move(target, index.KindAlias, a) {
			changed = true
		}
	}
	if dev != "" && m.move(target, index.KindDevice, dev) {
		changed = true
	}
	if out == "unchanged" && changed {
		out = "updated"
	}
	return out
}

type mChange struct {
	kind   index.Kind
	key    string
	remove bool
}

// apply returns matched, unknown, deviceIdentified, added, removed.
func (m *model) apply(cohort string, changes []mChange) [5]int {
	set := m.cohorts[cohort]
	if set == nil {
		set = map[int]bool{}
		m.cohorts[cohort] = set
	}
	var r [5]int
	final := map[int]bool{} // user → remove?
	var order []int
	for _, c := range changes {
		id := m.resolve(c.kind, c.key)
		switch {
		case id < 0:
			r[1]++
		case c.kind == index.KindDevice && !m.anonymous(id):
			r[2]++
		default:
			r[0]++
			if _, ok := final[id]; !ok {
				order = append(order, id)
			}
			final[id] = c.remove
		}
	}
	for _, id := range order {
		if final[id] {
			if set[id] {
				delete(set, id)
				r[4]++
			}
		} else if !set[id] {
			set[id] = true
			r[3]++
		}
	}
	return r
}

func (m *model) replace(cohort string, members []mChange) (added, removed, unchanged, unmatched int) {
	set := m.cohorts[cohort]
	if set == nil {
		set = map[int]bool{}
		m.cohorts[cohort] = set
	}
	want := map[int]bool{}
	for _, c := range members {
		id := m.resolve(c.kind, c.key)
		if id < 0 || (c.kind == index.KindDevice && !m.anonymous(id)) {
			unmatched++
			continue
		}
		want[id] = true
	}
	for id := range want {
		if set[id] {
			unchanged++
		} else {
			added++
		}
	}
	for id := range set {
		if !want[id] {
			removed++
		}
	}
	m.cohorts[cohort] = want
	return
}

// modelExpr is a random segment expression in both forms.
type modelExpr struct {
	json string
	eval func(id int) bool
}

func (m *model) randExpr(r *rand.Rand, depth int) modelExpr {
	names := []string{"p/c0", "p/c1", "p/c2", "p/c3", "q/c0", "p/none"}
	if depth > 2 {
		depth = 3
	}
	switch k := r.IntN(6); {
	case k <= 1 || depth >= 3:
		n := names[r.IntN(len(names))]
		return modelExpr{fmt.Sprintf(`{"cohort":%q}`, n), func(id int) bool { return m.cohorts[n][id] }}
	case k == 2:
		e := m.randExpr(r, depth+1)
		return modelExpr{`{"not":` + e.json + `}`, func(id int) bool { return !e.eval(id) }}
	case k == 5 && r.IntN(4) == 0:
		return modelExpr{`{"all":true}`, func(int) bool { return true }}
	default:
		n := 1 + r.IntN(3)
		var es []modelExpr
		js := ""
		for i := 0; i < n; i++ {
			e := m.randExpr(r, depth+1)
			es = append(es, e)
			if i > 0 {
				js += ","
			}
			js += e.json
		}
		if k == 3 {
			return modelExpr{`{"and":[` + js + `]}`, func(id int) bool {
				for _, e := range es {
					if !e.eval(id) {
						return false
					}
				}
				return true
			}}
		}
		return modelExpr{`{"or":[` + js + `]}`, func(id int) bool {
			for _, e := range es {
				if e.eval(id) {
					return true
				}
			}
			return false
		}}
	}
}

func TestModel(t *testing.T) {
	seed := uint64(rand.Int64())
	if s := os.Getenv("COHORTD_MODEL_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	ops := 12000
	if testing.Short() {
		ops = 10000
	}
	t.Logf("seed %d (rerun with COHORTD_MODEL_SEED=%d)", seed, seed)
	if _, err := runModel(seed, ops, Options{}, nil); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
}

// runModel runs ops random operations against an engine opened with opts
// and the naive model, comparing every answer; hook (if set) runs after
// every operation.
func runModel(seed uint64, ops int, opts Options, hook func(i int, e *Engine) error) (*Engine, error) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	e, err := Open(opts)
	if err != nil {
		return nil, err
	}
	if _, err := e.CreateWorkspace("ws"); err != nil {
		return e, err
	}
	w := e.Workspace("ws")
	m := newModel()
	ext := func() string { return fmt.Sprintf("user-%d", r.IntN(300)) }
	dev := func() string { return fmt.Sprintf("dev-%d", r.IntN(200)) }
	alias := func() string {
		return string(index.AliasKey(nil, []byte("email"), fmt.Appendf(nil, "%d@x", r.IntN(80))))
	}
	randKey := func() mChange {
		switch r.IntN(3) {
		case 0:
			return mChange{kind: index.KindExternal, key: ext()}
		case 1:
			return mChange{kind: index.KindDevice, key: dev()}
		default:
			return mChange{kind: index.KindAlias, key: alias()}
		}
	}
	cohorts := []string{"p/c0", "p/c1", "p/c2", "p/c3", "q/c0"}
	for i := 0; i < ops; i++ {
		switch op := r.IntN(100); {
		case op < 35: // upsert a small batch
			var b UserBatch
			var want []string
			n := 1 + r.IntN(4)
			if r.IntN(10) == 0 {
				// A batch longer than a prefill chunk (usercache.go), so
				// that records meet keys earlier records of the chunk
				// touched.
				n = 200 + r.IntN(400)
			}
			for ; n > 0; n-- {
				var e, d string
				var as []string
				switch r.IntN(6) {
				case 0:
					e = ext()
				case 1:
					d = dev()
				case 2:
					as = []string{alias()}
				case 3:
					e, d = ext(), dev()
				case 4:
					d, as = dev(), []string{alias()}
				default:
					e, as = ext(), []string{alias(), alias()}
				}
				var eb, db []byte
				if e != "" {
					eb = []byte(e)
				}
				if d != "" {
					db = []byte(d)
				}
				var ab [][]byte
				for _, a := range as {
					ab = append(ab, []byte(a))
				}
				b.Add(eb, db, ab)
				want = append(want, m.upsert(e, d, as))
			}
			res, err := w.UpsertUsers(&b)
			if err != nil {
				return e, err
			}
			cnt := map[string]int{}
			for _, o := range want {
				cnt[o]++
			}
			got := map[string]int{"created": res.Created, "identified": res.Identified, "merged": res.Merged, "updated": res.Updated, "unchanged": res.Unchanged}
			for k, v := range got {
				if cnt[k] != v {
					return e, fmt.Errorf("op %d upsert: %s = %d, model %d (%v vs %v)", i, k, v, cnt[k], got, cnt)
				}
			}
		case op < 38: // delete, sometimes several keys (possibly of one user)
			var set IdentifierSet
			var keys []mChange
			for n := 1 + r.IntN(3)*r.IntN(3); n > 0; n-- {
				keys = append(keys, randKey())
			}
			// The engine deletes external ids, then device ids, then
			// aliases; the model follows that order.
			for _, kind := range []index.Kind{index.KindExternal, index.KindDevice, index.KindAlias} {
				for _, c := range keys {
					if c.kind != kind {
						continue
					}
					switch kind {
					case index.KindExternal:
						set.ExternalIDs = append(set.ExternalIDs, []byte(c.key))
					case index.KindDevice:
						set.DeviceIDs = append(set.DeviceIDs, []byte(c.key))
					default:
						set.Aliases = append(set.Aliases, []byte(c.key))
					}
				}
			}
			res, err := w.DeleteUsers(set)
			if err != nil {
				return e, err
			}
			wantDel := 0
			for _, kind := range []index.Kind{index.KindExternal, index.KindDevice, index.KindAlias} {
				for _, c := range keys {
					if c.kind != kind {
						continue
					}
					if id := m.resolve(c.kind, c.key); id >= 0 {
						m.deleteUser(id)
						wantDel++
					}
				}
			}
			if res.Deleted != wantDel || res.Unmatched != len(keys)-wantDel {
				return e, fmt.Errorf("op %d delete %v: got %+v want deleted %d", i, keys, res, wantDel)
			}
		case op < 70: // change batch
			name := cohorts[r.IntN(len(cohorts))]
			var changes []mChange
			n := r.IntN(40)
			if r.IntN(4) == 0 {
				// One identifier a line across more than one resolve
				// chunk (stage.go), with many repeated users.
				n = 200 + r.IntN(600)
			}
			for ; n > 0; n-- {
				c := randKey()
				c.remove = r.IntN(3) == 0
				changes = append(changes, c)
			}
			cs := w.NewChangeSet()
			if r.IntN(2) == 0 {
				for _, c := range changes { // one identifier a line
					cs.AddMany(c.kind, [][]byte{[]byte(c.key)}, c.remove)
				}
			} else {
				// Runs of one kind and direction in one call, as the
				// decoder hands a change object over.
				for j := 0; j < len(changes); {
					k := j
					var keys [][]byte
					for k < len(changes) && changes[k].kind == changes[j].kind && changes[k].remove == changes[j].remove {
						keys = append(keys, []byte(changes[k].key))
						k++
					}
					cs.AddMany(changes[j].kind, keys, changes[j].remove)
					j = k
				}
			}
			p, id, _ := cut(name)
			res, err := w.ApplyChanges(p, id, cs)
			if err != nil {
				return e, err
			}
			want := m.apply(name, changes)
			got := [5]int{res.Matched, res.Unknown, res.DeviceIdentified, res.Added, res.Removed}
			if got != want {
				return e, fmt.Errorf("op %d apply %s: got %v want %v", i, name, got, want)
			}
			if res.DataPoints != want[3]+want[4] || res.Unmatched != want[1]+want[2] {
				return e, fmt.Errorf("op %d apply: data points/unmatched %+v", i, res)
			}
		case op < 75: // snapshot replace
			name := cohorts[r.IntN(len(cohorts))]
			var members []mChange
			n := r.IntN(60)
			if r.IntN(4) == 0 {
				n = 200 + r.IntN(600)
			}
			for ; n > 0; n-- {
				members = append(members, randKey())
			}
			ms := w.NewMemberSet()
			for _, c := range members {
				ms.AddMany(c.kind, [][]byte{[]byte(c.key)})
			}
			p, id, _ := cut(name)
			res, err := w.ReplaceMembers(p, id, ms)
			if err != nil {
				return e, err
			}
			a, rm, u, um := m.replace(name, members)
			if res.Added != a || res.Removed != rm || res.Unchanged != u || res.Unmatched != um {
				return e, fmt.Errorf("op %d replace %s: got %+v want %d/%d/%d/%d", i, name, res, a, rm, u, um)
			}
		default: // segment queries
			ex := m.randExpr(r, 0)
			seg, err := parseSegment([]byte(ex.json))
			if err != nil {
				return e, fmt.Errorf("op %d parse %s: %v", i, ex.json, err)
			}
			b := w.Bind(seg)
			want := 0
			for id, u := range m.users {
				if !u.deleted && ex.eval(id) {
					want++
				}
			}
			if got := b.Count(); got != uint64(want) {
				return e, fmt.Errorf("op %d count %s = %d, model %d", i, ex.json, got, want)
			}
			if got := b.Bitmap().GetCardinality(); got != uint64(want) {
				return e, fmt.Errorf("op %d bitmap %s = %d, model %d", i, ex.json, got, want)
			}
			// Paging walks candidates instead of the materialised set: the
			// pages must still list exactly the members, in order.
			if r.IntN(4) == 0 {
				var paged []int
				cursor, limit := "", 1+r.IntN(40)
				for pages := 0; ; pages++ {
					ids, next, err := b.Page(cursor, limit)
					if err != nil || pages > len(m.users)+1 {
						return e, fmt.Errorf("op %d page %s: %v after %d pages", i, ex.json, err, pages)
					}
					for _, id := range ids {
						paged = append(paged, int(id))
					}
					if next == "" {
						break
					}
					cursor = next
				}
				var wantIDs []int
				for id, u := range m.users {
					if !u.deleted && ex.eval(id) {
						wantIDs = append(wantIDs, id)
					}
				}
				if !slices.Equal(paged, wantIDs) {
					return e, fmt.Errorf("op %d pages of %d of %s: %v, model %v", i, limit, ex.json, paged, wantIDs)
				}
			}
			// Half the time, as a batch lookup would, let the sets
			// build their dense views first (any lookup count past the
			// workspace's earns one): every user must answer the same.
			if r.IntN(2) == 0 {
				// A batch contains that named the segment first
				// (Lookup.Within): external ids one of its cohorts'
				// key filters rules out are not resolved. 1,100 ids
				// earn the filter of any model cohort (small ones
				// need 1,024 lookups), so the second batch uses it.
				lk := w.NewLookup()
				lk.Within(b)
				var keys [][]byte
				for range 1100 {
					keys = append(keys, []byte(ext()))
				}
				lk.AddMany(index.KindExternal, keys)
				lk.AddMany(index.KindExternal, keys)
				for _, k := range keys[:200] { // the queued path too
					lk.Add(index.KindExternal, k)
				}
				for j, id := range lk.IDs() {
					key := string(keys[j%len(keys)])
					mid := m.resolve(index.KindExternal, key)
					want := mid >= 0 && !m.users[mid].deleted && ex.eval(mid)
					if got := b.Contains(id); got != want {
						return e, fmt.Errorf("op %d contains %s external id %q within the segment = %v, model %v", i, ex.json, key, got, want)
					}
				}
				b.Expect(1 << 20)
				for id := range len(m.users) + 2 {
					want := id < len(m.users) && !m.users[id].deleted && ex.eval(id)
					if got := b.Contains(index.UserID(id)); got != want {
						return e, fmt.Errorf("op %d contains %s user %d with dense views = %v, model %v", i, ex.json, id, got, want)
					}
				}
				for _, name := range cohorts {
					p, cid, _ := cut(name)
					c := w.Cohort(p, cid)
					if c == nil {
						continue
					}
					set := w.LookupSet(c, 1<<20)
					for id := range len(m.users) + 2 {
						if got, want := set.Contains(index.UserID(id)), m.cohorts[name][id]; got != want {
							return e, fmt.Errorf("op %d cohort %s user %d with its dense view = %v, model %v", i, name, id, got, want)
						}
					}
					// Resolving for the set skips users its key filter
					// rules out: membership must come out the same.
					var keys [][]byte
					for range 32 {
						keys = append(keys, []byte(ext()))
					}
					for j, id := range w.ResolveIn(set, index.KindExternal, keys, nil) {
						mid := m.resolve(index.KindExternal, string(keys[j]))
						if got, want := set.Contains(id), mid >= 0 && m.cohorts[name][mid]; got != want {
							return e, fmt.Errorf("op %d cohort %s external id %q resolved for the set = %v, model %v", i, name, keys[j], got, want)
						}
					}
				}
			}
			for n := 0; n < 5; n++ {
				c := randKey()
				id := w.Resolve(c.kind, []byte(c.key))
				mid := m.resolve(c.kind, c.key)
				if (id == index.NoUser) != (mid < 0) || (mid >= 0 && int(id) != mid) {
					return e, fmt.Errorf("op %d resolve %v: got %d model %d", i, c, id, mid)
				}
				wantIn := mid >= 0 && ex.eval(mid)
				if got := b.Contains(id); got != wantIn {
					return e, fmt.Errorf("op %d contains %s %v = %v, model %v", i, ex.json, c, got, wantIn)
				}
			}
		}
		if hook != nil {
			if err := hook(i, e); err != nil {
				return e, fmt.Errorf("op %d: hook: %w", i, err)
			}
		}
		if i%2000 == 0 {
			if err := e.Check(); err != nil {
				return e, fmt.Errorf("op %d: check: %w", i, err)
			}
		}
	}
	// Final: every cohort equals the model, every user's identifiers too.
	for _, name := range cohorts {
		p, id, _ := cut(name)
		c := w.Cohort(p, id)
		want := m.cohorts[name]
		var got []uint32
		if c != nil {
			got = c.Members().ToArray()
		}
		if len(got) != len(want) {
			return e, fmt.Errorf("final %s: %d members, model %d", name, len(got), len(want))
		}
		for _, u := range got {
			if !want[int(u)] {
				return e, fmt.Errorf("final %s: user %d not in model", name, u)
			}
		}
	}
	for id, u := range m.users {
		info := w.UserInfo(index.UserID(id))
		if u.deleted {
			if !w.users.Deleted(index.UserID(id)) {
				return e, fmt.Errorf("user %d should be deleted", id)
			}
			continue
		}
		if info.ExternalID != u.ext || len(info.DeviceIDs) != len(u.devs) || len(info.Aliases) != len(u.aliases) || info.Anonymous != m.anonymous(id) {
			return e, fmt.Errorf("user %d: %+v, model %+v", id, info, *u)
		}
	}
	return e, e.Check()
}

func cut(name string) (string, string, bool) {
	for i := 0; i < len(name); i++ {
		if name[i] == '/' {
			return name[:i], name[i+1:], true
		}
	}
	return name, "", false
}
