package server

import (
	"io"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/cohortd/cohortd/engine"
)

// writeSnapshotMetrics writes the snapshot health gauges:
//
//	cohortd_snapshot_failures_total                  snapshots that failed (counter)
//	cohortd_snapshot_last_success_timestamp_seconds  Unix time of the newest good snapshot (0: none)
//	cohortd_snapshot_age_seconds                     seconds since it, or since start-up when there is none
//
// An alert on the age catches snapshots that stopped for any reason.
func writeSnapshotMetrics(w io.Writer, e *engine.Engine, now time.Time) {
	metrics.WriteCounterUint64(w, "cohortd_snapshot_failures_total", e.Stats.SnapshotFailures.Load())
	since := e.ReadyAt()
	var ts float64
	if info, ok := e.LastSnapshot(); ok {
		since = info.At
		ts = float64(info.At.UnixNano()) / 1e9
	}
	metrics.WriteGaugeFloat64(w, "cohortd_snapshot_last_success_timestamp_seconds", ts)
	metrics.WriteGaugeFloat64(w, "cohortd_snapshot_age_seconds", max(0, now.Sub(since).Seconds()))
}
