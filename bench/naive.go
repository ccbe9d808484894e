package bench

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/cohortd/cohortd/loadgen"
)

// Naive is the floor the engine is measured against: what a first version
// in Go would be. Identifiers map to dense ids in one map[string]uint32,
// each cohort is a map[uint32]struct{}, one RWMutex guards everything. It
// follows the matching rules of docs/API.md §2 that shape the work (imports never
// create users, device ids match anonymous users only, the last change of a
// request wins, counts are of effective changes) and nothing else.
type Naive struct {
	mu        sync.RWMutex
	ids       map[string]uint32 // kind byte + identifier → id
	anonymous []bool            // by id; id 0 is unused
	cohorts   map[string]map[uint32]struct{}
}

// NewNaive returns an empty naive engine.
func NewNaive() *Naive {
	return &Naive{ids: map[string]uint32{}, anonymous: []bool{false}, cohorts: map[string]map[uint32]struct{}{}}
}

func naiveKey(kind loadgen.Kind, v string) string {
	if kind == loadgen.KindUnknown {
		kind = loadgen.KindExternal
	}
	return string(rune('0'+kind)) + v
}

// Upsert creates or identifies one user: with only a device id an anonymous
// user; with an external id and the device id of an anonymous user that user
// becomes identified. It is the subset of /v1/users the workload needs.
func (n *Naive) Upsert(ext, dev, aliasLabel string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var id uint32
	if dev != "" {
		id = n.ids[naiveKey(loadgen.KindDevice, dev)]
	}
	if id == 0 && ext != "" {
		id = n.ids[naiveKey(loadgen.KindExternal, ext)]
	}
	if id == 0 {
		id = uint32(len(n.anonymous))
		n.anonymous = append(n.anonymous, true)
	}
	if dev != "" {
		n.ids[naiveKey(loadgen.KindDevice, dev)] = id
	}
	if ext != "" {
		n.ids[naiveKey(loadgen.KindExternal, ext)] = id
		n.anonymous[id] = false
	}
	if aliasLabel != "" {
		n.ids[naiveKey(loadgen.KindAlias, aliasLabel)] = id
		n.anonymous[id] = false
	}
}

// SeedNaive creates the universe's users as SeedEngine does.
func SeedNaive(n *Naive, u loadgen.Universe) {
	for pass := 0; pass < 2; pass++ {
		for i := 1; i <= u.Users; i++ {
			k := u.Kind(i)
			switch {
			case pass == 1 && k == loadgen.KindIdentifiedLater:
				n.Upsert(loadgen.ExternalID(i), u.DeviceID(i), "")
			case pass == 1:
			case k == loadgen.KindExternal:
				n.Upsert(loadgen.ExternalID(i), "", "")
			case k == loadgen.KindAlias:
				n.Upsert("", "", loadgen.AliasLabel(i))
			default:
				n.Upsert("", u.DeviceID(i), "")
			}
		}
	}
}

// Users returns the number of users.
func (n *Naive) Users() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return len(n.anonymous) - 1
}

// resolveLocked returns the id an import matches, or 0: device ids match
// anonymous users only.
func (n *Naive) resolveLocked(id Ident) uint32 {
	u := n.ids[naiveKey(id.Kind, id.Value)]
	if u != 0 && id.Kind == loadgen.KindDevice && !n.anonymous[u] {
		return 0
	}
	return u
}

// NaiveResult counts an import as the partner endpoint does.
type NaiveResult struct{ Matched, Unmatched, Added, Removed int }

// Apply applies a request to a cohort (created if missing), in order.
func (n *Naive) Apply(cohort string, r Request) NaiveResult {
	n.mu.Lock()
	defer n.mu.Unlock()
	set := n.cohorts[cohort]
	if set == nil {
		set = map[uint32]struct{}{}
		n.cohorts[cohort] = set
	}
	var res NaiveResult
	// Effective changes compare each touched user's final membership with
	// its first, so a user added and removed in one request costs nothing.
	before := map[uint32]bool{}
	for _, c := range r {
		for _, id := range c.IDs {
			u := n.resolveLocked(id)
			if u == 0 {
				res.Unmatched++
				continue
			}
			res.Matched++
			_, in := set[u]
			if _, seen := before[u]; !seen {
				before[u] = in
			}
			if c.Remove {
				delete(set, u)
			} else {
				set[u] = struct{}{}
			}
		}
	}
	for u, was := range before {
		_, in := set[u]
		switch {
		case in && !was:
			res.Added++
		case was && !in:
			res.Removed++
		}
	}
	return res
}

// Expr is a segment expression for the naive engine: exactly one of Cohort
// (a cohort name), Not, And, Or is set.
type Expr struct {
	Cohort  string
	Not     *Expr
	And, Or []Expr
}

func (n *Naive) containsLocked(e *Expr, u uint32) bool {
	switch {
	case e.Not != nil:
		return !n.containsLocked(e.Not, u)
	case e.And != nil:
		for i := range e.And {
			if !n.containsLocked(&e.And[i], u) {
				return false
			}
		}
		return true
	case e.Or != nil:
		for i := range e.Or {
			if n.containsLocked(&e.Or[i], u) {
				return true
			}
		}
		return false
	}
	_, ok := n.cohorts[e.Cohort][u]
	return ok
}

// Contains answers for each user whether it is in the segment; queries
// resolve device ids to whoever holds them.
func (n *Naive) Contains(e *Expr, users []Ident, dst []bool) []bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	for _, id := range users {
		u := n.ids[naiveKey(id.Kind, id.Value)]
		dst = append(dst, u != 0 && n.containsLocked(e, u))
	}
	return dst
}

// Count counts the segment's users: over the smallest cohort of a top-level
// "and" that has a plain cohort operand, else over every user.
func (n *Naive) Count(e *Expr) int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	var smallest map[uint32]struct{}
	if e.And != nil {
		for _, o := range e.And {
			if s, ok := n.cohorts[o.Cohort]; o.Cohort != "" && (smallest == nil || ok && len(s) < len(smallest)) {
				if !ok {
					return 0
				}
				smallest = s
			}
		}
	}
	c := 0
	if smallest != nil {
		for u := range smallest {
			if n.containsLocked(e, u) {
				c++
			}
		}
		return c
	}
	for u := uint32(1); u < uint32(len(n.anonymous)); u++ {
		if n.containsLocked(e, u) {
			c++
		}
	}
	return c
}

// ParseExpr reads a segment expression in the JSON of docs/API.md §4 (without
// "all"). It is for building benchmarks, not a validating parser.
func ParseExpr(data []byte) (Expr, error) {
	var raw struct {
		Cohort string            `json:"cohort"`
		Not    json.RawMessage   `json:"not"`
		And    []json.RawMessage `json:"and"`
		Or     []json.RawMessage `json:"or"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return Expr{}, fmt.Errorf("parse expression: %w", err)
	}
	e := Expr{Cohort: raw.Cohort}
	if raw.Not != nil {
		sub, err := ParseExpr(raw.Not)
		if err != nil {
			return Expr{}, err
		}
		e.Not = &sub
	}
	for _, list := range []struct {
		in  []json.RawMessage
		out *[]Expr
	}{{raw.And, &e.And}, {raw.Or, &e.Or}} {
		for _, r := range list.in {
			sub, err := ParseExpr(r)
			if err != nil {
				return Expr{}, err
			}
			*list.out = append(*list.out, sub)
		}
	}
	return e, nil
}
