package server

import (
	"strings"
	"testing"

	"github.com/cohortd/cohortd/engine"
)

func TestParsePositions(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []engine.Position
	}{
		{"0:12", []engine.Position{{Partition: 0, Offset: 12}}},
		{" 3:0 , 1:99", []engine.Position{{Partition: 3, Offset: 0}, {Partition: 1, Offset: 99}}},
	} {
		got, err := parsePositions([]byte(tc.in))
		if err != nil || len(got) != len(tc.want) {
			t.Fatalf("%q: %v %v", tc.in, got, err)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("%q: %v, want %v", tc.in, got, tc.want)
			}
		}
	}
	for _, bad := range []string{"", "1", "a:1", "1:b", "-1:2", "1:-2", "1:2,", "99999999999:1", "1:2:3"} {
		if _, err := parsePositions([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzParsePositions: X-Cohortd-Min-Position never panics, and what it
// accepts formats back to the same positions.
func FuzzParsePositions(f *testing.F) {
	f.Add("0:1")
	f.Add("2:3,0:0")
	f.Fuzz(func(t *testing.T, v string) {
		ps, err := parsePositions([]byte(v))
		if err != nil {
			return
		}
		parts := make([]string, len(ps))
		for i, p := range ps {
			if p.Partition < 0 || p.Offset < 0 {
				t.Fatalf("%q gave %v", v, p)
			}
			parts[i] = p.String()
		}
		again, err := parsePositions([]byte(strings.Join(parts, ",")))
		if err != nil || len(again) != len(ps) {
			t.Fatalf("%q: formatted %q does not parse back: %v", v, strings.Join(parts, ","), err)
		}
	})
}
