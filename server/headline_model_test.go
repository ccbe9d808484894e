package server

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
)

// TestOneALineModel sends bodies of one identifier a line (external ids,
// device ids and aliases mixed, runs of each direction, users named again
// and again, some of them by an external id and by an alias, unknown
// identifiers and device ids of identified users) through Handler twice: as exporters write them, which
// the decoder's fast path merges into runs, and with an unknown field on
// every line, which sends each line through the general walk one object at
// a time. The replies must be the same, both cohorts must hold the same
// users, and that many as a model of docs/API.md §2 (the last change of a
// user wins; device ids match anonymous users only) says.
func TestOneALineModel(t *testing.T) {
	const users = 300
	s, w, key := workspaceServer(t)
	// User i: i%10 < 6 an external id; 6 an external id and an alias; 7 an
	// alias; 8 anonymous with a device id; 9 an external id and a device id
	// (identified: its device id matches no one).
	var ub engine.UserBatch
	for i := range users {
		ext, dev := []byte("e"+strconv.Itoa(i)), []byte("d"+strconv.Itoa(i))
		alias := [][]byte{engine.AliasKey(nil, []byte("email"), []byte(strconv.Itoa(i)+"@x"))}
		switch i % 10 {
		case 6:
			ub.Add(ext, nil, alias)
		case 7:
			ub.Add(nil, nil, alias)
		case 8:
			ub.Add(nil, dev, nil)
		case 9:
			ub.Add(ext, dev, nil)
		default:
			ub.Add(ext, nil, nil)
		}
	}
	if _, err := w.UpsertUsers(&ub); err != nil {
		t.Fatal(err)
	}

	var ctx fasthttp.RequestCtx
	post := func(path, contentType, body string) string {
		t.Helper()
		ctx.Request.Reset()
		ctx.Response.Reset()
		ctx.Request.Header.SetMethod("POST")
		ctx.Request.SetRequestURI(path)
		ctx.Request.Header.Set("Authorization", "Bearer "+key)
		ctx.Request.Header.SetContentType(contentType)
		ctx.Request.SetBodyString(body)
		s.Handler(&ctx)
		if ctx.Response.StatusCode() != 200 {
			t.Fatalf("POST %s: %d %s", path, ctx.Response.StatusCode(), ctx.Response.Body())
		}
		return string(ctx.Response.Body())
	}
	count := func(seg string) string {
		t.Helper()
		return post("/v1/segments/count", "application/json", `{"segment":`+seg+`}`)
	}

	r := rand.New(rand.NewPCG(11, 12))
	member := make([]bool, users) // the model
	for body := range 30 {
		var fast, slow []byte
		remove := false
		for range 1 + r.IntN(400) {
			if r.IntN(8) == 0 { // runs of one direction, then a switch
				remove = !remove
			}
			i := r.IntN(users)
			var line string
			matched := true
			switch k := r.IntN(10); {
			case k == 0: // unknown external id
				line, matched = `{"user_ids":["nobody`+strconv.Itoa(i)+`"]`, false
			case i%10 == 6 && k < 5: // the same user by its external id
				line = `{"user_ids":["e` + strconv.Itoa(i) + `"]`
			case i%10 == 6 || i%10 == 7:
				line = `{"aliases":[{"alias_name":"email","alias_label":"` + strconv.Itoa(i) + `@x"}]`
			case i%10 == 8:
				line = `{"device_ids":["d` + strconv.Itoa(i) + `"]`
			case i%10 == 9 && k < 4: // an identified user's device id
				line, matched = `{"device_ids":["d`+strconv.Itoa(i)+`"]`, false
			default:
				line = `{"user_ids":["e` + strconv.Itoa(i) + `"]`
			}
			if matched {
				member[i] = !remove
			}
			tail := "}\n"
			switch {
			case remove:
				tail = `,"should_remove":true}` + "\n"
			case r.IntN(3) == 0:
				tail = `,"should_remove":false}` + "\n"
			}
			fast = append(fast, line+tail...)
			slow = append(slow, line+`,"x":1`+tail...)
		}
		a := post("/v1/cohorts/p/fast/changes", "application/x-ndjson", string(fast))
		b := post("/v1/cohorts/p/slow/changes", "application/x-ndjson", string(slow))
		if a != b {
			t.Fatalf("body %d: replies differ:\nfast path %s\ngeneral   %s", body, a, b)
		}
	}
	want := 0
	for _, m := range member {
		if m {
			want++
		}
	}
	if got := count(`{"cohort":"p/fast"}`); got != fmt.Sprintf(`{"count":%d}`, want) {
		t.Errorf("fast path cohort: %s, the model says %d", got, want)
	}
	for _, seg := range []string{
		`{"and":[{"cohort":"p/fast"},{"not":{"cohort":"p/slow"}}]}`,
		`{"and":[{"cohort":"p/slow"},{"not":{"cohort":"p/fast"}}]}`,
	} {
		if got := count(seg); got != `{"count":0}` {
			t.Errorf("%s: %s, want the same members", seg, got)
		}
	}
}
