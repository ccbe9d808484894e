package server

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/client"
)

func TestIdempotencyPartner(t *testing.T) {
	h := newHarness(t, Options{}, true)
	pkey := h.createPartner("mixpanel")
	w := h.newWorld("acme", pkey)
	body := w.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"user_ids": []string{"u1", "u2"}}}})
	first := h.must(201, tReq{method: "POST", path: w.usersPath, body: body, idemKey: "k1"})
	// Remove u1 out of band: a replay must not re-add it.
	h.must(200, tReq{method: "POST", path: "/v1/cohorts/mixpanel/c/changes", token: w.wsKey, body: []byte(`{"cohort_changes":[{"user_ids":["u1"],"should_remove":true}]}`)})
	again := h.must(201, tReq{method: "POST", path: w.usersPath, body: body, idemKey: "k1"})
	if string(again.body) != string(first.body) || string(again.header.Peek("Idempotent-Replayed")) != "true" {
		t.Errorf("replay %s, first %s", again.body, first.body)
	}
	if c := h.must(200, tReq{method: "GET", path: "/v1/cohorts/mixpanel/c", token: w.wsKey}).json(t); c["size"] != 1.0 {
		t.Errorf("replay applied again: %v", c)
	}
	if u := h.must(200, tReq{method: "GET", path: "/v1/usage", token: w.wsKey}).json(t); u["total"] != 3.0 {
		t.Errorf("data points %v", u)
	}
	// The same body compressed is other bytes: 422, like any other body.
	r := h.must(422, tReq{method: "POST", path: w.usersPath, body: client.Compress(body, client.EncodingGzip), encoding: "gzip", idemKey: "k1"})
	if r.message(t) != "Idempotency-Key reused with a different request body" {
		t.Errorf("422 %s", r.body)
	}
	// A failed request does not hold the key.
	h.must(400, tReq{method: "POST", path: w.usersPath, body: w.creds(map[string]any{"cohort_id": "c"}), idemKey: "k2"})
	h.must(201, tReq{method: "POST", path: w.usersPath, body: body, idemKey: "k2"})
	// Keys are scoped per workspace.
	w2 := h.newWorld("other", pkey)
	body2 := w2.creds(map[string]any{"cohort_id": "c", "cohort_changes": []any{map[string]any{"user_ids": []string{"u1"}}}})
	r = h.must(201, tReq{method: "POST", path: w2.usersPath, body: body2, idemKey: "k1"})
	if r.json(t)["added"] != 1.0 {
		t.Errorf("other workspace %s", r.body)
	}
	h.must(400, tReq{method: "POST", path: w.usersPath, body: body, idemKey: "bad\x01key"})
}

func TestIdempotencyV1(t *testing.T) {
	h := newHarness(t, Options{}, true)
	key := h.createWorkspace("acme")
	up := tReq{method: "POST", path: "/v1/users", token: key, body: []byte(`{"users":[{"external_id":"a"}]}`), idemKey: "u"}
	first := h.must(200, up)
	again := h.must(200, up)
	if string(first.body) != string(again.body) || first.json(t)["created"] != 1.0 {
		t.Errorf("replay %s vs %s", again.body, first.body)
	}
	diff := up
	diff.body = []byte(`{"users":[{"external_id":"b"}]}`)
	h.must(422, diff)
	// Streamed bodies are hashed as they stream.
	st := tReq{method: "PUT", path: "/v1/cohorts/p/c/members", token: key, body: []byte(`{"user_ids":["a"]}`), idemKey: "m"}
	h.must(200, st)
	r := h.must(200, st)
	if r.json(t)["added"] != 1.0 {
		t.Errorf("members replay %s", r.body)
	}
	// DELETE replays its 204.
	del := tReq{method: "DELETE", path: "/v1/cohorts/p/c", token: key, idemKey: "d"}
	h.must(204, del)
	h.must(204, del)
	h.must(404, tReq{method: "DELETE", path: "/v1/cohorts/p/c", token: key})
	// Admin scope.
	ws := tReq{method: "POST", path: "/v1/workspaces", token: testAdmin, body: []byte(`{"id":"w2"}`), idemKey: "w"}
	a, b := h.must(201, ws), h.must(201, ws)
	if string(a.body) != string(b.body) {
		t.Error("admin replay differs")
	}
	// Concurrent duplicates: exactly one applies.
	var wg sync.WaitGroup
	bodies := make([]string, 8)
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := h.do(tReq{method: "POST", path: "/v1/cohorts/p/cc/changes", token: key, body: []byte(`{"cohort_changes":[{"user_ids":["a"]}]}`), idemKey: "conc"})
			bodies[i] = fmt.Sprint(r.status, string(r.body))
		}()
	}
	wg.Wait()
	for _, b := range bodies[1:] {
		if b != bodies[0] {
			t.Errorf("concurrent replies differ: %s vs %s", b, bodies[0])
		}
	}
	if u := h.must(200, tReq{method: "GET", path: "/v1/usage", token: key}).json(t); u["total"] != 2.0 {
		t.Errorf("usage %v", u)
	}
}

// TestIdemStorePending: a key owned by a request in flight makes a
// duplicate wait; the waiter gives up with 409, and a released key is free.
func TestIdemStorePending(t *testing.T) {
	e, err := engine.Open(engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sc := idemScope{e: e}
	st := newIdemStore()
	_, owner, err := st.acquire(sc, "x", time.Second)
	if err != nil || owner == nil {
		t.Fatal(owner, err)
	}
	if _, _, err := st.acquire(sc, "x", 10*time.Millisecond); err == nil {
		t.Error("a duplicate of a request in flight did not time out")
	}
	st.abandon(owner)
	if st.len() != 0 {
		t.Fatalf("%d keys in flight after abandon", st.len())
	}
	_, owner, err = st.acquire(sc, "x", time.Second)
	if err != nil || owner == nil {
		t.Fatal("released key not free:", owner, err)
	}
	if err := st.complete(owner, engine.IdempotentReply{Status: 201, Body: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	stored, owner, err := st.acquire(sc, "x", time.Second)
	if err != nil || owner != nil || stored.Status != 201 {
		t.Fatalf("completed key: %+v %v %v", stored, owner, err)
	}
}
