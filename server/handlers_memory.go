package server

import (
	"bytes"
	"io"
	"os"
	"runtime/metrics"
	"strconv"

	vm "github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/jsonstr"
)

// Memory by structure, for operators (docs/MEMORY.md):
//
//	GET /v1/admin/memory → 200 {"process":{…},"workspaces":[{"id","users","identifiers","bytes":{…},"bytes_per_user"}]}
//
// and the same totals as cohortd_memory_bytes{structure=…} on /metrics, with
// cohortd_workspace_users{workspace=…}.

// processMemory is what the process holds as the kernel and the Go runtime
// see it.
type processMemory struct {
	rss, goHeap, anonHuge int64
}

// readProcessMemory reads RSS and AnonHugePages from /proc (0 where there is
// none) and the Go heap's live and free-but-unreleased bytes from the runtime.
func readProcessMemory() processMemory {
	var pm processMemory
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := bytes.Fields(b); len(f) > 1 {
			pages, _ := strconv.ParseInt(string(f[1]), 10, 64)
			pm.rss = pages * int64(os.Getpagesize())
		}
	}
	if b, err := os.ReadFile("/proc/self/smaps_rollup"); err == nil {
		if i := bytes.Index(b, []byte("\nAnonHugePages:")); i >= 0 {
			if f := bytes.Fields(b[i+len("\nAnonHugePages:"):]); len(f) > 0 {
				kb, _ := strconv.ParseInt(string(f[0]), 10, 64)
				pm.anonHuge = kb << 10
			}
		}
	}
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	for _, v := range s {
		if v.Value.Kind() == metrics.KindUint64 {
			pm.goHeap += int64(v.Value.Uint64())
		}
	}
	return pm
}

// writeMemoryMetrics writes the memory gauges of the process and its workspaces.
func writeMemoryMetrics(w io.Writer, e *engine.Engine) {
	pm := readProcessMemory()
	var tot engine.WorkspaceMemory
	var offHeap int64
	mem := e.Memory()
	for i := range mem {
		m := &mem[i]
		tot.Identity.TableBytes += m.Identity.TableBytes
		tot.Identity.ArenaBytes += m.Identity.ArenaBytes
		tot.Identity.ArenaFree += m.Identity.ArenaFree
		tot.Identity.UserTable += m.Identity.UserTable
		tot.Identity.LiveBitmap += m.Identity.LiveBitmap
		tot.CohortBitmaps += m.CohortBitmaps
		tot.DenseViews += m.DenseViews
		tot.Staging += m.Staging
		tot.UserLog += m.UserLog
		offHeap += m.Identity.OffHeap
		vm.WriteGaugeUint64(w, `cohortd_workspace_users{workspace="`+m.ID+`"}`, uint64(m.Users))
	}
	for _, g := range []struct {
		name string
		v    int64
	}{
		{"identity_table", tot.Identity.TableBytes},
		{"arena", tot.Identity.ArenaBytes},
		{"arena_free", tot.Identity.ArenaFree},
		{"user_table", tot.Identity.UserTable},
		{"live_users", tot.Identity.LiveBitmap},
		{"cohort_bitmaps", tot.CohortBitmaps},
		{"dense_views", tot.DenseViews},
		{"staging", tot.Staging},
		{"user_change_log", tot.UserLog},
		{"off_heap_reserved", offHeap},
		{"go_heap", pm.goHeap},
		{"rss", pm.rss},
		{"anon_huge_pages", pm.anonHuge},
	} {
		vm.WriteGaugeUint64(w, `cohortd_memory_bytes{structure="`+g.name+`"}`, uint64(max(g.v, 0)))
	}
}

// handleAdminMemory serves GET /v1/admin/memory.
func (s *Server) handleAdminMemory(r *request) error {
	pm := readProcessMemory()
	mem := r.e.Memory()
	var offHeap int64
	for i := range mem {
		offHeap += mem[i].Identity.OffHeap
	}
	b := make([]byte, 0, 256+200*len(mem))
	b = append(b, `{"process":{"rss_bytes":`...)
	b = strconv.AppendInt(b, pm.rss, 10)
	b = append(b, `,"go_heap_bytes":`...)
	b = strconv.AppendInt(b, pm.goHeap, 10)
	b = append(b, `,"off_heap_reserved_bytes":`...)
	b = strconv.AppendInt(b, offHeap, 10)
	b = append(b, `,"anon_huge_pages_bytes":`...)
	b = strconv.AppendInt(b, pm.anonHuge, 10)
	b = append(b, `},"workspaces":[`...)
	for i := range mem {
		m := &mem[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = jsonstr.Append(b, m.ID)
		b = append(b, `,"users":`...)
		b = strconv.AppendInt(b, int64(m.Users), 10)
		b = append(b, `,"identifiers":`...)
		b = strconv.AppendInt(b, int64(m.Keys), 10)
		b = append(b, `,"bytes":{"identity_table":`...)
		b = strconv.AppendInt(b, m.Identity.TableBytes, 10)
		b = append(b, `,"arena":`...)
		b = strconv.AppendInt(b, m.Identity.ArenaBytes, 10)
		b = append(b, `,"arena_free":`...)
		b = strconv.AppendInt(b, m.Identity.ArenaFree, 10)
		b = append(b, `,"user_table":`...)
		b = strconv.AppendInt(b, m.Identity.UserTable, 10)
		b = append(b, `,"live_users":`...)
		b = strconv.AppendInt(b, m.Identity.LiveBitmap, 10)
		b = append(b, `,"cohort_bitmaps":`...)
		b = strconv.AppendInt(b, m.CohortBitmaps, 10)
		b = append(b, `,"dense_views":`...)
		b = strconv.AppendInt(b, m.DenseViews, 10)
		b = append(b, `,"staging":`...)
		b = strconv.AppendInt(b, m.Staging, 10)
		b = append(b, `,"user_change_log":`...)
		b = strconv.AppendInt(b, m.UserLog, 10)
		b = append(b, `,"total":`...)
		b = strconv.AppendInt(b, m.Total(), 10)
		b = append(b, `,"off_heap_reserved":`...)
		b = strconv.AppendInt(b, m.Identity.OffHeap, 10)
		b = append(b, `},"bytes_per_user":`...)
		per := 0.0
		if m.Users > 0 {
			per = float64(m.Total()) / float64(m.Users)
		}
		b = strconv.AppendFloat(b, per, 'f', 1, 64)
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	writeRawJSON(r.ctx, fasthttp.StatusOK, b)
	return nil
}
