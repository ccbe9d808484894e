package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

var respListenRe = regexp.MustCompile(`"msg":"resp listening","addr":"([^"]+)"`)

// respAddr returns the RESP listener's address from the daemon's log.
func (d *daemon) respAddr() string {
	d.t.Helper()
	m := respListenRe.FindStringSubmatch(d.stderr.String())
	if m == nil {
		d.t.Fatalf("no resp listening line in the log:\n%s", d.stderr)
	}
	return m[1]
}

// respData creates workspaces acme and other through the HTTP API:
//
//	acme: e0…e199 (external ids); anonymous users with devices anon-0…9;
//	      "idd-0"…"idd-4" identified users holding devices dev-ident-0…4;
//	      alias-only users (email, a0…a4@x)
//	      cohorts amp/c = e0…e99 + anon-0…4 + a0…a1@x + idd-0…2,
//	              amp/d = e50…e149 + idd-2…4, amp/empty = {}
//	other: e0…e9, cohort amp/c = e5…e9
func respData(t *testing.T, d *daemon) (acme, other tenant) {
	t.Helper()
	admin := d.adminToken()
	acme = setupTenant(d, admin, "acme", "amp")
	r := d.must(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "other"}}, 201).json(t)
	other = tenant{admin: admin, apiKey: str(t, r, "api_key"), partner: "amp"}

	var users []map[string]any
	for i := range 200 {
		users = append(users, map[string]any{"external_id": fmt.Sprintf("e%d", i)})
	}
	for i := range 10 {
		users = append(users, map[string]any{"device_id": fmt.Sprintf("anon-%d", i)})
	}
	for i := range 5 {
		users = append(users, map[string]any{"external_id": fmt.Sprintf("idd-%d", i), "device_id": fmt.Sprintf("dev-ident-%d", i)})
		users = append(users, map[string]any{"aliases": []map[string]string{{"alias_name": "email", "alias_label": fmt.Sprintf("a%d@x", i)}}})
	}
	d.must(req{method: "POST", path: "/v1/users", token: acme.apiKey, body: map[string]any{"users": users}}, 200)
	change := func(tn tenant, cohort string, ch map[string]any) {
		d.must(req{method: "POST", path: "/v1/cohorts/amp/" + cohort + "/changes", token: tn.apiKey,
			body: map[string]any{"cohort_changes": []map[string]any{ch}}}, 200)
	}
	change(acme, "c", map[string]any{"user_ids": append(userIDs("e", 0, 100), "idd-0", "idd-1", "idd-2"), "device_ids": userIDs("anon-", 0, 5),
		"aliases": []map[string]string{{"alias_name": "email", "alias_label": "a0@x"}, {"alias_name": "email", "alias_label": "a1@x"}}})
	change(acme, "d", map[string]any{"user_ids": append(userIDs("e", 50, 150), "idd-2", "idd-3", "idd-4")})
	change(acme, "empty", map[string]any{"user_ids": []string{}})
	var ou []map[string]any
	for i := range 10 {
		ou = append(ou, map[string]any{"external_id": fmt.Sprintf("e%d", i)})
	}
	d.must(req{method: "POST", path: "/v1/users", token: other.apiKey, body: map[string]any{"users": ou}}, 200)
	change(other, "c", map[string]any{"user_ids": userIDs("e", 5, 10)})
	return acme, other
}

// httpContains asks POST /v1/segments/contains for users of one kind.
func httpContains(t *testing.T, d *daemon, key string, seg any, kind string, ids []string) []bool {
	t.Helper()
	var users []map[string]string
	for _, id := range ids {
		users = append(users, map[string]string{kind: id})
	}
	r := d.must(req{method: "POST", path: "/v1/segments/contains", token: key, body: map[string]any{"segment": seg, "users": users}}, 200)
	var out struct{ Results []bool }
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Results
}

func httpCount(t *testing.T, d *daemon, key string, seg any) int64 {
	t.Helper()
	r := d.must(req{method: "POST", path: "/v1/segments/count", token: key, body: map[string]any{"segment": seg}}, 200)
	return int64(num(t, r.json(t), "count"))
}

// TestRESPMatchesHTTP runs every RESP command against the real binary
// with go-redis (RESP2 and RESP3) and compares each answer with the HTTP
// API's on the same data: unknown cohorts and users, device ids of
// anonymous and identified users, two workspaces, pipelines of 10,000.
func TestRESPMatchesHTTP(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-resp-addr", "127.0.0.1:0"}})
	acme, other := respData(t, d)
	addr := d.respAddr()
	ctx := context.Background()

	externals := append(userIDs("e", 0, 210), "idd-0", "idd-3", "nobody", "anon-1", "a0@x")
	devices := []string{"anon-0", "anon-4", "anon-5", "dev-ident-0", "dev-ident-2", "dev-ident-4", "nodevice", "e1"}
	cohorts := []string{"amp/c", "amp/d", "amp/empty", "amp/nope", "other/c"}
	exprs := []string{
		`{"cohort":"amp/c"}`, `{"and":[{"cohort":"amp/c"},{"cohort":"amp/d"}]}`,
		`{"or":[{"cohort":"amp/c"},{"not":{"cohort":"amp/d"}}]}`, `{"not":{"cohort":"amp/nope"}}`, `{"all":true}`,
	}

	for _, proto := range []int{2, 3} {
		for _, tn := range []tenant{acme, other} {
			rc := redis.NewClient(&redis.Options{Addr: addr, Password: tn.apiKey, Protocol: proto})
			label := fmt.Sprintf("RESP%d key of %s", proto, map[string]string{acme.apiKey: "acme", other.apiKey: "other"}[tn.apiKey])
			for _, k := range cohorts {
				seg := map[string]string{"cohort": k}
				want := httpContains(t, d, tn.apiKey, seg, "external_id", externals)
				got, err := rc.SMIsMember(ctx, k, toAny(externals)...).Result()
				if err != nil || !slices.Equal(got, want) {
					t.Fatalf("%s SMISMEMBER %s: %v %v\nHTTP: %v", label, k, got, err, want)
				}
				// Commands larger than the 16 KiB read buffer, one after
				// another (a grown buffer up to 64 KiB is kept between
				// them, a larger one is not: docs/RESP.md), then a small
				// one: answers must not mix.
				for _, pairs := range []int{600, 600, 600, 1500, 600} {
					var large []string
					var wantLarge []bool
					for i := range pairs {
						e := externals[i%len(externals)]
						large = append(large, e+"-not-a-user-0123456789", e)
						wantLarge = append(wantLarge, false, want[i%len(externals)])
					}
					got, err := rc.SMIsMember(ctx, k, toAny(large)...).Result()
					if err != nil || !slices.Equal(got, wantLarge) {
						t.Fatalf("%s SMISMEMBER %s of %d ids: %v", label, k, len(large), err)
					}
				}
				if got, err := rc.SMIsMember(ctx, k, toAny(externals)...).Result(); err != nil || !slices.Equal(got, want) {
					t.Fatalf("%s SMISMEMBER %s after large ones: %v %v\nHTTP: %v", label, k, got, err, want)
				}
				p := rc.Pipeline()
				var cmds []*redis.BoolCmd
				for i := range 10_000 {
					cmds = append(cmds, p.SIsMember(ctx, k, externals[i%len(externals)]))
				}
				if _, err := p.Exec(ctx); err != nil {
					t.Fatal(err)
				}
				for i, c := range cmds {
					if c.Val() != want[i%len(externals)] {
						t.Fatalf("%s pipelined SISMEMBER %s %s = %v, HTTP %v", label, k, externals[i%len(externals)], c.Val(), want[i%len(externals)])
					}
				}
				wantDev := httpContains(t, d, tn.apiKey, seg, "device_id", devices)
				v, err := rc.Do(ctx, append([]any{"COHORT.CONTAINS", fmt.Sprintf(`{"cohort":%q}`, k), "device_id"}, toAny(devices)...)...).Int64Slice()
				if err != nil || !slices.Equal(ints(wantDev), v) {
					t.Fatalf("%s COHORT.CONTAINS device_id %s: %v %v, HTTP %v", label, k, v, err, wantDev)
				}
				// SCARD and EXISTS against GET /v1/cohorts/{partner}/{id}.
				p1, id, _ := strings.Cut(k, "/")
				r := d.do(req{method: "GET", path: "/v1/cohorts/" + p1 + "/" + url.PathEscape(id), token: tn.apiKey})
				size, exists := int64(0), int64(0)
				if r.status == 200 {
					size, exists = int64(num(t, r.json(t), "size")), 1
				}
				if n, err := rc.SCard(ctx, k).Result(); err != nil || n != size {
					t.Fatalf("%s SCARD %s = %d %v, HTTP size %d", label, k, n, err, size)
				}
				if n, err := rc.Exists(ctx, k).Result(); err != nil || n != exists {
					t.Fatalf("%s EXISTS %s = %d %v, HTTP status %d", label, k, n, err, r.status)
				}
				// SSCAN against the member listing's external ids.
				var wantIDs, gotIDs []string
				if r.status == 200 {
					m := d.must(req{method: "GET", path: "/v1/cohorts/" + p1 + "/" + url.PathEscape(id) + "/members", token: tn.apiKey}, 200)
					for _, line := range ndjsonLines(t, m.body) {
						if e, ok := line["external_id"].(string); ok {
							wantIDs = append(wantIDs, e)
						}
					}
				}
				it := rc.SScan(ctx, k, 0, "", 7).Iterator()
				for it.Next(ctx) {
					gotIDs = append(gotIDs, it.Val())
				}
				if err := it.Err(); err != nil {
					t.Fatal(err)
				}
				slices.Sort(wantIDs)
				slices.Sort(gotIDs)
				if !slices.Equal(gotIDs, wantIDs) {
					t.Fatalf("%s SSCAN %s: %v, HTTP %v", label, k, gotIDs, wantIDs)
				}
			}
			for _, e := range exprs {
				var seg any
				if err := json.Unmarshal([]byte(e), &seg); err != nil {
					t.Fatal(err)
				}
				want := httpCount(t, d, tn.apiKey, seg)
				if n, err := rc.Do(ctx, "COHORT.COUNT", e).Int64(); err != nil || n != want {
					t.Fatalf("%s COHORT.COUNT %s = %d %v, HTTP %d", label, e, n, err, want)
				}
				wantC := httpContains(t, d, tn.apiKey, seg, "external_id", externals)
				v, err := rc.Do(ctx, append([]any{"COHORT.CONTAINS", e, "external_id"}, toAny(externals)...)...).Int64Slice()
				if err != nil || !slices.Equal(ints(wantC), v) {
					t.Fatalf("%s COHORT.CONTAINS %s: %v %v, HTTP %v", label, e, v, err, wantC)
				}
			}
			want := httpCount(t, d, tn.apiKey, map[string]any{"and": []any{map[string]string{"cohort": "amp/c"}, map[string]string{"cohort": "amp/d"}}})
			if n, err := rc.SInterCard(ctx, 0, "amp/c", "amp/d").Result(); err != nil || n != want {
				t.Fatalf("%s SINTERCARD = %d %v, HTTP %d", label, n, err, want)
			}
			rc.Close()
		}
	}

	// The large SMISMEMBERs asked enough of each cohort to earn it a dense
	// view (docs/MEMORY.md), which the answers after them came from; the
	// memory report shows the views.
	mem := d.must(req{method: "GET", path: "/v1/admin/memory", token: acme.admin}, 200).json(t)
	for _, ws := range mem["workspaces"].([]any) {
		ws := ws.(map[string]any)
		if b := ws["bytes"].(map[string]any); num(t, b, "dense_views") <= 0 {
			t.Errorf("workspace %v: no dense views after large SMISMEMBERs: %v", ws["id"], b)
		}
	}

	// They also earned amp/c a filter of its members' external ids, with
	// which SMISMEMBER skips most non-members (docs/MEMORY.md). A member
	// known only by its device, identified afterwards, must be found by
	// its new external id at once.
	d.must(req{method: "POST", path: "/v1/users", token: acme.apiKey, body: map[string]any{
		"users": []map[string]any{{"device_id": "anon-1", "external_id": "late-1"}}}}, 200)
	lc := redis.NewClient(&redis.Options{Addr: addr, Password: acme.apiKey})
	late := append(slices.Clone(externals), "late-1")
	want := httpContains(t, d, acme.apiKey, map[string]string{"cohort": "amp/c"}, "external_id", late)
	if !want[len(want)-1] {
		t.Fatal("HTTP: the member identified later is not in amp/c")
	}
	for range 3 { // enough lookups to earn the new filter too
		if got, err := lc.SMIsMember(ctx, "amp/c", toAny(late)...).Result(); err != nil || !slices.Equal(got, want) {
			t.Fatalf("SMISMEMBER after a member was identified: %v %v\nHTTP: %v", got, err, want)
		}
	}
	if ok, err := lc.SIsMember(ctx, "amp/c", "late-1").Result(); err != nil || !ok {
		t.Fatalf("SISMEMBER of the member identified later = %v %v", ok, err)
	}
	lc.Close()

	// The errors, as a go-redis user sees them.
	anon := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})
	defer anon.Close()
	if err := anon.SIsMember(ctx, "amp/c", "e1").Err(); err == nil || err.Error() != "NOAUTH Authentication required." {
		t.Errorf("without AUTH: %v", err)
	}
	if err := anon.Ping(ctx).Err(); err != nil {
		t.Errorf("PING without AUTH: %v", err)
	}
	bad := redis.NewClient(&redis.Options{Addr: addr, Password: "nope", MaxRetries: -1})
	defer bad.Close()
	if err := bad.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS invalid username-password pair or user is disabled.") {
		t.Errorf("wrong key: %v", err)
	}
	rc := redis.NewClient(&redis.Options{Addr: addr, Password: acme.apiKey, MaxRetries: -1})
	defer rc.Close()
	for args, want := range map[string]string{
		"SADD amp/c e300":    "READONLY memberships change through the import API",
		"DEL amp/c":          "READONLY memberships change through the import API",
		"GET k":              "ERR unknown command 'GET'",
		"MULTI":              "ERR unknown command 'MULTI'",
		"SISMEMBER amp/c":    "ERR wrong number of arguments for 'sismember' command",
		"SINTERCARD 0 amp/c": "ERR numkeys should be greater than 0",
		"SSCAN amp/c 1":      "ERR invalid cursor",
		"COHORT.COUNT {":     `ERR segment must be a JSON expression: cannot parse JSON: cannot parse object: missing '}'; unparsed tail: ""`,
	} {
		var a []any
		for _, s := range strings.Fields(args) {
			a = append(a, s)
		}
		if err := rc.Do(ctx, a...).Err(); err == nil || err.Error() != want {
			t.Errorf("%s: %v, want %s", args, err, want)
		}
	}
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func ints(bs []bool) []int64 {
	out := make([]int64, len(bs))
	for i, b := range bs {
		if b {
			out[i] = 1
		}
	}
	return out
}

// TestRESPShutdown: COHORTD_RESP_ADDR turns the listener on; on SIGTERM an
// open connection gets LOADING or is closed, and the process exits 0.
func TestRESPShutdown(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), startOpts{env: []string{"COHORTD_RESP_ADDR=127.0.0.1:0"}})
	admin := d.adminToken()
	r := d.must(req{method: "POST", path: "/v1/workspaces", token: admin, body: map[string]string{"id": "w"}}, 201).json(t)
	rc := redis.NewClient(&redis.Options{Addr: d.respAddr(), Password: str(t, r, "api_key"), MaxRetries: -1, PoolSize: 1})
	defer rc.Close()
	ctx := context.Background()
	if err := rc.SCard(ctx, "p/c").Err(); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := rc.SCard(ctx, "p/c").Err()
		if err != nil {
			if !strings.HasPrefix(err.Error(), "LOADING") && !isConnErr(err) {
				t.Fatalf("during shutdown: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("connection still served after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code := d.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

func isConnErr(err error) bool {
	s := err.Error()
	return errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "EOF") ||
		strings.Contains(s, "connection refused") || strings.Contains(s, "connection reset") || strings.Contains(s, "closed")
}

// TestRESPKeyRotationAndDeletion: rotating a workspace's API key through
// the admin API stops the old key on an open RESP connection at once, the
// new key works; deleting the workspace stops the new one too.
func TestRESPKeyRotationAndDeletion(t *testing.T) {
	t.Parallel()
	respAddr := freePort(t)
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-resp-addr", respAddr}})
	acme, _ := respData(t, d)
	ctx := context.Background()
	// One connection, kept open across the rotation.
	rdb := redis.NewClient(&redis.Options{Addr: d.respAddr(), Password: acme.apiKey, PoolSize: 1, MaxRetries: -1})
	defer rdb.Close()
	if n, err := rdb.SCard(ctx, "amp/c").Result(); err != nil || n == 0 {
		t.Fatalf("before rotation: %d %v", n, err)
	}
	r := d.must(req{method: "POST", path: "/v1/workspaces/acme/api-key", token: acme.admin}, 201).json(t)
	newKey := str(t, r, "api_key")
	if _, err := rdb.SCard(ctx, "amp/c").Result(); err == nil || !strings.HasPrefix(err.Error(), "WRONGPASS") {
		t.Fatalf("old key on the open connection after rotation: %v", err)
	}
	rdb2 := redis.NewClient(&redis.Options{Addr: d.respAddr(), Password: newKey, PoolSize: 1, MaxRetries: -1})
	defer rdb2.Close()
	if n, err := rdb2.SCard(ctx, "amp/c").Result(); err != nil || n == 0 {
		t.Fatalf("new key: %d %v", n, err)
	}
	d.must(req{method: "DELETE", path: "/v1/workspaces/acme?force=true", token: acme.admin}, 204)
	if _, err := rdb2.SCard(ctx, "amp/c").Result(); err == nil || !strings.HasPrefix(err.Error(), "WRONGPASS") {
		t.Fatalf("key of a deleted workspace on an open connection: %v", err)
	}
}
