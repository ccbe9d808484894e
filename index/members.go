package index

import (
	"sync/atomic"

	"github.com/RoaringBitmap/roaring/v2"
)

// Members is the member set of one cohort, for one writer and any number
// of readers.
//
// # Versions
//
// The writer keeps a private master bitmap with copy-on-write containers;
// after each change it publishes master.Clone() through an atomic pointer.
// Under copy-on-write, Clone copies only the container index (about 1,500
// entries at 100M users) and marks every container shared, so the next
// change copies just the containers it touches, never the whole set.
// Readers load the published bitmap and never see half a change.
//
// # Rules for readers
//
// A published bitmap must never be mutated or Cloned (Clone marks the
// shared flags of its source: a write). Build private copies with
// roaring.Or(x, empty) or the functions of algebra.go, which only read their
// operands.
type Members struct {
	master *roaring.Bitmap // writer only
	pub    atomic.Pointer[roaring.Bitmap]
	size   atomic.Pointer[sizedBitmap] // Bytes' cache, for the version published
	dense  denseCache                  // the published version's dense view (dense.go)
}

// sizedBitmap is a published version and its serialized size.
type sizedBitmap struct {
	bm    *roaring.Bitmap
	bytes int64
}

// NewMembers returns an empty member set whose dense views (dense.go) count
// against budget; nil builds none.
func NewMembers(budget *DenseBudget) *Members {
	m := &Members{dense: denseCache{budget: budget}}
	m.Reset(roaring.New())
	return m
}

// Reset makes bm (now owned by m) the member set and publishes it. Writer only.
func (m *Members) Reset(bm *roaring.Bitmap) {
	m.master = bm
	m.master.SetCopyOnWrite(true)
	m.publish()
}

func (m *Members) publish() {
	pub := m.master.Clone()
	m.pub.Store(pub)
	m.dense.reset(pub)
}

// Dense returns the dense view of bm, a version Load returned, or nil when
// it has none; n is how many lookups the caller is about to make in bm,
// which is what earns a version its view (dense.go).
func (m *Members) Dense(bm *roaring.Bitmap, n int) *Dense { return m.dense.view(bm, n) }

// KeyFilter returns the filter of the keys of kind that the members of bm,
// a version Load returned, hold in u (keyfilter.go), or nil when it has
// none; n is how many lookups the caller is about to make, which is what
// earns a version its filter. Pass it to u.ResolveManyIn.
func (m *Members) KeyFilter(bm *roaring.Bitmap, u *Users, kind Kind, n int) *KeyFilter {
	return m.dense.keyFilter(bm, u, kind, n)
}

// CountView returns the dense view of bm, a version Load returned, for a
// count over it (CountAndNot, CountOr), or nil. Only a set held mostly in
// bitmap containers gets one this way, once DenseCountsToEarn counts have
// asked for it at its version (dense.go, "Counts").
func (m *Members) CountView(bm *roaring.Bitmap) *Dense { return m.dense.countView(bm) }

// DenseBytes returns the size of the published version's dense view and
// key filter, or 0.
func (m *Members) DenseBytes() int64 { return m.dense.bytes() }

// Bytes returns the memory of the published set (roaring's
// GetSizeInBytes), computed once per published version: metrics and the
// memory report read it for every cohort on every scrape.
func (m *Members) Bytes() int64 {
	pub := m.Load()
	if c := m.size.Load(); c != nil && c.bm == pub {
		return c.bytes
	}
	c := &sizedBitmap{bm: pub, bytes: int64(pub.GetSizeInBytes())}
	m.size.Store(c)
	return c.bytes
}

// Load returns the published member set. Never mutate or Clone it.
func (m *Members) Load() *roaring.Bitmap { return m.pub.Load() }

// Diff returns the effective change of applying adds then removes (each a
// set of users whose last change is that one): the users of adds who are
// not members and the users of removes who are. It reads the writer's
// state; writer only.
func (m *Members) Diff(adds, removes *roaring.Bitmap) (added, removed *roaring.Bitmap) {
	return roaring.AndNot(adds, m.master), roaring.And(removes, m.master)
}

// DiffTo returns the effective change that makes the set equal target:
// target \ members and members \ target. Writer only.
func (m *Members) DiffTo(target *roaring.Bitmap) (added, removed *roaring.Bitmap) {
	return roaring.AndNot(target, m.master), roaring.AndNot(m.master, target)
}

// Apply adds and removes users (an effective change from Diff or DiffTo,
// or one read back from the log) and publishes the result. Writer only.
func (m *Members) Apply(added, removed *roaring.Bitmap) {
	m.master.Or(added)
	m.master.AndNot(removed)
	m.publish()
}

// MergeAndRemove applies user merges and deletions: for each (from, into)
// pair a member from makes into a member; then every user of gone leaves.
// It publishes only when something changed and reports whether it did.
// Writer only.
func (m *Members) MergeAndRemove(merges [][2]uint32, gone *roaring.Bitmap) bool {
	changed := false
	for _, p := range merges {
		if m.master.Contains(p[0]) {
			m.master.Add(p[1])
			changed = true
		}
	}
	if m.master.Intersects(gone) {
		m.master.AndNot(gone)
		changed = true
	}
	if changed {
		m.publish()
	}
	return changed
}

// Consistent reports whether the published set equals the writer's
// master (for Check). Writer only.
func (m *Members) Consistent() bool { return m.Load().Equals(m.master) }
