package server

import (
	"bytes"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// Request body decoders.
//
// # Files
//
//   - decode.go: shared types, the identifier rule (docs/API.md §2.6), messages.
//   - decode_scan.go: scanner, a streaming JSON tokenizer over an io.Reader.
//   - decode_stream.go: bulk /v1 bodies (changes, members, users), JSON and
//     NDJSON, decoded by the scanner as they stream in.
//   - decode_query.go: segment queries (count, contains, members) and user
//     deletes, decoded by the scanner as they stream in; the credentials of
//     partner bodies, scanned before anything is parsed.
//   - decode_partner.go: partner bodies (in memory, at most
//     -partner-max-body): cohorts/users decoded by the scanner in one pass
//     that builds no tree; the small /cohorts upsert parsed with a pooled
//     fastjson parser.
//
// # Why two parsers
//
// Bulk bodies are up to 256 MiB decoded and must not be held twice, so they
// are tokenized as they stream: only the identifiers of the current unit (a
// change object, a user record, a batch of members) are copied out. The
// scanner also measured fastest: BenchmarkDecodeChanges (500k ids, 2-vCPU
// VM shared with other jobs, -count 6, medians) gave scanner 573/685 MiB/s
// (JSON/NDJSON), warm pooled fastjson 197/345 MiB/s (and JSON needs the
// whole body in memory first), encoding/json 40/32 MiB/s; 16 B and one
// allocation per body for the scanner. Partner bodies are at most 8 MiB
// and already in memory; the credentials may come after the changes, so the
// scanner keeps the changes' identifiers (at most -partner-max-ids) while it
// looks for them, and nothing is built before they are checked.
//
// A lone surrogate (\ud800) is a 400: fastjson would keep it verbatim as six
// ASCII bytes, so fastjson callers go through parseJSON (checkEscapes).
//
// # Shared rules
//
//   - Every identifier and alias field is 1–512 bytes of valid UTF-8 without
//     NUL after unescaping (docs/API.md §2.6); a lone \u surrogate is invalid.
//   - Unknown fields are ignored (but must still be valid JSON).
//   - A key that appears twice in one object: the last one wins, as in
//     encoding/json, except for the top-level arrays (cohort_changes, users,
//     and user_ids/device_ids/aliases of members and delete bodies): a
//     streamed array is delivered as it comes, so a repeated one is
//     concatenated, and the fastjson decoders do the same to agree.
//   - null is not an empty array: a field that is present must have its
//     type. (Lenient senders that write null for an empty list get a 400
//     naming the field; changing that is one switch case per decoder.)

// maxIDLen is the longest identifier or alias field, in bytes (docs/API.md §2.6).
const maxIDLen = 512

// maxBatch is the most identifiers decodeMembers* hands over in one call.
const maxBatch = 4096

// validID reports whether b follows the identifier rule of docs/API.md §2.6:
// 1–512 bytes of valid UTF-8 without NUL.
func validID(b []byte) bool {
	if len(b) == 0 || len(b) > maxIDLen || bytes.IndexByte(b, 0) >= 0 {
		return false
	}
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return utf8.Valid(b)
		}
	}
	return true
}

// changeObject is one decoded change object (docs/API.md §3 cohort_changes).
// Slices and their bytes are owned by the decoder and valid only during the
// callback that receives it; copy what must outlive the call.
type changeObject struct {
	UserIDs   [][]byte
	DeviceIDs [][]byte
	Aliases   [][]byte // engine.AliasKey(alias_name, alias_label)
	Remove    bool
	HasTime   bool
	Time      time.Time
}

// userRecord is one decoded user record of POST /v1/users. Slices and their
// bytes are owned by the decoder and valid only during the callback.
type userRecord struct {
	ExternalID []byte   // nil if absent
	DeviceID   []byte   // nil if absent
	Aliases    [][]byte // engine.AliasKey(alias_name, alias_label)
}

// Fixed 400 messages. The cohort_changes one is wire-compatible (docs/API.md §3);
// the others are ours.
const (
	msgMalformedJSON   = "malformed JSON body"
	msgMalformedNDJSON = "malformed NDJSON body"
	msgChangesShape    = "cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object"
	msgIDsShape        = `body must be an object {"user_ids":[string…],"device_ids":[string…],"aliases":[{"alias_name":string,"alias_label":string}…]}`
	msgMemberLine      = "each NDJSON line must be an object with exactly one of external_id, device_id, or alias_name with alias_label"
	msgUserRef         = "each user must be an object with exactly one of external_id, device_id, or alias_name with alias_label"
	msgUsersShape      = `users must be an array of user records {"external_id":string,"device_id":string,"aliases":[{"alias_name":string,"alias_label":string}…]}`
	msgUserEmpty       = "user record must have external_id, device_id or aliases"
	msgCohortID        = "cohort_id must be a valid string"
	msgName            = "name must be a non-empty string"
	msgCreatedAt       = "created_at must be a valid time as an ISO-8601 string"
	ruleSuffix         = " must be 1-512 bytes of valid UTF-8 without NUL"
)

func badRequest(msg string, details ...string) *apiError {
	return &apiError{status: fasthttp.StatusBadRequest, message: msg, errors: details}
}

// ruleError is the 400 for an identifier at path that breaks the rule.
func ruleError(path string, details ...string) *apiError {
	return badRequest(path+ruleSuffix, details...)
}

// parseTime parses an RFC 3339 time: "Z" or a numeric offset, optional
// fraction.
func parseTime(b []byte) (time.Time, bool) {
	// time.Parse with RFC3339 accepts a fraction even though the layout has
	// none; RFC3339Nano would also accept it, so either works.
	t, err := time.Parse(time.RFC3339, string(b))
	return t, err == nil
}

// tooManyIDs is the partner endpoint's cap message (docs/API.md §3).
func tooManyIDs(maxIDs int) *apiError {
	return badRequest("Only " + formatThousands(maxIDs) + " user_ids, device_ids, and aliases are allowed per request")
}

// formatThousands formats n with commas between groups of three digits:
// 999 → "999", 1000 → "1,000", 25000 → "25,000".
func formatThousands(n int) string {
	s := strconv.Itoa(n)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	if len(s) <= 3 {
		if neg {
			return "-" + s
		}
		return s
	}
	b := make([]byte, 0, len(s)+len(s)/3+1)
	if neg {
		b = append(b, '-')
	}
	head := len(s) % 3
	if head == 0 {
		head = 3
	}
	b = append(b, s[:head]...)
	for i := head; i < len(s); i += 3 {
		b = append(b, ',')
		b = append(b, s[i:i+3]...)
	}
	return string(b)
}
