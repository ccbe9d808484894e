package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"go.yaml.in/yaml/v4"

	"github.com/cohortd/cohortd/engine/kafkalog"
)

// TestReplicatedGroup runs three cohortd processes as one group on a kfake
// cluster (three brokers) in the test process: partner and bulk imports and
// user upserts spread over the three, one node is killed with SIGKILL
// mid-stream while the writers carry on through the others, and it is
// restarted on its data directory. Then every acknowledged change is on
// every node and the digests agree; a fourth node started empty with
// -bootstrap-from converges too; with the log gone, writes answer 503 and
// reads keep working.
func TestReplicatedGroup(t *testing.T) {
	g := newGroup(t, 4)
	a := g.start(t.TempDir(), "a")
	b := g.start(t.TempDir(), "b")
	cDir := t.TempDir()
	c := g.start(cDir, "c")
	nodes := []*daemon{a, b, c}

	// Set-up through different nodes; each step waits for the previous
	// one's position on the next node.
	r := a.must(req{method: "POST", path: "/v1/workspaces", token: g.admin, body: map[string]string{"id": "acme"}}, 201)
	apiKey := str(t, r.json(t), "api_key")
	pos := r.header.Get("X-Cohortd-Position")
	if !strings.Contains(pos, ":") {
		t.Fatalf("write reply without X-Cohortd-Position: %v", r.header)
	}
	r = b.must(req{method: "POST", path: "/v1/partners", token: g.admin, body: map[string]string{"slug": "amp"}}, 201)
	partnerKey := str(t, r.json(t), "partner_api_key")
	r = c.must(req{method: "POST", path: "/v1/workspaces/acme/partners/amp/keys", token: g.admin, body: map[string]any{},
		header: map[string]string{"X-Cohortd-Min-Position": pos + "," + r.header.Get("X-Cohortd-Position")}}, 201)
	secret := str(t, r.json(t), "client_secret")
	tn := tenant{admin: g.admin, apiKey: apiKey, partner: "amp", partnerKey: partnerKey, secret: secret}
	const baseUsers = 400
	var ub bytes.Buffer
	for i := range baseUsers {
		fmt.Fprintf(&ub, "{\"external_id\":\"u%d\"}\n", i)
	}
	r = b.must(req{method: "POST", path: "/v1/users", token: apiKey, body: ub.Bytes(), ctype: "application/x-ndjson",
		header: map[string]string{"X-Cohortd-Min-Position": r.header.Get("X-Cohortd-Position")}}, 200)
	// Read your write on another node.
	got := a.must(req{method: "POST", path: "/v1/segments/count", token: apiKey, body: map[string]any{"segment": map[string]any{"all": true}},
		header: map[string]string{"X-Cohortd-Min-Position": r.header.Get("X-Cohortd-Position")}}, 200).json(t)
	if num(t, got, "count") != baseUsers {
		t.Fatalf("count on another node after waiting for the position: %v", got)
	}

	// Streams, each writing its batches through the nodes in turn.
	alive := newAliveSet(nodes)
	streams := []*groupStream{{cohort: "p0"}, {cohort: "p1"}, {cohort: "b0", bulk: true}, {cohort: "b1", bulk: true}}
	users := &groupUsers{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Add(1)
		go func() { defer wg.Done(); s.run(t, alive, tn, baseUsers, i, stop) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); users.run(t, alive, apiKey, stop) }()

	time.Sleep(1500 * time.Millisecond)
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.done
	// Writers meet the dead node for a while and retry elsewhere, then
	// carry on through the others.
	time.Sleep(300 * time.Millisecond)
	alive.remove(c)
	time.Sleep(1200 * time.Millisecond)
	c = g.start(cDir, "c")
	alive.add(c)
	time.Sleep(1 * time.Second)
	close(stop)
	wg.Wait()
	nodes = []*daemon{a, b, c}
	acked := 0
	for _, s := range streams {
		acked += s.acked
	}
	t.Logf("%d change batches and %d user batches acknowledged (%d retried on another node)", acked, users.acked, retried.Load())
	if acked < 8 || users.acked < 2 || retried.Load() == 0 {
		t.Fatalf("too little traffic to prove anything: %d batches, %d user batches, %d retries", acked, users.acked, retried.Load())
	}

	digest := g.sameDigest(t, nodes...)
	for _, d := range nodes {
		for _, s := range streams {
			if got := fetchMembers(t, d.base, apiKey, "amp", s.cohort); !equalSets(got, s.model(s.acked, baseUsers)) {
				t.Fatalf("node %s, cohort %s: %d members, the %d acknowledged batches make %d", d.addr, s.cohort, len(got), s.acked, len(s.model(s.acked, baseUsers)))
			}
		}
		if n := countAll(t, d.base, apiKey); n != baseUsers+10*users.acked {
			t.Fatalf("node %s: %d users, want %d", d.addr, n, baseUsers+10*users.acked)
		}
	}

	// A member-page cursor from one node pages on another (the cursor key
	// comes from the group's admin token).
	page := a.must(req{method: "POST", path: "/v1/segments/members", token: apiKey, body: map[string]any{"segment": map[string]any{"all": true}, "limit": 10}}, 200).json(t)
	cursor := str(t, page, "next_cursor")
	page = b.must(req{method: "POST", path: "/v1/segments/members", token: apiKey, body: map[string]any{"segment": map[string]any{"all": true}, "limit": 10, "cursor": cursor}}, 200).json(t)
	if ms, _ := page["members"].([]any); len(ms) != 10 {
		t.Fatalf("second page on another node: %v", page)
	}

	// A fourth node starts empty from a peer's snapshot and the log.
	a.must(req{method: "POST", path: "/v1/admin/snapshot", token: g.admin}, 201)
	d := g.start(t.TempDir(), "d", "-bootstrap-from", b.base)
	if !strings.Contains(d.stderr.String(), "bootstrapped from a peer") {
		t.Fatalf("node d did not bootstrap from b:\n%s", tail(d.stderr.String(), 3000))
	}
	if got := g.sameDigest(t, a, d); got != digest {
		t.Fatalf("digest moved from %s to %s without writes", digest, got)
	}
	st := d.must(req{method: "GET", path: "/v1/admin/replication", token: g.admin}, 200).json(t)
	if st["node_id"] != "d" || st["log"] != "kafka" || num(t, st, "lag_records") != 0 {
		t.Fatalf("replication status of d: %v", st)
	}

	// The log goes away: writes fail with 503 and Retry-After, reads and
	// /readyz keep working.
	g.cluster.Close()
	start := time.Now()
	w := a.do(req{method: "POST", path: "/partners/amp/cohorts/users", body: tn.changes("p0", []string{"u1"}, false)})
	if w.status != 503 || w.header.Get("Retry-After") == "" {
		t.Fatalf("write with the log down: %s (headers %v)", w, w.header)
	}
	t.Logf("write with the log down answered 503 after %s", time.Since(start).Round(time.Millisecond))
	if got := fetchMembers(t, a.base, apiKey, "amp", "p0"); !equalSets(got, streams[0].model(streams[0].acked, baseUsers)) {
		t.Fatal("reads changed with the log down")
	}
	a.must(req{method: "GET", path: "/readyz"}, 200)
}

// group is a kfake cluster and the settings its cohortd nodes share.
type group struct {
	t       *testing.T
	cluster *kfake.Cluster
	brokers string
	admin   string
}

func newGroup(t *testing.T, partitions int32) *group {
	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := kafkalog.CreateTopic(context.Background(), c.ListenAddrs(), "cohortd", partitions, 3, 0); err != nil {
		t.Fatal(err)
	}
	return &group{t: t, cluster: c, brokers: strings.Join(c.ListenAddrs(), ","), admin: "adm_group_test_token"}
}

// start runs a node of the group on dir and waits until it is ready.
func (g *group) start(dir, id string, extra ...string) *daemon {
	args := append([]string{"-log", "kafka", "-kafka-brokers", g.brokers, "-node-id", id, "-admin-token", g.admin,
		"-snapshot-interval", "1s", "-kafka-timeout", "3s", "-log-format", "json"}, extra...)
	return startDaemon(g.t, dir, startOpts{args: args})
}

// sameDigest waits until every node has applied the whole log, then
// checks that their digests agree.
func (g *group) sameDigest(t *testing.T, nodes ...*daemon) string {
	t.Helper()
	l, err := kafkalog.Open(context.Background(), kafkalog.Options{Brokers: g.cluster.ListenAddrs(), Topic: "cohortd"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ends, err := l.EndOffsets(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var pos []string
	for p, e := range ends {
		if e > 0 {
			pos = append(pos, fmt.Sprintf("%d:%d", p, e-1))
		}
	}
	var want string
	for i, d := range nodes {
		var r reply
		for try := 0; ; try++ {
			r = d.do(req{method: "GET", path: "/v1/admin/digest", token: g.admin, header: map[string]string{"X-Cohortd-Min-Position": strings.Join(pos, ",")}})
			if r.status == 200 || try == 5 {
				break
			}
		}
		if r.status != 200 {
			t.Fatalf("digest of node %s: %s", d.addr, r)
		}
		got := str(t, r.json(t), "digest")
		if i == 0 {
			want = got
		} else if got != want {
			t.Fatalf("node %s digest %s, node %s %s", d.addr, r.body, nodes[0].addr, want)
		}
	}
	return want
}

// aliveSet is the nodes a writer may send to.
type aliveSet struct {
	mu    sync.Mutex
	nodes []*daemon
}

func newAliveSet(nodes []*daemon) *aliveSet {
	return &aliveSet{nodes: append([]*daemon(nil), nodes...)}
}

func (s *aliveSet) pick(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[i%len(s.nodes)].base
}

func (s *aliveSet) remove(d *daemon) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, n := range s.nodes {
		if n == d {
			s.nodes = append(s.nodes[:i], s.nodes[i+1:]...)
			return
		}
	}
}

func (s *aliveSet) add(d *daemon) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes = append(s.nodes, d)
}

// retried counts requests that failed on one node and were sent again.
var retried atomic.Int64

// sendRetry sends a request built by mk to the nodes in turn until one
// acknowledges it (2xx); the same Idempotency-Key makes the retries safe.
func sendRetry(t *testing.T, alive *aliveSet, turn *int, mk func(base string) *http.Request) {
	for try := 0; ; try++ {
		if try > 200 {
			t.Errorf("a request was refused 200 times")
			return
		}
		hr := mk(alive.pick(*turn))
		*turn++
		resp, err := crashClient.Do(hr)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return
			}
			if resp.StatusCode != 503 {
				t.Errorf("%s %s: %d %s", hr.Method, hr.URL.Path, resp.StatusCode, body)
				return
			}
		}
		retried.Add(1)
		time.Sleep(20 * time.Millisecond)
	}
}

// groupStream sends numbered change batches to one cohort through the
// nodes in turn, each batch retried until acknowledged.
type groupStream struct {
	crashStream
	cohort string
	bulk   bool
}

func (s *groupStream) model(n, users int) map[string]bool {
	s.crashStream.cohort = s.cohort
	return s.crashStream.model(n, users)
}

func (s *groupStream) run(t *testing.T, alive *aliveSet, tn tenant, users, turn int, stop chan struct{}) {
	s.crashStream.cohort = s.cohort
	for {
		select {
		case <-stop:
			return
		default:
		}
		k := s.acked + 1
		adds, removes := s.batch(k, users)
		adds, removes = append([]string{}, adds...), append([]string{}, removes...) // never null in JSON
		key := fmt.Sprintf("%s-%d", s.cohort, k)
		sendRetry(t, alive, &turn, func(base string) *http.Request {
			var hr *http.Request
			if s.bulk {
				var b bytes.Buffer
				a, _ := json.Marshal(map[string]any{"user_ids": adds})
				rm, _ := json.Marshal(map[string]any{"user_ids": removes, "should_remove": true})
				b.Write(a)
				b.WriteByte('\n')
				b.Write(rm)
				hr, _ = http.NewRequest("POST", base+"/v1/cohorts/"+tn.partner+"/"+s.cohort+"/changes", &b)
				hr.Header.Set("Authorization", "Bearer "+tn.apiKey)
				hr.Header.Set("Content-Type", "application/x-ndjson")
			} else {
				body, _ := json.Marshal(map[string]any{
					"partner_api_key": tn.partnerKey, "client_secret": tn.secret, "cohort_id": s.cohort,
					"cohort_changes": []map[string]any{
						{"user_ids": adds, "device_ids": []string{}, "aliases": []any{}},
						{"user_ids": removes, "device_ids": []string{}, "aliases": []any{}, "should_remove": true},
					},
				})
				hr, _ = http.NewRequest("POST", base+"/partners/"+tn.partner+"/cohorts/users", bytes.NewReader(body))
				hr.Header.Set("Content-Type", "application/json")
			}
			hr.Header.Set("Idempotency-Key", key)
			return hr
		})
		s.acked = k
	}
}

// groupUsers creates 10 users per numbered batch through the nodes in turn.
type groupUsers struct{ acked int }

func (u *groupUsers) run(t *testing.T, alive *aliveSet, apiKey string, stop chan struct{}) {
	turn := rand.IntN(3)
	for {
		select {
		case <-stop:
			return
		default:
		}
		k := u.acked + 1
		sendRetry(t, alive, &turn, func(base string) *http.Request {
			var b bytes.Buffer
			for i := range 10 {
				fmt.Fprintf(&b, "{\"external_id\":\"n%d-%d\"}\n", k, i)
			}
			hr, _ := http.NewRequest("POST", base+"/v1/users", &b)
			hr.Header.Set("Authorization", "Bearer "+apiKey)
			hr.Header.Set("Content-Type", "application/x-ndjson")
			hr.Header.Set("Idempotency-Key", fmt.Sprintf("users-%d", k))
			return hr
		})
		u.acked = k
	}
}

// TestOpenAPIReplicated validates the replies that only a node of a group
// gives against docs/openapi.yaml: positions, the replication status, the
// digest, waits for a position (400 malformed, 503 not reached) and the 413
// of a request whose record would not fit.
func TestOpenAPIReplicated(t *testing.T) {
	g := newGroup(t, 2)
	d := g.start(t.TempDir(), "solo", "-kafka-max-record", "4KiB")
	c := newAPIChecker(t, loadOpenAPI(t), d)
	admin := g.admin
	r := c.check(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "acme"}}, 201)
	apiKey := str(t, r.json(t), "api_key")
	pos := r.header.Get("X-Cohortd-Position")
	if _, err := parsePositionHeader(pos); err != nil {
		t.Fatalf("X-Cohortd-Position %q: %v", pos, err)
	}
	r = c.check(req{method: "POST", path: "/v1/users", token: apiKey, body: map[string]any{"users": usersJSON(userIDs("u", 0, 10))},
		header: map[string]string{"X-Cohortd-Min-Position": pos}}, 200)
	if r.header.Get("X-Cohortd-Position") == "" {
		t.Errorf("a write reply without X-Cohortd-Position: %v", r.header)
	}
	st := c.check(req{method: "GET", path: "/v1/admin/replication", token: admin}, 200).json(t)
	ps, ok := st["positions"].(map[string]any)
	if st["log"] != "kafka" || st["node_id"] != "solo" || !ok || len(ps) != 2 || st["last_applied_at"] == nil {
		t.Errorf("replication status: %v", st)
	}
	dg := c.check(req{method: "GET", path: "/v1/admin/digest", token: admin}, 200).json(t)
	if dp, _ := dg["positions"].(map[string]any); len(dp) != 2 {
		t.Errorf("digest positions: %v", dg)
	}
	c.check(req{method: "GET", path: "/v1/admin/snapshot", token: admin}, 200)
	count := map[string]any{"segment": map[string]any{"all": true}}
	c.check(req{method: "POST", path: "/v1/segments/count", token: apiKey, body: count, header: map[string]string{"X-Cohortd-Min-Position": "zero"}}, 400)
	start := time.Now()
	r = c.check(req{method: "POST", path: "/v1/segments/count", token: apiKey, body: count, header: map[string]string{"X-Cohortd-Min-Position": "0:999999"}}, 503)
	if r.header.Get("Retry-After") == "" || time.Since(start) < 4*time.Second {
		t.Errorf("a position never reached: %v after %s", r.header, time.Since(start))
	}
	var big bytes.Buffer
	for i := range 1000 {
		fmt.Fprintf(&big, "{\"user_ids\":[\"user-%014d\"]}\n", i)
	}
	c.check(req{method: "POST", path: "/v1/cohorts/amp/big/changes", token: apiKey, body: big.Bytes(), ctype: "application/x-ndjson"}, 413)
	c.check(req{method: "GET", path: "/v1/cohorts/amp/big", token: apiKey}, 404)
}

// parsePositionHeader parses "<partition>:<offset>".
func parsePositionHeader(v string) ([2]int64, error) {
	var p [2]int64
	_, err := fmt.Sscanf(v, "%d:%d", &p[0], &p[1])
	return p, err
}

// TestDeployCompose validates deploy/compose.yaml without a container
// engine: it is YAML a compose file can be (services, anchors merged), its
// three cohortd nodes are configured as one group through real COHORTD_*
// variables that parse into a -log kafka configuration, with distinct node
// ids, ports and volumes, on the broker the Redpanda service advertises, and
// the topic it creates accepts the default record size.
func TestDeployCompose(t *testing.T) {
	b, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Command     any               `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Ports       []string          `yaml:"ports"`
			Volumes     []string          `yaml:"volumes"`
			DependsOn   map[string]any    `yaml:"depends_on"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("deploy/compose.yaml: %v", err)
	}
	rp, ok := f.Services["redpanda"]
	if !ok || !strings.Contains(fmt.Sprint(rp.Command), "--advertise-kafka-addr=PLAINTEXT://redpanda:9092") {
		t.Fatalf("no redpanda service advertising redpanda:9092: %+v", rp)
	}
	topic := fmt.Sprint(f.Services["topic"].Command)
	var maxMsg int
	if i := strings.Index(topic, "max.message.bytes="); i < 0 {
		t.Fatalf("the topic service sets no max.message.bytes: %s", topic)
	} else if _, err := fmt.Sscanf(topic[i+len("max.message.bytes="):], "%d", &maxMsg); err != nil || maxMsg < kafkalog.DefaultMaxRecordBytes+64<<10 {
		t.Fatalf("max.message.bytes %d is below the default record limit plus batch overhead", maxMsg)
	}
	ids, ports := map[string]bool{}, map[string]bool{}
	nodes := 0
	for name, s := range f.Services {
		if !strings.HasPrefix(name, "cohortd-") {
			continue
		}
		nodes++
		if _, ok := s.DependsOn["topic"]; !ok {
			t.Errorf("%s does not wait for the topic", name)
		}
		env := map[string]string{}
		for k, v := range s.Environment {
			if !strings.HasPrefix(k, envPrefix) {
				t.Errorf("%s: %s is not a COHORTD_ variable", name, k)
			}
			if strings.HasPrefix(v, "${COHORTD_ADMIN_TOKEN") {
				v = "adm_compose"
			}
			env[k] = v
		}
		cfg, err := parseConfig(nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
		if err != nil {
			t.Fatalf("%s: its environment does not parse: %v", name, err)
		}
		if !cfg.repl.kafka() || strings.Join(cfg.repl.brokerList(), ",") != "redpanda:9092" || cfg.repl.topic != "cohortd" || cfg.adminToken != "adm_compose" {
			t.Errorf("%s: not a node of the group: %+v", name, cfg.repl)
		}
		if ids[cfg.repl.nodeID] || cfg.repl.nodeID == "" {
			t.Errorf("%s: node id %q missing or shared", name, cfg.repl.nodeID)
		}
		ids[cfg.repl.nodeID] = true
		for _, p := range s.Ports {
			if ports[p] {
				t.Errorf("%s: port %s shared", name, p)
			}
			ports[p] = true
		}
		if len(s.Volumes) != 1 {
			t.Errorf("%s: %d volumes, want its own data volume", name, len(s.Volumes))
		} else if v, _, _ := strings.Cut(s.Volumes[0], ":"); f.Volumes == nil || !hasKey(f.Volumes, v) {
			t.Errorf("%s: volume %q is not declared", name, v)
		}
	}
	if nodes != 3 {
		t.Fatalf("%d cohortd nodes, want 3", nodes)
	}
}

func hasKey(m map[string]any, k string) bool { _, ok := m[k]; return ok }

// TestReplicationConfig: the replication flags and their COHORTD_ twins,
// and the combinations refused with a message.
func TestReplicationConfig(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	c, err := parseConfig(nil, noEnv, io.Discard)
	if err != nil || c.repl.kafka() || c.repl.topic != "cohortd" || c.repl.maxRecord != kafkalog.DefaultMaxRecordBytes || c.repl.produceTimeout != 10*time.Second {
		t.Fatalf("defaults: %+v %v", c.repl, err)
	}
	env := map[string]string{"COHORTD_LOG": "kafka", "COHORTD_KAFKA_BROKERS": "k1:9092, k2:9092", "COHORTD_NODE_ID": "n1",
		"COHORTD_BOOTSTRAP_FROM": "http://peer:8080", "COHORTD_KAFKA_MAX_RECORD": "4MiB"}
	c, err = parseConfig([]string{"-kafka-topic", "t1"}, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	if err != nil || !c.repl.kafka() || strings.Join(c.repl.brokerList(), ",") != "k1:9092,k2:9092" || c.repl.topic != "t1" ||
		c.repl.node() != "n1" || c.repl.bootstrapFrom != "http://peer:8080" || c.repl.maxRecord != 4<<20 {
		t.Fatalf("from the environment: %+v %v", c.repl, err)
	}
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-log", "raft"}, "is not local or kafka"},
		{[]string{"-log", "kafka"}, "needs -kafka-brokers"},
		{[]string{"-kafka-brokers", "k:9092"}, "needs -log kafka"},
		{[]string{"-bootstrap-from", "http://p:1"}, "needs -log kafka"},
		{[]string{"-log", "kafka", "-kafka-brokers", "k:1", "-bootstrap-from", "peer:8080"}, "not an http(s) URL"},
		{[]string{"-log", "kafka", "-kafka-brokers", "k:1", "-kafka-max-record", "100"}, "between 1KiB and 1GiB"},
		{[]string{"-log", "kafka", "-kafka-brokers", "k:1", "-kafka-timeout", "0s"}, "must be positive"},
	} {
		if _, err := parseConfig(tc.args, noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.msg)
		}
	}
	// A group node never generates its admin token: every node needs the
	// same one.
	c, err = parseConfig([]string{"-log", "kafka", "-kafka-brokers", "k:1", "-data-dir", t.TempDir()}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := adminToken(c, io.Discard, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "same on every node") {
		t.Fatalf("admin token of a group node: %v", err)
	}
}
