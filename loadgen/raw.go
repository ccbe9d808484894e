package loadgen

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// RawLoad is a stream of pre-encoded requests for the raw client (RunRaw):
// one thread, one epoll set, non-blocking sockets, no allocation a request.
// It exists for latency measurements: at 50,000 requests a second a Go
// client built on go-redis or net/http keeps its own core ~80% busy and
// wakes its timers up to a millisecond late, so the open-loop percentiles
// it reports are its own queueing as much as the server's. The raw client
// sleeps to the next send time with a nanosecond timeout and spends a few
// microseconds of CPU a request.
type RawLoad struct {
	Addr     string        // host:port of the server
	Conns    int           // connections, used round-robin; default 1
	Rate     float64       // requests a second over all connections; 0: closed loop, one in flight a connection
	Duration time.Duration // how long requests are sent; default 10s
	// Hello is sent first on every connection (AUTH for RESP), and its
	// replies (HelloReplies, default 1 when Hello is set) must not fail.
	Hello        []byte
	HelloReplies int
	// Requests are sent in turn, wrapping around.
	Requests [][]byte
	// Replies is the number of replies one request gets (a pipeline's
	// length); default 1.
	Replies int
	// Frame frames replies: FrameRESP or FrameHTTP.
	Frame func(p []byte) (n int, failed bool, err error)
	// Drain bounds the wait for the last replies once sending stops;
	// default 5s.
	Drain time.Duration
}

// RawResult is what RunRaw measured.
type RawResult struct {
	// Latency is in microseconds: from each request's slot in the
	// schedule (open loop) or its send (closed loop) to the read that
	// completed its last reply. Failed requests are not in it.
	Latency *hdrhistogram.Histogram
	// SendLag is in microseconds: from each slot to the write, the
	// client's own lateness (open loop only).
	SendLag *hdrhistogram.Histogram
	Sent    int64         // requests written
	Done    int64         // requests whose replies all arrived and none failed
	Failed  int64         // requests with a failed reply
	Start   time.Time     // the first slot (open loop) or send (closed loop)
	Elapsed time.Duration // from Start to the last reply
}

// PerSecond is the rate of requests done.
func (r *RawResult) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Done) / r.Elapsed.Seconds()
}

func (l *RawLoad) setDefaults() {
	setDefault(&l.Conns, 1)
	setDefault(&l.Replies, 1)
	setDefault(&l.Duration, 10*time.Second)
	setDefault(&l.Drain, 5*time.Second)
	if l.Hello != nil {
		setDefault(&l.HelloReplies, 1)
	}
}
