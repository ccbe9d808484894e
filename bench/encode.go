package bench

import (
	"bytes"
	"strconv"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/cohortd/cohortd/loadgen"
	"github.com/cohortd/cohortd/server/jsonstr"
)

// Body encoders for the request shapes. They build bodies once, before a
// benchmark's timer starts, so encoding and compression are not measured.

// appendChange appends one change object with all three arrays present, as
// real partner senders do.
func appendChange(dst []byte, c Change) []byte {
	var ext, dev, ali []Ident
	for _, id := range c.IDs {
		switch id.Kind {
		case loadgen.KindDevice:
			dev = append(dev, id)
		case loadgen.KindAlias:
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
		dst = jsonstr.Append(dst, id.Value)
	}
	dst = append(dst, `],"device_ids":[`...)
	for i, id := range dev {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsonstr.Append(dst, id.Value)
	}
	dst = append(dst, `],"aliases":[`...)
	for i, id := range ali {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"alias_name":"`+AliasName+`","alias_label":`...)
		dst = jsonstr.Append(dst, id.Value)
		dst = append(dst, '}')
	}
	dst = append(dst, `],"should_remove":`...)
	dst = strconv.AppendBool(dst, c.Remove)
	return append(dst, '}')
}

// PartnerBody is the JSON of POST /partners/{p}/cohorts/users.
func PartnerBody(partnerKey, secret, cohort string, r Request) []byte {
	b := []byte(`{"partner_api_key":`)
	b = jsonstr.Append(b, partnerKey)
	b = append(b, `,"client_secret":`...)
	b = jsonstr.Append(b, secret)
	b = append(b, `,"cohort_id":`...)
	b = jsonstr.Append(b, cohort)
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
	b = jsonstr.Append(b, partnerKey)
	b = append(b, `,"client_secret":`...)
	b = jsonstr.Append(b, secret)
	b = append(b, `,"cohort_id":`...)
	b = jsonstr.Append(b, cohort)
	b = append(b, `,"name":`...)
	b = jsonstr.Append(b, cohort)
	return append(b, `,"created_at":"2026-11-01T00:00:00Z"}`...)
}

// BulkNDJSON is the NDJSON of POST /v1/cohorts/{p}/{id}/changes: one change
// object of at most perLine identifiers a line, adds before removes, each
// line with only the arrays it needs and should_remove only when true, as
// exporters write them (perLine 1 gives docs/WORKLOADS.md's headline lines
// {"user_ids":["…"]}).
func BulkNDJSON(r Request, perLine int) []byte {
	var b []byte
	for _, c := range r {
		for start := 0; start < len(c.IDs); start += perLine {
			b = appendLine(b, c.IDs[start:min(start+perLine, len(c.IDs))], c.Remove)
			b = append(b, '\n')
		}
	}
	return b
}

// appendLine appends one bulk change object with only the arrays its
// identifiers need.
func appendLine(dst []byte, ids []Ident, remove bool) []byte {
	keys := [...]string{`"user_ids":[`, `"device_ids":[`, `"aliases":[`}
	dst = append(dst, '{')
	sep := false
	for ki, kind := range []loadgen.Kind{loadgen.KindExternal, loadgen.KindDevice, loadgen.KindAlias} {
		open := false
		for _, id := range ids {
			k := id.Kind
			if k == loadgen.KindUnknown {
				k = loadgen.KindExternal
			}
			if k != kind {
				continue
			}
			switch {
			case open:
				dst = append(dst, ',')
			case sep:
				dst = append(dst, ',')
				fallthrough
			default:
				dst = append(dst, keys[ki]...)
				open, sep = true, true
			}
			if kind == loadgen.KindAlias {
				dst = append(dst, `{"alias_name":"`+AliasName+`","alias_label":`...)
				dst = jsonstr.Append(dst, id.Value)
				dst = append(dst, '}')
			} else {
				dst = jsonstr.Append(dst, id.Value)
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

// appendUser appends a contains user object.
func appendUser(dst []byte, id Ident) []byte {
	switch id.Kind {
	case loadgen.KindDevice:
		dst = append(dst, `{"device_id":`...)
	case loadgen.KindAlias:
		dst = append(dst, `{"alias_name":"`+AliasName+`","alias_label":`...)
	default:
		dst = append(dst, `{"external_id":`...)
	}
	dst = jsonstr.Append(dst, id.Value)
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

// CompactContainsBody is the compact form of POST /v1/segments/contains:
// {"segment":E,"external_ids":[…]} (the users must have external ids).
func CompactContainsBody(expr string, users []Ident) []byte {
	b := append([]byte(`{"segment":`), expr...)
	b = append(b, `,"external_ids":[`...)
	for i, u := range users {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonstr.Append(b, u.Value)
	}
	return append(b, "]}"...)
}

// MembersBody is the JSON of PUT /v1/cohorts/{p}/{id}/members.
func MembersBody(ids []Ident) []byte {
	var ext, dev, ali []Ident
	for _, id := range ids {
		switch id.Kind {
		case loadgen.KindDevice:
			dev = append(dev, id)
		case loadgen.KindAlias:
			ali = append(ali, id)
		default:
			ext = append(ext, id)
		}
	}
	b := []byte(`{"user_ids":[`)
	for i, id := range ext {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonstr.Append(b, id.Value)
	}
	b = append(b, `],"device_ids":[`...)
	for i, id := range dev {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonstr.Append(b, id.Value)
	}
	b = append(b, `],"aliases":[`...)
	for i, id := range ali {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"alias_name":"`+AliasName+`","alias_label":`...)
		b = jsonstr.Append(b, id.Value)
		b = append(b, '}')
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
