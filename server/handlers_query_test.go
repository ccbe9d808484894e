package server

import (
	"bytes"
	"fmt"
	"github.com/cohortd/cohortd/server/client"
	"io"
	"strings"
	"testing"
	"time"
)

// seedQueryUsers creates u0…u(n-1) and anonymous devices d0…d(n-1), puts
// the even users in cohort p/c, and returns the workspace key.
func seedQueryUsers(t *testing.T, h *harness, n int) string {
	t.Helper()
	key := h.createWorkspace("acme")
	var nd bytes.Buffer
	for i := range n {
		fmt.Fprintf(&nd, "{\"external_id\":\"u%d\"}\n{\"device_id\":\"d%d\"}\n", i, i)
	}
	h.must(200, tReq{method: "POST", path: "/v1/users", token: key, ctype: "application/x-ndjson", body: nd.Bytes()})
	var members []string
	for i := 0; i < n; i += 2 {
		members = append(members, fmt.Sprintf("u%d", i))
	}
	h.must(200, tReq{method: "PUT", path: "/v1/cohorts/p/c/members", token: key, body: jsonBody(map[string]any{"user_ids": members, "device_ids": []string{"d1"}})})
	return key
}

func TestContainsCompactForm(t *testing.T) {
	h := newHarness(t, Options{}, true)
	key := seedQueryUsers(t, h, 600)
	seg := `{"cohort":"p/c"}`
	// 600 external ids (more than a resolve chunk), answered in order.
	var ids []string
	var want []bool
	for i := 599; i >= 0; i-- {
		ids = append(ids, fmt.Sprintf("u%d", i))
		want = append(want, i%2 == 0)
	}
	ids = append(ids, "nobody")
	want = append(want, false)
	body := []byte(`{"segment":` + seg + `,"external_ids":` + string(jsonBody(ids)) + `}`)
	got := h.must(200, tReq{method: "POST", path: "/v1/segments/contains", token: key, body: body}).json(t)["results"].([]any)
	if len(got) != len(want) {
		t.Fatalf("%d results for %d ids", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("result %d (%s) = %v, want %v", i, ids[i], got[i], want[i])
		}
	}
	// The users form gives the same answers.
	var users []map[string]string
	for _, id := range ids {
		users = append(users, map[string]string{"external_id": id})
	}
	same := h.must(200, tReq{method: "POST", path: "/v1/segments/contains", token: key,
		body: []byte(`{"segment":` + seg + `,"users":` + string(jsonBody(users)) + `}`)}).json(t)["results"].([]any)
	if fmt.Sprint(same) != fmt.Sprint(got) {
		t.Fatal("users form and external_ids form differ")
	}
	// device_ids: whoever holds them (d1 is a member as an anonymous user).
	r := h.must(200, tReq{method: "POST", path: "/v1/segments/contains", token: key,
		body: []byte(`{"segment":` + seg + `,"device_ids":["d1","d2","zz"]}`)}).json(t)["results"].([]any)
	if fmt.Sprint(r) != "[true false false]" {
		t.Fatalf("device_ids: %v", r)
	}
	// Exactly one of users, external_ids, device_ids.
	for _, bad := range []string{
		`{"segment":` + seg + `}`,
		`{"segment":` + seg + `,"users":[],"external_ids":[]}`,
		`{"segment":` + seg + `,"external_ids":["a"],"device_ids":["b"]}`,
		`{"segment":` + seg + `,"external_ids":"a"}`,
		`{"segment":` + seg + `,"external_ids":[""]}`,
	} {
		h.must(400, tReq{method: "POST", path: "/v1/segments/contains", token: key, body: []byte(bad)}).message(t)
	}
}

// TestContainsWithinKeyFilter: a compact batch that names its segment
// first is resolved knowing it, and once the cohort has earned a key filter
// (index/keyfilter.go) most non-members are not looked up. Answers must not
// change, for a cohort, an "and" with one, and segments no filter gates;
// nor when a member is identified after the filter was built.
func TestContainsWithinKeyFilter(t *testing.T) {
	h := newHarness(t, Options{}, true)
	key := seedQueryUsers(t, h, 600) // even u are members, and the anonymous d1
	h.must(200, tReq{method: "PUT", path: "/v1/cohorts/p/odd/members", token: key,
		body: jsonBody(map[string]any{"user_ids": []string{"u1", "u3", "u4"}})})
	var ids []string
	for i := range 1500 {
		ids = append(ids, fmt.Sprintf("u%d", i%700)) // u600… are unknown
	}
	ids = append(ids, "late-d1")
	ask := func(seg string, want func(i int) bool, late bool) {
		t.Helper()
		var users []map[string]string
		for _, id := range ids {
			users = append(users, map[string]string{"external_id": id})
		}
		for round := range 6 { // the first rounds earn the filters
			body := []byte(`{"segment":` + seg + `,"external_ids":` + string(jsonBody(ids)) + `}`)
			if round%2 == 1 { // the users form goes through the same gate
				body = []byte(`{"segment":` + seg + `,"users":` + string(jsonBody(users)) + `}`)
			}
			got := h.must(200, tReq{method: "POST", path: "/v1/segments/contains", token: key, body: body}).json(t)["results"].([]any)
			for j, id := range ids {
				w := false
				var n int
				if _, err := fmt.Sscanf(id, "u%d", &n); err == nil && n < 600 {
					w = want(n)
				} else if id == "late-d1" {
					w = late
				}
				if got[j] != w {
					t.Fatalf("round %d %s: %s = %v, want %v", round, seg, id, got[j], w)
				}
			}
		}
	}
	ask(`{"cohort":"p/c"}`, func(n int) bool { return n%2 == 0 }, false)
	ask(`{"and":[{"not":{"cohort":"p/odd"}},{"cohort":"p/c"}]}`, func(n int) bool { return n%2 == 0 && n != 4 }, false)
	ask(`{"or":[{"cohort":"p/odd"},{"cohort":"p/c"}]}`, func(n int) bool { return n%2 == 0 || n == 1 || n == 3 }, false)
	ask(`{"not":{"cohort":"p/c"}}`, func(n int) bool { return n%2 == 1 }, false)
	// d1, a member known by its device, gains an external id.
	h.must(200, tReq{method: "POST", path: "/v1/users", token: key, body: jsonBody(map[string]any{
		"users": []map[string]string{{"device_id": "d1", "external_id": "late-d1"}}})})
	ask(`{"cohort":"p/c"}`, func(n int) bool { return n%2 == 0 }, true)
	// The segment after the ids: nothing is known while they resolve.
	body := []byte(`{"external_ids":["u0","u1","late-d1"],"segment":{"cohort":"p/c"}}`)
	if got := h.must(200, tReq{method: "POST", path: "/v1/segments/contains", token: key, body: body}).json(t)["results"]; fmt.Sprint(got) != "[true false true]" {
		t.Fatalf("segment last: %v", got)
	}
	// The last segment wins, but not over identifiers resolved for an
	// earlier one.
	body = []byte(`{"segment":{"cohort":"p/c"},"external_ids":["u1"],"segment":{"cohort":"p/odd"}}`)
	if msg := h.must(400, tReq{method: "POST", path: "/v1/segments/contains", token: key, body: body}).message(t); msg != msgSegmentAgain {
		t.Fatalf("a segment after identifiers resolved for another: %q", msg)
	}
	for _, body := range []string{
		`{"segment":{"cohort":"p/c"},"segment":{"cohort":"p/odd"},"external_ids":["u1","u2"]}`,
		`{"external_ids":["u1","u2"],"segment":{"cohort":"p/c"},"segment":{"cohort":"p/odd"}}`,
	} {
		if got := h.must(200, tReq{method: "POST", path: "/v1/segments/contains", token: key, body: []byte(body)}).json(t)["results"]; fmt.Sprint(got) != "[true false]" {
			t.Fatalf("%s: %v, want the last segment's answers", body, got)
		}
	}
	body = []byte(`{"segment":{"cohort":"p/c"},"external_ids":["u1"],"segment":{"cohort":"p/odd"}}`)
	if c := h.must(200, tReq{method: "POST", path: "/v1/segments/count", token: key, body: body}).json(t)["count"]; c != 3.0 {
		t.Fatalf("count with two segments = %v, want p/odd's 3", c)
	}
	// A segment that does not parse is reported after the body, as before
	// (the early bind leaves it alone).
	h.must(400, tReq{method: "POST", path: "/v1/segments/contains", token: key, body: []byte(`{"segment":{"cohort":7},"external_ids":["u1"]}`)}).message(t)
}

// TestQueryBodiesAreCapped is issue 9.8 in the server: segment queries and
// user deletes have a decoded cap of their own (QueryMaxBody, not the
// 256 MiB of bulk bodies) and an identifier cap.
func TestQueryBodiesAreCapped(t *testing.T) {
	h := newHarness(t, Options{QueryMaxBody: 1 << 20}, true)
	key := seedQueryUsers(t, h, 4)
	big := append([]byte(`{"segment":{"all":true},"pad":"`), bytes.Repeat([]byte("a"), 2<<20)...)
	big = append(big, `"}`...)
	gz := client.Compress(big, client.EncodingGzip)
	for _, path := range []string{"/v1/segments/count", "/v1/segments/contains", "/v1/segments/members", "/v1/users/delete"} {
		h.must(413, tReq{method: "POST", path: path, token: key, encoding: "gzip", body: gz}).message(t)
	}
	// Under the cap a body of tiny values is scanned, not built.
	pad := `{"segment":{"all":true},"pad":[` + strings.Repeat("0,", 400_000) + `0]}`
	if c := h.must(200, tReq{method: "POST", path: "/v1/segments/count", token: key, body: []byte(pad)}).json(t)["count"]; c != 8.0 {
		t.Fatalf("count %v", c)
	}
	h.must(200, tReq{method: "POST", path: "/v1/users/delete", token: key, body: []byte(`{"pad":[` + strings.Repeat("0,", 400_000) + `0]}`)})
	// Too many identifiers.
	ids := `"x"` + strings.Repeat(`,"x"`, maxQueryIDs)
	h.must(400, tReq{method: "POST", path: "/v1/segments/contains", token: key, body: []byte(`{"segment":{"all":true},"external_ids":[` + ids + `]}`)})
	h.must(400, tReq{method: "POST", path: "/v1/users/delete", token: key, body: []byte(`{"user_ids":[` + ids + `]}`)})
}

// slowBody yields a few bytes, then blocks until released.
type slowBody struct {
	head    []byte
	release chan struct{}
}

func (b *slowBody) Read(p []byte) (int, error) {
	if len(b.head) > 0 {
		n := copy(p, b.head)
		b.head = b.head[n:]
		return n, nil
	}
	<-b.release
	return 0, io.EOF
}

// TestPartnerBodiesInFlightAreCapped: with PartnerMaxInflight bodies being
// read, one more partner (or webhook) request answers 503 with
// Retry-After, before reading anything.
func TestPartnerBodiesInFlightAreCapped(t *testing.T) {
	h := newHarness(t, Options{PartnerMaxInflight: 1}, true)
	h.createWorkspace("acme")
	h.createPartner("mixpanel")
	_, secret := h.createKey("acme", "mixpanel")
	slow := &slowBody{head: []byte(`{"partner_api_key":"k",`), release: make(chan struct{})}
	done := make(chan tResp, 1)
	go func() {
		done <- h.do(tReq{method: "POST", path: "/partners/mixpanel/cohorts/users", stream: slow})
	}()
	// Wait until the slow request holds the slot.
	deadline := time.Now().Add(5 * time.Second)
	for len(h.s.partnerSlots) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the slow request never took a slot")
		}
		time.Sleep(time.Millisecond)
	}
	r := h.must(503, tReq{method: "POST", path: "/partners/mixpanel/cohorts", body: []byte(`{}`)})
	if r.header.Peek("Retry-After") == nil {
		t.Error("503 without Retry-After")
	}
	code, _ := h.hook(secret, "", []byte(`{"action":"add_members","parameters":{"mixpanel_cohort_id":"1","members":[]}}`), "")
	if code != 503 {
		t.Errorf("webhook with the slot taken: %d, want 503", code)
	}
	close(slow.release)
	if r := <-done; r.status != 400 {
		t.Errorf("slow request: %d %s", r.status, r.body)
	}
	// The slot is free again.
	code, _ = h.hook(secret, "", []byte(`{"action":"add_members","parameters":{"mixpanel_cohort_id":"1","members":[]}}`), "")
	if code != 200 {
		t.Errorf("webhook after release: %d", code)
	}
}
