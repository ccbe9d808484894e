package client

import "encoding/json"

// Identifier and record shapes of docs/API.md.

// Alias is an (alias_name, alias_label) pair.
type Alias struct {
	Name  string `json:"alias_name"`
	Label string `json:"alias_label"`
}

// User is one record of POST /v1/users: the identifiers to create or
// attach (docs/API.md, "POST /v1/users", for what each combination does).
type User struct {
	ExternalID string  `json:"external_id,omitempty"`
	DeviceID   string  `json:"device_id,omitempty"`
	Aliases    []Alias `json:"aliases,omitempty"`
}

// Identifiers names users by any of their identifiers: the body of
// POST /v1/users/delete and of PUT …/members.
type Identifiers struct {
	UserIDs   []string `json:"user_ids"`
	DeviceIDs []string `json:"device_ids"`
	Aliases   []Alias  `json:"aliases"`
}

// Change is one change object: the users to add, or to remove when
// ShouldRemove. All three arrays are sent, empty ones as [], as real
// partner senders do.
type Change struct {
	Identifiers
	ShouldRemove bool `json:"should_remove,omitempty"`
}

// MarshalJSON writes nil arrays as [].
func (i Identifiers) MarshalJSON() ([]byte, error) {
	type plain Identifiers
	p := plain(i)
	if p.UserIDs == nil {
		p.UserIDs = []string{}
	}
	if p.DeviceIDs == nil {
		p.DeviceIDs = []string{}
	}
	if p.Aliases == nil {
		p.Aliases = []Alias{}
	}
	return json.Marshal(p)
}

// MarshalJSON writes the identifiers and should_remove in one object
// (Identifiers' own MarshalJSON would otherwise hide ShouldRemove).
func (c Change) MarshalJSON() ([]byte, error) {
	b, err := c.Identifiers.MarshalJSON()
	if err != nil || !c.ShouldRemove {
		return b, err
	}
	return append(b[:len(b)-1], `,"should_remove":true}`...), nil
}

// Member is M of docs/API.md: a user's identifiers, absent ones empty.
type Member struct {
	ExternalID string   `json:"external_id,omitempty"`
	Aliases    []Alias  `json:"aliases,omitempty"`
	DeviceIDs  []string `json:"device_ids,omitempty"`
}

// UpsertResult is the reply of POST /v1/users: records by outcome.
type UpsertResult struct {
	Created    int64 `json:"created"`
	Identified int64 `json:"identified"`
	Merged     int64 `json:"merged"`
	Updated    int64 `json:"updated"`
	Unchanged  int64 `json:"unchanged"`
}

// DeleteResult is the reply of POST /v1/users/delete.
type DeleteResult struct {
	Deleted   int64 `json:"deleted"`
	Unmatched int64 `json:"unmatched"`
}

// ChangesResult is the reply of POST …/changes and of the partner
// endpoint POST /partners/{partner}/cohorts/users.
type ChangesResult struct {
	Message           string `json:"message"`
	Matched           int64  `json:"matched"`
	Unmatched         int64  `json:"unmatched"`
	UnmatchedByReason struct {
		// Unknown counts identifiers that match no user.
		Unknown int64 `json:"unknown"`
		// DeviceIDIdentified counts device ids of identified users (rule 3).
		DeviceIDIdentified int64 `json:"device_id_identified"`
	} `json:"unmatched_by_reason"`
	Added              int64 `json:"added"`
	Removed            int64 `json:"removed"`
	DroppedBeforeFloor int64 `json:"dropped_before_floor"`
	DataPoints         int64 `json:"data_points"`
}

// ReplaceResult is the reply of PUT …/members.
type ReplaceResult struct {
	Added      int64 `json:"added"`
	Removed    int64 `json:"removed"`
	Unchanged  int64 `json:"unchanged"`
	Unmatched  int64 `json:"unmatched"`
	DataPoints int64 `json:"data_points"`
}

// Lookup is the reply of GET /v1/users/lookup.
type Lookup struct {
	User struct {
		// ExternalID is "" for an anonymous user.
		ExternalID string   `json:"external_id"`
		Aliases    []Alias  `json:"aliases"`
		DeviceIDs  []string `json:"device_ids"`
		Anonymous  bool     `json:"anonymous"`
	} `json:"user"`
	Cohorts []CohortRef `json:"cohorts"`
}

// CohortRef names a cohort.
type CohortRef struct {
	Partner  string `json:"partner"`
	CohortID string `json:"cohort_id"`
	Name     string `json:"name"`
}

// Usage is the reply of GET /v1/usage: data points in total and per
// partner and UTC day ("2006-01-02").
type Usage struct {
	Total    int64 `json:"total"`
	Partners map[string]struct {
		Total int64            `json:"total"`
		Days  map[string]int64 `json:"days"`
	} `json:"partners"`
}

// ImportKey is a data import key as issued: ClientSecret is shown once.
type ImportKey struct {
	KeyID        string `json:"key_id"`
	ClientSecret string `json:"client_secret"`
}

// PartnerCredentials authenticate the partner endpoints (docs/API.md §3),
// which carry them in their bodies.
type PartnerCredentials struct {
	PartnerAPIKey string `json:"partner_api_key"`
	ClientSecret  string `json:"client_secret"`
}
