package index

import (
	"encoding/binary"
	"fmt"
	"testing"
	"unsafe"

	"github.com/zeebo/xxh3"
)

// BenchmarkResolveInline measures a design the identity table does not use: keys held
// in the table's own lines, so that a lookup confirms its key with one random line
// instead of two (bucket, then arena entry). It answers what such a table would gain
// at 1M and 10M users, and at what cost in bytes, before anyone rewrites the identity
// layer for it (docs/DESIGN.md, "Identity table").
//
// The prototype: lines of two 32-byte slots, each the user id (4 bytes), the header
// byte of an arena entry (kind<<6 | length) and up to 27 key bytes inline; linear
// probing by line, filled to 80% or 60%; the same seeded XXH3, fastrange home line,
// groups of resolveGroup with prefetches, and word-at-a-time compares as
// resolveHashedLocked. It holds only keys of at most 27 bytes (the workload's 19-byte
// external ids); a real table would also need an overflow path for longer keys and a
// way back from a user to its keys. Its region is from newRegion (huge pages).
//
// Measured (bench/reviews/resolve_inline_prototype.txt, -count 6, one run): at 10M
// users 15.0 M ids/s filled to 80% (40 table bytes a key) and 21.4 M filled to 60%
// (53.5 bytes), against 17.9 M for the identity table in the same run. Two slots a
// line leave 26% (at 80%) or 16% (at 60%) of keys outside their home line, and each of
// those pays a second, dependent line: the line saved on the arena comes back. Lines
// of 128 bytes (four slots, both lines prefetched) displace fewer keys but read two
// lines for every key, and were slower still (57 ns a key at 10M, filled to 60%).
// Neither reaches 25 M ids/s at 10M, and both need more bytes a user than the design
// in use once reverse lookups are added. Compare with BenchmarkResolveMany of the
// same run:
//
//	COHORTD_BENCH_USERS=1000000,10000000 go test ./index -run '^$' \
//	    -bench 'ResolveMany/.*/impl=flat|ResolveInline' -count 6 -cpu 1
func BenchmarkResolveInline(b *testing.B) {
	for _, n := range benchSizes() {
		for _, load := range []float64{0.8, 0.6} {
			b.Run(fmt.Sprintf("users_%d/load_%.2f", n, load), func(b *testing.B) {
				f := getResolveFixture(b, n)
				t := newInlineTable(n, load, f.users.Seed())
				defer t.r.release()
				var buf []byte
				for i := range n {
					buf = benchExternalID(buf[:0], i)
					t.insert(buf, f.users.Resolve(KindExternal, buf))
				}
				dst := make([]UserID, benchBatch)
				last := f.resolveBatches(b, func(q [][]byte) { t.resolve(q, dst) })
				want := f.users.ResolveMany(KindExternal, last, nil)
				for j, id := range dst {
					if id == NoUser || id != want[j] {
						b.Fatalf("query %d (%s): %d, the identity table has %d", j, last[j], id, want[j])
					}
				}
				b.ReportMetric(float64(len(t.r.b))/float64(n), "table-B/key")
				b.ReportMetric(t.displaced(), "displaced-share")
			})
		}
	}
}

const (
	inlineSlot    = 32
	inlineBucket  = 64 // 128 for the four-slot variant above
	inlineSlots   = inlineBucket / inlineSlot
	inlineMaxKey  = inlineSlot - 6
	inlineHdrByte = 4
)

// inlineTable is the prototype of BenchmarkResolveInline.
type inlineTable struct {
	r     region
	lines int
	seed  uint64
}

func newInlineTable(n int, load float64, seed uint64) *inlineTable {
	lines := int(float64(n)/load/inlineSlots) + 1
	return &inlineTable{r: newRegion(lines * inlineBucket), lines: lines, seed: seed ^ kindSalt[KindExternal]}
}

func (t *inlineTable) line(i int) []byte { return t.r.b[i*inlineBucket : (i+1)*inlineBucket] }

func (t *inlineTable) insert(key []byte, id UserID) {
	if len(key) > inlineMaxKey {
		panic("prototype: key too long")
	}
	h := xxh3.HashSeed(key, t.seed)
	for i := homeBucket(h, t.lines); ; i = (i + 1) % t.lines {
		l := t.line(i)
		for s := 0; s < inlineSlots; s++ {
			c := l[s*inlineSlot:]
			if c[inlineHdrByte] == 0 {
				binary.LittleEndian.PutUint32(c, uint32(id))
				c[inlineHdrByte] = byte(KindExternal)<<6 | byte(len(key))
				c[inlineHdrByte+1] = byte(h)
				copy(c[6:], key)
				return
			}
		}
	}
}

// find returns the id of key probing from line i, or NoUser.
func (t *inlineTable) find(i int, hdr uint16, key []byte) (UserID, bool) {
	l := t.line(i)
	full := true
	for s := 0; s < inlineSlots; s++ {
		c := l[s*inlineSlot : (s+1)*inlineSlot]
		if binary.LittleEndian.Uint16(c[inlineHdrByte:]) == hdr && sameBytes(c[6:6+len(key)], key) {
			return UserID(binary.LittleEndian.Uint32(c)), true
		}
		full = full && c[inlineHdrByte] != 0
	}
	return NoUser, !full
}

func (t *inlineTable) resolve(keys [][]byte, out []UserID) {
	var (
		home [resolveGroup]int32
		pend [resolveGroup]uint8
		tag  [resolveGroup]uint8
	)
	for base := 0; base < len(keys); base += resolveGroup {
		g := keys[base:min(base+resolveGroup, len(keys))]
		o := out[base : base+len(g)]
		for j, k := range g {
			h := xxh3.HashSeed(k, t.seed)
			i := homeBucket(h, t.lines)
			home[j], tag[j] = int32(i), byte(h)
			prefetch(unsafe.Pointer(&t.r.b[i*inlineBucket]))
			if inlineBucket > 64 {
				prefetch(unsafe.Pointer(&t.r.b[i*inlineBucket+64]))
			}
		}
		np := 0
		for j, k := range g {
			hdr := uint16(byte(KindExternal)<<6|byte(len(k))) | uint16(tag[j])<<8
			id, done := t.find(int(home[j]), hdr, k)
			o[j] = id
			if !done {
				pend[np] = uint8(j)
				np++
				if next := int(home[j]) + 1; next < t.lines {
					prefetch(unsafe.Pointer(&t.r.b[next*inlineBucket]))
				}
			}
		}
		for _, j := range pend[:np] {
			k := g[j]
			hdr := uint16(byte(KindExternal)<<6|byte(len(k))) | uint16(tag[j])<<8
			for i := (int(home[j]) + 1) % t.lines; ; i = (i + 1) % t.lines {
				if id, done := t.find(i, hdr, k); done {
					o[j] = id
					break
				}
			}
		}
	}
}

// displaced returns the share of keys not in their home line.
func (t *inlineTable) displaced() float64 {
	var n, away int
	for i := range t.lines {
		l := t.line(i)
		for s := 0; s < inlineSlots; s++ {
			c := l[s*inlineSlot : (s+1)*inlineSlot]
			if c[inlineHdrByte] == 0 {
				continue
			}
			n++
			key := c[6 : 6+int(c[inlineHdrByte]&63)]
			if homeBucket(xxh3.HashSeed(key, t.seed), t.lines) != i {
				away++
			}
		}
	}
	return float64(away) / float64(max(n, 1))
}
