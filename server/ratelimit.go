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

// allow takes a token for the credential kind+id ("ws:" and a workspace
// id, say), or answers 429 with Retry-After (whole seconds, at least 1)
// when the bucket is empty. The two parts are joined only when limiting is
// on, so that the query path allocates nothing without it.
func (l *rateLimits) allow(ctx *fasthttp.RequestCtx, kind, id string) error {
	if !l.set.Enabled() {
		return nil
	}
	wait := ratelimit.Take(l.set.Limiter(kind+id), time.Now(), 1)
	if wait == 0 {
		return nil
	}
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(ratelimit.RetryAfterSeconds(wait)))
	return errorf(fasthttp.StatusTooManyRequests, "rate limit exceeded")
}
