package resp

import (
	"strconv"

	"github.com/tidwall/redcon"
)

// Replies whose encoding differs between RESP2 and RESP3 (after HELLO 3).
// Everything else is written with redcon's Append functions, the same in
// both.

// mapHeader starts a map of n pairs: "%n" in RESP3, a flat array of 2n in
// RESP2.
func (c *conn) mapHeader(n int) {
	if c.proto == 3 {
		c.out = append(c.out, '%')
		c.out = strconv.AppendInt(c.out, int64(n), 10)
		c.out = append(c.out, '\r', '\n')
		return
	}
	c.out = redcon.AppendArray(c.out, 2*n)
}

// setHeader starts a set of n elements: "~n" in RESP3, an array in RESP2.
func (c *conn) setHeader(n int) {
	if c.proto == 3 {
		c.out = append(c.out, '~')
		c.out = strconv.AppendInt(c.out, int64(n), 10)
		c.out = append(c.out, '\r', '\n')
		return
	}
	c.out = redcon.AppendArray(c.out, n)
}

// null writes a null: "_" in RESP3, a null bulk string in RESP2.
func (c *conn) null() {
	if c.proto == 3 {
		c.out = append(c.out, '_', '\r', '\n')
		return
	}
	c.out = redcon.AppendNull(c.out)
}
