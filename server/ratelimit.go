package server

import (
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/server/ratelimit"
)

// rateLimits applies the token buckets of a ratelimit.Set (one per
// credential: the admin token, a workspace key, a data import key) to HTTP
// requests.
type rateLimits struct{ set *ratelimit.Set }

// allow takes a token for cred, or answers 429 with Retry-After (whole
// seconds, at least 1) when the bucket is empty.
func (l *rateLimits) allow(ctx *fasthttp.RequestCtx, cred string) error {
	lim := l.set.Limiter(cred)
	if lim == nil {
		return nil
	}
	wait := ratelimit.Take(lim, time.Now(), 1)
	if wait == 0 {
		return nil
	}
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(ratelimit.RetryAfterSeconds(wait)))
	return errorf(fasthttp.StatusTooManyRequests, "rate limit exceeded")
}
