package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Segment is a segment expression (docs/API.md, "Segments"), built with
// Cohort, And, Or, Not and All. The zero Segment is not a valid expression.
type Segment struct {
	cohort string
	and    []Segment
	or     []Segment
	not    *Segment
	all    bool
}

// Cohort is the members of a cohort, named "<partner>/<cohort_id>".
func Cohort(name string) Segment { return Segment{cohort: name} }

// And is the users in every operand.
func And(s ...Segment) Segment { return Segment{and: s} }

// Or is the users in any operand.
func Or(s ...Segment) Segment { return Segment{or: s} }

// Not is the workspace's live users outside s.
func Not(s Segment) Segment { return Segment{not: &s} }

// All is every live user of the workspace.
func All() Segment { return Segment{all: true} }

// MarshalJSON writes the expression's JSON form.
func (s Segment) MarshalJSON() ([]byte, error) {
	switch {
	case s.all:
		return []byte(`{"all":true}`), nil
	case s.not != nil:
		return json.Marshal(map[string]Segment{"not": *s.not})
	case s.and != nil:
		return json.Marshal(map[string][]Segment{"and": s.and})
	case s.or != nil:
		return json.Marshal(map[string][]Segment{"or": s.or})
	default:
		return json.Marshal(map[string]string{"cohort": s.cohort})
	}
}

// Count is the reply of POST /v1/segments/count.
type Count struct {
	Count int64 `json:"count"`
	// Warnings name the unknown cohorts of the expression.
	Warnings []string `json:"warnings"`
}

// Count counts the members of a segment.
func (c *Client) Count(ctx context.Context, s Segment) (Count, error) {
	var out Count
	err := c.callJSON(ctx, "POST", "/v1/segments/count", map[string]Segment{"segment": s}, http.StatusOK, &out)
	return out, err
}

// Contains is the reply of POST /v1/segments/contains.
type Contains struct {
	// Results holds one boolean per user, in the order asked.
	Results  []bool   `json:"results"`
	Warnings []string `json:"warnings"`
}

// ContainsExternalIDs tests users named by external id for membership
// (the compact form of docs/API.md, for large batches).
func (c *Client) ContainsExternalIDs(ctx context.Context, s Segment, externalIDs []string) (Contains, error) {
	return c.contains(ctx, struct {
		Segment     Segment  `json:"segment"`
		ExternalIDs []string `json:"external_ids"`
	}{s, externalIDs})
}

// Contains tests users named by any identifier (one of the fields of each
// User set, or an alias) for membership.
func (c *Client) Contains(ctx context.Context, s Segment, users []User) (Contains, error) {
	type one struct {
		ExternalID string `json:"external_id,omitempty"`
		DeviceID   string `json:"device_id,omitempty"`
		AliasName  string `json:"alias_name,omitempty"`
		AliasLabel string `json:"alias_label,omitempty"`
	}
	us := make([]one, len(users))
	for i, u := range users {
		us[i] = one{ExternalID: u.ExternalID, DeviceID: u.DeviceID}
		if len(u.Aliases) > 0 {
			us[i].AliasName, us[i].AliasLabel = u.Aliases[0].Name, u.Aliases[0].Label
		}
	}
	return c.contains(ctx, struct {
		Segment Segment `json:"segment"`
		Users   []one   `json:"users"`
	}{s, us})
}

func (c *Client) contains(ctx context.Context, body any) (Contains, error) {
	var out Contains
	err := c.callJSON(ctx, "POST", "/v1/segments/contains", body, http.StatusOK, &out)
	return out, err
}

// MembersPage is one page of POST /v1/segments/members.
type MembersPage struct {
	Members []Member `json:"members"`
	// NextCursor continues the listing; "" on the last page.
	NextCursor string   `json:"next_cursor"`
	Warnings   []string `json:"warnings"`
}

// SegmentMembersPage lists up to limit (1–10,000) members of a segment from
// cursor ("" for the first page).
func (c *Client) SegmentMembersPage(ctx context.Context, s Segment, limit int, cursor string) (MembersPage, error) {
	var out MembersPage
	err := c.callJSON(ctx, "POST", "/v1/segments/members", struct {
		Segment Segment `json:"segment"`
		Limit   int     `json:"limit"`
		Cursor  string  `json:"cursor,omitempty"`
	}{s, limit, cursor}, http.StatusOK, &out)
	return out, err
}

// SegmentMembers streams every member of a segment to f, in bounded
// memory; an error from f stops the stream and is returned.
func (c *Client) SegmentMembers(ctx context.Context, s Segment, f func(Member) error) error {
	b, err := json.Marshal(map[string]Segment{"segment": s})
	if err != nil {
		return err
	}
	return c.stream(ctx, &Request{Method: "POST", Path: "/v1/segments/members", Body: b}, f)
}

// stream sends r and decodes its NDJSON reply one member a line.
func (c *Client) stream(ctx context.Context, r *Request, f func(Member) error) error {
	hr, err := c.NewHTTPRequest(ctx, r)
	if err != nil {
		return err
	}
	resp, err := c.o.HTTPClient.Do(hr)
	if err != nil {
		return fmt.Errorf("%s %s: %w", r.Method, r.Path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return NewError(r.Method, r.Path, &Reply{Status: resp.StatusCode, Header: resp.Header, Body: b})
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var m Member
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return fmt.Errorf("%s %s: decode member: %w", r.Method, r.Path, err)
		}
		if err := f(m); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s %s: read members: %w", r.Method, r.Path, err)
	}
	return nil
}
