package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"
)

const (
	alertRulesPath = "../../deploy/prometheus/alerts.yaml"
	dashboardPath  = "../../deploy/grafana/cohortd.json"
)

// exportedMetrics runs the real binary with every listener and some
// traffic of every kind (scrapeLoaded), and returns the label names seen on
// each metric name of /metrics (histograms appear as their _bucket, _sum
// and _count series).
func exportedMetrics(t *testing.T) map[string]map[string]bool {
	t.Helper()
	body := scrapeLoaded(t)
	series := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? `)
	label := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	m := map[string]map[string]bool{}
	for _, ln := range strings.Split(body, "\n") {
		s := series.FindStringSubmatch(ln)
		if s == nil {
			continue
		}
		if m[s[1]] == nil {
			m[s[1]] = map[string]bool{}
		}
		for _, l := range label.FindAllStringSubmatch(s[2], -1) {
			m[s[1]][l[1]] = true
		}
	}
	if len(m) < 20 {
		t.Fatalf("only %d metric names in /metrics:\n%s", len(m), body)
	}
	return m
}

// metricRef is a metric name used in a PromQL expression, with the label
// names its selector matches on.
type metricRef struct {
	name   string
	labels []string
}

var (
	metricName   = regexp.MustCompile(`\b((?:cohortd|go|process)_[a-zA-Z0-9_]+|up)\b(\{[^}]*\})?`)
	matcherLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

// metricRefs finds the metrics of expr. Names are those of cohortd's own,
// Go runtime and process families, plus Prometheus's synthetic "up".
func metricRefs(expr string) []metricRef {
	var refs []metricRef
	for _, m := range metricName.FindAllStringSubmatch(expr, -1) {
		ref := metricRef{name: m[1]}
		for _, l := range matcherLabel.FindAllStringSubmatch(m[2], -1) {
			ref.labels = append(ref.labels, l[1])
		}
		refs = append(refs, ref)
	}
	return refs
}

// checkExpr reports metrics of expr that the server does not export, and
// label matchers on labels those metrics do not carry. instance and job are
// added by Prometheus, "up" is Prometheus's own.
func checkExpr(t *testing.T, where, expr string, exported map[string]map[string]bool) {
	t.Helper()
	refs := metricRefs(expr)
	if len(refs) == 0 {
		t.Errorf("%s: expression uses no cohortd metric: %s", where, expr)
	}
	for _, ref := range refs {
		if ref.name == "up" {
			continue
		}
		labels, ok := exported[ref.name]
		if !ok {
			t.Errorf("%s: metric %s is not exported by cohortd", where, ref.name)
			continue
		}
		for _, l := range ref.labels {
			if l != "instance" && l != "job" && !labels[l] {
				t.Errorf("%s: %s has no label %q", where, ref.name, l)
			}
		}
	}
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
		t.Errorf("%s: unbalanced brackets in %s", where, expr)
	}
}

// alertRules is the shape of a Prometheus rules file.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Definition string          `json:"definition"`
			Query      json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashPanel `json:"panels"`
}

type dashPanel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

// TestDeployMonitoring keeps deploy/prometheus/alerts.yaml and
// deploy/grafana/cohortd.json true: both parse, every rule and panel is
// complete, and every metric and label they use is one a real cohortd
// exports. With promtool on PATH every expression is also parsed by
// Prometheus itself.
func TestDeployMonitoring(t *testing.T) {
	t.Parallel()
	exported := exportedMetrics(t)
	var exprs []string

	b, err := os.ReadFile(alertRulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var rules alertRules
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("%s: %v", alertRulesPath, err)
	}
	n := 0
	seen := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			where := alertRulesPath + " " + r.Alert
			if r.Alert == "" || seen[r.Alert] {
				t.Errorf("%s: rule without a unique alert name", where)
			}
			seen[r.Alert] = true
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("%s: severity %q, want critical, warning or info", where, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", where)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", where, r.For, err)
				}
			}
			checkExpr(t, where, r.Expr, exported)
			exprs = append(exprs, r.Expr)
		}
	}
	if n < 5 {
		t.Errorf("%s: only %d rules", alertRulesPath, n)
	}
	// docs/OPERATIONS.md "Alerts" says what to do about each, and names no
	// other.
	ops, err := os.ReadFile(operationsPath)
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(Cohortd[A-Za-z0-9]+)` \\|").FindAllStringSubmatch(markdownSection(t, string(ops), "Alerts"), -1) {
		documented[m[1]] = true
		if !seen[m[1]] {
			t.Errorf("%s \"Alerts\" documents %s, which %s lacks", operationsPath, m[1], alertRulesPath)
		}
	}
	for a := range seen {
		if !documented[a] {
			t.Errorf("alert %s has no row in %s \"Alerts\"", a, operationsPath)
		}
	}

	b, err = os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash dashboard
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("%s: needs a title and a uid", dashboardPath)
	}
	for _, v := range dash.Templating.List {
		if v.Type == "query" {
			checkExpr(t, dashboardPath+" variable "+v.Name, v.Definition, exported)
		}
	}
	ids := map[int]bool{}
	targets := 0
	var walk func(ps []dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			where := fmt.Sprintf("%s panel %d %q", dashboardPath, p.ID, p.Title)
			if p.ID == 0 || ids[p.ID] {
				t.Errorf("%s: panel ids must be unique and non-zero", where)
			}
			ids[p.ID] = true
			if p.Title == "" || p.GridPos == nil || (p.Type != "row" && (p.GridPos.W == 0 || p.GridPos.H == 0)) {
				t.Errorf("%s: needs a title and a grid position", where)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("%s: no query", where)
			}
			for _, tg := range p.Targets {
				targets++
				checkExpr(t, where, tg.Expr, exported)
				exprs = append(exprs, grafanaToPromQL(tg.Expr))
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	if targets < 10 {
		t.Errorf("%s: only %d queries", dashboardPath, targets)
	}
	promtoolCheck(t, exprs)
}

// grafanaToPromQL replaces Grafana's variables with values Prometheus
// accepts.
func grafanaToPromQL(expr string) string {
	return strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$instance", ".*").Replace(expr)
}

// promtoolCheck parses every expression with Prometheus's promtool, when it
// is installed (Debian package prometheus), as recording rules.
func promtoolCheck(t *testing.T, exprs []string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not on PATH: expressions checked by the metric and bracket rules only")
		return
	}
	var f alertRulesFile
	g := alertRulesGroup{Name: "check"}
	for i, e := range exprs {
		g.Rules = append(g.Rules, recordingRule{Record: fmt.Sprintf("check:expr_%d", i), Expr: e})
	}
	f.Groups = append(f.Groups, g)
	b, err := yaml.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", p).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

type (
	alertRulesFile struct {
		Groups []alertRulesGroup `yaml:"groups"`
	}
	alertRulesGroup struct {
		Name  string          `yaml:"name"`
		Rules []recordingRule `yaml:"rules"`
	}
	recordingRule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
)
