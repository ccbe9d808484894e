// Package ratelimit keeps one token bucket per credential (golang.org/x/time/rate),
// shared by cohortd's HTTP and Redis-protocol listeners so that a credential
// has one budget whichever protocol it uses.
//
// A Set is safe for concurrent use. Buckets are created only for credentials
// that authenticated, so their number is bounded by the keys the operator
// issued.
package ratelimit

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Set is a token bucket per credential.
type Set struct {
	limit rate.Limit
	burst int

	mu struct {
		sync.Mutex
		m map[string]*rate.Limiter
	}
}

// New returns a Set that allows perSecond requests a second per credential
// with bursts of burst (burst < 1 means max(1, ceil(perSecond))).
// perSecond <= 0 disables limiting: Limiter then returns nil.
func New(perSecond float64, burst int) *Set {
	s := &Set{limit: rate.Limit(perSecond), burst: burst}
	if s.burst < 1 {
		s.burst = max(1, int(math.Ceil(perSecond)))
	}
	s.mu.m = make(map[string]*rate.Limiter)
	return s
}

// Enabled reports whether the Set limits anything.
func (s *Set) Enabled() bool { return s != nil && s.limit > 0 }

// Limiter returns cred's bucket, created on first use, or nil when limiting
// is off.
func (s *Set) Limiter(cred string) *rate.Limiter {
	if s == nil || s.limit <= 0 {
		return nil
	}
	s.mu.Lock()
	lim := s.mu.m[cred]
	if lim == nil {
		lim = rate.NewLimiter(s.limit, s.burst)
		s.mu.m[cred] = lim
	}
	s.mu.Unlock()
	return lim
}

// Take takes n tokens from lim at now. It returns 0 when they were taken,
// else how long until they would be (then nothing is taken; at least a
// second when n exceeds the burst). A nil lim always allows.
func Take(lim *rate.Limiter, now time.Time, n int) time.Duration {
	if lim == nil {
		return 0
	}
	res := lim.ReserveN(now, n)
	if !res.OK() {
		return time.Second
	}
	wait := res.DelayFrom(now)
	if wait > 0 {
		res.CancelAt(now)
	}
	return wait
}

// RetryAfterSeconds rounds a wait up to whole seconds, at least 1, as the
// Retry-After header and the Redis error text give it.
func RetryAfterSeconds(wait time.Duration) int {
	return max(1, int(math.Ceil(wait.Seconds())))
}
