package client

import (
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Headers of a replicated group (docs/API.md §7).
const (
	// HeaderPosition is the log position a reply's write was applied at,
	// "partition:offset".
	HeaderPosition = "X-Cohortd-Position"
	// HeaderMinPosition makes a node answer only once it has applied the
	// positions listed, "partition:offset,…".
	HeaderMinPosition = "X-Cohortd-Min-Position"
)

// Positions holds, per partition of a group's log, the highest position of
// the replies seen: read your writes across the nodes of a group. It is
// safe for concurrent use; the zero value is empty and ready.
type Positions struct {
	mu struct {
		sync.Mutex
		m map[int32]int64
	}
}

// Note records an X-Cohortd-Position value; malformed or empty ones are
// ignored (a single server sends none).
func (p *Positions) Note(v string) {
	part, off, ok := strings.Cut(v, ":")
	if !ok {
		return
	}
	pn, err1 := strconv.ParseInt(part, 10, 32)
	on, err2 := strconv.ParseInt(off, 10, 64)
	if err1 != nil || err2 != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.m == nil {
		p.mu.m = map[int32]int64{}
	}
	if cur, ok := p.mu.m[int32(pn)]; !ok || on > cur {
		p.mu.m[int32(pn)] = on
	}
}

// String returns the X-Cohortd-Min-Position value of every position
// recorded, sorted; "" before the first.
func (p *Positions) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	parts := make([]string, 0, len(p.mu.m))
	for pn, on := range p.mu.m {
		parts = append(parts, strconv.Itoa(int(pn))+":"+strconv.FormatInt(on, 10))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
