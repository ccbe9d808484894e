package loadgen

import (
	"slices"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds: microsecond resolution up to one hour, three significant
// digits (a 0.1% error), the usual HDR setup for request latency.
const (
	histMin     = 1
	histMax     = int64(time.Hour / time.Microsecond)
	histSigFigs = 3
	maxSamples  = 10 // error messages kept per run
)

// opStats accumulates one operation's latencies and counts. It is safe for
// concurrent use.
type opStats struct {
	name string
	mu   struct {
		sync.Mutex
		h       *hdrhistogram.Histogram
		count   int64 // successful requests
		errors  int64 // requests that failed after retries
		retries int64 // extra attempts
		ids     int64 // identifiers carried by successful requests
		first   time.Time
		last    time.Time
	}
}

// record adds one finished request, intended at intended and done at done.
func (s *opStats) record(intended, done time.Time, ids, retries int, failed bool) {
	us := latency(intended, done).Microseconds()
	us = min(max(us, histMin), histMax)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spanLocked(intended, done)
	s.mu.retries += int64(retries)
	if failed {
		s.mu.errors++
		return
	}
	s.mu.count++
	s.mu.ids += int64(ids)
	_ = s.mu.h.RecordValue(us) // clamped into range above
}

// spanLocked widens the stats' time span to cover first and last.
func (s *opStats) spanLocked(first, last time.Time) {
	if s.mu.first.IsZero() || first.Before(s.mu.first) {
		s.mu.first = first
	}
	if last.After(s.mu.last) {
		s.mu.last = last
	}
}

// recorder holds the stats of every operation of a run, plus samples of
// error messages and verification failures. It is safe for concurrent use.
type recorder struct {
	mu struct {
		sync.Mutex
		ops      map[string]*opStats
		samples  []string
		errors   int64
		mismatch []string
		checked  int
		failed   int
	}
}

func newRecorder() *recorder {
	r := &recorder{}
	r.mu.ops = make(map[string]*opStats)
	return r
}

// op returns the stats of the named operation, creating them on first use.
func (r *recorder) op(name string) *opStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.mu.ops[name]
	if s == nil {
		s = &opStats{name: name}
		s.mu.h = hdrhistogram.New(histMin, histMax, histSigFigs)
		r.mu.ops[name] = s
	}
	return s
}

// fail counts an error and keeps its message if there is room.
func (r *recorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.errors++
	if len(r.mu.samples) < maxSamples {
		r.mu.samples = append(r.mu.samples, err.Error())
	}
}

// verified records one verification check and, when msg is not empty, its
// failure.
func (r *recorder) verified(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.checked++
	if msg == "" {
		return
	}
	r.mu.failed++
	if len(r.mu.mismatch) < maxSamples {
		r.mu.mismatch = append(r.mu.mismatch, msg)
	}
}

// totals returns the requests done and failed so far, for progress output.
func (r *recorder) totals() (done, failed int64) {
	r.mu.Lock()
	ops := make([]*opStats, 0, len(r.mu.ops))
	for _, s := range r.mu.ops {
		ops = append(ops, s)
	}
	r.mu.Unlock()
	for _, s := range ops {
		s.mu.Lock()
		done += s.mu.count
		failed += s.mu.errors
		s.mu.Unlock()
	}
	return done, failed
}

// opReports summarises every operation, sorted by name.
func (r *recorder) opReports() []OpReport {
	r.mu.Lock()
	names := make([]string, 0, len(r.mu.ops))
	for n := range r.mu.ops {
		names = append(names, n)
	}
	slices.Sort(names)
	ops := make([]*opStats, len(names))
	for i, n := range names {
		ops[i] = r.mu.ops[n]
	}
	r.mu.Unlock()
	out := make([]OpReport, 0, len(ops))
	for _, s := range ops {
		out = append(out, s.report())
	}
	return out
}

func (s *opStats) report() OpReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.mu.h
	o := OpReport{
		Name:    s.name,
		Count:   s.mu.count,
		Errors:  s.mu.errors,
		Retries: s.mu.retries,
		IDs:     s.mu.ids,
	}
	if !s.mu.first.IsZero() {
		o.ElapsedNs = s.mu.last.Sub(s.mu.first).Nanoseconds()
	}
	if h.TotalCount() > 0 {
		o.MeanUs = h.Mean()
		o.P50Us = h.ValueAtQuantile(50)
		o.P90Us = h.ValueAtQuantile(90)
		o.P99Us = h.ValueAtQuantile(99)
		o.P999Us = h.ValueAtQuantile(99.9)
		o.MaxUs = h.Max()
	}
	o.fillRates()
	return o
}
