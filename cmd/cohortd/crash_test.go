package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestCrashKill9 is the durability test of docs/API.md §5 with the real binary:
// numbered batches of adds and removes stream over HTTP into several
// cohorts (partner endpoint and /v1 bulk changes) while another stream
// creates users; cohortd is SIGKILLed at random moments — snapshots are
// taken every few KB of WAL, so some kills land while one is written —,
// restarted on the same data dir, and then every acknowledged batch must be
// there in full and the one in flight either whole or absent.
//
// make test runs 20 kills; make crashtest runs 200 (COHORTD_CRASH_KILLS).
func TestCrashKill9(t *testing.T) {
	kills := 20
	if s := os.Getenv("COHORTD_CRASH_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %d kills", seed, kills)
	r := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	args := startOpts{args: []string{"-snapshot-wal-bytes", "16KiB", "-snapshot-interval", "0"}}
	d := startDaemon(t, dir, args)
	tn := setupTenant(d, d.adminToken(), "crash", "amp")
	const baseUsers = 500
	var ub bytes.Buffer
	for i := 0; i < baseUsers; i++ {
		fmt.Fprintf(&ub, "{\"external_id\":\"u%d\"}\n", i)
	}
	d.must(req{method: "POST", path: "/v1/users", token: tn.apiKey, body: ub.Bytes(), ctype: "application/x-ndjson"}, 200)

	streams := []*crashStream{{cohort: "c0", bulk: false}, {cohort: "c1", bulk: true}, {cohort: "c2", bulk: false}}
	users := &userStream{}
	for round := 0; round < kills; round++ {
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for _, s := range streams {
			wg.Add(1)
			go func() { defer wg.Done(); s.run(d.base, tn, baseUsers, stop) }()
		}
		wg.Add(1)
		go func() { defer wg.Done(); users.run(d.base, tn.apiKey, stop) }()
		time.Sleep(time.Duration(50+r.IntN(700)) * time.Millisecond)
		if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-d.done
		close(stop)
		wg.Wait()

		d = startDaemon(t, dir, args)
		for _, s := range streams {
			got := fetchMembers(t, d.base, tn.apiKey, tn.partner, s.cohort)
			if err := s.verify(got, baseUsers); err != nil {
				t.Fatalf("round %d: cohort %s: %v", round, s.cohort, err)
			}
		}
		n := countAll(t, d.base, tn.apiKey)
		if err := users.verify(n - baseUsers); err != nil {
			t.Fatalf("round %d: users: %v", round, err)
		}
	}
	acked := 0
	for _, s := range streams {
		acked += s.acked
	}
	t.Logf("%d kills; %d change batches and %d user batches acknowledged", kills, acked, users.acked)
	if acked == 0 || users.acked == 0 {
		t.Fatal("no batch was acknowledged: the test proved nothing")
	}
}

// crashStream sends numbered change batches to one cohort, one at a time.
type crashStream struct {
	cohort   string
	bulk     bool // /v1 bulk changes (zstd NDJSON) instead of the partner endpoint
	acked    int  // batches 1…acked were acknowledged
	inFlight bool // batch acked+1 was sent and not answered when cohortd died
}

// batch returns the changes of batch k: 20 users, a third removes.
func (s *crashStream) batch(k, users int) (adds, removes []string) {
	r := rand.New(rand.NewPCG(uint64(k), uint64(len(s.cohort))*7919+uint64(s.cohort[1])))
	for i := 0; i < 20; i++ {
		u := fmt.Sprintf("u%d", r.IntN(users))
		if r.IntN(3) == 0 {
			removes = append(removes, u)
		} else {
			adds = append(adds, u)
		}
	}
	return adds, removes
}

// model returns the membership after batches 1…n.
func (s *crashStream) model(n, users int) map[string]bool {
	m := map[string]bool{}
	for k := 1; k <= n; k++ {
		adds, removes := s.batch(k, users)
		// Adds come before removes in a request; the last change wins.
		for _, u := range adds {
			m[u] = true
		}
		for _, u := range removes {
			delete(m, u)
		}
	}
	return m
}

func (s *crashStream) run(base string, tn tenant, users int, stop chan struct{}) {
	s.inFlight = false
	for {
		select {
		case <-stop:
			return
		default:
		}
		k := s.acked + 1
		adds, removes := s.batch(k, users)
		var body []byte
		var hr *http.Request
		if s.bulk {
			var b bytes.Buffer
			a, _ := json.Marshal(map[string]any{"user_ids": adds})
			rm, _ := json.Marshal(map[string]any{"user_ids": removes, "should_remove": true})
			b.Write(a)
			b.WriteByte('\n')
			b.Write(rm)
			body = b.Bytes()
			hr, _ = http.NewRequest("POST", base+"/v1/cohorts/"+tn.partner+"/"+s.cohort+"/changes", bytes.NewReader(body))
			hr.Header.Set("Authorization", "Bearer "+tn.apiKey)
			hr.Header.Set("Content-Type", "application/x-ndjson")
		} else {
			body, _ = json.Marshal(map[string]any{
				"partner_api_key": tn.partnerKey, "client_secret": tn.secret, "cohort_id": s.cohort,
				"cohort_changes": []map[string]any{
					{"user_ids": adds, "device_ids": []string{}, "aliases": []any{}},
					{"user_ids": removes, "device_ids": []string{}, "aliases": []any{}, "should_remove": true},
				},
			})
			hr, _ = http.NewRequest("POST", base+"/partners/"+tn.partner+"/cohorts/users", bytes.NewReader(body))
			hr.Header.Set("Content-Type", "application/json")
		}
		s.inFlight = true
		resp, err := crashClient.Do(hr)
		if err != nil {
			return // cohortd died: batch k is in flight
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return // refused while dying (503): treat as in flight
		}
		s.acked = k
		s.inFlight = false
	}
}

// verify checks the recovered members against the model: batches 1…acked
// fully applied; a batch in flight wholly applied or not at all.
func (s *crashStream) verify(got map[string]bool, users int) error {
	if equalSets(got, s.model(s.acked, users)) {
		return nil
	}
	if s.inFlight && equalSets(got, s.model(s.acked+1, users)) {
		s.acked++ // the in-flight batch made it whole: it is part of history now
		return nil
	}
	return fmt.Errorf("recovered %d members match neither %d acknowledged batches (%d members) nor, in flight=%v, one more",
		len(got), s.acked, len(s.model(s.acked, users)), s.inFlight)
}

// userStream creates 10 users per numbered batch.
type userStream struct {
	acked    int
	inFlight bool
}

func (u *userStream) run(base, apiKey string, stop chan struct{}) {
	u.inFlight = false
	for {
		select {
		case <-stop:
			return
		default:
		}
		k := u.acked + 1
		var b bytes.Buffer
		for i := 0; i < 10; i++ {
			fmt.Fprintf(&b, "{\"external_id\":\"n%d-%d\"}\n", k, i)
		}
		hr, _ := http.NewRequest("POST", base+"/v1/users", &b)
		hr.Header.Set("Authorization", "Bearer "+apiKey)
		hr.Header.Set("Content-Type", "application/x-ndjson")
		u.inFlight = true
		resp, err := crashClient.Do(hr)
		if err != nil {
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return
		}
		u.acked = k
		u.inFlight = false
	}
}

func (u *userStream) verify(created int) error {
	switch {
	case created == 10*u.acked:
		return nil
	case u.inFlight && created == 10*(u.acked+1):
		u.acked++
		return nil
	}
	return fmt.Errorf("%d users recovered, want %d (acknowledged batches) or, in flight=%v, %d", created, 10*u.acked, u.inFlight, 10*(u.acked+1))
}

var crashClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableCompression: true}}

func fetchMembers(t *testing.T, base, apiKey, partner, cohort string) map[string]bool {
	t.Helper()
	hr, _ := http.NewRequest("GET", base+"/v1/cohorts/"+partner+"/"+cohort+"/members", nil)
	hr.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := crashClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := map[string]bool{}
	if resp.StatusCode == 404 {
		return got
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("members of %s: %d %s", cohort, resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var m struct {
			ExternalID string `json:"external_id"`
		}
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("members line %q: %v", sc.Bytes(), err)
		}
		got[m.ExternalID] = true
	}
	return got
}

func countAll(t *testing.T, base, apiKey string) int {
	t.Helper()
	hr, _ := http.NewRequest("POST", base+"/v1/segments/count", bytes.NewReader([]byte(`{"segment":{"all":true}}`)))
	hr.Header.Set("Authorization", "Bearer "+apiKey)
	hr.Header.Set("Content-Type", "application/json")
	resp, err := crashClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct {
		Count int `json:"count"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != 200 {
		t.Fatalf("count: %d %v", resp.StatusCode, err)
	}
	return c.Count
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
