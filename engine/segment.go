package engine

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/valyala/fastjson"

	"github.com/cohortd/cohortd/index"
)

// Segment is a parsed segment expression (docs/API.md §4 "Segments"):
//
//	{"cohort":"<partner>/<cohort_id>"} · {"not":E} · {"and":[E,…]} · {"or":[E,…]} · {"all":true}
//
// It is independent of any workspace; Workspace.Bind resolves its cohorts.
type Segment struct {
	root *segNode
}

type segNode struct {
	op      index.Op // OpSet names a cohort by partner and id
	partner string
	id      string
	kids    []*segNode
}

// Limits that keep a hostile expression from costing unbounded stack or
// time: real segment builders produce a few levels and tens of operands.
const (
	maxSegmentDepth    = 32
	maxSegmentOperands = 1024
)

// ParseSegment parses a segment expression from JSON.
func ParseSegment(data []byte) (*Segment, error) {
	var p fastjson.Parser
	v, err := p.ParseBytes(data)
	if err != nil {
		return nil, invalidf("segment must be a JSON expression: %v", err)
	}
	return ParseSegmentValue(v)
}

// ParseSegmentValue parses a segment expression from a parsed JSON value.
// The Segment does not refer to v afterwards.
func ParseSegmentValue(v *fastjson.Value) (*Segment, error) {
	operands := 0
	root, err := parseSegNode(v, 0, &operands, "segment")
	if err != nil {
		return nil, err
	}
	return &Segment{root: root}, nil
}

func parseSegNode(v *fastjson.Value, depth int, operands *int, path string) (*segNode, error) {
	if depth > maxSegmentDepth {
		return nil, invalidf("%s: expression nested deeper than %d levels", path, maxSegmentDepth)
	}
	*operands++
	if *operands > maxSegmentOperands {
		return nil, invalidf("segment: more than %d operands", maxSegmentOperands)
	}
	obj, err := v.Object()
	if err != nil {
		return nil, invalidf("%s must be an object with one of cohort, not, and, or, all", path)
	}
	var n *segNode
	var ferr error
	found := 0
	obj.Visit(func(k []byte, fv *fastjson.Value) {
		if ferr != nil {
			return
		}
		key := string(k)
		switch key {
		case "cohort", "not", "and", "or", "all":
		default:
			return // unknown fields are ignored
		}
		found++
		if found > 1 {
			ferr = invalidf("%s must have exactly one of cohort, not, and, or, all", path)
			return
		}
		sub := path + "." + key
		switch key {
		case "cohort":
			s, err := fv.StringBytes()
			if err != nil {
				ferr = invalidf("%s must be a string \"<partner>/<cohort_id>\"", sub)
				return
			}
			p, id, ok := strings.Cut(string(s), "/")
			if !ok || !ValidPartnerSlug(p) || id == "" {
				ferr = invalidf("%s must be \"<partner>/<cohort_id>\" with a partner slug [a-z0-9_-]{1,64} and a non-empty cohort id", sub)
				return
			}
			n = &segNode{op: index.OpSet, partner: p, id: id}
		case "not":
			kid, err := parseSegNode(fv, depth+1, operands, sub)
			if err != nil {
				ferr = err
				return
			}
			n = &segNode{op: index.OpNot, kids: []*segNode{kid}}
		case "and", "or":
			arr, err := fv.Array()
			if err != nil {
				ferr = invalidf("%s must be an array of expressions", sub)
				return
			}
			if len(arr) == 0 {
				ferr = invalidf("%s needs at least one operand", sub)
				return
			}
			op := index.OpAnd
			if key == "or" {
				op = index.OpOr
			}
			n = &segNode{op: op, kids: make([]*segNode, 0, len(arr))}
			for i, e := range arr {
				kid, err := parseSegNode(e, depth+1, operands, fmt.Sprintf("%s[%d]", sub, i))
				if err != nil {
					ferr = err
					return
				}
				n.kids = append(n.kids, kid)
			}
		case "all":
			if fv.Type() != fastjson.TypeTrue {
				ferr = invalidf("%s must be true", sub)
				return
			}
			n = &segNode{op: index.OpAll}
		}
	})
	if ferr != nil {
		return nil, ferr
	}
	if n == nil {
		return nil, invalidf("%s must have one of cohort, not, and, or, all", path)
	}
	return n, nil
}

// BoundSegment is a segment evaluated against one workspace: every cohort
// bitmap and the live-users set are loaded once, so a query sees each
// cohort at one version. The algebra is index.Expr's.
type BoundSegment struct {
	w        *Workspace
	expr     *index.Expr
	live     *roaring.Bitmap
	Warnings []string // "unknown cohort <partner>/<cohort_id>", in first-seen order
}

var emptyBitmap = roaring.New()

// Bind resolves the segment's cohorts in w. An unknown cohort is an empty
// set and adds a warning.
func (w *Workspace) Bind(s *Segment) *BoundSegment {
	b := &BoundSegment{w: w, live: w.users.Live()}
	b.expr = b.bind(s.root)
	return b
}

func (b *BoundSegment) bind(n *segNode) *index.Expr {
	x := &index.Expr{Op: n.op}
	if n.op == index.OpSet {
		if c := b.w.Cohort(n.partner, n.id); c != nil {
			x.Set = c.Members()
		} else {
			x.Set = emptyBitmap
			// Warnings are rare and few: a linear check for repeats keeps
			// every query from allocating a set for them.
			if w := "unknown cohort " + n.partner + "/" + n.id; !slices.Contains(b.Warnings, w) {
				b.Warnings = append(b.Warnings, w)
			}
		}
		return x
	}
	for _, k := range n.kids {
		x.Kids = append(x.Kids, b.bind(k))
	}
	return x
}

// Contains reports whether user id is in the segment, without
// materialising any set: a few bitmap probes per clause.
func (b *BoundSegment) Contains(id index.UserID) bool {
	if id == index.NoUser || !b.live.Contains(uint32(id)) {
		return false
	}
	return b.expr.Contains(uint32(id))
}

// Count returns the number of live users in the segment.
func (b *BoundSegment) Count() uint64 { return b.expr.Count(b.live) }

// Bitmap materialises the segment as a new bitmap owned by the caller.
func (b *BoundSegment) Bitmap() *roaring.Bitmap { return b.expr.Bitmap(b.live) }

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
func (b *BoundSegment) Page(cursor string, limit int) ([]index.UserID, string, error) {
	start := uint64(0)
	if cursor != "" {
		last, ok := b.w.e.cursor.decode(b.w.id, cursor)
		if !ok {
			return nil, "", invalidf("cursor is not valid for this workspace")
		}
		start = uint64(last) + 1
	}
	bm := b.Bitmap()
	it := bm.Iterator()
	if start > 0 {
		if start > uint64(^uint32(0)) {
			return nil, "", nil
		}
		it.AdvanceIfNeeded(uint32(start))
	}
	out := make([]index.UserID, 0, min(limit, 4096))
	for it.HasNext() && len(out) < limit {
		out = append(out, index.UserID(it.Next()))
	}
	next := ""
	if it.HasNext() && len(out) > 0 {
		next = b.w.e.cursor.encode(b.w.id, uint32(out[len(out)-1]))
	}
	return out, next, nil
}
