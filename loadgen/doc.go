// Package loadgen drives a cohortd server over HTTP with the standard
// workloads of docs/WORKLOADS.md: seeding users, exporter-like cohort sync streams
// (partner and bulk shapes, and Mixpanel's native cohort webhook with
// injected session abandonment, see webhook.go), segment-evaluator queries,
// and both at once.
//
// # Workloads
//
// Everything is generated from a seed by pure functions (workload.go), so the
// same seed gives the same users, cohorts and change sets on every machine.
// User n (n = 1, 2, … in arrival order) has a kind fixed by a shuffled block of
// 20 (15 external-id users, 2 alias-only users, 3 anonymous users of which one
// is identified later), so shares are exact.
//
// # Timing
//
// Latency is measured from the intended send time, not from the moment a
// request actually left (coordinated-omission correction): with an open loop
// (Options.Rate > 0) the pacer hands out send times on a fixed schedule and a
// slow server shows up as queueing delay in the percentiles. A request whose
// worker slept until its slot counts from when the worker woke instead, so
// that the late wake-ups of Go's timers are not charged to the server
// (WaitSlot). With a closed loop (rate 0) the intended time is the moment a
// worker picks up the request.
// Latencies go into HDR histograms (microsecond resolution, 3 significant
// digits), one per operation.
//
// # Verification
//
// The exporter keeps its own model of every cohort (the sorted user numbers it
// made members), so after a run it can compare the server's cohort sizes with
// the expected ones. Non-2xx answers left after retries are errors. Both end up
// in Report; Report.Err says whether the run failed.
//
// # Concurrency and caveats
//
// Seed, Export, Query and Mixed are safe to call from several goroutines with
// different Options; each call owns its HTTP client and state. loadgen talks to
// Options.Addr only and never imports the server (its tests do, to run
// against the real one in-process). The cohort model costs four
// bytes per member, so a capacity run of 1,000 cohorts of up to 10M members
// needs gigabytes of memory on the load-generating machine.
package loadgen
