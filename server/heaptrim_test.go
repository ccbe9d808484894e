package server

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestHeapTrimCoalesces: the first big body trims at once; a burst inside
// the interval schedules exactly one more trim, after the interval, so the
// last body of a burst is always followed by one.
func TestHeapTrimCoalesces(t *testing.T) {
	var n atomic.Int32
	tr := heapTrim{free: func() { n.Add(1) }}
	tr.request()
	if got := n.Load(); got != 1 {
		t.Fatalf("first request: %d trims, want 1 at once", got)
	}
	for range 5 {
		tr.request()
	}
	if got := n.Load(); got != 1 {
		t.Fatalf("burst inside the interval: %d trims, want the first only so far", got)
	}
	deadline := time.Now().Add(heapTrimInterval + 5*time.Second)
	for n.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if got := n.Load(); got != 2 {
		t.Fatalf("after the interval: %d trims, want 2 (one scheduled for the whole burst)", got)
	}
}
