package main

import (
	"context"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const operationsPath = "../../docs/OPERATIONS.md"

// scrapeLoaded starts the real binary with the Redis-protocol listener and
// gives it traffic of every kind — HTTP requests answered and refused, a
// partner import, a page of a Mixpanel session left open, RESP commands
// answered and refused, a snapshot — then returns GET /metrics, so that
// every metric family the binary exports has a series.
func scrapeLoaded(t *testing.T) string {
	t.Helper()
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-resp-addr", "127.0.0.1:0"}})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "amplitude")
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: map[string]any{"users": usersJSON([]string{"u0", "u1"})}}, 200)
	d.must(req{method: "POST", path: "/partners/amplitude/cohorts/users", body: tn.changes("c", []string{"u1", "ghost"}, false)}, 201)
	d.must(req{method: "GET", path: "/v1/usage", token: "wrong"}, 401)

	d.must(req{method: "POST", path: "/v1/partners", token: admin, body: map[string]string{"slug": "mixpanel"}}, 201)
	mk := d.must(req{method: "POST", path: "/v1/workspaces/acme/partners/mixpanel/keys", token: admin, body: map[string]any{}}, 201).json(t)
	if r := d.hook(str(t, mk, "client_secret"), mixpanelPage("open", 1, 2, 0, 2)); r.status != 200 {
		t.Fatalf("webhook page: %s", r)
	}

	ctx := context.Background()
	rc := redis.NewClient(&redis.Options{Addr: d.respAddr(), Password: tn.apiKey, MaxRetries: -1})
	if in, err := rc.SIsMember(ctx, "amplitude/c", "u1").Result(); err != nil || !in {
		t.Fatalf("SISMEMBER: %v %v", in, err)
	}
	if err := rc.Do(ctx, "SADD", "amplitude/c", "u0").Err(); err == nil || !strings.HasPrefix(err.Error(), "READONLY") {
		t.Fatalf("SADD: %v", err)
	}
	if err := rc.Do(ctx, "NOSUCHCOMMAND").Err(); err == nil {
		t.Fatal("an unknown command succeeded")
	}
	_ = rc.Close()

	d.must(req{method: "POST", path: "/v1/admin/snapshot", token: admin}, 201)
	body := string(d.must(req{method: "GET", path: "/metrics"}, 200).body)
	d.stop(syscall.SIGTERM, 30*time.Second)
	// A node of a replicated group (-log kafka) exports the cohortd_log_*
	// families besides.
	g := newGroup(t, 1)
	gn := g.start(t.TempDir(), "metrics")
	gn.must(req{method: "POST", path: "/v1/partners", token: g.admin, body: map[string]string{"slug": "amplitude"}}, 201)
	body += string(gn.must(req{method: "GET", path: "/metrics"}, 200).body)
	return body
}

// metricFamily is one exported family: its kind as its series show it and
// its label names (without le and quantile).
type metricFamily struct {
	kind   string // counter, gauge, histogram or summary
	labels []string
}

// metricFamilies groups exported series names into families: name_bucket
// (with le), name_sum and name_count are one histogram; name{quantile},
// name_sum and name_count one summary; other names ending in _total are
// counters, the rest gauges (the exposition carries no TYPE lines).
func metricFamilies(exported map[string]map[string]bool) map[string]metricFamily {
	out := map[string]metricFamily{}
	for name, labels := range exported {
		if base, ok := strings.CutSuffix(name, "_sum"); ok && partOf(exported, base) {
			continue
		}
		if base, ok := strings.CutSuffix(name, "_count"); ok && partOf(exported, base) {
			continue
		}
		fam, kind := name, "gauge"
		switch {
		case strings.HasSuffix(name, "_bucket") && labels["le"]:
			fam, kind = strings.TrimSuffix(name, "_bucket"), "histogram"
		case labels["quantile"]:
			kind = "summary"
		case strings.HasSuffix(name, "_total"):
			kind = "counter"
		}
		var ls []string
		for l := range labels {
			if l != "le" && l != "quantile" {
				ls = append(ls, l)
			}
		}
		sort.Strings(ls)
		out[fam] = metricFamily{kind, ls}
	}
	return out
}

// partOf says whether base is a histogram or summary family of exported
// (so that base_sum and base_count belong to it).
func partOf(exported map[string]map[string]bool, base string) bool {
	if _, ok := exported[base+"_bucket"]; ok {
		return true
	}
	_, ok := exported[base]["quantile"]
	return ok
}

// markdownSection returns the text of the "## title" section of a
// Markdown document, up to the next second-level heading.
func markdownSection(t *testing.T, doc, title string) string {
	t.Helper()
	i := strings.Index(doc, "\n## "+title+"\n")
	if i < 0 {
		t.Fatalf("no section %q", title)
	}
	rest := doc[i+1:]
	if j := strings.Index(rest[3:], "\n## "); j >= 0 {
		rest = rest[:j+3]
	}
	return rest
}

var backticked = regexp.MustCompile("`([^`]+)`")

// TestMetricsDocumented keeps docs/OPERATIONS.md's "Metrics" section true:
// every cohortd_* family a real binary exports (with every listener and
// traffic of every kind) has a row there with its kind and exactly its
// labels, every row names a family the binary exports, and every go_* and
// process_* family is named. A new metric fails this test until it is
// documented.
func TestMetricsDocumented(t *testing.T) {
	t.Parallel()
	fams := metricFamilies(exportedMetrics(t))
	b, err := os.ReadFile(operationsPath)
	if err != nil {
		t.Fatal(err)
	}
	section := markdownSection(t, string(b), "Metrics")

	documented := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `cohortd_") {
			continue
		}
		cells := strings.Split(strings.ReplaceAll(line, `\|`, "¦"), "|")
		if len(cells) != 6 || strings.TrimSpace(cells[5]) != "" {
			t.Errorf("row %q: want | metric | type | labels | meaning |", line)
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		kind := strings.TrimSpace(cells[2])
		var labels []string
		for _, m := range backticked.FindAllStringSubmatch(cells[3], -1) {
			labels = append(labels, m[1])
		}
		sort.Strings(labels)
		if documented[name] {
			t.Errorf("%s is documented twice", name)
		}
		documented[name] = true
		f, ok := fams[name]
		switch {
		case !ok:
			t.Errorf("%s is documented but the binary does not export it", name)
			continue
		case kind != f.kind:
			t.Errorf("%s is documented as a %s; the binary exports a %s", name, kind, f.kind)
		case !slices.Equal(labels, f.labels):
			t.Errorf("%s is documented with labels %v; the binary exports %v", name, labels, f.labels)
		}
		if len(strings.TrimSpace(cells[4])) < 10 {
			t.Errorf("%s: the meaning is missing", name)
		}
	}
	mentioned := map[string]bool{}
	for _, m := range backticked.FindAllStringSubmatch(section, -1) {
		mentioned[m[1]] = true
	}
	var names []string
	for name := range fams {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		switch {
		case strings.HasPrefix(name, "cohortd_"):
			if !documented[name] {
				t.Errorf("%s (%s, labels %v) is exported but has no row in %s \"Metrics\"", name, fams[name].kind, fams[name].labels, operationsPath)
			}
		case !mentioned[name]:
			t.Errorf("%s (%s) is exported but not named in %s \"Metrics\"", name, fams[name].kind, operationsPath)
		}
	}
	if len(documented) < 30 {
		t.Errorf("only %d cohortd metrics documented", len(documented))
	}
}

// flagsOf returns the flags a usage text lists ("  -name …" lines).
func flagsOf(usage string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(usage, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestFlagsDocumented keeps docs/OPERATIONS.md's "Flags and environment"
// section true: every flag `cohortd -h` lists has a row, every row of the
// server's tables names a flag the binary has, and the row of each offline
// command names every flag of its -h.
func TestFlagsDocumented(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(operationsPath)
	if err != nil {
		t.Fatal(err)
	}
	section := markdownSection(t, string(b), "Flags and environment")
	_, _, usage := runBin(t, nil, "-h")
	flags := flagsOf(usage)
	if len(flags) < 20 {
		t.Fatalf("cohortd -h lists %d flags:\n%s", len(flags), usage)
	}
	rows := map[string]bool{}
	replication := false
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "### ") {
			replication = strings.Contains(line, "Replication")
		}
		if !strings.HasPrefix(line, "| `-") {
			continue
		}
		first := strings.Split(line, "|")[1]
		for _, m := range backticked.FindAllStringSubmatch(first, -1) {
			name := strings.TrimPrefix(m[1], "-")
			rows[name] = true
			if !replication && !slices.Contains(flags, name) {
				t.Errorf("%s documents -%s, which cohortd -h does not list", operationsPath, name)
			}
		}
	}
	for _, f := range flags {
		if !rows[f] {
			t.Errorf("flag -%s has no row in %s \"Flags and environment\"", f, operationsPath)
		}
	}

	for _, tool := range [][]string{{"check"}, {"wal", "dump"}, {"healthcheck"}} {
		_, _, usage := runBin(t, nil, append(tool, "-h")...)
		row := ""
		for _, line := range strings.Split(section, "\n") {
			if strings.HasPrefix(line, "| `cohortd "+strings.Join(tool, " ")+" ") {
				row = strings.Split(line, "|")[1]
			}
		}
		if row == "" {
			t.Errorf("cohortd %s has no row in the commands table", strings.Join(tool, " "))
			continue
		}
		for _, f := range flagsOf(usage) {
			if !strings.Contains(row, "-"+f+" ") && !strings.Contains(row, "-"+f+"]") {
				t.Errorf("cohortd %s: flag -%s is not in its row %q", strings.Join(tool, " "), f, row)
			}
		}
	}
}
