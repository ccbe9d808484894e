package server

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// serverMetrics are the metrics of the HTTP layer plus a writer for the
// engine's counters and gauges, all in one VictoriaMetrics set.
//
// Request metrics are labelled by the route pattern (never the raw path,
// which would carry cohort ids and explode the series count), the method
// and the status code.
type serverMetrics struct {
	set       *metrics.Set
	panics    *metrics.Counter
	bytesIn   *metrics.Counter
	durations map[*route]*metrics.PrometheusHistogram // built in New, read-only
	unmatched *metrics.PrometheusHistogram

	mu struct {
		sync.Mutex
		requests map[requestKey]*metrics.Counter
	}
}

type requestKey struct {
	rt   *route
	code int
}

func newServerMetrics(set *metrics.Set, routes []*route, eng func() *engine.Engine) *serverMetrics {
	m := &serverMetrics{
		set:       set,
		panics:    set.GetOrCreateCounter("cohortd_panics_total"),
		bytesIn:   set.GetOrCreateCounter("cohortd_http_request_body_bytes_total"),
		durations: make(map[*route]*metrics.PrometheusHistogram, len(routes)),
		unmatched: set.GetOrCreatePrometheusHistogram(`cohortd_http_request_duration_seconds{route="unmatched",method=""}`),
	}
	m.mu.requests = make(map[requestKey]*metrics.Counter)
	for _, rt := range routes {
		m.durations[rt] = set.GetOrCreatePrometheusHistogram(
			fmt.Sprintf(`cohortd_http_request_duration_seconds{route=%q,method=%q}`, rt.pattern, rt.method))
	}
	set.RegisterMetricsWriter(func(w io.Writer) { writeEngineMetrics(w, eng()) })
	return m
}

// observe counts a finished request.
func (m *serverMetrics) observe(rt *route, ctx *fasthttp.RequestCtx, d time.Duration) {
	code := ctx.Response.StatusCode()
	k := requestKey{rt, code}
	m.mu.Lock()
	c := m.mu.requests[k]
	if c == nil {
		pattern, method := "unmatched", ""
		if rt != nil {
			pattern, method = rt.pattern, rt.method
		}
		c = m.set.GetOrCreateCounter(fmt.Sprintf(`cohortd_http_requests_total{route=%q,method=%q,code="%d"}`, pattern, method, code))
		m.mu.requests[k] = c
	}
	m.mu.Unlock()
	c.Inc()
	h := m.unmatched
	if rt != nil {
		h = m.durations[rt]
	}
	h.Update(d.Seconds())
}

// writeEngineMetrics writes the engine's counters and gauges (nothing
// before SetEngine).
func writeEngineMetrics(w io.Writer, e *engine.Engine) {
	if e == nil {
		metrics.WriteGaugeUint64(w, "cohortd_ready", 0)
		return
	}
	st := &e.Stats
	metrics.WriteGaugeUint64(w, "cohortd_ready", 1)
	metrics.WriteCounterUint64(w, "cohortd_identifiers_received_total", st.IdentifiersReceived.Load())
	metrics.WriteCounterUint64(w, "cohortd_identifiers_matched_total", st.IdentifiersMatched.Load())
	metrics.WriteCounterUint64(w, `cohortd_identifiers_unmatched_total{reason="unknown"}`, st.IdentifiersUnknown.Load())
	metrics.WriteCounterUint64(w, `cohortd_identifiers_unmatched_total{reason="device_id_identified"}`, st.IdentifiedDevice.Load())
	metrics.WriteCounterUint64(w, "cohortd_identifiers_dropped_before_floor_total", st.DroppedBeforeFloor.Load())
	metrics.WriteCounterUint64(w, "cohortd_data_points_total", st.DataPoints.Load())
	metrics.WriteCounterUint64(w, "cohortd_snapshots_total", st.Snapshots.Load())
	metrics.WriteCounterUint64(w, "cohortd_webhook_sessions_evicted_total", st.SessionsEvicted.Load())
	// Counts only: a scrape must stay cheap with thousands of cohorts (no
	// listing or sorting) and never wait for a writer lock.
	var users, cohorts, sessions uint64
	wss := e.Workspaces()
	for _, ws := range wss {
		users += uint64(ws.UserCount())
		cohorts += uint64(ws.CohortCount())
		sessions += uint64(ws.OpenSessions())
	}
	metrics.WriteGaugeUint64(w, "cohortd_workspaces", uint64(len(wss)))
	metrics.WriteGaugeUint64(w, "cohortd_users", users)
	metrics.WriteGaugeUint64(w, "cohortd_cohorts", cohorts)
	metrics.WriteGaugeUint64(w, "cohortd_webhook_sessions_open", sessions)
	metrics.WriteGaugeFloat64(w, "cohortd_recovery_seconds", e.RecoveryDuration().Seconds())
	writeMemoryMetrics(w, e)
	writeHealthMetrics(w, e)
	writeSnapshotMetrics(w, e, time.Now())
	writeReplicationMetrics(w, e)
}

// handleMetrics serves GET /metrics: Prometheus text, no token, no secrets.
func (s *Server) handleMetrics(r *request) error {
	ctx := r.ctx
	ctx.SetContentType("text/plain; version=0.0.4; charset=utf-8")
	s.met.set.WritePrometheus(ctx)
	metrics.WriteProcessMetrics(ctx)
	return nil
}
