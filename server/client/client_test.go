package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cohortd/cohortd/server/client"
)

// liveServer starts a real server for t and returns an admin client and a
// client of workspace "ws" with partner "pt" and an import key.
func liveServer(t *testing.T, enc client.Encoding) (admin, ws *client.Client, cred client.PartnerCredentials) {
	t.Helper()
	base, stop, err := startServer("admin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	ctx := context.Background()
	admin = client.New(base, client.Options{Token: "admin"})
	key, err := admin.CreateWorkspace(ctx, "ws")
	if err != nil {
		t.Fatal(err)
	}
	if cred.PartnerAPIKey, err = admin.CreatePartner(ctx, "pt"); err != nil {
		t.Fatal(err)
	}
	ik, err := admin.CreateImportKey(ctx, "ws", "pt")
	if err != nil {
		t.Fatal(err)
	}
	cred.ClientSecret = ik.ClientSecret
	return admin, client.New(base, client.Options{Token: key, Encoding: enc}), cred
}

func TestCalls(t *testing.T) {
	for _, enc := range []client.Encoding{client.EncodingNone, client.EncodingGzip, client.EncodingZstd} {
		t.Run("enc_"+string(enc), func(t *testing.T) {
			admin, c, cred := liveServer(t, enc)
			ctx := context.Background()
			var users []client.User
			var ids []string
			for _, id := range []string{"u1", "u2", "u3", "u/4", `q"5`} {
				users = append(users, client.User{ExternalID: id})
				ids = append(ids, id)
			}
			users = append(users, client.User{DeviceID: "d1"})
			if up, err := c.UpsertUsers(ctx, users); err != nil || up.Created != 6 {
				t.Fatalf("upsert: %+v %v", up, err)
			}
			nd := client.Body{Data: []byte("{\"external_id\":\"u6\"}\n{\"external_id\":\"u1\"}\n"), NDJSON: true}
			if up, err := c.UpsertUsersBody(ctx, nd); err != nil || up.Created != 1 || up.Unchanged != 1 {
				t.Fatalf("upsert NDJSON: %+v %v", up, err)
			}
			if err := c.UpsertPartnerCohort(ctx, "pt", cred, "a/b", "A slash", time.Now()); err != nil {
				t.Fatal(err)
			}
			pc, err := c.PartnerChanges(ctx, "pt", cred, "a/b", []client.Change{
				{Identifiers: client.Identifiers{UserIDs: ids, DeviceIDs: []string{"d1"}}},
				{Identifiers: client.Identifiers{UserIDs: []string{"u3"}}, ShouldRemove: true},
			})
			if err != nil || pc.Added != 5 || pc.Message != "success" {
				t.Fatalf("partner changes: %+v %v", pc, err)
			}
			var got []string
			if err := c.Members(ctx, "pt", "a/b", func(m client.Member) error {
				got = append(got, m.ExternalID+"|"+strings.Join(m.DeviceIDs, ","))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			if want := []string{"q\"5|", "u/4|", "u1|", "u2|", "|d1"}; !slices.Equal(got, want) {
				t.Fatalf("members %q, want %q", got, want)
			}
			rp, err := c.ReplaceMembers(ctx, "pt", "b", client.Identifiers{UserIDs: []string{"u1", "u2", "ghost"}})
			if err != nil || rp.Added != 2 || rp.Unmatched != 1 {
				t.Fatalf("replace: %+v %v", rp, err)
			}
			if ch, err := c.Changes(ctx, "pt", "b", []client.Change{{Identifiers: client.Identifiers{UserIDs: []string{"u1"}}, ShouldRemove: true}}); err != nil || ch.Removed != 1 {
				t.Fatalf("changes: %+v %v", ch, err)
			}
			n, err := c.Count(ctx, client.Or(client.Cohort("pt/a/b"), client.Cohort("pt/b")))
			if err != nil || n.Count != 5 {
				t.Fatalf("count: %+v %v", n, err)
			}
			in, err := c.ContainsExternalIDs(ctx, client.And(client.Cohort("pt/b"), client.All()), []string{"u1", "u2", "nobody"})
			if err != nil || !slices.Equal(in.Results, []bool{false, true, false}) {
				t.Fatalf("contains: %+v %v", in, err)
			}
			in, err = c.Contains(ctx, client.Cohort("pt/a/b"), []client.User{{DeviceID: "d1"}, {ExternalID: "u3"}})
			if err != nil || !slices.Equal(in.Results, []bool{true, false}) {
				t.Fatalf("contains users: %+v %v", in, err)
			}
			var pages, members int
			for cursor := ""; ; pages++ {
				p, err := c.SegmentMembersPage(ctx, client.All(), 3, cursor)
				if err != nil {
					t.Fatal(err)
				}
				members += len(p.Members)
				if cursor = p.NextCursor; cursor == "" {
					break
				}
			}
			streamed := 0
			if err := c.SegmentMembers(ctx, client.All(), func(client.Member) error { streamed++; return nil }); err != nil {
				t.Fatal(err)
			}
			if members != 7 || streamed != 7 || pages != 2 {
				t.Fatalf("segment members: %d in %d pages, %d streamed; want 7, 7", members, pages+1, streamed)
			}
			lk, err := c.LookupUser(ctx, client.User{ExternalID: "u/4"})
			if err != nil || lk.User.ExternalID != "u/4" || len(lk.Cohorts) != 1 || lk.Cohorts[0].CohortID != "a/b" {
				t.Fatalf("lookup: %+v %v", lk, err)
			}
			if del, err := c.DeleteUsers(ctx, client.Identifiers{UserIDs: []string{"u2", "ghost"}}); err != nil || del.Deleted != 1 || del.Unmatched != 1 {
				t.Fatalf("delete: %+v %v", del, err)
			}
			if _, err := c.LookupUser(ctx, client.User{ExternalID: "u2"}); client.StatusOf(err) != 404 {
				t.Fatalf("lookup of a deleted user: %v", err)
			}
			if u, err := c.Usage(ctx); err != nil || u.Total == 0 || u.Partners["pt"].Total != u.Total {
				t.Fatalf("usage: %+v %v", u, err)
			}
			if err := c.DeleteCohort(ctx, "pt", "b"); err != nil {
				t.Fatal(err)
			}
			// The workspace key is refused on admin endpoints: 403 with the body.
			_, err = c.CreateWorkspace(ctx, "other")
			e, ok := errors.AsType[*client.Error](err)
			if !ok || e.Status != 403 || e.Message == "" || e.Errors == nil {
				t.Fatalf("admin call with a workspace key: %#v", err)
			}
			// An engine without a data directory has nothing to snapshot.
			if _, err := admin.Snapshot(ctx); client.StatusOf(err) != 409 {
				t.Fatalf("snapshot: %v", err)
			}
			if k, err := admin.RotateWorkspaceKey(ctx, "ws"); err != nil || k == "" {
				t.Fatalf("rotate: %q %v", k, err)
			}
			if _, err := c.Usage(ctx); client.StatusOf(err) != 401 {
				t.Fatalf("old key after rotation: %v", err)
			}
			if k, err := admin.RotatePartnerKey(ctx, "pt"); err != nil || k == "" {
				t.Fatalf("rotate partner: %q %v", k, err)
			}
			if err := admin.DeleteWorkspace(ctx, "ws", true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRetriesAndPositions(t *testing.T) {
	var calls atomic.Int32
	var minPos atomic.Value
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		minPos.Store(r.Header.Get(client.HeaderMinPosition))
		switch calls.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(429)
		case 2:
			w.WriteHeader(503)
		default:
			w.Header().Set(client.HeaderPosition, "3:42")
			w.WriteHeader(201)
			_, _ = w.Write([]byte(`{"api_key":"k"}`))
		}
	}))
	defer ts.Close()
	var pos client.Positions
	c := client.New(ts.URL, client.Options{MaxRetries: 3, Backoff: client.Backoff{Base: time.Millisecond, Max: 2 * time.Millisecond}, Positions: &pos})
	k, err := c.CreateWorkspace(context.Background(), "x")
	if err != nil || k != "k" || calls.Load() != 3 {
		t.Fatalf("key %q, err %v after %d calls", k, err, calls.Load())
	}
	pos.Note("1:7")
	pos.Note("3:41") // older: kept at 42
	pos.Note("bad")
	if _, err := c.CreateWorkspace(context.Background(), "y"); err != nil {
		t.Fatal(err)
	}
	if got := minPos.Load(); got != "1:7,3:42" {
		t.Fatalf("min position %q", got)
	}
	// Without retries a 503 is an *Error at once.
	calls.Store(1)
	c = client.New(ts.URL, client.Options{})
	if _, err := c.CreateWorkspace(context.Background(), "z"); client.StatusOf(err) != 503 || calls.Load() != 2 {
		t.Fatalf("no retries: %v after %d calls", err, calls.Load())
	}
}

func TestChangeJSON(t *testing.T) {
	for _, c := range []struct {
		in   client.Change
		want string
	}{
		{client.Change{}, `{"user_ids":[],"device_ids":[],"aliases":[]}`},
		{client.Change{Identifiers: client.Identifiers{UserIDs: []string{"a"}}, ShouldRemove: true}, `{"user_ids":["a"],"device_ids":[],"aliases":[],"should_remove":true}`},
	} {
		b, err := c.in.MarshalJSON()
		if err != nil || string(b) != c.want {
			t.Errorf("%+v: %s %v, want %s", c.in, b, err, c.want)
		}
	}
}
