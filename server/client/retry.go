package client

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Backoff computes the waits between retries: exponential with full jitter,
// as AWS senders do, so that many senders that failed together do not
// retry together.
type Backoff struct {
	Base time.Duration // the ceiling of the first wait
	Max  time.Duration // the largest ceiling
}

// DefaultBackoff is the Backoff of a Client whose Options leave it zero.
var DefaultBackoff = Backoff{Base: 50 * time.Millisecond, Max: 5 * time.Second}

// Delay returns the wait before retry number attempt (0-based), drawn from
// r. A Retry-After from the server (retryAfter > 0) is honoured, with up to
// Base of jitter on top.
func (b Backoff) Delay(attempt int, retryAfter time.Duration, r *rand.Rand) time.Duration {
	if retryAfter > 0 {
		return retryAfter + time.Duration(r.Int64N(int64(b.Base)+1))
	}
	ceiling := b.Base << min(attempt, 30)
	if ceiling > b.Max || ceiling <= 0 {
		ceiling = b.Max
	}
	return time.Duration(r.Int64N(int64(ceiling) + 1))
}

// ParseRetryAfter reads a Retry-After header, delay seconds or an HTTP date
// relative to now; 0 when absent or malformed.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

// Retryable reports whether a reply status is worth another attempt: 429
// and 5xx.
func Retryable(status int) bool { return status == http.StatusTooManyRequests || status >= 500 }
