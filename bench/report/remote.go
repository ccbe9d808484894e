package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"golang.org/x/perf/benchmath"
)

// remoteTable writes the cross-process results (BenchmarkRemote,
// bench/crossproc.sh): each server alone on its own CPU, the client on
// another, one server at a time. A row per workload; per system the
// throughput and what it costs the server (identifiers or requests per
// server CPU-second); the ratios cohortd ÷ redis of both.
func remoteTable(w io.Writer, ms []Macro) {
	type row struct {
		users int
		rest  string
	}
	var rows []row
	vals := map[row]map[string]*Macro{}
	var systems []string
	for i := range ms {
		m := &ms[i]
		if _, lat := latencyClient(m.Rest); m.Op != "Remote" || lat {
			continue
		}
		k := row{m.Users, m.Rest}
		if vals[k] == nil {
			vals[k] = map[string]*Macro{}
			rows = append(rows, k)
		}
		vals[k][m.System] = m
		if !slices.Contains(systems, m.System) {
			systems = append(systems, m.System)
		}
	}
	if len(rows) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("### Cross-process: each server alone on one CPU, the client on another\n\n")
	p("cohortd (GOMAXPROCS=1) and redis-server (single-threaded, no persistence) each pinned alone to one CPU with ")
	p("`taskset`, one at a time (taking turns round by round, each round on freshly seeded servers), the same data and ")
	p("workloads; the client (the bench test binary, GOMAXPROCS=1) pinned ")
	p("to the other CPU. *per server CPU-s* divides by the server's own CPU time (utime + stime from `/proc/<pid>/stat`), ")
	p("which compares the servers whatever their clients cost. Bulk: zstd NDJSON of 100k identifiers, ")
	p("`lines_of_1` = one change object a line (the headline shape), 1 sender; partner: gzip JSON of 1,000 ")
	p("identifiers after the `/cohorts` upsert, 8 senders; contains: 32 connections; batch: 1,000 external ids ")
	p("a request (compact `external_ids` form or `users` objects; Redis: SMISMEMBER), 4 connections; count: 1 connection. ")
	p("`cohortd_fsync_always` is cohortd with `-fsync always` (imports only); the rest is `-fsync off`.\n\n")
	p("| users | workload | unit |")
	for _, s := range systems {
		p(" %s | %s per server CPU-s |", s, s)
	}
	p(" cohortd ÷ redis | per server CPU-s: cohortd ÷ redis |\n|---|---|---|")
	p("%s---:|---:|\n", strings.Repeat("---:|---:|", len(systems)))
	for _, k := range rows {
		unit, cpuUnit := "ids/s", "ids/server-cpu-s"
		anyIDs := false
		for _, m := range vals[k] {
			if _, ok := m.Units["ids/s"]; ok {
				anyIDs = true
			}
		}
		if !anyIDs {
			unit, cpuUnit = "req/s", "req/server-cpu-s"
		}
		p("| %s | %s | %s |", count(float64(k.users)), k.rest, unit)
		get := func(sys, u string) (benchmath.Summary, bool) {
			if m := vals[k][sys]; m != nil {
				return m.Summary(u)
			}
			return benchmath.Summary{}, false
		}
		for _, s := range systems {
			v, ok := get(s, unit)
			c, cok := get(s, cpuUnit)
			p(" %s | %s |", rate(v, ok), rate(c, cok))
		}
		c, cok := get("cohortd", unit)
		r, rok := get("redis", unit)
		cc, ccok := get("cohortd", cpuUnit)
		rc, rcok := get("redis", cpuUnit)
		p(" %s | %s |\n", ratio(c, cok, r, rok), ratio(cc, ccok, rc, rcok))
	}
	p("\n")
	var lat []*Macro
	for i := range ms {
		if _, ok := latencyClient(ms[i].Rest); ms[i].Op == "Remote" && ok {
			lat = append(lat, &ms[i])
		}
	}
	if len(lat) > 0 {
		p("Single contains, open loop at 70%% of the closed-loop maximum of 32 connections, latency from the intended start. ")
		p("Client *go*: the bench's Go clients (fasthttp, go-redis), 64 workers; in runs of commit 874f9ec or later a request ")
		p("whose worker slept until its slot counts from the wake-up. Client *raw*: loadgen's raw client (`-client raw`), ")
		p("pre-encoded requests sent on time from one epoll thread over the same 32 connections, its maximum taken with ")
		p("itself; *send lag* is how late it wrote (p99).\n\n")
		p("| users | system | client | max (closed) | offered | achieved | p50 | p90 | p99 | p99.9 | max | send lag |\n")
		p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, m := range lat {
			g := func(unit string) (benchmath.Summary, bool) { return m.Summary(unit) }
			cl, _ := latencyClient(m.Rest)
			lag := "—"
			if v, ok := g("send-lag-p99-us"); ok {
				lag = micros(v, ok)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", count(float64(m.Users)), m.System, cl,
				rate(g("max-req/s")), rate(g("offered-req/s")), rate(g("req/s")),
				micros(g("p50-us")), micros(g("p90-us")), micros(g("p99-us")), micros(g("p99.9-us")), micros(g("max-us")), lag)
		}
		p("\n")
	}
}

// latencyClient tells whether a Remote benchmark is an open-loop latency
// run and with which client.
func latencyClient(rest string) (string, bool) {
	switch {
	case strings.HasSuffix(rest, "latency_70"):
		return "go", true
	case strings.HasSuffix(rest, "latency_70_raw"):
		return "raw", true
	}
	return "", false
}
