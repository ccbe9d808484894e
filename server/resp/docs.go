package resp

import (
	"bytes"
	"strings"

	"github.com/tidwall/redcon"
)

// argDoc describes one argument for COMMAND DOCS, which redis-cli reads to
// show hints in its interactive mode.
type argDoc struct {
	name     string
	typ      string // key, string, integer, oneof, block
	token    string // a keyword before the value (LIMIT, COUNT, AUTH)
	optional bool
	multiple bool
	subs     []string // the tokens of a oneof
}

// visible are the commands COMMAND lists: every one of the table but the
// stand-ins for names outside it.
func visible() []cmdID {
	out := make([]cmdID, 0, numCmds)
	for id := cmdAUTH; id < numCmds; id++ {
		out = append(out, id)
	}
	return out
}

// commandCmd serves COMMAND, COMMAND COUNT, COMMAND INFO [name…], COMMAND
// DOCS [name…] and COMMAND LIST.
func (c *conn) commandCmd(args [][]byte) {
	if len(args) == 1 {
		all := visible()
		c.out = redcon.AppendArray(c.out, len(all))
		for _, id := range all {
			c.commandInfo(id)
		}
		return
	}
	switch sub := strings.ToLower(string(args[1])); {
	case sub == "count" && len(args) == 2:
		c.out = redcon.AppendInt(c.out, int64(len(visible())))
	case sub == "list" && len(args) == 2:
		all := visible()
		c.out = redcon.AppendArray(c.out, len(all))
		for _, id := range all {
			c.out = redcon.AppendBulkString(c.out, cmdTable[id].name)
		}
	case sub == "info":
		ids := c.named(args[2:])
		c.out = redcon.AppendArray(c.out, len(ids))
		for _, id := range ids {
			if id < cmdAUTH {
				c.null()
				continue
			}
			c.commandInfo(id)
		}
	case sub == "docs":
		ids := c.named(args[2:])
		n := 0
		for _, id := range ids {
			if id >= cmdAUTH {
				n++
			}
		}
		c.mapHeader(n)
		for _, id := range ids {
			if id >= cmdAUTH {
				c.out = redcon.AppendBulkString(c.out, cmdTable[id].name)
				c.commandDocs(id)
			}
		}
	default:
		c.fail(cmdCOMMAND, "ERR", "unknown subcommand '"+quoteName(args[1])+"'. Try COMMAND HELP.")
	}
}

// named returns the ids of the names (all visible commands when none).
func (c *conn) named(names [][]byte) []cmdID {
	if len(names) == 0 {
		return visible()
	}
	out := make([]cmdID, 0, len(names))
	for _, n := range names {
		out = append(out, lookup(bytes.TrimSpace(n)))
	}
	return out
}

// commandInfo writes a command's COMMAND INFO entry: name, arity, flags,
// first key, last key, step, ACL categories, tips, key specs, subcommands.
func (c *conn) commandInfo(id cmdID) {
	cmd := &cmdTable[id]
	c.out = redcon.AppendArray(c.out, 10)
	c.out = redcon.AppendBulkString(c.out, cmd.name)
	c.out = redcon.AppendInt(c.out, int64(cmd.arity))
	c.setHeader(len(cmd.flags))
	for _, f := range cmd.flags {
		c.out = redcon.AppendString(c.out, f)
	}
	c.out = redcon.AppendInt(c.out, int64(cmd.firstKey))
	c.out = redcon.AppendInt(c.out, int64(cmd.lastKey))
	c.out = redcon.AppendInt(c.out, int64(cmd.keyStep))
	c.setHeader(len(cmd.categories))
	for _, f := range cmd.categories {
		c.out = redcon.AppendString(c.out, f)
	}
	c.out = redcon.AppendArray(c.out, 0) // tips
	c.out = redcon.AppendArray(c.out, 0) // key specs
	c.out = redcon.AppendArray(c.out, 0) // subcommands
}

// commandDocs writes a command's COMMAND DOCS map.
func (c *conn) commandDocs(id cmdID) {
	cmd := &cmdTable[id]
	c.mapHeader(5)
	for _, kv := range [][2]string{{"summary", cmd.summary}, {"since", cmd.since}, {"group", cmd.group}, {"complexity", cmd.complexity}} {
		c.out = redcon.AppendBulkString(c.out, kv[0])
		c.out = redcon.AppendBulkString(c.out, kv[1])
	}
	c.out = redcon.AppendBulkString(c.out, "arguments")
	c.out = redcon.AppendArray(c.out, len(cmd.docArgs))
	for _, a := range cmd.docArgs {
		c.argDocs(a)
	}
}

func (c *conn) argDocs(a argDoc) {
	pairs := 2 // name, type
	if a.token != "" {
		pairs++
	}
	var flags []string
	if a.optional {
		flags = append(flags, "optional")
	}
	if a.multiple {
		flags = append(flags, "multiple")
	}
	if len(flags) > 0 {
		pairs++
	}
	if len(a.subs) > 0 {
		pairs++
	}
	c.mapHeader(pairs)
	c.out = redcon.AppendBulkString(c.out, "name")
	c.out = redcon.AppendBulkString(c.out, a.name)
	c.out = redcon.AppendBulkString(c.out, "type")
	typ := a.typ
	if typ == "block" {
		typ = "string" // AUTH username password reads as one hint
	}
	c.out = redcon.AppendBulkString(c.out, typ)
	if a.token != "" {
		c.out = redcon.AppendBulkString(c.out, "token")
		c.out = redcon.AppendBulkString(c.out, a.token)
	}
	if len(flags) > 0 {
		c.out = redcon.AppendBulkString(c.out, "flags")
		c.setHeader(len(flags))
		for _, f := range flags {
			c.out = redcon.AppendString(c.out, f)
		}
	}
	if len(a.subs) > 0 {
		c.out = redcon.AppendBulkString(c.out, "arguments")
		c.out = redcon.AppendArray(c.out, len(a.subs))
		for _, s := range a.subs {
			c.mapHeader(3)
			c.out = redcon.AppendBulkString(c.out, "name")
			c.out = redcon.AppendBulkString(c.out, strings.ToLower(s))
			c.out = redcon.AppendBulkString(c.out, "type")
			c.out = redcon.AppendBulkString(c.out, "pure-token")
			c.out = redcon.AppendBulkString(c.out, "token")
			c.out = redcon.AppendBulkString(c.out, s)
		}
	}
}
