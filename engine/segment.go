package engine

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"slices"
	"sync"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/index"
)

// Segment is a segment expression (docs/API.md §4 "Segments"), ready to
// bind:
//
//	{"cohort":"<partner>/<cohort_id>"} · {"not":E} · {"and":[E,…]} · {"or":[E,…]} · {"all":true}
//
// The engine holds expressions as trees of SegmentExpr; their JSON syntax
// is the server's to parse (server/segment). A Segment is independent of
// any workspace; Workspace.Bind resolves its cohorts.
type Segment struct {
	root  *SegmentExpr
	flat  []*SegmentExpr // preorder
	nkids int
	gate  int       // flat index of a cohort every member is in (the root, or a clause of a root "and"), or -1
	pool  sync.Pool // *BoundSegment

	// The root's clauses when it is an "and" of cohorts and negated
	// cohorts (one cohort at least) or an "or" of cohorts, of
	// minCountViews to maxCountViews clauses: such a count may run over
	// the cohorts' dense views (BoundSegment.Count).
	countSets []countSet
}

// countSet is a cohort clause of a count over dense views.
type countSet struct {
	node int  // flat index of the cohort
	neg  bool // the clause is its negation
}

// The counts that may run over dense views: roaring counts one or two
// sets without building anything, and builds an intermediate for three or
// more (index/dense.go, "Counts"). The upper bound keeps the views on the
// stack.
const (
	minCountViews = 3
	maxCountViews = 8
)

// SegmentExpr is one node of a segment expression, made by CohortExpr,
// NotExpr, AndExpr, OrExpr or AllExpr. Expressions form trees: a node is
// used once, in one expression, and not changed once NewSegment has it.
type SegmentExpr struct {
	op      index.Op // OpSet names a cohort by partner and id
	partner string
	id      string
	warning string // OpSet: the warning when the cohort is unknown
	kids    []*SegmentExpr
}

// CohortExpr is the members of cohort (partner, id). An unknown cohort is
// an empty set and adds a warning when bound.
func CohortExpr(partnerSlug, id string) *SegmentExpr {
	return &SegmentExpr{op: index.OpSet, partner: partnerSlug, id: id}
}

// NotExpr is the live users not in e.
func NotExpr(e *SegmentExpr) *SegmentExpr {
	return &SegmentExpr{op: index.OpNot, kids: []*SegmentExpr{e}}
}

// AndExpr is the users in every one of es (at least one).
func AndExpr(es ...*SegmentExpr) *SegmentExpr { return &SegmentExpr{op: index.OpAnd, kids: es} }

// OrExpr is the users in any of es (at least one).
func OrExpr(es ...*SegmentExpr) *SegmentExpr { return &SegmentExpr{op: index.OpOr, kids: es} }

// AllExpr is every live user.
func AllExpr() *SegmentExpr { return &SegmentExpr{op: index.OpAll} }

// NewSegment makes a Segment of the expression root, which it takes over.
func NewSegment(root *SegmentExpr) *Segment {
	seg := &Segment{root: root}
	seg.flatten()
	return seg
}

// BoundSegment is a segment evaluated against one workspace: every cohort
// bitmap and the live-users set are loaded once, so a query sees each
// cohort at one version. The algebra is index.Expr's.
//
// Bind takes a BoundSegment from a pool of the Segment (the expression tree
// is built once per pooled value); Release gives it back, after which it
// must not be used. Not calling Release is fine: the value is collected.
type BoundSegment struct {
	w        *Workspace
	seg      *Segment
	expr     *index.Expr
	live     *roaring.Bitmap
	Warnings []string // "unknown cohort <partner>/<cohort_id>", in first-seen order

	nodes []index.Expr     // the tree, preorder; nodes[0] is the root
	kids  []*index.Expr    // backing array of every node's Kids
	sets  []*index.Members // per node: the cohort a set node was bound to, else nil
	liveD *index.Dense     // live's dense view, once Expect found one
}

var emptyBitmap = roaring.New()

// flatten numbers the segment's nodes in preorder (once, at parse).
func (s *Segment) flatten() {
	var walk func(n *SegmentExpr)
	walk = func(n *SegmentExpr) {
		s.flat = append(s.flat, n)
		s.nkids += len(n.kids)
		if n.op == index.OpSet {
			n.warning = "unknown cohort " + n.partner + "/" + n.id
		}
		for _, k := range n.kids {
			walk(k)
		}
	}
	walk(s.root)
	s.flatCount()
	s.gate = -1
	switch s.root.op {
	case index.OpSet:
		s.gate = 0
	case index.OpAnd:
		for _, k := range s.root.kids {
			if k.op == index.OpSet {
				s.gate = slices.Index(s.flat, k)
				break
			}
		}
	}
}

// flatCount sets countSets when the root has the shape a count over dense
// views handles.
func (s *Segment) flatCount() {
	r := s.root
	if (r.op != index.OpAnd && r.op != index.OpOr) || len(r.kids) < minCountViews || len(r.kids) > maxCountViews {
		return
	}
	var sets []countSet
	for _, k := range r.kids {
		switch {
		case k.op == index.OpSet:
			sets = append(sets, countSet{node: slices.Index(s.flat, k)})
		case r.op == index.OpAnd && k.op == index.OpNot && k.kids[0].op == index.OpSet:
			sets = append(sets, countSet{node: slices.Index(s.flat, k.kids[0]), neg: true})
		default:
			return
		}
	}
	if !slices.ContainsFunc(sets, func(c countSet) bool { return !c.neg }) {
		return // "and" of negations only: relative to the live users
	}
	s.countSets = sets
}

// newBound builds the expression tree of s for pooling.
func (s *Segment) newBound() *BoundSegment {
	b := &BoundSegment{seg: s, nodes: make([]index.Expr, len(s.flat)), kids: make([]*index.Expr, 0, s.nkids),
		sets: make([]*index.Members, len(s.flat))}
	pos := make(map[*SegmentExpr]int, len(s.flat))
	for i, n := range s.flat {
		pos[n] = i
	}
	for i, n := range s.flat {
		b.nodes[i].Op = n.op
		start := len(b.kids)
		for _, k := range n.kids {
			b.kids = append(b.kids, &b.nodes[pos[k]])
		}
		b.nodes[i].Kids = b.kids[start:len(b.kids):len(b.kids)]
	}
	b.expr = &b.nodes[0]
	return b
}

// Bind resolves the segment's cohorts in w. An unknown cohort is an empty
// set and adds a warning. The fast path allocates nothing (see
// BoundSegment).
func (w *Workspace) Bind(s *Segment) *BoundSegment {
	b, _ := s.pool.Get().(*BoundSegment)
	if b == nil {
		b = s.newBound()
	}
	b.w, b.live = w, w.users.Live()
	b.Warnings = b.Warnings[:0]
	for i, n := range s.flat {
		if n.op != index.OpSet {
			continue
		}
		if c := w.Cohort(n.partner, n.id); c != nil {
			b.nodes[i].Set = c.Members()
			b.sets[i] = c.members
			continue
		}
		b.nodes[i].Set = emptyBitmap
		// Warnings are rare and few: a linear check for repeats keeps
		// every query from allocating a set for them.
		if !slices.Contains(b.Warnings, n.warning) {
			b.Warnings = append(b.Warnings, n.warning)
		}
	}
	return b
}

// Release returns b to its segment's pool; b must not be used afterwards.
func (b *BoundSegment) Release() {
	b.w, b.live, b.liveD = nil, nil, nil
	for i := range b.nodes {
		b.nodes[i].Set, b.nodes[i].Dense = nil, nil // do not pin old bitmap versions
		b.sets[i] = nil
	}
	clear(b.Warnings)
	b.seg.pool.Put(b)
}

// Expect tells b that n calls of Contains are coming, so that the sets it
// probes use their dense views where the lookups asked of them have earned
// one (index/dense.go). Batch lookups call it once before their loop.
func (b *BoundSegment) Expect(n int) {
	if b.liveD == nil {
		b.liveD = b.w.users.LiveDense(b.live, n)
	}
	for i, m := range b.sets {
		if m != nil && b.nodes[i].Dense == nil {
			b.nodes[i].Dense = m.Dense(b.nodes[i].Set, n)
		}
	}
}

// Resolve is Workspace.ResolveMany for users that will only be tested
// with b.Contains: external ids that the key filter of a cohort every
// member of b is in rules out come back as index.NoUser without being
// looked up (index/keyfilter.go).
func (b *BoundSegment) Resolve(kind index.Kind, keys [][]byte, dst []index.UserID) []index.UserID {
	var f *index.KeyFilter
	if kind == index.KindExternal {
		f = b.gateFilter(len(keys))
	}
	return b.w.users.ResolveManyIn(f, kind, keys, dst)
}

// gateFilter returns the filter of the external ids held by the members of
// a cohort that every member of the segment is in, at the version b bound,
// when the lookups asked of it (n more now) have earned one
// (index/keyfilter.go); else nil. An id it rules out is in no member's
// hands, so the segment does not contain its user.
func (b *BoundSegment) gateFilter(n int) *index.KeyFilter {
	i := b.seg.gate
	if i < 0 || b.sets[i] == nil {
		return nil
	}
	return b.sets[i].KeyFilter(b.nodes[i].Set, b.w.users, index.KindExternal, n)
}

// Contains reports whether user id is in the segment, without
// materialising any set: a few bitmap probes per clause, or one load each
// from the dense views Expect found.
func (b *BoundSegment) Contains(id index.UserID) bool {
	if id == index.NoUser {
		return false
	}
	if b.liveD != nil {
		if !b.liveD.Contains(uint32(id)) {
			return false
		}
	} else if !b.live.Contains(uint32(id)) {
		return false
	}
	return b.expr.Contains(uint32(id))
}

// Count returns the number of live users in the segment.
func (b *BoundSegment) Count() uint64 {
	if n, ok := b.countViews(); ok {
		return n
	}
	return b.expr.Count(b.live)
}

// countViews counts the segment in one pass over its cohorts' dense views
// when its shape allows (Segment.countSets) and every cohort has a count
// view (index.Members.CountView); ok is false otherwise. Every cohort is
// asked, even after one had none, since asking is what earns a view.
func (b *BoundSegment) countViews() (n uint64, ok bool) {
	s := b.seg
	if len(s.countSets) == 0 {
		return 0, false
	}
	var inb, outb [maxCountViews]*index.Dense
	in, out := inb[:0], outb[:0]
	ok = true
	for _, c := range s.countSets {
		var v *index.Dense
		if m := b.sets[c.node]; m != nil {
			v = m.CountView(b.nodes[c.node].Set)
		}
		switch {
		case v == nil:
			ok = false
		case c.neg:
			out = append(out, v)
		default:
			in = append(in, v)
		}
	}
	if !ok {
		return 0, false
	}
	if s.root.op == index.OpOr {
		return index.CountOr(in), true
	}
	return index.CountAndNot(in, out), true
}

// Bitmap materialises the segment as a new bitmap owned by the caller.
func (b *BoundSegment) Bitmap() *roaring.Bitmap { return b.expr.Bitmap(b.live) }

// Set materialises the segment as a Set.
func (b *BoundSegment) Set() Set { return Set{bm: b.Bitmap()} }

// ---- member cursors ----

// cursorCodec turns the last dense id of a page into an opaque cursor. Dense
// ids never leave the process in the clear: the cursor is the id encrypted
// with a key derived from the admin token, bound to the workspace.
type cursorCodec struct{ block cipher.Block }

func newCursorCodec(secret []byte) cursorCodec {
	k := sha256.Sum256(append([]byte("cohortd cursor v1\x00"), secret...))
	blk, err := aes.NewCipher(k[:16])
	if err != nil {
		panic("BUG: aes key: " + err.Error())
	}
	return cursorCodec{block: blk}
}

func (c cursorCodec) encode(ws string, id uint32) string {
	var buf [16]byte
	binary.LittleEndian.PutUint32(buf[:4], id)
	h := sha256.Sum256([]byte(ws))
	copy(buf[4:], h[:12])
	c.block.Encrypt(buf[:], buf[:])
	return base64.RawURLEncoding.EncodeToString(buf[:])
}

func (c cursorCodec) decode(ws, s string) (uint32, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(raw) != 16 {
		return 0, false
	}
	c.block.Decrypt(raw, raw)
	h := sha256.Sum256([]byte(ws))
	if string(raw[4:]) != string(h[:12]) {
		return 0, false
	}
	return binary.LittleEndian.Uint32(raw[:4]), true
}

// Page returns up to limit members of the segment after cursor ("" for the
// first page) and the cursor of the next page ("" when there is none).
// It walks the expression's candidates from the cursor on (index.Expr.Page)
// instead of materialising the segment, so a page costs about its own size
// (more when the segment is sparse in its candidates), not the segment's.
func (b *BoundSegment) Page(cursor string, limit int) ([]index.UserID, string, error) {
	start := uint64(0)
	if cursor != "" {
		last, ok := b.w.e.cursor.decode(b.w.id, cursor)
		if !ok {
			return nil, "", invalidf("cursor is not valid for this workspace")
		}
		start = uint64(last) + 1
	}
	if start > uint64(^uint32(0)) || limit <= 0 {
		return nil, "", nil
	}
	// One member more than asked tells whether a next page exists.
	ids := b.expr.Page(b.live, uint32(start), limit+1, make([]uint32, 0, min(limit+1, 4097)))
	more := len(ids) > limit
	if more {
		ids = ids[:limit]
	}
	out := make([]index.UserID, len(ids))
	for i, id := range ids {
		out[i] = index.UserID(id)
	}
	next := ""
	if more && len(out) > 0 {
		next = b.w.e.cursor.encode(b.w.id, uint32(out[len(out)-1]))
	}
	return out, next, nil
}
