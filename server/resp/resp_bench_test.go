package resp

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/tidwall/redcon"
)

// pipeline returns n SISMEMBER commands as one client would send them.
func pipeline(n int) []byte {
	var b []byte
	for i := range n {
		b = append(b, encode("SISMEMBER", "p/c", fmt.Sprintf("user-%014d", i))...)
	}
	return b
}

// BenchmarkParse compares this package's request parser with redcon's
// reader (what redcon.Server parses with) on pipelines of SISMEMBERs; ns/op
// and allocs/op are per command.
func BenchmarkParse(b *testing.B) {
	for _, n := range []int{1, 16, 1000} {
		in := pipeline(n)
		b.Run(fmt.Sprintf("cmds_%d/resp", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in) / n))
			r := reader{buf: make([]byte, len(in)+1), maxCmd: 1 << 20}
			var argv [][]byte
			for b.Loop() {
				r.pos, r.end = 0, copy(r.buf, in)
				for k := 0; k < n; k++ {
					var ok bool
					argv, ok, _ = r.next(argv[:0], true)
					if !ok {
						b.Fatal("incomplete")
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/cmd")
		})
		b.Run(fmt.Sprintf("cmds_%d/redcon", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in) / n))
			src := bytes.NewReader(in)
			for b.Loop() {
				src.Reset(in)
				rd := redcon.NewReader(src)
				for k := 0; k < n; k++ {
					if _, err := rd.ReadCommand(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/cmd")
		})
	}
	// One SMISMEMBER of 1,000 external ids as exporters spell them: the
	// per-argument cost.
	args := []string{"SMISMEMBER", "bench/uniform-0000"}
	for i := range 1000 {
		args = append(args, fmt.Sprintf("user-%014d", i*997))
	}
	in := encode(args...)
	b.Run("smismember_1000/resp", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(in)))
		r := reader{buf: make([]byte, len(in)+1), maxCmd: 1 << 20}
		var argv [][]byte
		for b.Loop() {
			r.pos, r.end = 0, copy(r.buf, in)
			var ok bool
			if argv, ok, _ = r.next(argv[:0], true); !ok || len(argv) != len(args) {
				b.Fatal("incomplete")
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(args)), "ns/arg")
	})
}

// BenchmarkServe measures a connection's whole loop without the network
// (read, parse, execute, reply), per read of the given input.
func BenchmarkServe(b *testing.B) {
	f := newFixture(b)
	var smis = []string{"SMISMEMBER", "p/c"}
	for i := range 1000 {
		smis = append(smis, fmt.Sprintf("u%d", i%120))
	}
	for _, tc := range []struct {
		name string
		in   []byte
		cmds int
	}{
		{"sismember", encode("SISMEMBER", "p/c", "u1"), 1},
		{"sismember_x16", bytes.Repeat(encode("SISMEMBER", "p/c", "u7"), 16), 16},
		{"smismember_1000", encode(smis...), 1},
		{"cohort.count", encode("COHORT.COUNT", `{"and":[{"cohort":"p/c"},{"cohort":"p/d"}]}`), 1},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c, _ := steadyConn(b, f, tc.in)
			b.ReportAllocs()
			for b.Loop() {
				if err := c.serveOnce(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*tc.cmds), "ns/cmd")
		})
	}
}
