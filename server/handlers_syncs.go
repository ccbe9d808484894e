package server

// Sync history and health (docs/API.md §8), workspace auth:
//
//	GET /v1/cohorts/{partner}/{cohort_id}/syncs?limit=N (1–1000, default 100)
//	    → 200 {"syncs":[S…, newest first],"health":H}; 404 if the cohort is unknown
//	GET /v1/health/cohorts → 200 {"cohorts":[{"partner","cohort_id","name","health":H}…]}:
//	    the cohorts whose status is not ok, sorted by partner and id
//
//	S = {"started_at","ended_at","source":"partner"|"bulk"|"replace"|"webhook","requests",
//	     "matched","added","removed","unmatched":{"unknown","device_id_identified"},
//	     "dropped_before_floor","data_points","size_after"}
//	H = {"status":"ok"|"stale"|"unmatched_high"|"shrunk"|"never_synced","reasons":[string…],
//	     "last_sync_at":string|null,"expected_interval_s":number|null}
//
// The cohort objects of GET /v1/cohorts and GET /v1/cohorts/{partner}/{cohort_id}
// carry H as "health" too, so that a list of cohorts shows their health in
// one call.

import (
	"fmt"
	"io"
	"strconv"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// defaultSyncLimit is the number of syncs listed without ?limit.
const defaultSyncLimit = 100

type healthJSON struct {
	Status           string   `json:"status"`
	Reasons          []string `json:"reasons"`
	LastSyncAt       *string  `json:"last_sync_at"`
	ExpectedInterval *float64 `json:"expected_interval_s"`
}

func toHealthJSON(h engine.Health) *healthJSON {
	out := &healthJSON{Status: string(h.Status), Reasons: h.Reasons}
	if out.Reasons == nil {
		out.Reasons = []string{}
	}
	if !h.LastSyncAt.IsZero() {
		s := formatTime(h.LastSyncAt)
		out.LastSyncAt = &s
	}
	if h.HasInterval {
		s := h.ExpectedInterval.Seconds()
		out.ExpectedInterval = &s
	}
	return out
}

type unmatchedJSON struct {
	Unknown          uint64 `json:"unknown"`
	DeviceIdentified uint64 `json:"device_id_identified"`
}

type syncJSON struct {
	StartedAt          string        `json:"started_at"`
	EndedAt            string        `json:"ended_at"`
	Source             string        `json:"source"`
	Requests           uint64        `json:"requests"`
	Matched            uint64        `json:"matched"`
	Added              uint64        `json:"added"`
	Removed            uint64        `json:"removed"`
	Unmatched          unmatchedJSON `json:"unmatched"`
	DroppedBeforeFloor uint64        `json:"dropped_before_floor"`
	DataPoints         uint64        `json:"data_points"`
	SizeAfter          uint64        `json:"size_after"`
}

// handleCohortSyncs serves GET /v1/cohorts/{partner}/{cohort_id}/syncs.
func (s *Server) handleCohortSyncs(r *request) error {
	partner, id, err := cohortTarget(r)
	if err != nil {
		return err
	}
	limit := defaultSyncLimit
	if v := r.ctx.QueryArgs().Peek("limit"); v != nil {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > engine.MaxSyncs {
			return errorf(fasthttp.StatusBadRequest, "limit must be an integer between 1 and %d", engine.MaxSyncs)
		}
		limit = n
	}
	c := r.ws.Cohort(partner, id)
	if c == nil {
		return errorf(fasthttp.StatusNotFound, "cohort not found")
	}
	syncs := c.Syncs(limit)
	out := make([]syncJSON, len(syncs))
	for i := range syncs {
		sy := &syncs[i]
		out[i] = syncJSON{
			StartedAt: formatTime(sy.StartedAt), EndedAt: formatTime(sy.EndedAt), Source: sy.Source.String(),
			Requests: sy.Requests, Matched: sy.Matched, Added: sy.Added, Removed: sy.Removed,
			Unmatched:          unmatchedJSON{sy.Unknown, sy.DeviceIdentified},
			DroppedBeforeFloor: sy.DroppedBeforeFloor, DataPoints: sy.DataPoints(), SizeAfter: sy.SizeAfter,
		}
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Syncs  []syncJSON  `json:"syncs"`
		Health *healthJSON `json:"health"`
	}{out, toHealthJSON(c.Health(r.e.Now()))})
}

// handleHealthCohorts serves GET /v1/health/cohorts: the cohorts that are
// not ok.
func (s *Server) handleHealthCohorts(r *request) error {
	type entry struct {
		Partner  string      `json:"partner"`
		CohortID string      `json:"cohort_id"`
		Name     string      `json:"name"`
		Health   *healthJSON `json:"health"`
	}
	now := r.e.Now()
	out := []entry{}
	for _, c := range r.ws.Cohorts() {
		h := c.Health(now)
		if h.Status == engine.HealthOK {
			continue
		}
		info := c.Info()
		out = append(out, entry{info.Partner, info.CohortID, info.Name, toHealthJSON(h)})
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Cohorts []entry `json:"cohorts"`
	}{out})
}

// withHealth is a cohort object with its health.
func withHealth(c *engine.Cohort, e *engine.Engine) cohortJSON {
	j := toCohortJSON(c.Info())
	j.Health = toHealthJSON(c.Health(e.Now()))
	return j
}

// writeHealthMetrics writes cohortd_cohorts_health{workspace,status}: the
// cohorts of each workspace by sync health, every status present (zeros
// included) so that alerts see a series go to 0.
func writeHealthMetrics(w io.Writer, e *engine.Engine) {
	now := e.Now()
	for _, ws := range e.Workspaces() {
		counts := ws.HealthCounts(now)
		for _, st := range engine.HealthStatuses {
			metrics.WriteGaugeUint64(w, fmt.Sprintf(`cohortd_cohorts_health{workspace=%q,status=%q}`, ws.ID(), st), uint64(counts[st]))
		}
	}
}
