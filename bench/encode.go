package bench

import (
	"bytes"
	"strconv"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/cohortd/cohortd/loadgen"
)

// Body encoders for the request shapes. They build bodies once, before a
// benchmark's timer starts, so encoding and compression are not measured.

func appendString(dst []byte, s string) []byte {
	// Workload identifiers are ASCII without quotes or backslashes, so
	// strconv's quoting is plain JSON.
	return strconv.AppendQuote(dst, s)
}

// appendChange appends one change object with all three arrays present, as
// real partner senders do.
func appendChange(dst []byte, c Change) []byte {
	var ext, dev, ali []Ident
	for _, id := range c.IDs {
		switch id.Kind {
		case loadgen.IDDevice:
			dev = append(dev, id)
		case loadgen.IDAlias:
			ali = append(ali, id)
		default:
			ext = append(ext, id)
		}
	}
	dst = append(dst, `{"user_ids":[`...)
	for i, id := range ext {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, id.Value)
	}
	dst = append(dst, `],"device_ids":[`...)
	for i, id := range dev {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, id.Value)
	}
	dst = append(dst, `],"aliases":[`...)
	for i, id := range ali {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"alias_name":"`+AliasName+`","alias_label":`...)
		dst = appendString(dst, id.Value)
		dst = append(dst, '}')
	}
	dst = append(dst, `],"should_remove":`...)
	dst = strconv.AppendBool(dst, c.Remove)
	return append(dst, '}')
}

// PartnerBody is the JSON of POST /partners/{p}/cohorts/users.
func PartnerBody(partnerKey, secret, cohort string, r Request) []byte {
	b := []byte(`{"partner_api_key":`)
	b = appendString(b, partnerKey)
	b = append(b, `,"client_secret":`...)
	b = appendString(b, secret)
	b = append(b, `,"cohort_id":`...)
	b = appendString(b, cohort)
	b = append(b, `,"cohort_changes":[`...)
	for i, c := range r {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendChange(b, c)
	}
	return append(b, "]}"...)
}

// CohortUpsertBody is the JSON of POST /partners/{p}/cohorts.
func CohortUpsertBody(partnerKey, secret, cohort string) []byte {
	b := []byte(`{"partner_api_key":`)
	b = appendString(b, partnerKey)
	b = append(b, `,"client_secret":`...)
	b = appendString(b, secret)
	b = append(b, `,"cohort_id":`...)
	b = appendString(b, cohort)
	b = append(b, `,"name":`...)
	b = appendString(b, cohort)
	return append(b, `,"created_at":"2026-11-01T00:00:00Z"}`...)
}

// BulkNDJSON is the NDJSON of POST /v1/cohorts/{p}/{id}/changes: one change
// object of at most perLine identifiers a line, adds before removes.
func BulkNDJSON(r Request, perLine int) []byte {
	var b []byte
	for _, c := range r {
		for start := 0; start < len(c.IDs); start += perLine {
			part := Change{IDs: c.IDs[start:min(start+perLine, len(c.IDs))], Remove: c.Remove}
			b = appendChange(b, part)
			b = append(b, '\n')
		}
	}
	return b
}

// appendUser appends a contains user object.
func appendUser(dst []byte, id Ident) []byte {
	switch id.Kind {
	case loadgen.IDDevice:
		dst = append(dst, `{"device_id":`...)
	case loadgen.IDAlias:
		dst = append(dst, `{"alias_name":"`+AliasName+`","alias_label":`...)
	default:
		dst = append(dst, `{"external_id":`...)
	}
	dst = appendString(dst, id.Value)
	return append(dst, '}')
}

// ContainsBody is the JSON of POST /v1/segments/contains.
func ContainsBody(expr string, users []Ident) []byte {
	b := append([]byte(`{"segment":`), expr...)
	b = append(b, `,"users":[`...)
	for i, u := range users {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendUser(b, u)
	}
	return append(b, "]}"...)
}

// CountBody is the JSON of POST /v1/segments/count.
func CountBody(expr string) []byte {
	return append(append([]byte(`{"segment":`), expr...), '}')
}

// Gzip compresses b at the default level, as partner senders do.
func Gzip(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// Zstd compresses b at the default level.
func Zstd(b []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		panic("BUG: zstd writer: " + err.Error())
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}
