package resp

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// serverMetrics are the listener's metrics, in the same VictoriaMetrics set
// as the HTTP server's. Commands are labelled by their name in the command
// table (unknown names are "unknown", write commands "write": a client must
// not be able to create series), errors by command and error code (the
// first word of the reply: ERR, NOAUTH, WRONGPASS, READONLY, LOADING,
// TRYAGAIN, NOPROTO).
type serverMetrics struct {
	set       *metrics.Set
	commands  [numCmds]*metrics.Counter
	durations [numCmds]*metrics.PrometheusHistogram
	conns     *metrics.Counter // cohortd_resp_connections_total
	open      atomic.Int64     // cohortd_resp_connections, a gauge
	rejected  *metrics.Counter
	protoErrs *metrics.Counter
	runs      *metrics.Counter // membership runs: each one ResolveMany

	mu struct {
		sync.Mutex
		errors map[errorKey]*metrics.Counter
	}
}

type errorKey struct {
	cmd  cmdID
	code string
}

func newServerMetrics(set *metrics.Set) *serverMetrics {
	m := &serverMetrics{
		set:       set,
		conns:     set.GetOrCreateCounter("cohortd_resp_connections_total"),
		rejected:  set.GetOrCreateCounter("cohortd_resp_connections_rejected_total"),
		protoErrs: set.GetOrCreateCounter("cohortd_resp_protocol_errors_total"),
		runs:      set.GetOrCreateCounter("cohortd_resp_membership_runs_total"),
	}
	m.mu.errors = make(map[errorKey]*metrics.Counter)
	set.GetOrCreateGauge("cohortd_resp_connections", func() float64 { return float64(m.open.Load()) })
	for id := cmdID(0); id < numCmds; id++ {
		name := cmdTable[id].name
		m.commands[id] = set.GetOrCreateCounter(fmt.Sprintf(`cohortd_resp_commands_total{command=%q}`, name))
		m.durations[id] = set.GetOrCreatePrometheusHistogram(fmt.Sprintf(`cohortd_resp_command_duration_seconds{command=%q}`, name))
	}
	return m
}

// failed counts an error reply.
func (m *serverMetrics) failed(cmd cmdID, code string) {
	k := errorKey{cmd, code}
	m.mu.Lock()
	c := m.mu.errors[k]
	if c == nil {
		c = m.set.GetOrCreateCounter(fmt.Sprintf(`cohortd_resp_errors_total{command=%q,error=%q}`, cmdTable[cmd].name, code))
		m.mu.errors[k] = c
	}
	m.mu.Unlock()
	c.Inc()
}
