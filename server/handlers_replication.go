package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// Replication (docs/API.md §7): positions on write replies, waits for a
// position, and the admin endpoints of a group.
//
//	X-Cohortd-Position: <partition>:<offset>        on 2xx write replies (log mode)
//	X-Cohortd-Min-Position: <partition>:<offset>[,…] on any request: answered once applied (≤ 5 s, else 503)
//	GET /v1/admin/replication → 200 {"log","node_id","positions":{"<p>":{"applied","end"}},"lag_records","last_applied_at"}
//	GET /v1/admin/digest      → 200 {"digest","positions"}
//	GET /v1/admin/snapshot    → 200 the newest snapshot file (application/octet-stream)

const (
	headerPosition    = "X-Cohortd-Position"
	headerMinPosition = "X-Cohortd-Min-Position"
	// minPositionWait bounds how long a request waits for its position.
	minPositionWait = 5 * time.Second
	// idemCatchUpWait bounds how long an Idempotency-Key lookup waits to
	// catch up with the log.
	idemCatchUpWait = 5 * time.Second
)

// parsePositions parses "<partition>:<offset>[,<partition>:<offset>…]".
func parsePositions(v []byte) ([]engine.Position, error) {
	var out []engine.Position
	for _, part := range strings.Split(string(v), ",") {
		p, o, ok := strings.Cut(strings.TrimSpace(part), ":")
		pn, perr := strconv.ParseInt(p, 10, 32)
		on, oerr := strconv.ParseInt(o, 10, 64)
		if !ok || perr != nil || oerr != nil || pn < 0 || on < 0 {
			return nil, errorf(fasthttp.StatusBadRequest, "%s must be <partition>:<offset>, e.g. 0:1234", headerMinPosition)
		}
		out = append(out, engine.Position{Partition: int32(pn), Offset: on})
	}
	return out, nil
}

// waitMinPosition honours X-Cohortd-Min-Position: the request goes on once
// this node has applied every position named (a single node has applied
// everything it acknowledged: the header is only checked there).
func waitMinPosition(r *request) error {
	v := r.ctx.Request.Header.Peek(headerMinPosition)
	if len(v) == 0 {
		return nil
	}
	ps, err := parsePositions(v)
	if err != nil {
		return err
	}
	if !r.e.Replicated() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), minPositionWait)
	defer cancel()
	for _, p := range ps {
		if err := r.e.WaitPosition(ctx, p); err != nil {
			if errors.Is(err, engine.ErrPositionTimeout) {
				r.ctx.Response.Header.Set("Retry-After", "1")
				return errorf(fasthttp.StatusServiceUnavailable, "this node has not applied position %s yet; retry, or ask another node", p)
			}
			return err
		}
	}
	return nil
}

// notePosition sets X-Cohortd-Position on a successful write reply in log
// mode: the last record this node applied in the partition of the write's
// scope, which covers the write (it was applied before the reply).
func notePosition(r *request) {
	if r.e == nil || !r.e.Replicated() || r.rt == nil || !r.rt.write {
		return
	}
	if c := r.ctx.Response.StatusCode(); c < 200 || c > 299 {
		return
	}
	if pos, ok := r.e.ScopePosition(r.scope()); ok {
		r.ctx.Response.Header.Set(headerPosition, pos.String())
	}
}

// scope is the log scope a request writes: its workspace, the workspace
// an admin route names, or "" (partners and admin replies).
func (r *request) scope() string {
	switch {
	case r.ws != nil:
		return r.ws.ID()
	case r.posScope != "":
		return r.posScope
	case r.rt != nil && strings.HasPrefix(r.rt.pattern, "/v1/workspaces/{ws}"):
		return r.params[0]
	}
	return ""
}

// catchUpIdem makes a replicated node apply what the log holds for scope
// before an Idempotency-Key is looked up, so that a retry sent to another
// node finds the first request's reply.
func catchUpIdem(r *request, scope string) error {
	if !r.e.Replicated() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), idemCatchUpWait)
	defer cancel()
	if err := r.e.CatchUp(ctx, scope); err != nil {
		if errors.Is(err, engine.ErrPositionTimeout) {
			r.ctx.Response.Header.Set("Retry-After", "1")
			return errorf(fasthttp.StatusServiceUnavailable, "this node is catching up with the log; retry")
		}
		return err
	}
	return nil
}

// positionsJSON is the Positions schema: per partition (as a decimal
// string) the offset after the last record applied and the end seen.
type positionJSON struct {
	Applied int64 `json:"applied"`
	End     int64 `json:"end"`
}

func positionsJSON(ps []engine.PartitionStatus) map[string]positionJSON {
	out := make(map[string]positionJSON, len(ps))
	for p, st := range ps {
		out[strconv.Itoa(p)] = positionJSON{Applied: st.Applied, End: st.End}
	}
	return out
}

// handleReplication serves GET /v1/admin/replication.
func (s *Server) handleReplication(r *request) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st := r.e.Replication(ctx)
	mode := "local"
	if st.Replicated {
		mode = "kafka"
	}
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Log           string                  `json:"log"`
		NodeID        string                  `json:"node_id"`
		Positions     map[string]positionJSON `json:"positions"`
		LagRecords    int64                   `json:"lag_records"`
		LastAppliedAt *string                 `json:"last_applied_at"`
	}{mode, st.NodeID, positionsJSON(st.Partitions), st.LagRecords, nullableTime(st.LastAppliedAt)})
}

// handleDigest serves GET /v1/admin/digest.
func (s *Server) handleDigest(r *request) error {
	d, ps := r.e.Digest()
	return writeJSON(r.ctx, fasthttp.StatusOK, struct {
		Digest    string                  `json:"digest"`
		Positions map[string]positionJSON `json:"positions"`
	}{d, positionsJSON(ps)})
}

// handleGetSnapshot serves GET /v1/admin/snapshot: the newest snapshot file
// as it is on disk (taken first when there is none), streamed; its name is
// in X-Cohortd-Snapshot. A new node of a group starts from it
// (-bootstrap-from).
func (s *Server) handleGetSnapshot(r *request) error {
	f, info, err := r.e.NewestSnapshot()
	if errors.Is(err, engine.ErrNoDataDir) {
		return errorf(fasthttp.StatusConflict, "cohortd runs without a data directory: no snapshot to send")
	}
	if err != nil {
		return err
	}
	ctx := r.ctx
	ctx.SetContentType("application/octet-stream")
	ctx.Response.Header.Set("X-Cohortd-Snapshot", info.File)
	ctx.Response.Header.Set("Content-Disposition", `attachment; filename="`+info.File+`"`)
	ctx.SetStatusCode(fasthttp.StatusOK)
	r.streaming = true
	size := info.Bytes
	ctx.SetBodyStreamWriter(func(bw *bufio.Writer) {
		defer s.inflight.Add(-1)
		defer f.Close()
		if _, err := io.CopyN(bw, f, size); err != nil {
			s.log.Warn("sending a snapshot failed", "file", info.File, "err", err)
		}
	})
	return nil
}

// writeReplicationMetrics writes the log-mode gauges (nothing on a single
// node):
//
//	cohortd_log_records_applied_total           records applied since start (counter)
//	cohortd_log_lag_records                     records in the log not applied yet, by the end offsets last seen
//	cohortd_log_last_applied_timestamp_seconds  when the last record was applied (0: none yet)
func writeReplicationMetrics(w io.Writer, e *engine.Engine) {
	if !e.Replicated() {
		return
	}
	st := e.ReplicationCached()
	metrics.WriteCounterUint64(w, "cohortd_log_records_applied_total", uint64(st.RecordsApplied))
	metrics.WriteGaugeUint64(w, "cohortd_log_lag_records", uint64(st.LagRecords))
	var ts float64
	if !st.LastAppliedAt.IsZero() {
		ts = float64(st.LastAppliedAt.UnixNano()) / 1e9
	}
	metrics.WriteGaugeFloat64(w, "cohortd_log_last_applied_timestamp_seconds", ts)
}
