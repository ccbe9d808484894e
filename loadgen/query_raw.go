package loadgen

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Clients of Options.Client.
const (
	ClientGo  = "go"
	ClientRaw = "raw"
)

// rawPool is the number of distinct requests the raw client cycles
// through: encoded before the run, so that sending costs a write.
// SMISMEMBERs of 1,000 users (~28 kB each) cycle through rawBatchPool.
const (
	rawPool      = 1 << 14
	rawBatchPool = 1 << 8
)

// runRaw is Query through the raw client (RunRaw). Over RESP a contains is
// a pipeline of Options.Pipeline SISMEMBERs and a batch one SMISMEMBER of
// 1,000 users (after AUTH with the API key); over HTTP a contains is a
// POST /v1/segments/contains of one user. Each is drawn as the Go clients
// draw them; Options.check allows one kind a run.
func (q *querier) runRaw(ctx context.Context) error {
	o := q.r.o
	rng := newRand(o.Seed, streamQuery, 0)
	l := RawLoad{Conns: o.QueryConcurrency, Rate: o.Rate, Duration: o.Duration, Requests: make([][]byte, rawPool)}
	op, n, ids := opContains, 1, 1 // per request: operations, identifiers
	if o.Protocol == ProtocolRESP {
		l.Addr, l.Frame = o.RESPAddr, FrameRESP
		l.Hello = AppendRESPCommand(nil, "AUTH", q.r.creds.APIKey)
	}
	switch {
	case o.Protocol == ProtocolRESP && o.Mix.Batch > 0:
		op, ids = opSMISMEMBER, batchUsers
		l.Requests = l.Requests[:rawBatchPool]
		args := make([]string, 2+batchUsers)
		args[0] = "SMISMEMBER"
		for i := range l.Requests {
			args[1] = q.refs[rng.IntN(len(q.refs))]
			for j := range batchUsers {
				args[2+j] = ExternalID(1 + rng.IntN(o.Users))
			}
			l.Requests[i] = AppendRESPCommand(nil, args...)
		}
	case o.Protocol == ProtocolRESP:
		op, n, ids = opSISMEMBER, o.Pipeline, o.Pipeline
		l.Replies = n
		for i := range l.Requests {
			var req []byte
			for range n {
				req = AppendRESPCommand(req, "SISMEMBER", q.refs[rng.IntN(len(q.refs))], ExternalID(1+rng.IntN(o.Users)))
			}
			l.Requests[i] = req
		}
	default:
		bases := o.bases()
		u, err := url.Parse(bases[0])
		if err != nil || u.Scheme != "http" || len(bases) != 1 {
			return fmt.Errorf("loadgen: the raw client needs one plain http:// address, not %q", o.Addr)
		}
		l.Addr, l.Frame = u.Host, FrameHTTP
		var body []byte
		for i := range l.Requests {
			var path string
			path, body = q.build(body[:0], opContains, rng)
			l.Requests[i] = AppendHTTPPost(nil, u.Host, u.Path+path, q.r.creds.APIKey, body)
		}
	}
	q.r.notes = append(q.r.notes, fmt.Sprintf("raw client: %s at %s, %d connections", o.Protocol, l.Addr, l.Conns))
	res, err := RunRaw(ctx, l)
	if err != nil {
		return err
	}
	q.done.Add(res.Done)
	st := q.r.rec.op(op)
	st.merge(res.Latency, int64(n), int64(ids), res.Start, res.Start.Add(res.Elapsed))
	if res.Failed > 0 {
		st.mu.Lock()
		st.mu.errors += res.Failed
		st.mu.Unlock()
		q.r.rec.fail(fmt.Errorf("%s: %d requests answered with an error", op, res.Failed))
	}
	if o.Rate > 0 && res.SendLag.TotalCount() > 0 {
		q.r.notes = append(q.r.notes, fmt.Sprintf("raw client: sends late by p50 %d µs, p99 %d µs, max %d µs",
			res.SendLag.ValueAtQuantile(50), res.SendLag.ValueAtQuantile(99), res.SendLag.Max()))
	}
	return nil
}

// merge adds the requests of h (latencies in µs) that finished between
// first and last, each carrying n operations (the commands of a pipeline)
// and ids identifiers in all.
func (s *opStats) merge(h *hdrhistogram.Histogram, n, ids int64, first, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spanLocked(first, last)
	for _, b := range h.Distribution() {
		if b.Count > 0 {
			_ = s.mu.h.RecordValues(b.From, b.Count*n)
			s.mu.count += b.Count * n
			s.mu.ids += b.Count * ids
		}
	}
}

// AppendRESPCommand appends a command as a RESP array of bulk strings (a
// request for RunRaw).
func AppendRESPCommand(dst []byte, args ...string) []byte {
	dst = append(dst, '*')
	dst = strconv.AppendInt(dst, int64(len(args)), 10)
	dst = append(dst, "\r\n"...)
	for _, a := range args {
		dst = append(dst, '$')
		dst = strconv.AppendInt(dst, int64(len(a)), 10)
		dst = append(dst, "\r\n"...)
		dst = append(dst, a...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// AppendHTTPPost appends a keep-alive HTTP/1.1 POST of a JSON body with a
// bearer token (a request for RunRaw).
func AppendHTTPPost(dst []byte, host, path, apiKey string, body []byte) []byte {
	dst = append(dst, "POST "...)
	dst = append(dst, path...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, host...)
	dst = append(dst, "\r\nAuthorization: Bearer "...)
	dst = append(dst, apiKey...)
	dst = append(dst, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, body...)
}
