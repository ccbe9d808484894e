package client_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cohortd/cohortd/server/client"
)

func TestBackoff(t *testing.T) {
	b := client.Backoff{Base: 50 * time.Millisecond, Max: time.Second}
	r := rand.New(rand.NewPCG(1, 2))
	for attempt := range 10 {
		ceiling := min(b.Base<<attempt, b.Max)
		for range 100 {
			if d := b.Delay(attempt, 0, r); d < 0 || d > ceiling {
				t.Fatalf("attempt %d: delay %v beyond [0, %v]", attempt, d, ceiling)
			}
		}
	}
	if d := b.Delay(0, 3*time.Second, r); d < 3*time.Second || d > 3*time.Second+b.Base {
		t.Errorf("Retry-After 3s: delay %v", d)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Duration
	}{{"", 0}, {"2", 2 * time.Second}, {"Thu, 01 Jan 2026 00:00:05 GMT", 5 * time.Second}, {"junk", 0}} {
		if got := client.ParseRetryAfter(c.in, now); got != c.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}
