package loadgen

import (
	"time"

	apiclient "github.com/cohortd/cohortd/server/client"
	"github.com/cohortd/cohortd/server/jsonstr"
)

// Request body encoders. They append to dst and return it, so a worker can
// reuse one buffer for every request it builds.

// appendChange appends one cohort change object. All three arrays are
// present even when empty, as real senders do.
func (u Universe) appendChange(dst []byte, refs []Ref, remove bool) []byte {
	var tmp [64]byte
	dst = append(dst, `{"user_ids":[`...)
	first := true
	for _, r := range refs {
		if r.Kind == KindExternal || r.Kind == KindUnknown {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = jsonstr.Append(dst, u.appendValue(tmp[:0], r))
		}
	}
	dst = append(dst, `],"device_ids":[`...)
	first = true
	for _, r := range refs {
		if r.Kind == KindDevice {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = jsonstr.Append(dst, u.appendValue(tmp[:0], r))
		}
	}
	dst = append(dst, `],"aliases":[`...)
	first = true
	for _, r := range refs {
		if r.Kind == KindAlias {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, `{"alias_name":"`+aliasName+`","alias_label":`...)
			dst = jsonstr.Append(dst, u.appendValue(tmp[:0], r))
			dst = append(dst, '}')
		}
	}
	if remove {
		return append(dst, `],"should_remove":true}`...)
	}
	return append(dst, `],"should_remove":false}`...)
}

// Credentials are what the partner endpoints take in their bodies and the
// /v1 endpoints in the Authorization header.
type Credentials struct {
	// Workspace is the workspace id (informational once APIKey is known).
	Workspace string `json:"workspace"`
	// APIKey is the workspace API key for /v1.
	APIKey string `json:"api_key"`
	// Partner is the partner slug.
	Partner string `json:"partner"`
	// PartnerAPIKey is the partner's key, sent in partner bodies.
	PartnerAPIKey string `json:"partner_api_key"`
	// ClientSecret is the data import key of (workspace, partner).
	ClientSecret string `json:"client_secret"`
}

func appendPartnerAuth(dst []byte, c *Credentials) []byte {
	dst = append(dst, `{"partner_api_key":`...)
	dst = jsonstr.Append(dst, c.PartnerAPIKey)
	dst = append(dst, `,"client_secret":`...)
	return jsonstr.Append(dst, c.ClientSecret)
}

// appendCohortUpsert appends the body of POST /partners/{p}/cohorts.
func appendCohortUpsert(dst []byte, c *Credentials, cohortID string, created time.Time) []byte {
	dst = appendPartnerAuth(dst, c)
	dst = append(dst, `,"cohort_id":`...)
	dst = jsonstr.Append(dst, cohortID)
	dst = append(dst, `,"name":`...)
	dst = jsonstr.Append(dst, "loadgen "+cohortID)
	dst = append(dst, `,"created_at":`...)
	dst = jsonstr.Append(dst, created.UTC().Format(time.RFC3339))
	return append(dst, '}')
}

// appendPartnerChanges appends the body of POST /partners/{p}/cohorts/users:
// one change object for the adds, then one for the removes.
func (u Universe) appendPartnerChanges(dst []byte, c *Credentials, cohortID string, adds, removes []Ref) []byte {
	dst = appendPartnerAuth(dst, c)
	dst = append(dst, `,"cohort_id":`...)
	dst = jsonstr.Append(dst, cohortID)
	dst = append(dst, `,"cohort_changes":[`...)
	if len(adds) > 0 {
		dst = u.appendChange(dst, adds, false)
	}
	if len(removes) > 0 {
		if len(adds) > 0 {
			dst = append(dst, ',')
		}
		dst = u.appendChange(dst, removes, true)
	}
	return append(dst, "]}"...)
}

// appendBulkChanges appends an NDJSON body for POST /v1/cohorts/{p}/{id}/changes:
// one change object of at most perLine identifiers a line, adds first.
// Lines hold only the arrays they need and should_remove only when true,
// as exporters write them: with perLine 1 an external id is the headline
// line {"user_ids":["…"]} of docs/WORKLOADS.md.
func (u Universe) appendBulkChanges(dst []byte, adds, removes []Ref, perLine int) []byte {
	for _, part := range []struct {
		refs   []Ref
		remove bool
	}{{adds, false}, {removes, true}} {
		for refs := part.refs; len(refs) > 0; {
			n := min(perLine, len(refs))
			dst = u.appendLine(dst, refs[:n], part.remove)
			dst = append(dst, '\n')
			refs = refs[n:]
		}
	}
	return dst
}

// appendLine appends one bulk change object with only the arrays its
// identifiers need.
func (u Universe) appendLine(dst []byte, refs []Ref, remove bool) []byte {
	var tmp [64]byte
	dst = append(dst, '{')
	sep := false
	for _, kind := range []Kind{KindExternal, KindDevice, KindAlias} {
		open := false
		for _, r := range refs {
			k := r.Kind
			if k == KindUnknown {
				k = KindExternal
			}
			if k != kind {
				continue
			}
			if !open {
				if sep {
					dst = append(dst, ',')
				}
				switch kind {
				case KindExternal:
					dst = append(dst, `"user_ids":[`...)
				case KindDevice:
					dst = append(dst, `"device_ids":[`...)
				default:
					dst = append(dst, `"aliases":[`...)
				}
				open, sep = true, true
			} else {
				dst = append(dst, ',')
			}
			if kind == KindAlias {
				dst = append(dst, `{"alias_name":"`+aliasName+`","alias_label":`...)
				dst = jsonstr.Append(dst, u.appendValue(tmp[:0], r))
				dst = append(dst, '}')
			} else {
				dst = jsonstr.Append(dst, u.appendValue(tmp[:0], r))
			}
		}
		if open {
			dst = append(dst, ']')
		}
	}
	if remove {
		if sep {
			dst = append(dst, ',')
		}
		dst = append(dst, `"should_remove":true`...)
	}
	return append(dst, '}')
}

// appendUserRecords appends the first seeding pass for users from…to-1 as
// NDJSON: each user with the identifiers of its kind.
func (u Universe) appendUserRecords(dst []byte, from, to int) []byte {
	var tmp [64]byte
	for n := from; n < to; n++ {
		switch u.Kind(n) {
		case KindExternal:
			dst = append(dst, `{"external_id":"`...)
			dst = appendExternalID(dst, n)
			dst = append(dst, "\"}\n"...)
		case KindAlias:
			dst = append(dst, `{"aliases":[{"alias_name":"`+aliasName+`","alias_label":`...)
			dst = jsonstr.Append(dst, appendAliasLabel(tmp[:0], n))
			dst = append(dst, "}]}\n"...)
		default:
			dst = append(dst, `{"device_id":"`...)
			dst = u.appendDeviceID(dst, n)
			dst = append(dst, "\"}\n"...)
		}
	}
	return dst
}

// appendIdentifyRecords appends the second seeding pass for users
// from…to-1: identified-later users get their external id with their device
// id. It returns the body and the number of records.
func (u Universe) appendIdentifyRecords(dst []byte, from, to int) ([]byte, int) {
	records := 0
	for n := from; n < to; n++ {
		if u.Kind(n) != KindIdentifiedLater {
			continue
		}
		dst = append(dst, `{"external_id":"`...)
		dst = appendExternalID(dst, n)
		dst = append(dst, `","device_id":"`...)
		dst = u.appendDeviceID(dst, n)
		dst = append(dst, "\"}\n"...)
		records++
	}
	return dst, records
}

// Encoding is a Content-Encoding for request bodies.
type Encoding = apiclient.Encoding

// The encodings loadgen sends.
const (
	EncodingNone = apiclient.EncodingNone
	EncodingGzip = apiclient.EncodingGzip
	EncodingZstd = apiclient.EncodingZstd
)
