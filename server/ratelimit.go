package server

import (
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"
)

// rateLimits keeps one token bucket per credential (the admin token, a
// workspace key, a data import key). Buckets are created only for
// credentials that authenticated, so their number is bounded by the keys
// the operator issued; a bad credential costs a 401, not a bucket.
type rateLimits struct {
	limit rate.Limit
	burst int

	mu struct {
		sync.Mutex
		m map[string]*rate.Limiter
	}
}

// newRateLimits returns the limiter set; perSecond <= 0 disables limiting.
func newRateLimits(perSecond float64, burst int) *rateLimits {
	l := &rateLimits{limit: rate.Limit(perSecond), burst: burst}
	if l.burst < 1 {
		l.burst = max(1, int(math.Ceil(perSecond)))
	}
	l.mu.m = make(map[string]*rate.Limiter)
	return l
}

// allow takes a token for the credential kind+id ("ws:" and a workspace
// id, say), or answers 429 with Retry-After (whole seconds, at least 1)
// when the bucket is empty. The two parts are joined only when limiting is
// on, so that the query path allocates nothing without it.
func (l *rateLimits) allow(ctx *fasthttp.RequestCtx, kind, id string) error {
	if l.limit <= 0 {
		return nil
	}
	cred := kind + id
	l.mu.Lock()
	lim := l.mu.m[cred]
	if lim == nil {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.mu.m[cred] = lim
	}
	l.mu.Unlock()
	now := time.Now()
	res := lim.ReserveN(now, 1)
	wait := time.Second
	if res.OK() {
		wait = res.DelayFrom(now)
		if wait == 0 {
			return nil
		}
		res.CancelAt(now)
	}
	secs := max(1, int(math.Ceil(wait.Seconds())))
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
	return errorf(fasthttp.StatusTooManyRequests, "rate limit exceeded")
}
