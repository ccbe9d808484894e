package loadgen

import (
	"context"
	"sync"
	"time"
)

// pacer hands out the intended send time of each request.
//
// Open loop (rate > 0): send times follow a fixed schedule of one request per
// period, so a slow server cannot slow the offered load down; latency is then
// measured from the intended time, which charges queueing to the server
// (coordinated-omission correction). A request that only becomes ready later
// than its slot (an exporter waiting for its next interval) starts the
// schedule again from its ready time, so idle time is not banked as a burst.
//
// Closed loop (rate 0): the intended time is now, the moment a worker is free.
//
// A pacer is safe for concurrent use.
type pacer struct {
	period time.Duration
	mu     struct {
		sync.Mutex
		next time.Time
	}
}

// newPacer returns a pacer for rate requests a second; 0 is a closed loop.
func newPacer(rate float64) *pacer {
	p := &pacer{}
	if rate > 0 {
		p.period = time.Duration(float64(time.Second) / rate)
		if p.period <= 0 {
			p.period = 1
		}
	}
	return p
}

// next returns the intended send time of a request that became ready at
// ready, given the current time now.
func (p *pacer) next(now, ready time.Time) time.Time {
	if p.period == 0 {
		return now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.mu.next
	if t.Before(ready) {
		t = ready
	}
	p.mu.next = t.Add(p.period)
	return t
}

// latency is the coordinated-omission-corrected latency of a request
// intended at intended and completed at done.
func latency(intended, done time.Time) time.Duration {
	if d := done.Sub(intended); d > 0 {
		return d
	}
	return 0
}

// sleepUntil waits until t or until ctx is done.
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	return sleepCtx(ctx, d)
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}
