package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// The calls of docs/API.md, one method each, grouped as there. Each
// expects the endpoint's success status and returns any other as *Error.

// ---- admin (the admin token) ----

// CreateWorkspace creates a workspace and returns its API key.
func (c *Client) CreateWorkspace(ctx context.Context, id string) (apiKey string, err error) {
	return c.issueKey(ctx, "/v1/workspaces", map[string]string{"id": id}, "api_key")
}

// RotateWorkspaceKey issues a new API key for a workspace; the old one
// stops working at once.
func (c *Client) RotateWorkspaceKey(ctx context.Context, id string) (apiKey string, err error) {
	return c.issueKey(ctx, "/v1/workspaces/"+url.PathEscape(id)+"/api-key", nil, "api_key")
}

// DeleteWorkspace deletes a workspace; one that still holds users or
// cohorts is refused (409) unless force.
func (c *Client) DeleteWorkspace(ctx context.Context, id string, force bool) error {
	return c.call(ctx, &Request{Method: "DELETE", Path: "/v1/workspaces/" + url.PathEscape(id) + "?force=" + strconv.FormatBool(force)},
		http.StatusNoContent, nil)
}

// CreatePartner registers a partner and returns its partner API key.
func (c *Client) CreatePartner(ctx context.Context, slug string) (partnerAPIKey string, err error) {
	return c.issueKey(ctx, "/v1/partners", map[string]string{"slug": slug}, "partner_api_key")
}

// RotatePartnerKey issues a new partner API key; the old one stops working
// at once.
func (c *Client) RotatePartnerKey(ctx context.Context, slug string) (partnerAPIKey string, err error) {
	return c.issueKey(ctx, "/v1/partners/"+url.PathEscape(slug)+"/api-key", nil, "partner_api_key")
}

// issueKey posts in to a call that creates or rotates a key and returns
// the reply's field.
func (c *Client) issueKey(ctx context.Context, path string, in any, field string) (string, error) {
	var out map[string]any
	if err := c.callJSON(ctx, "POST", path, in, http.StatusCreated, &out); err != nil {
		return "", err
	}
	key, _ := out[field].(string)
	return key, nil
}

// CreateImportKey issues a data import key (a client secret) of workspace
// ws for partner.
func (c *Client) CreateImportKey(ctx context.Context, ws, partner string) (ImportKey, error) {
	var out ImportKey
	err := c.callJSON(ctx, "POST", "/v1/workspaces/"+url.PathEscape(ws)+"/partners/"+url.PathEscape(partner)+"/keys",
		struct{}{}, http.StatusCreated, &out)
	return out, err
}

// SnapshotInfo is the reply of POST /v1/admin/snapshot.
type SnapshotInfo struct {
	File  string `json:"file"`  // inside the data directory
	Bytes int64  `json:"bytes"` // its size
	LSN   uint64 `json:"lsn"`   // the WAL position it covers
}

// Snapshot writes a snapshot of the whole state now.
func (c *Client) Snapshot(ctx context.Context) (SnapshotInfo, error) {
	var out SnapshotInfo
	err := c.callJSON(ctx, "POST", "/v1/admin/snapshot", nil, http.StatusCreated, &out)
	return out, err
}

// ---- users (a workspace API key) ----

// UpsertUsers creates and updates users.
func (c *Client) UpsertUsers(ctx context.Context, users []User) (UpsertResult, error) {
	b, err := c.bulkJSON(map[string][]User{"users": users})
	if err != nil {
		return UpsertResult{}, err
	}
	return c.UpsertUsersBody(ctx, b)
}

// UpsertUsersBody sends a POST /v1/users body built by the caller, such as
// a large NDJSON file compressed once.
func (c *Client) UpsertUsersBody(ctx context.Context, b Body) (UpsertResult, error) {
	var out UpsertResult
	err := c.callBody(ctx, "POST", "/v1/users", b, http.StatusOK, &out)
	return out, err
}

// DeleteUsers deletes users and every membership they had.
func (c *Client) DeleteUsers(ctx context.Context, ids Identifiers) (DeleteResult, error) {
	var out DeleteResult
	err := c.callJSON(ctx, "POST", "/v1/users/delete", ids, http.StatusOK, &out)
	return out, err
}

// LookupUser finds one user by the one identifier set in by (an external
// id, a device id or one alias) and lists its cohorts; no such user is an
// *Error with status 404.
func (c *Client) LookupUser(ctx context.Context, by User) (Lookup, error) {
	q := url.Values{}
	switch {
	case by.ExternalID != "":
		q.Set("external_id", by.ExternalID)
	case by.DeviceID != "":
		q.Set("device_id", by.DeviceID)
	case len(by.Aliases) > 0:
		q.Set("alias_name", by.Aliases[0].Name)
		q.Set("alias_label", by.Aliases[0].Label)
	}
	var out Lookup
	err := c.call(ctx, &Request{Method: "GET", Path: "/v1/users/lookup?" + q.Encode()}, http.StatusOK, &out)
	return out, err
}

// ---- cohorts (a workspace API key) ----

// cohortPath is /v1/cohorts/{partner}/{cohort_id} with both escaped (a
// cohort id may hold '/').
func cohortPath(partner, cohortID string) string {
	return "/v1/cohorts/" + url.PathEscape(partner) + "/" + url.PathEscape(cohortID)
}

// Changes applies membership changes to a cohort, creating it if unknown.
func (c *Client) Changes(ctx context.Context, partner, cohortID string, changes []Change) (ChangesResult, error) {
	b, err := c.bulkJSON(map[string][]Change{"cohort_changes": changes})
	if err != nil {
		return ChangesResult{}, err
	}
	return c.ChangesBody(ctx, partner, cohortID, b)
}

// ChangesBody sends a POST …/changes body built by the caller.
func (c *Client) ChangesBody(ctx context.Context, partner, cohortID string, b Body) (ChangesResult, error) {
	var out ChangesResult
	err := c.callBody(ctx, "POST", cohortPath(partner, cohortID)+"/changes", b, http.StatusOK, &out)
	return out, err
}

// ReplaceMembers makes the cohort exactly the users ids match (a snapshot
// sync), creating it if unknown.
func (c *Client) ReplaceMembers(ctx context.Context, partner, cohortID string, ids Identifiers) (ReplaceResult, error) {
	b, err := c.bulkJSON(ids)
	if err != nil {
		return ReplaceResult{}, err
	}
	return c.ReplaceMembersBody(ctx, partner, cohortID, b)
}

// ReplaceMembersBody sends a PUT …/members body built by the caller.
func (c *Client) ReplaceMembersBody(ctx context.Context, partner, cohortID string, b Body) (ReplaceResult, error) {
	var out ReplaceResult
	err := c.callBody(ctx, "PUT", cohortPath(partner, cohortID)+"/members", b, http.StatusOK, &out)
	return out, err
}

// Members streams a cohort's members to f, in bounded memory; an error
// from f stops the stream and is returned.
func (c *Client) Members(ctx context.Context, partner, cohortID string, f func(Member) error) error {
	return c.stream(ctx, &Request{Method: "GET", Path: cohortPath(partner, cohortID) + "/members"}, f)
}

// DeleteCohort deletes a cohort.
func (c *Client) DeleteCohort(ctx context.Context, partner, cohortID string) error {
	return c.call(ctx, &Request{Method: "DELETE", Path: cohortPath(partner, cohortID)}, http.StatusNoContent, nil)
}

// Usage returns the workspace's data points.
func (c *Client) Usage(ctx context.Context) (Usage, error) {
	var out Usage
	err := c.call(ctx, &Request{Method: "GET", Path: "/v1/usage"}, http.StatusOK, &out)
	return out, err
}

// ---- partner endpoints (credentials in the body, docs/API.md §3) ----

// UpsertPartnerCohort creates or renames cohort cohortID of partner in the
// workspace of the credentials' import key.
func (c *Client) UpsertPartnerCohort(ctx context.Context, partner string, cred PartnerCredentials, cohortID, name string, createdAt time.Time) error {
	return c.callJSON(ctx, "POST", "/partners/"+url.PathEscape(partner)+"/cohorts", struct {
		PartnerCredentials
		CohortID  string `json:"cohort_id"`
		Name      string `json:"name"`
		CreatedAt string `json:"created_at"`
	}{cred, cohortID, name, createdAt.UTC().Format(time.RFC3339)}, http.StatusCreated, nil)
}

// PartnerChanges applies membership changes through the partner endpoint
// (at most -partner-max-ids identifiers, 1,000 by default).
func (c *Client) PartnerChanges(ctx context.Context, partner string, cred PartnerCredentials, cohortID string, changes []Change) (ChangesResult, error) {
	b, err := c.bulkJSON(struct {
		PartnerCredentials
		CohortID      string   `json:"cohort_id"`
		CohortChanges []Change `json:"cohort_changes"`
	}{cred, cohortID, changes})
	if err != nil {
		return ChangesResult{}, err
	}
	var out ChangesResult
	err = c.callBody(ctx, "POST", "/partners/"+url.PathEscape(partner)+"/cohorts/users", b, http.StatusCreated, &out)
	return out, err
}
