package loadgen

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
)

// Kind is the kind of an identifier on the wire and, for a seeded user, of
// the identifier it is seeded with: one type, so that a user's kind is the
// kind of the Ref that names it (Universe.MemberRef).
type Kind uint8

// The kinds. Seeded users' shares are exact per block of 20 users: 15
// KindExternal, 2 KindAlias, 2 KindDevice and 1 KindIdentifiedLater.
const (
	// KindExternal is an external id (user_ids); such users carry one from
	// the start.
	KindExternal Kind = iota
	// KindAlias is an ("email", label) alias pair (aliases); such users
	// carry only the alias ("email", "<n>@example.com").
	KindAlias
	// KindDevice is a device id (device_ids); such users carry only a
	// device id and stay anonymous.
	KindDevice
	// KindIdentifiedLater is a kind of user only: it starts anonymous
	// (device id only) and gets its external id in the second seeding pass.
	KindIdentifiedLater
	// KindUnknown is a kind of identifier only: an external id that names
	// no user.
	KindUnknown
)

// String returns the kind's name as used in reports ("anonymous" for a
// user of KindDevice).
func (k Kind) String() string {
	switch k {
	case KindExternal:
		return "external"
	case KindAlias:
		return "alias"
	case KindDevice:
		return "anonymous"
	case KindIdentifiedLater:
		return "identified-later"
	case KindUnknown:
		return "unknown"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Flavour is the shape of cohort membership.
type Flavour string

// The two membership flavours of docs/WORKLOADS.md; figures for them are always
// reported separately.
const (
	// FlavourClustered cohorts are runs of 1,000 users in arrival order, one
	// run per block of 10,000 users, as when a cohort follows signup date.
	FlavourClustered Flavour = "clustered"
	// FlavourUniform cohorts are drawn at random from all users.
	FlavourUniform Flavour = "uniform"
)

// Workload constants from docs/WORKLOADS.md.
const (
	blockUsers     = 20     // users per shuffled block of kinds
	clusterBlock   = 10_000 // users per block of the clustered flavour
	clusterRun     = 1_000  // members per run of the clustered flavour
	minCohortSize  = 1_000  // smallest cohort of the log-uniform sizes
	maxCohortSize  = 10_000_000
	unmatchedEvery = 97 // members between two groups of unmatched identifiers
	aliasName      = "email"
)

// Streams keep the random sequences of different purposes independent, so
// that adding a draw to one never shifts another.
const (
	streamBlock uint64 = iota + 1
	streamDevice
	streamSize
	streamMembers
	streamChurn
	streamUnmatched
	streamQuery
	streamInject
)

// newRand returns a deterministic generator for (seed, stream, key).
func newRand(seed, stream, key uint64) *rand.Rand {
	return rand.New(newPCG(seed, stream, key))
}

func newPCG(seed, stream, key uint64) *rand.PCG {
	const golden = 0x9e3779b97f4a7c15
	return rand.NewPCG(seed^(stream*golden), key)
}

// Universe is the deterministic set of seeded users 1…Users for one seed.
// Every method is a pure function of Users, Seed and its arguments.
type Universe struct {
	Users int
	Seed  uint64
}

// BlockKinds returns the kinds of the 20 users of block b (users 20b+1 …
// 20b+20), shuffled from the seed.
func BlockKinds(seed uint64, b int) [blockUsers]Kind {
	var k [blockUsers]Kind
	k[15], k[16] = KindAlias, KindAlias
	k[17], k[18] = KindDevice, KindDevice
	k[19] = KindIdentifiedLater
	r := newRand(seed, streamBlock, uint64(b))
	r.Shuffle(blockUsers, func(i, j int) { k[i], k[j] = k[j], k[i] })
	return k
}

// Kind returns the kind of user n (1-based).
func (u Universe) Kind(n int) Kind {
	k := BlockKinds(u.Seed, (n-1)/blockUsers)
	return k[(n-1)%blockUsers]
}

// ExternalID returns the external id of user n: "user-" and n in 14 digits.
func ExternalID(n int) string { return string(appendExternalID(nil, n)) }

func appendExternalID(dst []byte, n int) []byte {
	dst = append(dst, "user-"...)
	var d [20]byte
	s := strconv.AppendInt(d[:0], int64(n), 10)
	for i := len(s); i < 14; i++ {
		dst = append(dst, '0')
	}
	return append(dst, s...)
}

// AliasLabel returns the alias label of user n: "<n>@example.com".
func AliasLabel(n int) string { return string(appendAliasLabel(nil, n)) }

func appendAliasLabel(dst []byte, n int) []byte {
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, "@example.com"...)
}

// DeviceID returns the device id of user n, a UUID v4 string drawn from the
// seed. Every user has one, but only anonymous users are seeded with it.
func (u Universe) DeviceID(n int) string { return string(u.appendDeviceID(nil, n)) }

func (u Universe) appendDeviceID(dst []byte, n int) []byte {
	r := newPCG(u.Seed, streamDevice, uint64(n))
	var b [16]byte
	hi, lo := r.Uint64(), r.Uint64()
	for i := range 8 {
		b[i] = byte(hi >> (56 - 8*i))
		b[8+i] = byte(lo >> (56 - 8*i))
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	var h [36]byte
	hex.Encode(h[0:8], b[0:4])
	h[8] = '-'
	hex.Encode(h[9:13], b[4:6])
	h[13] = '-'
	hex.Encode(h[14:18], b[6:8])
	h[18] = '-'
	hex.Encode(h[19:23], b[8:10])
	h[23] = '-'
	hex.Encode(h[24:36], b[10:16])
	return append(dst, h[:]...)
}

// Ref names one identifier compactly: user N's identifier of the given kind,
// or for KindUnknown the N-th unknown external id.
type Ref struct {
	Kind Kind
	N    uint64
}

// appendValue appends the identifier's string (the alias label for aliases).
func (u Universe) appendValue(dst []byte, r Ref) []byte {
	switch r.Kind {
	case KindExternal:
		return appendExternalID(dst, int(r.N))
	case KindAlias:
		return appendAliasLabel(dst, int(r.N))
	case KindDevice:
		return u.appendDeviceID(dst, int(r.N))
	default:
		dst = append(dst, "nouser-"...)
		return strconv.AppendUint(dst, r.N, 10)
	}
}

// Value returns the identifier's string (the alias label for aliases).
func (u Universe) Value(r Ref) string { return string(u.appendValue(nil, r)) }

// MemberRef names user n as exporters and segment evaluators do after
// seeding: by external id for identified and identified-later users, by alias
// for alias-only users, by device id for users still anonymous.
func (u Universe) MemberRef(n int) Ref {
	switch u.Kind(n) {
	case KindAlias:
		return Ref{KindAlias, uint64(n)}
	case KindDevice:
		return Ref{KindDevice, uint64(n)}
	default:
		return Ref{KindExternal, uint64(n)}
	}
}

// Matches says whether the server is expected to match r in a cohort import
// once seeding is complete: unknown ids and device ids of identified users
// do not match.
func (u Universe) Matches(r Ref) bool {
	switch r.Kind {
	case KindUnknown:
		return false
	case KindDevice:
		return r.N >= 1 && int(r.N) <= u.Users && u.Kind(int(r.N)) == KindDevice
	default:
		return r.N >= 1 && int(r.N) <= u.Users
	}
}

// ClusteredCapacity returns the largest clustered cohort the universe holds:
// one run of up to 1,000 users per block of 10,000.
func (u Universe) ClusteredCapacity() int {
	c := 0
	for start := 0; start < u.Users; start += clusterBlock {
		c += min(clusterRun, u.Users-start)
	}
	return c
}

// CohortSize returns the size of cohort i: log-uniform from 1,000 to 10M
// members, capped by what the universe and flavour can hold.
func (u Universe) CohortSize(i int, f Flavour) int {
	r := newRand(u.Seed, streamSize, uint64(i))
	lo, hi := math.Log(minCohortSize), math.Log(maxCohortSize)
	size := int(math.Round(math.Exp(lo + r.Float64()*(hi-lo))))
	capacity := u.Users
	if f == FlavourClustered {
		capacity = u.ClusteredCapacity()
	}
	return min(size, capacity)
}

// CohortID returns the cohort id of cohort i of a flavour, e.g.
// "clustered-0007". Flavours get distinct ids so that both can live in one
// workspace.
func CohortID(f Flavour, i int) string { return fmt.Sprintf("%s-%04d", f, i) }

// CohortMembers returns the sorted user numbers of cohort i with size
// members.
func (u Universe) CohortMembers(i, size int, f Flavour) []uint32 {
	r := newRand(u.Seed, streamMembers, uint64(i)<<1|flavourBit(f))
	if f == FlavourClustered {
		return u.clusteredMembers(r, size)
	}
	return uniformSample(r, u.Users, size)
}

func flavourBit(f Flavour) uint64 {
	if f == FlavourClustered {
		return 1
	}
	return 0
}

// clusteredMembers takes runs of 1,000 users at one offset inside
// consecutive blocks of 10,000 users, from a random first block, wrapping
// around, until size members are taken.
func (u Universe) clusteredMembers(r *rand.Rand, size int) []uint32 {
	blocks := (u.Users + clusterBlock - 1) / clusterBlock
	if blocks == 0 || size <= 0 {
		return nil
	}
	offset := r.IntN(clusterBlock - clusterRun + 1)
	first := r.IntN(blocks)
	out := make([]uint32, 0, size)
	for k := 0; k < blocks && len(out) < size; k++ {
		b := (first + k) % blocks
		start := b * clusterBlock // users start+1 … start+blockLen
		blockLen := min(clusterBlock, u.Users-start)
		runLen := min(clusterRun, blockLen)
		off := min(offset, blockLen-runLen)
		for j := 0; j < runLen && len(out) < size; j++ {
			out = append(out, uint32(start+off+j+1))
		}
	}
	slices.Sort(out)
	return out
}

// bitset is a fixed-size set of small integers.
type bitset []uint64

func newBitset(n int) bitset    { return make(bitset, (n+64)/64) }
func (s bitset) has(i int) bool { return s[i>>6]&(1<<(i&63)) != 0 }
func (s bitset) set(i int)      { s[i>>6] |= 1 << (i & 63) }

// uniformSample draws k distinct numbers from 1…n, sorted. Above half of n it
// draws the complement instead, so rejection stays cheap.
func uniformSample(r *rand.Rand, n, k int) []uint32 {
	k = max(0, min(k, n))
	invert := k > n/2
	draw := k
	if invert {
		draw = n - k
	}
	s := newBitset(n + 1)
	for got := 0; got < draw; {
		v := 1 + r.IntN(n)
		if !s.has(v) {
			s.set(v)
			got++
		}
	}
	out := make([]uint32, 0, k)
	for v := 1; v <= n; v++ {
		if s.has(v) != invert {
			out = append(out, uint32(v))
		}
	}
	return out
}

// ChangeSet is one interval of churn of a cohort: Leave are members that
// leave and Join non-members that join. Both are sorted and disjoint.
type ChangeSet struct {
	Join  []uint32
	Leave []uint32
}

// Churn returns change set number interval of cohort i: round(leave ×
// members) of the members leave and as many non-members join, so that the
// size stays level (docs/WORKLOADS.md); with join > 0, round(join ×
// non-members) join instead. members must be sorted.
func (u Universe) Churn(i, interval int, members []uint32, leave, join float64) ChangeSet {
	r := newRand(u.Seed, streamChurn, uint64(i)<<32|uint64(interval))
	nLeave := int(math.Round(leave * float64(len(members))))
	nJoin := min(nLeave, u.Users-len(members))
	if join > 0 {
		nJoin = int(math.Round(join * float64(u.Users-len(members))))
	}
	var cs ChangeSet
	if nLeave > 0 {
		for _, idx := range uniformSample(r, len(members), nLeave) {
			cs.Leave = append(cs.Leave, members[idx-1])
		}
	}
	if nJoin > 0 {
		nonMembers := u.Users - len(members)
		// Draw positions among the non-members, then map each position to
		// the user it names by walking members in step.
		pos := uniformSample(r, nonMembers, nJoin)
		cs.Join = make([]uint32, 0, nJoin)
		m := 0
		for _, p := range pos { // p-th non-member, 1-based
			// The p-th non-member is p + (members below it).
			for m < len(members) && int(members[m]) <= int(p)+m {
				m++
			}
			cs.Join = append(cs.Join, uint32(int(p)+m))
		}
	}
	return cs
}

// Apply returns members after the change set, sorted. It reuses no memory of
// members.
func (cs ChangeSet) Apply(members []uint32) []uint32 {
	out := make([]uint32, 0, len(members)-len(cs.Leave)+len(cs.Join))
	l, j := 0, 0
	for _, m := range members {
		for j < len(cs.Join) && cs.Join[j] < m {
			out = append(out, cs.Join[j])
			j++
		}
		if l < len(cs.Leave) && cs.Leave[l] == m {
			l++
			continue
		}
		out = append(out, m)
	}
	return append(out, cs.Join[j:]...)
}

// unmatchedSource hands out the unmatched identifiers an exporter sends on
// top of its members: unknown external ids numbered from a per-cohort base,
// and device ids of identified-later users.
type unmatchedSource struct {
	u      Universe
	r      *rand.Rand
	next   uint64
	blocks int // full blocks of 20, which each hold one identified-later user
}

func (u Universe) newUnmatchedSource(cohort int, f Flavour) *unmatchedSource {
	return &unmatchedSource{
		u:      u,
		r:      newRand(u.Seed, streamUnmatched, uint64(cohort)<<1|flavourBit(f)),
		next:   uint64(cohort)<<40 | flavourBit(f)<<39,
		blocks: u.Users / blockUsers,
	}
}

// identifiedDevice returns the device id of a random identified-later user,
// or an unknown id when the universe has no full block.
func (s *unmatchedSource) identifiedDevice() Ref {
	if s.blocks == 0 {
		return s.unknown()
	}
	b := s.r.IntN(s.blocks)
	for j, k := range BlockKinds(s.u.Seed, b) {
		if k == KindIdentifiedLater {
			return Ref{KindDevice, uint64(b*blockUsers + j + 1)}
		}
	}
	panic("BUG: a block without an identified-later user")
}

func (s *unmatchedSource) unknown() Ref {
	s.next++
	return Ref{KindUnknown, s.next}
}

// withUnmatched names users by MemberRef and adds, after every 97 members,
// two unknown external ids and one device id of an identified-later user.
func (s *unmatchedSource) withUnmatched(users []uint32) []Ref {
	out := make([]Ref, 0, len(users)+len(users)/unmatchedEvery*3)
	for i, n := range users {
		out = append(out, s.u.MemberRef(int(n)))
		if (i+1)%unmatchedEvery == 0 {
			out = append(out, s.unknown(), s.unknown(), s.identifiedDevice())
		}
	}
	return out
}

// refsOf names users by MemberRef without unmatched identifiers, as
// removals do.
func (u Universe) refsOf(users []uint32) []Ref {
	out := make([]Ref, len(users))
	for i, n := range users {
		out[i] = u.MemberRef(int(n))
	}
	return out
}
