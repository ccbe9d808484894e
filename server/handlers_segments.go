package server

import (
	"strconv"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/jsonstr"
	"github.com/cohortd/cohortd/server/segment"
)

// maxPageLimit bounds the limit of a segment members page.
const maxPageLimit = 10000

// segmentRequest decodes a segment query body (decode_query.go) into q,
// handing its identifiers to lk (nil: a query without users), and binds
// its expression. The caller releases the binding.
func (s *Server) segmentRequest(r *request, q *segmentQuery, lk *engine.Lookup) (*engine.BoundSegment, error) {
	rd, release, err := r.decodedBody(s.opts.QueryMaxBody)
	if err != nil {
		return nil, err
	}
	if lk != nil {
		q.ws = r.ws
	}
	err = decodeSegmentQuery(rd, q, lk)
	release()
	b := q.bound
	q.ws, q.bound = nil, nil
	if err != nil {
		if b != nil {
			b.Release()
		}
		return nil, err
	}
	if b != nil {
		return b, nil // the body's last segment (decodeSegmentQuery)
	}
	if q.segment == nil {
		return nil, errorf(fasthttp.StatusBadRequest, "segment is required")
	}
	seg, err := r.ws.Segment(q.segment, segment.Parse)
	if err != nil {
		return nil, err
	}
	return r.ws.Bind(seg), nil
}

// appendWarnings appends `,"warnings":[…]` when there are any.
func appendWarnings(dst []byte, ws []string) []byte {
	if len(ws) == 0 {
		return dst
	}
	dst = append(dst, `,"warnings":[`...)
	for i, w := range ws {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsonstr.Append(dst, w)
	}
	return append(dst, ']')
}

// handleSegmentCount serves POST /v1/segments/count.
func (s *Server) handleSegmentCount(r *request) error {
	q := getQuery()
	defer putQuery(q)
	b, err := s.segmentRequest(r, q, nil)
	if err != nil {
		return err
	}
	defer b.Release()
	out := r.getBuf()
	*out = append((*out)[:0], `{"count":`...)
	*out = strconv.AppendUint(*out, b.Count(), 10)
	*out = appendWarnings(*out, b.Warnings)
	*out = append(*out, '}')
	writeRawJSON(r.ctx, fasthttp.StatusOK, *out)
	return nil
}

// lookups pools the resolvers of batch contains.
var lookups sync.Pool // *engine.Lookup

// handleSegmentContains serves POST /v1/segments/contains. The users (or
// the compact external_ids / device_ids) are resolved as the body streams
// in, in chunks (engine.Lookup); a device id resolves to whoever
// holds it, identified or not. Answers come in the order sent.
func (s *Server) handleSegmentContains(r *request) error {
	q := getQuery()
	defer putQuery(q)
	lk, _ := lookups.Get().(*engine.Lookup)
	if lk == nil {
		lk = r.ws.NewLookup()
	}
	lk.Reset(r.ws)
	defer lookups.Put(lk)
	b, err := s.segmentRequest(r, q, lk)
	if err != nil {
		return err
	}
	defer b.Release()
	if q.form == formNone {
		return badRequest(msgContainsForm, "users: expected an array of user references, or external_ids / device_ids: an array of strings")
	}
	ids := lk.IDs()
	b.Expect(len(ids))
	out := r.getBuf()
	*out = append((*out)[:0], `{"results":[`...)
	for i, id := range ids {
		if i > 0 {
			*out = append(*out, ',')
		}
		if b.Contains(id) {
			*out = append(*out, "true"...)
		} else {
			*out = append(*out, "false"...)
		}
	}
	*out = append(*out, ']')
	*out = appendWarnings(*out, b.Warnings)
	*out = append(*out, '}')
	writeRawJSON(r.ctx, fasthttp.StatusOK, *out)
	return nil
}

// handleSegmentMembers serves POST /v1/segments/members: a page with
// limit, else an NDJSON stream of every member.
func (s *Server) handleSegmentMembers(r *request) error {
	q := getQuery()
	defer putQuery(q)
	b, err := s.segmentRequest(r, q, nil)
	if err != nil {
		return err
	}
	defer b.Release()
	cursor := string(q.cursor)
	if q.limit == nil {
		if cursor != "" {
			return errorf(fasthttp.StatusBadRequest, "cursor needs limit")
		}
		s.streamMembers(r, b.Set(), nil)
		return nil
	}
	limit, err := parseLimit(q.limit)
	if err != nil {
		return err
	}
	ids, next, err := b.Page(cursor, limit)
	if err != nil {
		return err
	}
	out := make([]byte, 0, 64+64*len(ids))
	out = append(out, `{"members":[`...)
	for i, id := range ids {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendMember(out, r.ws, id)
	}
	out = append(out, `],"next_cursor":`...)
	if next == "" {
		out = append(out, "null"...)
	} else {
		out = jsonstr.Append(out, next)
	}
	out = appendWarnings(out, b.Warnings)
	writeRawJSON(r.ctx, fasthttp.StatusOK, append(out, '}'))
	return nil
}
