package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Issue 9.7 and 9.8: a small compressed body that decodes to megabytes of
// tiny JSON values cost gigabytes as a parse tree (8 MiB of [0,0,…] took
// 2.0 GB before a 401; 16 MiB sent to /v1/segments/count took 4.1 GB).
// These tests send such bodies to the real binary and check its peak
// resident memory (VmHWM) stays a small multiple of the body: the bound
// below is an order of magnitude under what a tree costs, not a
// performance figure.
const hostileRSSBound = 400 << 20

// peakRSS returns the process's peak resident set size (VmHWM).
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}

// zeros is a JSON array of n zeros.
func zeros(n int) []byte {
	b := make([]byte, 0, 2*n+2)
	b = append(b, '[')
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '0')
	}
	return append(b, ']')
}

func TestUnauthenticatedPartnerBodyIsNotParsed(t *testing.T) {
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-fsync", "off"}})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "mixpanel")
	pad := zeros(4<<20 - 64) // just under the 8 MiB partner cap
	bad := append([]byte(`{"partner_api_key":"wrong","client_secret":"wrong","cohort_id":"c","cohort_changes":[],"pad":`), pad...)
	bad = append(bad, '}')
	if len(bad) > 8<<20 {
		t.Fatalf("body of %d bytes is over the cap", len(bad))
	}
	for range 4 {
		r := d.do(req{method: "POST", path: "/partners/mixpanel/cohorts/users", body: bad, encoding: "gzip"})
		if r.status != 401 && r.status != 413 {
			t.Fatalf("hostile body: %s", r)
		}
	}
	// Few values, many bytes, bad credentials: scanned, then 401.
	long := []byte(`{"partner_api_key":"wrong","client_secret":"wrong","pad":"` + strings.Repeat("a", 7<<20) + `"}`)
	r := d.must(req{method: "POST", path: "/partners/mixpanel/cohorts/users", body: long, encoding: "gzip"}, 401)
	if !bytes.Contains(r.body, []byte("Invalid Partner API key")) {
		t.Fatalf("reply %s", r)
	}
	// The webhook checks Basic auth before reading the body.
	hook := append([]byte(`{"action":"members","parameters":{"members":`), pad...)
	hook = append(hook, "}}"...)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("x:wrong"))
	d.must(req{method: "POST", path: "/webhooks/mixpanel", body: hook, encoding: "gzip", header: map[string]string{"Authorization": auth}}, 401)
	// An authenticated sender of the same junk gets a 413 from the value
	// cap, before any tree.
	ok := append([]byte(`{"partner_api_key":"`+tn.partnerKey+`","client_secret":"`+tn.secret+`","cohort_id":"c","cohort_changes":[],"pad":`), pad...)
	ok = append(ok, '}')
	d.must(req{method: "POST", path: "/partners/mixpanel/cohorts/users", body: ok, encoding: "gzip"}, 413)
	// Real requests still work.
	d.must(req{method: "POST", path: "/partners/mixpanel/cohorts/users", body: tn.changes("c", []string{"nobody"}, false)}, 201)
	if rss := peakRSS(t, d.cmd.Process.Pid); rss > hostileRSSBound {
		t.Fatalf("peak RSS %d MiB after hostile partner bodies (bound %d MiB)", rss>>20, hostileRSSBound>>20)
	}
}

func TestQueryBodyDoesNotBuildTree(t *testing.T) {
	d := startDaemon(t, t.TempDir(), startOpts{args: []string{"-fsync", "off"}})
	admin := d.adminToken()
	tn := setupTenant(d, admin, "acme", "mixpanel")
	pad := zeros(3<<20 + 512<<10) // 7 MiB: under the 8 MiB default -query-max-body
	count := append([]byte(`{"segment":{"all":true},"pad":`), pad...)
	count = append(count, '}')
	for range 3 {
		r := d.must(req{method: "POST", path: "/v1/segments/count", token: tn.apiKey, body: count, encoding: "gzip"}, 200).json(t)
		if num(t, r, "count") != 0 {
			t.Fatalf("count %v", r)
		}
	}
	del := append([]byte(`{"user_ids":[],"pad":`), pad...)
	del = append(del, '}')
	d.must(req{method: "POST", path: "/v1/users/delete", token: tn.apiKey, body: del, encoding: "gzip"}, 200)
	// Past the cap: 413, whatever the bulk cap (-max-body) says.
	huge := append([]byte(`{"segment":{"all":true},"pad":`), zeros(8<<20)...)
	huge = append(huge, '}')
	d.must(req{method: "POST", path: "/v1/segments/contains", token: tn.apiKey, body: huge, encoding: "gzip"}, 413)
	d.must(req{method: "POST", path: "/v1/users/delete", token: tn.apiKey, body: huge, encoding: "gzip"}, 413)
	if rss := peakRSS(t, d.cmd.Process.Pid); rss > hostileRSSBound {
		t.Fatalf("peak RSS %d MiB after query bodies of tiny values (bound %d MiB)", rss>>20, hostileRSSBound>>20)
	}
	// The cap is a flag.
	d2 := startDaemon(t, t.TempDir(), startOpts{args: []string{"-fsync", "off"}, env: []string{"COHORTD_QUERY_MAX_BODY=64KiB"}})
	tn2 := setupTenant(d2, d2.adminToken(), "acme", "mixpanel")
	d2.must(req{method: "POST", path: "/v1/segments/count", token: tn2.apiKey, body: count, encoding: "gzip"}, 413)
	d2.must(req{method: "POST", path: "/v1/segments/count", token: tn2.apiKey, body: `{"segment":{"all":true}}`}, 200)
}
