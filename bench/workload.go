package bench

import (
	"math/rand/v2"
	"os"
	"strconv"

	"github.com/cohortd/cohortd/loadgen"
)

// Seed is the docs/WORKLOADS.md seed every benchmark uses.
const Seed = 1

// Users returns the user counts to benchmark: COHORTD_BENCH_USERS (a comma
// separated list) if set, else 10M with COHORTD_BENCH_LARGE=1, else 1M.
func Users() []int {
	if s := os.Getenv("COHORTD_BENCH_USERS"); s != "" {
		var out []int
		for _, f := range splitComma(s) {
			if n, err := strconv.Atoi(f); err == nil && n > 0 {
				out = append(out, n)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	if os.Getenv("COHORTD_BENCH_LARGE") == "1" {
		return []int{10_000_000}
	}
	return []int{1_000_000}
}

// PeerMaxUsers is the largest universe the peers are run at
// (COHORTD_BENCH_PEER_MAX_USERS, default 10M).
func PeerMaxUsers() int {
	if n, err := strconv.Atoi(os.Getenv("COHORTD_BENCH_PEER_MAX_USERS")); err == nil && n > 0 {
		return n
	}
	return 10_000_000
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// Ident is one identifier as sent on the wire. Kind is loadgen.KindExternal,
// KindAlias (Value is the alias label of name "email"), KindDevice or KindUnknown
// (an external id that names nobody).
type Ident struct {
	Kind  loadgen.Kind
	Value string
}

// AliasName is the alias name of the workload's alias-only users.
const AliasName = "email"

// ident names user n as exporters and evaluators do (loadgen.MemberRef).
func ident(u loadgen.Universe, n int) Ident {
	r := u.MemberRef(n)
	return Ident{r.Kind, u.Value(r)}
}

// Change is one change object of a request: identifiers to add or remove.
type Change struct {
	IDs    []Ident
	Remove bool
}

// Request is one import request's worth of changes, adds before removes,
// as the partner shape prescribes.
type Request []Change

// Len counts the identifiers of the request as sent.
func (r Request) Len() int {
	n := 0
	for _, c := range r {
		n += len(c.IDs)
	}
	return n
}

// ImportPlan is a set of import requests that keeps a cohort in a steady
// state: request 2j adds X_j and removes Y_j, request 2j+1 adds Y_j and
// removes X_j, so each request changes every matched member it names and
// a full cycle returns the cohort to where it started. Prime is applied once
// first (adds every Y_j), so that the cycle starts from "Y in, X out".
type ImportPlan struct {
	Prime    []Request
	Requests []Request
	// Members is the number of matched identifiers a cycle sends.
	Members int
}

// membersPer returns how many members m a request of n identifiers names,
// so that m plus the unmatched on top of them (3 per 97 members) is at most
// n; the rest is padded with unknown ids.
func membersPer(n int) int {
	m := n * 97 / 100
	for m+3*(m/97) > n {
		m--
	}
	return m
}

// NewImportPlan builds the plan for requests of ids identifiers each, over
// users of the given flavour, with at most maxPairs request pairs.
//
// Unmatched identifiers follow docs/WORKLOADS.md: after every 97 members of the
// adds, 2 unknown external ids and 1 device id of an identified-later user.
func NewImportPlan(u loadgen.Universe, f loadgen.Flavour, ids, maxPairs, cohort int) ImportPlan {
	m := membersPer(ids)
	half := m / 2
	capacity := u.Users / 2
	if f == loadgen.FlavourClustered {
		capacity = u.ClusteredCapacity()
	}
	pairs := max(1, min(maxPairs, capacity/(2*half)))
	users := u.CohortMembers(1000+cohort, 2*half*pairs, f)
	if f == loadgen.FlavourUniform {
		// CohortMembers sorts; shuffle so X and Y interleave over the users.
		r := rand.New(rand.NewPCG(Seed, uint64(cohort)))
		r.Shuffle(len(users), func(i, j int) { users[i], users[j] = users[j], users[i] })
	}
	unknown := uint64(cohort) << 32
	var plan ImportPlan
	for j := 0; j < pairs && (2*j+2)*half <= len(users); j++ {
		x := users[2*j*half : (2*j+1)*half]
		y := users[(2*j+1)*half : (2*j+2)*half]
		plan.Prime = append(plan.Prime, Request{{IDs: idents(u, y, nil, 0)}})
		for _, p := range [][2][]uint32{{x, y}, {y, x}} {
			adds := idents(u, p[0], &unknown, ids-2*half)
			plan.Requests = append(plan.Requests, Request{
				{IDs: adds},
				{IDs: idents(u, p[1], nil, 0), Remove: true},
			})
			plan.Members += 2 * half
		}
	}
	return plan
}

// idents names users; with unknown != nil it adds the unmatched identifiers
// of docs/WORKLOADS.md after every 97 members and pads to extra unmatched in all.
func idents(u loadgen.Universe, users []uint32, unknown *uint64, extra int) []Ident {
	out := make([]Ident, 0, len(users)+extra)
	added := 0
	next := func() Ident {
		*unknown++
		added++
		return Ident{loadgen.KindUnknown, u.Value(loadgen.Ref{Kind: loadgen.KindUnknown, N: *unknown})}
	}
	for i, n := range users {
		out = append(out, ident(u, int(n)))
		if unknown != nil && (i+1)%97 == 0 && added+3 <= extra {
			out = append(out, next(), next(), identifiedDevice(u, int(n)))
			added++ // next() counted two; the device is the third
		}
	}
	for unknown != nil && added < extra {
		out = append(out, next())
	}
	return out
}

// identifiedDevice returns the device id of an identified-later user near
// user n: such a device id is sent but must not match (docs/API.md §2.3).
func identifiedDevice(u loadgen.Universe, n int) Ident {
	b := (n - 1) / 20
	for {
		for j, k := range loadgen.BlockKinds(u.Seed, b) {
			if k == loadgen.KindIdentifiedLater && b*20+j+1 <= u.Users {
				return Ident{loadgen.KindDevice, u.DeviceID(b*20 + j + 1)}
			}
		}
		b = (b + 1) % max(1, u.Users/20)
	}
}

// Algebra cohorts: A, B and C of docs/WORKLOADS.md at 10% density, per flavour.
var algebraCohorts = [3]string{"A", "B", "C"}

// algebraMembers returns the sorted user numbers of algebra cohort i.
func algebraMembers(u loadgen.Universe, f loadgen.Flavour, i int) []uint32 {
	return u.CohortMembers(2000+i, u.Users/10, f)
}

// algebraID is the cohort id of algebra cohort i of a flavour.
func algebraID(f loadgen.Flavour, i int) string { return string(f) + "-" + algebraCohorts[i] }

// Query is a segment expression with its clause count and how each system
// evaluates it.
type Query struct {
	Name    string
	Clauses int
	// Expr builds the JSON expression for a flavour's cohorts.
	Expr func(f loadgen.Flavour) string
}

func cohortRef(f loadgen.Flavour, i int) string {
	return `{"cohort":"` + Partner + `/` + algebraID(f, i) + `"}`
}

// ContainsQueries are the 1–3 clause expressions of the contains benchmarks.
var ContainsQueries = []Query{
	{"clauses_1", 1, func(f loadgen.Flavour) string { return cohortRef(f, 0) }},
	{"clauses_2", 2, func(f loadgen.Flavour) string {
		return `{"and":[` + cohortRef(f, 0) + `,` + cohortRef(f, 1) + `]}`
	}},
	{"clauses_3", 3, func(f loadgen.Flavour) string {
		return `{"and":[` + cohortRef(f, 0) + `,` + cohortRef(f, 1) + `,{"not":` + cohortRef(f, 2) + `}]}`
	}},
}

// CountQueries are the expressions of the count benchmarks (the same as the
// engine's BenchmarkSegmentCount, so the two read side by side).
var CountQueries = []Query{
	{"and2", 2, ContainsQueries[1].Expr},
	{"and_and_not", 3, ContainsQueries[2].Expr},
	{"or_or", 3, func(f loadgen.Flavour) string {
		return `{"or":[` + cohortRef(f, 0) + `,` + cohortRef(f, 1) + `,` + cohortRef(f, 2) + `]}`
	}},
}

// Partner is the partner slug of every benchmark cohort.
const Partner = "bench"

// Flavours are the membership flavours, always reported separately.
var Flavours = []loadgen.Flavour{loadgen.FlavourClustered, loadgen.FlavourUniform}

// QueryUsers returns count users drawn at random from the universe, named
// as evaluators name them (identified-later users by external id).
func QueryUsers(u loadgen.Universe, count int, seed uint64) []Ident {
	r := rand.New(rand.NewPCG(Seed, seed))
	out := make([]Ident, count)
	for i := range out {
		out[i] = ident(u, 1+r.IntN(u.Users))
	}
	return out
}

func universe(users int) loadgen.Universe { return loadgen.Universe{Users: users, Seed: Seed} }
