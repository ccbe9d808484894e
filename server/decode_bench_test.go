package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/valyala/fastjson"
)

// The bulk-parser choice, measured (see decode.go, "Why two parsers"):
// the streaming scanner against a warm pooled fastjson parser (whole body
// for JSON, per line for NDJSON) and encoding/json's streaming Decoder, on a
// 500k-id changes body. Every candidate checks the identifier rule on every
// id, as the product must.
//
//	go test -run '^$' -bench DecodeChanges -count 6 ./server/ > /tmp/dec.txt
//	go tool benchstat /tmp/dec.txt

const benchIDs = 500_000

// benchChangesBody returns a changes body of n user ids ("user-" + %014d),
// in change objects of 1,000 user_ids each: NDJSON one object per line, or
// JSON {"cohort_changes":[…]}.
func benchChangesBody(n int, ndjson bool) []byte {
	var b bytes.Buffer
	if !ndjson {
		b.WriteString(`{"cohort_changes":[`)
	}
	for i := 0; i < n; i += 1000 {
		if !ndjson && i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"user_ids":[`)
		for j := i; j < min(i+1000, n); j++ {
			if j > i {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"user-%014d"`, j)
		}
		b.WriteString(`],"should_remove":false}`)
		if ndjson {
			b.WriteByte('\n')
		}
	}
	if !ndjson {
		b.WriteString("]}")
	}
	return b.Bytes()
}

// decodeChangesFunc is a bulk changes decoder under test.
type decodeChangesFunc func(r io.Reader, ndjson bool, fn func(c *changeObject) error) error

func scannerChanges(r io.Reader, ndjson bool, fn func(c *changeObject) error) error {
	if ndjson {
		return decodeChangesNDJSON(r, fn)
	}
	return decodeChangesJSON(r, fn)
}

var (
	benchParsers fastjson.ParserPool
	benchBufs    = sync.Pool{New: func() any { return new(bytes.Buffer) }}
)

// fastjsonChanges decodes with a pooled fastjson parser: NDJSON line by
// line, JSON as one whole body (which needs a second, full copy of it).
func fastjsonChanges(r io.Reader, ndjson bool, fn func(c *changeObject) error) error {
	p := benchParsers.Get()
	defer benchParsers.Put(p)
	var c changeObject
	walk := func(v *fastjson.Value) error {
		c = changeObject{UserIDs: c.UserIDs[:0], DeviceIDs: c.DeviceIDs[:0]}
		o, err := v.Object()
		if err != nil {
			return err
		}
		o.Visit(func(key []byte, v *fastjson.Value) {
			if err != nil {
				return
			}
			switch string(key) {
			case "user_ids", "device_ids":
				a, aerr := v.Array()
				if aerr != nil {
					err = aerr
					return
				}
				ids := c.UserIDs[:0]
				for _, e := range a {
					b, ok := idOf(e)
					if !ok {
						err = fmt.Errorf("bad id")
						return
					}
					ids = append(ids, b)
				}
				if key[0] == 'u' {
					c.UserIDs = ids
				} else {
					c.DeviceIDs = ids
				}
			case "should_remove":
				c.Remove = v.GetBool()
			}
		})
		if err != nil {
			return err
		}
		return fn(&c)
	}
	if ndjson {
		br := bufio.NewReaderSize(r, 64<<10)
		var line []byte
		for {
			chunk, err := br.ReadSlice('\n')
			if err == bufio.ErrBufferFull {
				line = append(line, chunk...)
				continue
			}
			if len(line) > 0 {
				chunk = append(line, chunk...)
				line = line[:0]
			}
			if len(bytes.TrimSpace(chunk)) > 0 {
				v, perr := p.ParseBytes(chunk)
				if perr != nil {
					return perr
				}
				if werr := walk(v); werr != nil {
					return werr
				}
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	buf := benchBufs.Get().(*bytes.Buffer)
	defer benchBufs.Put(buf)
	buf.Reset()
	if _, err := buf.ReadFrom(r); err != nil {
		return err
	}
	v, err := p.ParseBytes(buf.Bytes())
	if err != nil {
		return err
	}
	for _, cv := range v.GetArray("cohort_changes") {
		if err := walk(cv); err != nil {
			return err
		}
	}
	return nil
}

// encjsonChange is a change object for encoding/json.
type encjsonChange struct {
	UserIDs      []string `json:"user_ids"`
	DeviceIDs    []string `json:"device_ids"`
	ShouldRemove bool     `json:"should_remove"`
}

// encjsonChanges decodes with encoding/json's Decoder, streaming the
// cohort_changes array element by element.
func encjsonChanges(r io.Reader, ndjson bool, fn func(c *changeObject) error) error {
	dec := json.NewDecoder(r)
	var c changeObject
	emit := func(ec *encjsonChange) error {
		c = changeObject{UserIDs: c.UserIDs[:0], DeviceIDs: c.DeviceIDs[:0], Remove: ec.ShouldRemove}
		for _, s := range ec.UserIDs {
			if !validID([]byte(s)) {
				return fmt.Errorf("bad id")
			}
			c.UserIDs = append(c.UserIDs, []byte(s))
		}
		for _, s := range ec.DeviceIDs {
			if !validID([]byte(s)) {
				return fmt.Errorf("bad id")
			}
			c.DeviceIDs = append(c.DeviceIDs, []byte(s))
		}
		return fn(&c)
	}
	var ec encjsonChange
	if ndjson {
		for {
			ec = encjsonChange{}
			if err := dec.Decode(&ec); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if err := emit(&ec); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil { // {
		return err
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		if t != "cohort_changes" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return err
			}
			continue
		}
		if _, err := dec.Token(); err != nil { // [
			return err
		}
		for dec.More() {
			ec = encjsonChange{}
			if err := dec.Decode(&ec); err != nil {
				return err
			}
			if err := emit(&ec); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil { // ]
			return err
		}
	}
	_, err := dec.Token() // }
	return err
}

func BenchmarkDecodeChanges(b *testing.B) {
	candidates := []struct {
		name string
		fn   decodeChangesFunc
	}{
		{"scanner", scannerChanges},
		{"fastjson", fastjsonChanges},
		{"encjson", encjsonChanges},
	}
	bodies := map[bool][]byte{
		false: benchChangesBody(benchIDs, false),
		true:  benchChangesBody(benchIDs, true),
	}
	for _, c := range candidates {
		b.Run(c.name, func(b *testing.B) {
			for _, ndjson := range []bool{false, true} {
				name := "json"
				if ndjson {
					name = "ndjson"
				}
				body := bodies[ndjson]
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					b.SetBytes(int64(len(body)))
					var br bytes.Reader
					ids := 0
					// Steady state: warm the pools (parsers, buffers) first.
					br.Reset(body)
					if err := c.fn(&br, ndjson, func(*changeObject) error { return nil }); err != nil {
						b.Fatal(err)
					}
					for b.Loop() {
						br.Reset(body)
						ids = 0
						err := c.fn(&br, ndjson, func(c *changeObject) error {
							ids += len(c.UserIDs) + len(c.DeviceIDs) + len(c.Aliases)
							return nil
						})
						if err != nil {
							b.Fatal(err)
						}
					}
					if ids != benchIDs {
						b.Fatalf("decoded %d ids, want %d", ids, benchIDs)
					}
					b.ReportMetric(float64(benchIDs)*float64(b.N)/b.Elapsed().Seconds(), "ids/s")
				})
			}
		})
	}
}

// BenchmarkDecodeOneALine decodes NDJSON bodies of one identifier a line,
// as exporters write them: every line an external id ("external"), or the
// standard user mix in shuffled blocks of 20 ("mix": 15 external ids, 3
// device ids, 2 aliases), adds then removes. It reports the change objects
// handed over per identifier beside the speed: each is one call into the
// stager, so the fewer the better.
func BenchmarkDecodeOneALine(b *testing.B) {
	const n = 100_000
	for _, flavour := range []string{"external", "mix"} {
		var body []byte
		r := rand.New(rand.NewPCG(5, 6))
		block := []byte("uuuuuuuuuuuuuuudddaa")
		for i := range n {
			if i%20 == 0 {
				r.Shuffle(len(block), func(x, y int) { block[x], block[y] = block[y], block[x] })
			}
			kind := byte('u')
			if flavour == "mix" {
				kind = block[i%20]
			}
			switch kind {
			case 'u':
				body = fmt.Appendf(body, `{"user_ids":["user-%014d"]`, r.IntN(10_000_000))
			case 'd':
				body = fmt.Appendf(body, `{"device_ids":["%08x-%04x-4%03x-a%03x-%012x"]`, r.Uint32(), r.IntN(1<<16), r.IntN(1<<12), r.IntN(1<<12), r.Int64N(1<<48))
			default:
				body = fmt.Appendf(body, `{"aliases":[{"alias_name":"email","alias_label":"%d@example.com"}]`, r.IntN(10_000_000))
			}
			if i >= n/2 {
				body = append(body, `,"should_remove":true`...)
			}
			body = append(body, "}\n"...)
		}
		b.Run(flavour, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			var br bytes.Reader
			objs := 0
			for b.Loop() {
				br.Reset(body)
				objs = 0
				ids := 0
				err := decodeChangesNDJSON(&br, func(c *changeObject) error {
					objs++
					ids += len(c.UserIDs) + len(c.DeviceIDs) + len(c.Aliases)
					return nil
				})
				if err != nil || ids != n {
					b.Fatalf("decoded %d ids (%v), want %d", ids, err, n)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "ids/s")
			b.ReportMetric(float64(objs)/n, "objects/id")
		})
	}
}
