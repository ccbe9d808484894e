package server

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/client"
)

var bulkBench struct {
	sync.Once
	s   *Server
	key string
}

// bulkServer is a ready server over 1M users (external ids
// user-00000000000001…), built once per process.
func bulkServer(b *testing.B) (*Server, string) {
	bulkBench.Do(func() {
		e, err := engine.Open(engine.Options{})
		if err != nil {
			b.Fatal(err)
		}
		key, _ := e.CreateWorkspace("ws")
		w := e.Workspace("ws")
		for start := 1; start <= 1_000_000; start += 100_000 {
			var ub engine.UserBatch
			for i := start; i < start+100_000; i++ {
				ub.Add(fmt.Appendf(nil, "user-%014d", i), nil, nil)
			}
			if _, err := w.UpsertUsers(&ub); err != nil {
				b.Fatal(err)
			}
		}
		// 250k anonymous users, for the mixed flavour's device lines.
		for start := 1; start <= 250_000; start += 50_000 {
			var ub engine.UserBatch
			for i := start; i < start+50_000; i++ {
				ub.Add(nil, fmt.Appendf(nil, "dev-%014d", i), nil)
			}
			if _, err := w.UpsertUsers(&ub); err != nil {
				b.Fatal(err)
			}
		}
		bulkBench.s = New(Options{AdminToken: "admin", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		bulkBench.s.SetEngine(e)
		bulkBench.key = key
	})
	return bulkBench.s, bulkBench.key
}

// BenchmarkBulkChanges serves POST /v1/cohorts/{p}/{id}/changes through
// Handler (no network): a zstd NDJSON body of 100k identifiers, one a line
// ({"user_ids":["…"]}, the headline bulk shape of docs/WORKLOADS.md) or
// 1,000 a line, decoded, resolved, staged and applied. Bodies alternate between adding the users and removing them.
// docs/WORKLOADS.md wants one a line at ≥90% of the rate of 1,000 a line.
// The mixed flavour (one a line only) is uniform with every fourth line
// naming an anonymous user's device id ({"device_ids":["…"]}), as the
// standard mix has a quarter of its users anonymous.
func BenchmarkBulkChanges(b *testing.B) {
	const ids = 100_000
	s, key := bulkServer(b)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	for _, flavour := range []string{"clustered", "uniform", "mixed"} {
		r := rand.New(rand.NewPCG(3, 4))
		users := make([]int, ids)
		start := 1 + r.IntN(1_000_000-ids)
		for i := range users {
			users[i] = start + i
			if flavour != "clustered" {
				users[i] = 1 + r.IntN(1_000_000)
			}
		}
		for _, perLine := range []int{1, 1000} {
			if flavour == "mixed" && perLine != 1 {
				continue
			}
			var bodies [2][]byte
			for k, remove := range []bool{false, true} {
				var raw []byte
				for off := 0; off < ids; off += perLine {
					if flavour == "mixed" && off%4 == 3 {
						raw = fmt.Appendf(raw, `{"device_ids":["dev-%014d"`, 1+users[off]%250_000)
					} else {
						raw = append(raw, `{"user_ids":[`...)
						for j := off; j < off+perLine; j++ {
							if j > off {
								raw = append(raw, ',')
							}
							raw = fmt.Appendf(raw, `"user-%014d"`, users[j])
						}
					}
					if remove {
						raw = append(raw, `],"should_remove":true}`+"\n"...)
					} else {
						raw = append(raw, "]}\n"...)
					}
				}
				bodies[k] = enc.EncodeAll(raw, nil)
			}
			path := fmt.Sprintf("/v1/cohorts/p/bulk-%s-%d/changes", flavour, perLine)
			b.Run(fmt.Sprintf("users_1000000/%s/ids_%d/lines_of_%d", flavour, ids, perLine), func(b *testing.B) {
				var ctx fasthttp.RequestCtx
				b.SetBytes(ids) // MB/s reads as M identifiers/s
				b.ReportAllocs()
				i := 0
				cpu0 := processCPUNanos()
				for b.Loop() {
					ctx.Request.Reset()
					ctx.Response.Reset()
					ctx.Request.Header.SetMethod("POST")
					ctx.Request.SetRequestURI(path)
					ctx.Request.Header.Set("Authorization", "Bearer "+key)
					ctx.Request.Header.SetContentType("application/x-ndjson")
					ctx.Request.Header.Set("Content-Encoding", "zstd")
					ctx.Request.SetBody(bodies[i%2])
					i++
					s.Handler(&ctx)
					if ctx.Response.StatusCode() != 200 {
						b.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
					}
				}
				cpu := float64(processCPUNanos()-cpu0) / float64(b.N)
				b.ReportMetric(cpu, "cpu-ns/op")
				b.ReportMetric(ids/cpu*1e9, "ids/cpu-s")
			})
		}
	}
}

// BenchmarkPartnerChanges serves the partner shape through Handler (no
// network): the /cohorts upsert, then POST /partners/{p}/cohorts/users with
// 1,000 external ids in gzip JSON (adds then removes, all three arrays
// present, as senders write them), 1M users.
func BenchmarkPartnerChanges(b *testing.B) {
	s, key := bulkServer(b)
	e := s.engine.Load()
	pkey, err := e.CreatePartner("bench")
	if err != nil {
		b.Fatal(err)
	}
	w := e.WorkspaceByAPIKey([]byte(key))
	_, secret, err := w.CreateImportKey("bench")
	if err != nil {
		b.Fatal(err)
	}
	creds := fmt.Sprintf(`"partner_api_key":%q,"client_secret":%q,"cohort_id":"pc"`, pkey, secret)
	upsert := client.Compress([]byte(`{`+creds+`,"name":"pc","created_at":"2026-01-01T00:00:00Z"}`), client.EncodingGzip)
	for _, flavour := range []string{"clustered", "uniform"} {
		r := rand.New(rand.NewPCG(5, 6))
		start := 1 + r.IntN(900_000)
		var bodies [2][]byte
		ids := func(half int) []byte {
			var out []byte
			for i := 0; i < 500; i++ {
				n := start + half*500 + i
				if flavour == "uniform" {
					n = 1 + r.IntN(1_000_000)
				}
				if i > 0 {
					out = append(out, ',')
				}
				out = fmt.Appendf(out, `"user-%014d"`, n)
			}
			return out
		}
		x, y := ids(0), ids(1)
		for k, p := range [][2][]byte{{x, y}, {y, x}} {
			bodies[k] = client.Compress([]byte(`{`+creds+`,"cohort_changes":[{"user_ids":[`+string(p[0])+
				`],"device_ids":[],"aliases":[],"should_remove":false},{"user_ids":[`+string(p[1])+
				`],"device_ids":[],"aliases":[],"should_remove":true}]}`), client.EncodingGzip)
		}
		b.Run(fmt.Sprintf("users_1000000/%s/ids_1000", flavour), func(b *testing.B) {
			var ctx fasthttp.RequestCtx
			post := func(path string, body []byte, want int) {
				ctx.Request.Reset()
				ctx.Response.Reset()
				ctx.Request.Header.SetMethod("POST")
				ctx.Request.SetRequestURI(path)
				ctx.Request.Header.SetContentType("application/json")
				ctx.Request.Header.Set("Content-Encoding", "gzip")
				ctx.Request.SetBody(body)
				s.Handler(&ctx)
				if ctx.Response.StatusCode() != want {
					b.Fatalf("%s: %d %s", path, ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
			b.SetBytes(1000)
			b.ReportAllocs()
			i := 0
			cpu0 := processCPUNanos()
			for b.Loop() {
				post("/partners/bench/cohorts", upsert, 201)
				post("/partners/bench/cohorts/users", bodies[i%2], 201)
				i++
			}
			cpu := float64(processCPUNanos()-cpu0) / float64(b.N)
			b.ReportMetric(cpu, "cpu-ns/op")
			b.ReportMetric(1000/cpu*1e9, "ids/cpu-s")
		})
	}
}
