package loadgen

import (
	"context"
	"testing"
	"time"
)

func TestPacerOpenLoop(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newPacer(100) // one request per 10ms
	// Workers ask late (the server was slow): the schedule does not move.
	for i, now := range []time.Duration{0, 50, 51, 52} {
		got := p.next(t0.Add(now*time.Millisecond), t0)
		want := t0.Add(time.Duration(i) * 10 * time.Millisecond)
		if !got.Equal(want) {
			t.Fatalf("request %d: intended %v, want %v", i, got.Sub(t0), want.Sub(t0))
		}
	}
	// The fourth request was intended at 30ms and done at 60ms: its
	// corrected latency includes the 22ms it waited for a worker.
	if d := latency(t0.Add(30*time.Millisecond), t0.Add(60*time.Millisecond)); d != 30*time.Millisecond {
		t.Errorf("latency %v, want 30ms", d)
	}
	// A request ready only later restarts the schedule from its ready time
	// instead of bursting through banked slots.
	ready := t0.Add(time.Second)
	if got := p.next(ready, ready); !got.Equal(ready) {
		t.Errorf("after idle: intended %v, want %v", got.Sub(t0), ready.Sub(t0))
	}
	if got := p.next(ready, ready); !got.Equal(ready.Add(10 * time.Millisecond)) {
		t.Errorf("next slot %v", got.Sub(t0))
	}
}

func TestPacerClosedLoop(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newPacer(0)
	now := t0.Add(123 * time.Millisecond)
	if got := p.next(now, t0); !got.Equal(now) {
		t.Errorf("closed loop intended %v, want now", got.Sub(t0))
	}
	if d := latency(now, now.Add(-time.Millisecond)); d != 0 {
		t.Errorf("negative latency not clamped: %v", d)
	}
}

func TestOpStatsCorrected(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := newRecorder()
	s := rec.op("x")
	// 99 fast requests and one stalled for 1s: with intended times on a
	// 10ms schedule, the 100 requests queued behind the stall would also be
	// slow; here we check the histogram sees what it is given.
	for i := range 99 {
		in := t0.Add(time.Duration(i) * 10 * time.Millisecond)
		s.record(in, in.Add(time.Millisecond), 1, 0, false)
	}
	s.record(t0, t0.Add(time.Second), 1, 2, false)
	s.record(t0, t0.Add(time.Second), 1, 8, true)
	o := s.report()
	if o.Count != 100 || o.Errors != 1 || o.Retries != 10 || o.IDs != 100 {
		t.Fatalf("counts %+v", o)
	}
	if o.P50Us != 1000 || o.MaxUs < 999_000 || o.MaxUs > 1_001_000 {
		t.Errorf("p50 %dus max %dus", o.P50Us, o.MaxUs)
	}
}

// TestWaitSlot: a slot already past counts from the slot (the request
// queued behind busy workers); a slot ahead counts from the wake-up, after
// the slot.
func TestWaitSlot(t *testing.T) {
	ctx := context.Background()
	past := time.Now().Add(-time.Second)
	if from, err := WaitSlot(ctx, past); err != nil || !from.Equal(past) {
		t.Fatalf("past slot: from %v (err %v), want the slot", from.Sub(past), err)
	}
	ahead := time.Now().Add(3 * time.Millisecond)
	from, err := WaitSlot(ctx, ahead)
	if err != nil {
		t.Fatal(err)
	}
	if !from.After(ahead) {
		t.Fatalf("slot ahead: counts from %v, want the wake-up, after the slot", from.Sub(ahead))
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := WaitSlot(cctx, time.Now().Add(time.Hour)); err == nil {
		t.Fatal("cancelled wait returned no error")
	}
}
