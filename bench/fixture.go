package bench

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/index"
	"github.com/cohortd/cohortd/loadgen"
)

// EngineFixture is an in-memory engine seeded with a docs/WORKLOADS.md universe:
// one workspace, the partner Partner with an import key, and the algebra
// cohorts A, B, C of both flavours.
type EngineFixture struct {
	U          loadgen.Universe
	E          *engine.Engine
	W          *engine.Workspace
	APIKey     string // the workspace's bearer token
	PartnerKey string
	Secret     string // the data import key of (workspace, Partner)

	// Memory measured while seeding: Go heap growth per user and per
	// algebra-cohort member, and RSS growth per user.
	HeapPerUser, HeapPerMember, RSSPerUser float64
}

// NewEngineFixture seeds an engine opened with opts (zero Options: in
// memory, no WAL) with users users in two passes, as docs/WORKLOADS.md
// describes: creation in arrival order, then the later identification of a
// third of the anonymous users.
func NewEngineFixture(users int, opts engine.Options) (*EngineFixture, error) {
	f := &EngineFixture{U: loadgen.Universe{Users: users, Seed: Seed}}
	heap0, rss0 := heapBytes(), rssBytes()
	e, err := engine.Open(opts)
	if err != nil {
		return nil, err
	}
	f.E = e
	if f.APIKey, err = e.CreateWorkspace("bench"); err != nil {
		return nil, err
	}
	if f.PartnerKey, err = e.CreatePartner(Partner); err != nil {
		return nil, err
	}
	f.W = e.Workspace("bench")
	if _, f.Secret, err = f.W.CreateImportKey(Partner); err != nil {
		return nil, err
	}
	if err := SeedEngine(f.W, f.U); err != nil {
		return nil, err
	}
	heap1, rss1 := heapBytes(), rssBytes()
	f.HeapPerUser = float64(heap1-heap0) / float64(users)
	f.RSSPerUser = float64(rss1-rss0) / float64(users)
	members := 0
	for _, fl := range Flavours {
		for i := range algebraCohorts {
			ids := algebraMembers(f.U, fl, i)
			members += len(ids)
			ms := f.W.NewMemberSet()
			addIdents(ms, idents(f.U, ids, nil, 0))
			if _, err := f.W.ReplaceMembers(Partner, algebraID(fl, i), ms); err != nil {
				return nil, fmt.Errorf("cohort %s: %w", algebraID(fl, i), err)
			}
		}
	}
	f.HeapPerMember = float64(heapBytes()-heap1) / float64(members)
	return f, nil
}

// SeedEngine creates the universe's users in w, 100k a batch.
func SeedEngine(w *engine.Workspace, u loadgen.Universe) error {
	const batch = 100_000
	var ext, dev, lab []byte
	for pass := 0; pass < 2; pass++ {
		for start := 1; start <= u.Users; start += batch {
			var b engine.UserBatch
			for n := start; n < start+batch && n <= u.Users; n++ {
				k := u.Kind(n)
				ext = append(ext[:0], loadgen.ExternalID(n)...)
				dev = append(dev[:0], u.DeviceID(n)...)
				switch {
				case pass == 1 && k == loadgen.KindIdentifiedLater:
					b.Add(ext, dev, nil)
				case pass == 1:
				case k == loadgen.KindExternal:
					b.Add(ext, nil, nil)
				case k == loadgen.KindAlias:
					lab = index.AliasKey(lab[:0], []byte(AliasName), []byte(loadgen.AliasLabel(n)))
					b.Add(nil, nil, [][]byte{lab})
				default:
					b.Add(nil, dev, nil)
				}
			}
			if b.Len() == 0 {
				continue
			}
			if _, err := w.UpsertUsers(&b); err != nil {
				return fmt.Errorf("seed users %d…: %w", start, err)
			}
		}
	}
	return nil
}

// addIdents stages identifiers in a member set by kind.
func addIdents(ms *engine.MemberSet, ids []Ident) {
	ext, dev, ali := splitKinds(ids)
	ms.AddMany(index.KindExternal, ext)
	ms.AddMany(index.KindDevice, dev)
	ms.AddMany(index.KindAlias, ali)
}

// splitKinds returns the identifiers' keys by index kind (alias keys made
// with index.AliasKey).
func splitKinds(ids []Ident) (ext, dev, ali [][]byte) {
	for _, id := range ids {
		switch id.Kind {
		case loadgen.KindDevice:
			dev = append(dev, []byte(id.Value))
		case loadgen.KindAlias:
			ali = append(ali, index.AliasKey(nil, []byte(AliasName), []byte(id.Value)))
		default:
			ext = append(ext, []byte(id.Value))
		}
	}
	return ext, dev, ali
}

// KeyedChange is a Change with its identifiers split by index kind, ready
// for the engine's AddMany calls.
type KeyedChange struct {
	Ext, Dev, Ali [][]byte
	Remove        bool
}

// KeyRequest splits a request's identifiers by kind once, before a timer
// starts.
func KeyRequest(r Request) []KeyedChange {
	out := make([]KeyedChange, len(r))
	for i, c := range r {
		out[i].Ext, out[i].Dev, out[i].Ali = splitKinds(c.IDs)
		out[i].Remove = c.Remove
	}
	return out
}

// EngineChangeSet stages a keyed request in a change set of w.
func EngineChangeSet(w *engine.Workspace, r []KeyedChange) *engine.ChangeSet {
	cs := w.NewChangeSet()
	for _, c := range r {
		cs.AddMany(index.KindExternal, c.Ext, c.Remove)
		cs.AddMany(index.KindDevice, c.Dev, c.Remove)
		cs.AddMany(index.KindAlias, c.Ali, c.Remove)
	}
	return cs
}

// heapBytes returns the live Go heap after a collection.
func heapBytes() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// rssBytes returns the process's resident set size, or 0 off Linux.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}
