package server

import (
	"errors"
	"strings"
	"testing"

	"github.com/valyala/fastjson"
)

func TestParseWebhook(t *testing.T) {
	ok := []struct {
		name, body string
		want       webhookReq
		members    []string // ext|label
	}{
		{"members page, numeric cohort id",
			`{"action":"members","parameters":{"mixpanel_project_id":"1","mixpanel_cohort_id":1234,"mixpanel_cohort_name":"Power users","mixpanel_session_id":"s-1","page_info":{"total_pages":3,"page_count":2},"members":[{"mixpanel_distinct_id":"u1","email":"a@x"},{"mixpanel_distinct_id":42},{"email":"b@x"},{"mixpanel_distinct_id":{"x":1}},{"mixpanel_distinct_id":""}],"extra":true}}`,
			webhookReq{Action: "members", CohortID: "1234", CohortName: "Power users", SessionID: "s-1", TotalPages: 3, PageCount: 2},
			[]string{"u1|a@x", "42|", "|b@x", "|", "|"}},
		{"add members without page info",
			`{"action":"add_members","parameters":{"mixpanel_cohort_id":"77","members":[]}}`,
			webhookReq{Action: "add_members", CohortID: "77"}, nil},
		{"remove members, null name",
			`{"action":"remove_members","parameters":{"mixpanel_cohort_id":"77","mixpanel_cohort_name":null,"members":[{"mixpanel_distinct_id":"z"}]}}`,
			webhookReq{Action: "remove_members", CohortID: "77"}, []string{"z|"}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			var p fastjson.Parser
			r, err := parseWebhook(&p, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			got := r
			got.members = nil
			if got.Action != tc.want.Action || got.CohortID != tc.want.CohortID || got.CohortName != tc.want.CohortName ||
				got.SessionID != tc.want.SessionID || got.TotalPages != tc.want.TotalPages || got.PageCount != tc.want.PageCount {
				t.Fatalf("got %+v want %+v", got, tc.want)
			}
			var ms []string
			r.eachMember("mixpanel_distinct_id", "email", func(ext, label []byte) {
				ms = append(ms, string(ext)+"|"+string(label))
			})
			if strings.Join(ms, ",") != strings.Join(tc.members, ",") {
				t.Fatalf("members %v want %v", ms, tc.members)
			}
		})
	}
	bad := []struct{ body, action, msg string }{
		{`[]`, "", "malformed"},
		{`{"action":"nope","parameters":{}}`, "", "action must be"},
		{`{"parameters":{}}`, "", "action must be"},
		{`{"action":"members"}`, "members", "parameters must be an object"},
		{`{"action":"add_members","parameters":{"members":[]}}`, "add_members", "mixpanel_cohort_id"},
		{`{"action":"add_members","parameters":{"mixpanel_cohort_id":1.5,"members":[]}}`, "add_members", "mixpanel_cohort_id"},
		{`{"action":"add_members","parameters":{"mixpanel_cohort_id":"1"}}`, "add_members", "members must be an array"},
		{`{"action":"add_members","parameters":{"mixpanel_cohort_id":"1","members":[1]}}`, "add_members", "members must be an array"},
		{`{"action":"add_members","parameters":{"mixpanel_cohort_id":"1","mixpanel_cohort_name":5,"members":[]}}`, "add_members", "mixpanel_cohort_name"},
		{`{"action":"members","parameters":{"mixpanel_cohort_id":"1","members":[],"page_info":{"total_pages":1,"page_count":1}}}`, "members", "mixpanel_session_id"},
		{`{"action":"members","parameters":{"mixpanel_cohort_id":"1","mixpanel_session_id":"s","members":[]}}`, "members", "page_info"},
		{`{"action":"members","parameters":{"mixpanel_cohort_id":"1","mixpanel_session_id":"s","members":[],"page_info":{"total_pages":0,"page_count":1}}}`, "members", "total_pages"},
		{`{"action":"members","parameters":{"mixpanel_cohort_id":"1","mixpanel_session_id":"s","members":[],"page_info":{"total_pages":2,"page_count":3}}}`, "members", "page_count"},
		{`{"action":"members","parameters":{"mixpanel_cohort_id":"1","mixpanel_session_id":"s","members":[],"page_info":{"total_pages":2,"page_count":0}}}`, "members", "page_count"},
	}
	for _, tc := range bad {
		var p fastjson.Parser
		r, err := parseWebhook(&p, []byte(tc.body))
		var ae *apiError
		if !errors.As(err, &ae) || ae.status != 400 {
			t.Errorf("%s: want a 400 apiError, got %v", tc.body, err)
			continue
		}
		if !strings.Contains(ae.message, tc.msg) {
			t.Errorf("%s: message %q lacks %q", tc.body, ae.message, tc.msg)
		}
		if r.Action != tc.action {
			t.Errorf("%s: action %q, want %q", tc.body, r.Action, tc.action)
		}
	}
}

// FuzzDecodeWebhook: any body parses to a 400 apiError or to a request
// whose fields all follow the rules; members never panic.
func FuzzDecodeWebhook(f *testing.F) {
	f.Add([]byte(`{"action":"members","parameters":{"mixpanel_cohort_id":12,"mixpanel_session_id":"s","page_info":{"total_pages":2,"page_count":1},"members":[{"mixpanel_distinct_id":"a","email":"e"}]}}`))
	f.Add([]byte(`{"action":"add_members","parameters":{"mixpanel_cohort_id":"x","members":[{"$braze_external_id":7}]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var p fastjson.Parser
		r, err := parseWebhook(&p, body)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("error %v is not a 400 apiError", err)
			}
			return
		}
		if r.CohortID == "" || !validText([]byte(r.CohortID)) {
			t.Fatalf("accepted cohort id %q", r.CohortID)
		}
		if r.Action == actionMembers && (r.PageCount < 1 || r.PageCount > r.TotalPages || r.SessionID == "") {
			t.Fatalf("accepted page info %+v", r)
		}
		n := 0
		r.eachMember("mixpanel_distinct_id", "email", func(ext, label []byte) {
			n++
			if ext != nil && !validID(ext) || label != nil && !validID(label) {
				t.Fatalf("invalid identifier passed on: %q %q", ext, label)
			}
		})
		if n != r.Len() {
			t.Fatalf("visited %d of %d members", n, r.Len())
		}
	})
}
