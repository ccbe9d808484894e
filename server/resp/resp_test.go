package resp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/ratelimit"
)

const (
	noauth    = "-NOAUTH Authentication required.\r\n"
	wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
	readonly  = "-READONLY memberships change through the import API\r\n"
)

func arity(name string) string {
	return "-ERR wrong number of arguments for '" + name + "' command\r\n"
}

// TestCommands checks every command and error reply byte for byte (RESP2).
func TestCommands(t *testing.T) {
	f := newFixture(t)
	_, addr := f.server(t, Options{})
	c := dialRaw(t, addr)
	for _, tc := range []struct {
		args []string
		want string
	}{
		// Before AUTH: PING, HELLO, AUTH and QUIT only.
		{[]string{"PING"}, "+PONG\r\n"},
		{[]string{"SISMEMBER", "p/c", "u1"}, noauth},
		{[]string{"ECHO", "x"}, noauth},
		{[]string{"COMMAND"}, noauth},
		{[]string{"SADD", "p/c", "x"}, noauth},
		{[]string{"NOSUCH"}, noauth},
		{[]string{"HELLO", "3"}, "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"},
		{[]string{"AUTH", "nope"}, wrongpass},
		{[]string{"AUTH", "someone", f.keyA}, wrongpass},
		{[]string{"AUTH", "a", "b", "c"}, "-ERR syntax error\r\n"},
		{[]string{"AUTH"}, arity("auth")},
		{[]string{"SCARD", "p/c"}, noauth},
		{[]string{"AUTH", "default", f.keyA}, "+OK\r\n"},
		{[]string{"AUTH", f.keyA}, "+OK\r\n"},

		{[]string{"PING"}, "+PONG\r\n"},
		{[]string{"PING", "hi"}, "$2\r\nhi\r\n"},
		{[]string{"PING", "a", "b"}, arity("ping")},
		{[]string{"ECHO", "a b"}, "$3\r\na b\r\n"},
		{[]string{"ECHO"}, arity("echo")},

		{[]string{"SISMEMBER", "p/c", "u1"}, ":1\r\n"},
		{[]string{"sismember", "p/c", "u50"}, ":0\r\n"},
		{[]string{"SISMEMBER", "p/c", "nobody"}, ":0\r\n"},
		{[]string{"SISMEMBER", "p/nope", "u1"}, ":0\r\n"},
		{[]string{"SISMEMBER", "nokey", "u1"}, ":0\r\n"},
		{[]string{"SISMEMBER", "p/c", "dev-a"}, ":0\r\n"}, // members are external ids
		{[]string{"SISMEMBER", "p/c", ""}, ":0\r\n"},
		{[]string{"SISMEMBER", "p/c"}, arity("sismember")},
		{[]string{"SISMEMBER", "p/c", "u1", "u2"}, arity("sismember")},
		{[]string{"SMISMEMBER", "p/c", "u1", "u99", "x", "u49"}, "*4\r\n:1\r\n:0\r\n:0\r\n:1\r\n"},
		{[]string{"SMISMEMBER", "p/c"}, arity("smismember")},

		{[]string{"SCARD", "p/c"}, ":51\r\n"}, // u0…u49 and the anonymous user
		{[]string{"SCARD", "p/empty"}, ":0\r\n"},
		{[]string{"SCARD", "p/nope"}, ":0\r\n"},
		{[]string{"SCARD"}, arity("scard")},

		{[]string{"SINTERCARD", "2", "p/c", "p/d"}, ":10\r\n"},
		{[]string{"SINTERCARD", "1", "p/c"}, ":51\r\n"},
		{[]string{"SINTERCARD", "3", "p/c", "p/d", "p/c"}, ":10\r\n"},
		{[]string{"SINTERCARD", "2", "p/c", "p/d", "LIMIT", "3"}, ":3\r\n"},
		{[]string{"SINTERCARD", "2", "p/c", "p/d", "limit", "0"}, ":10\r\n"},
		{[]string{"SINTERCARD", "2", "p/c", "p/nope"}, ":0\r\n"},
		{[]string{"SINTERCARD", "0", "p/c"}, "-ERR numkeys should be greater than 0\r\n"},
		{[]string{"SINTERCARD", "x", "p/c"}, "-ERR numkeys should be greater than 0\r\n"},
		{[]string{"SINTERCARD", "3", "p/c"}, "-ERR Number of keys can't be greater than number of args\r\n"},
		{[]string{"SINTERCARD", "1", "p/c", "LIMIT"}, "-ERR syntax error\r\n"},
		{[]string{"SINTERCARD", "1", "p/c", "LIMIT", "-1"}, "-ERR LIMIT can't be negative\r\n"},
		{[]string{"SINTERCARD", "1", "p/c", "LIMIT", "x"}, "-ERR LIMIT can't be negative\r\n"},
		{[]string{"SINTERCARD", "1", "p/c", "FOO", "1"}, "-ERR syntax error\r\n"},
		{[]string{"SINTERCARD", "1"}, arity("sintercard")},

		{[]string{"EXISTS", "p/c", "p/empty", "p/nope", "p/c"}, ":3\r\n"},
		{[]string{"EXISTS"}, arity("exists")},

		{[]string{"SSCAN", "p/nope", "0"}, "*2\r\n$1\r\n0\r\n*0\r\n"},
		{[]string{"SSCAN", "p/c", "x"}, "-ERR invalid cursor\r\n"},
		{[]string{"SSCAN", "p/c", "12345"}, "-ERR invalid cursor\r\n"},
		{[]string{"SSCAN", "p/c", "0", "COUNT", "0"}, "-ERR syntax error\r\n"},
		{[]string{"SSCAN", "p/c", "0", "COUNT", "x"}, "-ERR value is not an integer or out of range\r\n"},
		{[]string{"SSCAN", "p/c", "0", "COUNT"}, "-ERR syntax error\r\n"},
		{[]string{"SSCAN", "p/c", "0", "MATCH", "*"}, "-ERR syntax error\r\n"},
		{[]string{"SSCAN", "p/c"}, arity("sscan")},

		{[]string{"COHORT.COUNT", `{"cohort":"p/c"}`}, ":51\r\n"},
		{[]string{"COHORT.COUNT", `{"and":[{"cohort":"p/c"},{"not":{"cohort":"p/d"}}]}`}, ":41\r\n"},
		{[]string{"COHORT.COUNT", `{"cohort":"p/nope"}`}, ":0\r\n"},
		{[]string{"COHORT.COUNT", `{"all":true}`}, ":102\r\n"},
		{[]string{"cohort.count", `{"and":[]}`}, "-ERR segment.and needs at least one operand\r\n"},
		{[]string{"COHORT.COUNT", `nope`}, "-ERR segment must be a JSON expression: cannot parse JSON: unexpected value found: \"nope\"; unparsed tail: \"nope\"\r\n"},
		{[]string{"COHORT.COUNT"}, arity("cohort.count")},
		{[]string{"COHORT.CONTAINS", `{"cohort":"p/c"}`, "external_id", "u1", "u60", "nobody"}, "*3\r\n:1\r\n:0\r\n:0\r\n"},
		{[]string{"COHORT.CONTAINS", `{"cohort":"p/c"}`, "device_id", "dev-a", "dev-x"}, "*2\r\n:1\r\n:0\r\n"},
		{[]string{"COHORT.CONTAINS", `{"cohort":"p/c"}`, "alias", "x"}, "-ERR identifier kind must be external_id or device_id\r\n"},
		{[]string{"COHORT.CONTAINS", `{"cohort":"p/c"}`, "external_id"}, arity("cohort.contains")},

		{[]string{"SADD", "p/c", "x"}, readonly},
		{[]string{"srem", "p/c", "x"}, readonly},
		{[]string{"DEL", "p/c"}, readonly},
		{[]string{"FLUSHALL"}, readonly},
		{[]string{"GET", "k"}, "-ERR unknown command 'GET'\r\n"},
		{[]string{"MULTI"}, "-ERR unknown command 'MULTI'\r\n"},
		{[]string{"bad\r\nname"}, "-ERR unknown command 'bad  name'\r\n"},
		{[]string{strings.Repeat("x", 200)}, "-ERR unknown command '" + strings.Repeat("x", 128) + "'\r\n"},

		{[]string{"CLIENT", "SETNAME", "me"}, "+OK\r\n"},
		{[]string{"CLIENT", "GETNAME"}, "$2\r\nme\r\n"},
		{[]string{"CLIENT", "SETNAME", "a b"}, "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"},
		{[]string{"CLIENT", "SETINFO", "LIB-NAME", "go-redis"}, "+OK\r\n"},
		{[]string{"CLIENT", "SETINFO", "lib-ver", "9.0"}, "+OK\r\n"},
		{[]string{"CLIENT", "SETINFO", "foo", "x"}, "-ERR Unrecognized option 'foo'\r\n"},
		{[]string{"CLIENT", "SETINFO", "lib-name", "a b"}, "-ERR lib-name cannot contain spaces, newlines or special characters.\r\n"},
		{[]string{"CLIENT", "KILL"}, "-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n"},
		{[]string{"CLIENT"}, arity("client")},
		{[]string{"COMMAND", "COUNT"}, ":15\r\n"},
		{[]string{"COMMAND", "INFO", "nosuch"}, "*1\r\n$-1\r\n"},
		{[]string{"COMMAND", "FOO"}, "-ERR unknown subcommand 'FOO'. Try COMMAND HELP.\r\n"},
		{[]string{"HELLO", "4"}, "-NOPROTO unsupported protocol version\r\n"},
		{[]string{"HELLO", "x"}, "-ERR Protocol version is not an integer or out of range\r\n"},
		{[]string{"HELLO", "3", "foo"}, "-ERR Syntax error in HELLO option 'foo'\r\n"},
		{[]string{"HELLO", "3", "AUTH", "default"}, "-ERR Syntax error in HELLO option 'AUTH'\r\n"},
		{[]string{"HELLO", "2", "AUTH", "default", "wrong"}, wrongpass},
		{[]string{"SISMEMBER", "p/c", "u1"}, ":1\r\n"}, // a failed AUTH leaves the login as it was
		{[]string{"HELLO", "2"}, "*14\r\n$6\r\nserver\r\n$7\r\ncohortd\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"},
		{[]string{"QUIT"}, "+OK\r\n"},
	} {
		if got := c.do(tc.args...); got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.args, got, tc.want)
		}
	}
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("connection still open after QUIT")
	}
}

// TestCommandDocs checks COMMAND, COMMAND INFO and COMMAND DOCS through
// go-redis's parsers (redis-cli reads the same for its hints).
func TestCommandDocs(t *testing.T) {
	f := newFixture(t)
	_, addr := f.server(t, Options{})
	for _, proto := range []int{2, 3} {
		rc := redis.NewClient(&redis.Options{Addr: addr, Password: f.keyA, Protocol: proto})
		ctx := context.Background()
		info, err := rc.Command(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(info) != int(numCmds)-2 || info["sismember"] == nil || info["sismember"].Arity != 3 || !info["sismember"].ReadOnly {
			t.Fatalf("RESP%d COMMAND: %d commands, sismember %+v", proto, len(info), info["sismember"])
		}
		v, err := rc.Do(ctx, "COMMAND", "DOCS", "sismember", "cohort.contains").Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(v); !strings.Contains(got, "set") || !strings.Contains(got, "1.0.0") ||
			!strings.Contains(got, "cohort.contains") || !strings.Contains(got, "member") || !strings.Contains(got, "device_id") {
			t.Fatalf("RESP%d COMMAND DOCS: %s", proto, got)
		}
		rc.Close()
	}
}

// TestRESP3 checks the replies that change after HELLO 3.
func TestRESP3(t *testing.T) {
	f := newFixture(t)
	_, addr := f.server(t, Options{})
	c := dialRaw(t, addr)
	got := c.do("HELLO", "3", "AUTH", "default", f.keyA, "SETNAME", "evaluator")
	want := "%7\r\n$6\r\nserver\r\n$7\r\ncohortd\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
	if got != want {
		t.Fatalf("HELLO 3:\n got %q\nwant %q", got, want)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"CLIENT", "GETNAME"}, "$9\r\nevaluator\r\n"},
		{[]string{"SISMEMBER", "p/c", "u1"}, ":1\r\n"},
		{[]string{"SMISMEMBER", "p/c", "u1", "u99"}, "*2\r\n:1\r\n:0\r\n"},
		{[]string{"COMMAND", "INFO", "nosuch"}, "*1\r\n_\r\n"},
		{[]string{"COMMAND", "INFO", "scard"}, "*1\r\n*10\r\n$5\r\nscard\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n~3\r\n+@read\r\n+@set\r\n+@fast\r\n*0\r\n*0\r\n*0\r\n"},
		{[]string{"COMMAND", "DOCS", "scard"}, "%1\r\n$5\r\nscard\r\n%5\r\n$7\r\nsummary\r\n$44\r\nReturns the number of members of the cohort.\r\n$5\r\nsince\r\n$5\r\n1.0.0\r\n$5\r\ngroup\r\n$3\r\nset\r\n$10\r\ncomplexity\r\n$4\r\nO(1)\r\n$9\r\narguments\r\n*1\r\n%2\r\n$4\r\nname\r\n$3\r\nkey\r\n$4\r\ntype\r\n$3\r\nkey\r\n"},
		{[]string{"SADD", "p/c", "x"}, readonly},
	} {
		if got := c.do(tc.args...); got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.args, got, tc.want)
		}
	}
	// go-redis negotiates RESP3 (HELLO 3 AUTH default <key>) by default.
	rc := redis.NewClient(&redis.Options{Addr: addr, Password: f.keyA})
	defer rc.Close()
	ctx := context.Background()
	if v, err := rc.SMIsMember(ctx, "p/c", "u1", "u60").Result(); err != nil || !v[0] || v[1] {
		t.Fatalf("go-redis RESP3 SMISMEMBER: %v %v", v, err)
	}
	if v, err := rc.Do(ctx, "HELLO", "3").Result(); err != nil {
		t.Fatal(err)
	} else if m, ok := v.(map[any]any); !ok || m["proto"] != int64(3) {
		t.Fatalf("HELLO 3 through go-redis: %#v", v)
	}
}

// TestAuthForms: the three forms of auth, and workspaces never see each
// other's cohorts.
func TestAuthForms(t *testing.T) {
	f := newFixture(t)
	_, addr := f.server(t, Options{})
	for _, tc := range []struct {
		name string
		auth func(c *rawConn, key string) string
		ok   string
	}{
		{"AUTH key", func(c *rawConn, k string) string { return c.do("AUTH", k) }, "+OK\r\n"},
		{"AUTH default key", func(c *rawConn, k string) string { return c.do("AUTH", "default", k) }, "+OK\r\n"},
		{"HELLO 3 AUTH default key", func(c *rawConn, k string) string { return c.do("HELLO", "3", "AUTH", "default", k)[:4] }, "%7\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := dialRaw(t, addr), dialRaw(t, addr)
			if got := tc.auth(a, f.keyA); got != tc.ok {
				t.Fatalf("auth a: %q", got)
			}
			if got := tc.auth(b, f.keyB); got != tc.ok {
				t.Fatalf("auth b: %q", got)
			}
			// Both have p/c: a's has u0…u49, b's u5…u9.
			for _, u := range []string{"u1", "u7", "u30"} {
				n, _ := strconv.Atoi(u[1:])
				wantA, wantB := n < 50, n >= 5 && n < 10
				if got := a.do("SISMEMBER", "p/c", u); got != fmt.Sprintf(":%d\r\n", b2i(wantA)) {
					t.Errorf("a SISMEMBER %s = %q", u, got)
				}
				if got := b.do("SISMEMBER", "p/c", u); got != fmt.Sprintf(":%d\r\n", b2i(wantB)) {
					t.Errorf("b SISMEMBER %s = %q", u, got)
				}
			}
			if got := b.do("SCARD", "p/d"); got != ":0\r\n" {
				t.Errorf("b sees a's cohort p/d: %q", got)
			}
			if got := b.do("EXISTS", "p/d"); got != ":0\r\n" {
				t.Errorf("b sees a's cohort p/d: %q", got)
			}
			if got := b.do("COHORT.CONTAINS", `{"cohort":"p/c"}`, "device_id", "dev-a"); got != "*1\r\n:0\r\n" {
				t.Errorf("b resolves a's device: %q", got)
			}
			if got := tc.auth(a, "wrong"); !strings.HasPrefix(wrongpass, got) {
				t.Errorf("wrong key: %q", got)
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestRevokedKeyStopsOpenConnection: once the engine no longer resolves the
// connection's key digest (what key rotation and workspace deletion do),
// the next command fails, without a new AUTH.
func TestRevokedKeyStopsOpenConnection(t *testing.T) {
	f := newFixture(t)
	s := New(Options{})
	s.SetEngine(f.e)
	var revoked atomic.Bool
	dA := engine.SecretDigest([]byte(f.keyA))
	s.workspace = func(e *engine.Engine, d [32]byte) *engine.Workspace {
		if revoked.Load() && d == dA {
			return nil
		}
		return e.WorkspaceByKeyDigest(d)
	}
	addr := start(t, s)
	c := dialRaw(t, addr)
	if got := c.do("AUTH", f.keyA); got != "+OK\r\n" {
		t.Fatal(got)
	}
	if got := c.do("SISMEMBER", "p/c", "u1"); got != ":1\r\n" {
		t.Fatal(got)
	}
	revoked.Store(true)
	for _, args := range [][]string{{"SISMEMBER", "p/c", "u1"}, {"SCARD", "p/c"}, {"COHORT.COUNT", `{"all":true}`}, {"ECHO", "x"}} {
		if got := c.do(args...); got != wrongpass {
			t.Errorf("%q after revocation: %q", args, got)
		}
	}
	if got := c.do("AUTH", f.keyA); got != wrongpass {
		t.Errorf("AUTH with the revoked key: %q", got)
	}
	if got := c.do("AUTH", f.keyB); got != "+OK\r\n" {
		t.Errorf("AUTH with another key: %q", got)
	}
	if got := c.do("SCARD", "p/c"); got != ":5\r\n" {
		t.Errorf("after AUTH b: %q", got)
	}
}

// TestPipeline sends 10,000 commands of every kind in one pipeline and
// checks each answer against the engine; the membership commands among
// them are resolved in far fewer runs than commands.
func TestPipeline(t *testing.T) {
	f := newFixture(t)
	set := metrics.NewSet()
	_, addr := f.server(t, Options{Metrics: set})
	ctx := context.Background()
	for _, proto := range []int{2, 3} {
		rc := redis.NewClient(&redis.Options{Addr: addr, Password: f.keyA, Protocol: proto})
		a := f.e.Workspace("a")
		p := rc.Pipeline()
		type check func() error
		var checks []check
		for i := range 10_000 {
			u := fmt.Sprintf("u%d", i%120)
			key := []string{"p/c", "p/d", "p/nope"}[i%3]
			inCohort := func(key, u string) bool {
				c := a.Cohort("p", strings.TrimPrefix(key, "p/"))
				if c == nil {
					return false
				}
				id := a.Resolve(engine.KindExternal, []byte(u))
				return id != engine.NoUser && c.Members().Contains(uint32(id))
			}
			switch i % 10 {
			case 0:
				cmd := p.SMIsMember(ctx, key, u, "u3", "nobody")
				want := []bool{inCohort(key, u), inCohort(key, "u3"), false}
				checks = append(checks, func() error {
					if got, err := cmd.Result(); err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
						return fmt.Errorf("SMISMEMBER %s %s: %v %v, want %v", key, u, got, err, want)
					}
					return nil
				})
			case 5:
				cmd := p.SCard(ctx, key)
				checks = append(checks, func() error {
					want := map[string]int64{"p/c": 51, "p/d": 20}[key]
					if got, err := cmd.Result(); err != nil || got != want {
						return fmt.Errorf("SCARD %s: %v %v", key, got, err)
					}
					return nil
				})
			default:
				cmd := p.SIsMember(ctx, key, u)
				want := inCohort(key, u)
				checks = append(checks, func() error {
					if got, err := cmd.Result(); err != nil || got != want {
						return fmt.Errorf("SISMEMBER %s %s: %v %v, want %v", key, u, got, err, want)
					}
					return nil
				})
			}
		}
		if _, err := p.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		for _, c := range checks {
			if err := c(); err != nil {
				t.Fatal(err)
			}
		}
		rc.Close()
	}
	runs := func() float64 {
		var sb strings.Builder
		set.WritePrometheus(&sb)
		return metricValue(t, sb.String(), "cohortd_resp_membership_runs_total")
	}
	// Every tenth command is an SCARD, which ends a run: about 1,000 runs
	// a pipeline, not 9,000.
	if n := runs(); n == 0 || n > 2*1100 {
		t.Fatalf("18,000 membership commands in %v runs: pipelines are not batched", n)
	}
	// A pipeline of SISMEMBERs alone: a run per read at most.
	before := runs()
	c := dialRaw(t, addr)
	c.do("AUTH", f.keyA)
	var pipe []byte
	for i := range 10_000 {
		pipe = append(pipe, encode("SISMEMBER", "p/c", fmt.Sprintf("u%d", i%100))...)
	}
	go func() { _, _ = c.nc.Write(pipe) }()
	for i := range 10_000 {
		if got, want := c.reply(), fmt.Sprintf(":%d\r\n", b2i(i%100 < 50)); got != want {
			t.Fatalf("reply %d: %q, want %q", i, got, want)
		}
	}
	if n := runs() - before; n > 100 {
		t.Fatalf("10,000 SISMEMBERs in %v runs", n)
	}
}

func metricValue(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not found in:\n%s", name, text)
	return 0
}

// TestMetrics: commands by name, errors by code, the latency histogram and
// the connection gauge.
func TestMetrics(t *testing.T) {
	f := newFixture(t)
	set := metrics.NewSet()
	_, addr := f.server(t, Options{Metrics: set})
	c := dialRaw(t, addr)
	c.do("SCARD", "p/c")
	c.do("AUTH", f.keyA)
	c.do("SCARD", "p/c")
	c.do("SADD", "p/c", "x")
	c.do("FOO")
	var sb strings.Builder
	set.WritePrometheus(&sb)
	text := sb.String()
	for name, want := range map[string]float64{
		`cohortd_resp_commands_total{command="scard"}`:                           2,
		`cohortd_resp_errors_total{command="scard",error="NOAUTH"}`:              1,
		`cohortd_resp_errors_total{command="write",error="READONLY"}`:            1,
		`cohortd_resp_errors_total{command="unknown",error="ERR"}`:               1,
		`cohortd_resp_command_duration_seconds_count{command="scard"}`:           2,
		`cohortd_resp_connections`:                                               1,
		`cohortd_resp_connections_total`:                                         1,
		`cohortd_resp_command_duration_seconds_bucket{command="auth",le="+Inf"}`: 1,
	} {
		if got := metricValue(t, text, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestRateLimit: a workspace key's bucket limits commands; the refused ones
// answer TRYAGAIN (which Redis clients retry after a back-off).
func TestRateLimit(t *testing.T) {
	f := newFixture(t)
	_, addr := f.server(t, Options{Limits: ratelimit.New(0.001, 5)})
	c := dialRaw(t, addr)
	c.do("AUTH", f.keyA)
	var pipe []byte
	for range 8 {
		pipe = append(pipe, encode("SISMEMBER", "p/c", "u1")...)
	}
	c.send(pipe)
	var got []string
	for range 8 {
		got = append(got, c.reply())
	}
	want := strings.Repeat(":1\r\n", 5) + strings.Repeat("-TRYAGAIN rate limit exceeded\r\n", 3)
	if strings.Join(got, "") != want {
		t.Fatalf("got %q", got)
	}
	if got := c.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("PING is not limited: %q", got)
	}
	// Another workspace has a bucket of its own.
	d := dialRaw(t, addr)
	d.do("AUTH", f.keyB)
	if got := d.do("SCARD", "p/c"); got != ":5\r\n" {
		t.Fatalf("b: %q", got)
	}
}

// TestLoading: before the engine is installed everything but PING answers
// LOADING, as a Redis loading its data does.
func TestLoading(t *testing.T) {
	f := newFixture(t)
	s := New(Options{})
	addr := start(t, s)
	c := dialRaw(t, addr)
	if got := c.do("PING"); got != "+PONG\r\n" {
		t.Fatal(got)
	}
	if got := c.do("AUTH", f.keyA); got != "-LOADING cohortd is loading its data\r\n" {
		t.Fatal(got)
	}
	s.SetEngine(f.e)
	if got := c.do("AUTH", f.keyA); got != "+OK\r\n" {
		t.Fatal(got)
	}
}

// TestShutdown: a pipeline in flight at Shutdown gets every answer, right
// or LOADING, and then the connection closes; idle connections close; new
// ones are refused.
func TestShutdown(t *testing.T) {
	f := newFixture(t)
	s := New(Options{})
	s.SetEngine(f.e)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	addr := ln.Addr().String()
	idle := dialRaw(t, addr)
	idle.do("AUTH", f.keyA)
	busy := dialRaw(t, addr)
	busy.do("AUTH", f.keyA)
	var pipe []byte
	for range 10_000 {
		pipe = append(pipe, encode("SISMEMBER", "p/c", "u1")...)
	}
	go func() { _, _ = busy.nc.Write(pipe) }()
	// Wait until the server is answering, then shut down.
	if got := busy.reply(); got != ":1\r\n" {
		t.Fatal(got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	ok, loading := 1, 0
	for {
		r, err := readReply(busy.br)
		if err != nil {
			break
		}
		switch r {
		case ":1\r\n":
			if loading > 0 {
				t.Fatal("an answer after LOADING")
			}
			ok++
		case "-LOADING cohortd is shutting down\r\n":
			loading++
		default:
			t.Fatalf("reply %q during shutdown", r)
		}
	}
	if ok+loading > 10_000 {
		t.Fatalf("%d replies to 10,000 commands", ok+loading)
	}
	t.Logf("%d answered, %d LOADING before close", ok, loading)
	if _, err := idle.br.ReadByte(); err == nil {
		t.Fatal("idle connection still open")
	}
	if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = nc.Close()
		t.Fatal("listener still accepting")
	}
}

// TestMaxConns: past MaxConns a client gets Redis's error and is closed.
func TestMaxConns(t *testing.T) {
	f := newFixture(t)
	_, addr := f.server(t, Options{MaxConns: 1})
	a := dialRaw(t, addr)
	if got := a.do("PING"); got != "+PONG\r\n" {
		t.Fatal(got)
	}
	b := dialRaw(t, addr)
	if got := b.reply(); got != "-ERR max number of clients reached\r\n" {
		t.Fatal(got)
	}
}

// TestClientNotReading: a client that sends commands and leaves their
// replies unread is dropped after WriteTimeout, on both the event loop and
// the goroutine path, and another client is served meanwhile.
func TestClientNotReading(t *testing.T) {
	f := newFixture(t)
	s, addr := f.server(t, Options{WriteTimeout: 300 * time.Millisecond})
	stuck := dialRaw(t, addr)
	stuck.do("AUTH", f.keyA)
	// 32 MiB of replies: more than loopback's socket buffers hold.
	arg := strings.Repeat("x", 64<<10)
	var pipe []byte
	for range 512 {
		pipe = append(pipe, encode("ECHO", arg)...)
	}
	go func() { _, _ = stuck.nc.Write(pipe) }() // blocks once the server stops reading
	other := dialRaw(t, addr)
	if got := other.do("PING"); got != "+PONG\r\n" {
		t.Fatal(got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.mu.conns)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open 10 s after the client stopped reading", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := other.do("PING"); got != "+PONG\r\n" {
		t.Fatal(got)
	}
	// What the server wrote before dropping it is there to read, then the end.
	_ = stuck.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, stuck.nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the dropped connection is still open")
	}
}
