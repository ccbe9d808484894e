package resp

import (
	"bytes"
	"errors"
	"strconv"

	"github.com/tidwall/redcon"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/segment"
)

// cmdID names a command of the table.
type cmdID uint8

// The commands. cmdUnknown and cmdWrite stand for every name that is not in
// the table: unknown ones, and Redis's write commands (answered -READONLY).
const (
	cmdUnknown cmdID = iota
	cmdWrite
	cmdAUTH
	cmdHELLO
	cmdPING
	cmdQUIT
	cmdECHO
	cmdCLIENT
	cmdCOMMAND
	cmdSISMEMBER
	cmdSMISMEMBER
	cmdSCARD
	cmdSINTERCARD
	cmdEXISTS
	cmdSSCAN
	cmdCONTAINS
	cmdCOUNT
	numCmds
)

// command describes one command: how it runs and what COMMAND and
// COMMAND DOCS say about it.
type command struct {
	name   string // lower case, as the metrics label it
	arity  int    // Redis's convention: n exactly, or -n at least n (the name counts)
	noAuth bool   // allowed before AUTH
	run    func(c *conn, args [][]byte)

	// For COMMAND (INFO) and COMMAND DOCS.
	flags                      []string
	firstKey, lastKey, keyStep int
	categories                 []string
	group, summary, since      string
	complexity                 string
	docArgs                    []argDoc
}

// cmdTable is indexed by cmdID; it is filled in init (the run functions
// refer to it).
var cmdTable [numCmds]command

// names maps lower-case command names to their ids, Redis's write commands
// included.
var names = map[string]cmdID{}

// writeCommands are Redis's commands flagged "write" (as of Redis 7.4):
// they answer -READONLY, telling a client that tries to change a cohort
// here where memberships do change.
var writeCommands = []string{
	"append", "bitfield", "bitop", "blmove", "blmpop", "blpop", "brpop", "brpoplpush", "bzmpop",
	"bzpopmax", "bzpopmin", "copy", "decr", "decrby", "del", "expire", "expireat", "flushall",
	"flushdb", "geoadd", "georadius", "georadiusbymember", "geosearchstore", "getdel", "getex",
	"getset", "hdel", "hexpire", "hexpireat", "hgetdel", "hgetex", "hincrby", "hincrbyfloat",
	"hmset", "hpersist", "hpexpire", "hpexpireat", "hset", "hsetex", "hsetnx", "incr", "incrby",
	"incrbyfloat", "linsert", "lmove", "lmpop", "lpop", "lpush", "lpushx", "lrem", "lset",
	"ltrim", "migrate", "move", "mset", "msetnx", "persist", "pexpire", "pexpireat", "pfadd",
	"pfdebug", "pfmerge", "psetex", "rename", "renamenx", "restore", "restore-asking", "rpop",
	"rpoplpush", "rpush", "rpushx", "sadd", "sdiffstore", "set", "setbit", "setex", "setnx",
	"setrange", "sinterstore", "smove", "sort", "spop", "srem", "sunionstore", "swapdb", "unlink",
	"xack", "xadd", "xautoclaim", "xclaim", "xdel", "xgroup", "xreadgroup", "xsetid", "xtrim",
	"zadd", "zdiffstore", "zincrby", "zinterstore", "zmpop", "zpopmax", "zpopmin", "zrangestore",
	"zrem", "zremrangebylex", "zremrangebyrank", "zremrangebyscore", "zunionstore",
}

func init() {
	cmdTable = [numCmds]command{
		cmdUnknown: {name: "unknown"},
		cmdWrite:   {name: "write"},
		cmdAUTH: {name: "auth", arity: -2, noAuth: true, run: (*conn).auth,
			flags: []string{"noscript", "loading", "stale", "fast", "no_auth", "allow_busy"}, categories: []string{"@fast", "@connection"},
			group: "connection", since: "1.0.0", complexity: "O(1)",
			summary: "Authenticates the connection with a workspace API key.",
			docArgs: []argDoc{{name: "username", typ: "string", optional: true}, {name: "password", typ: "string"}}},
		cmdHELLO: {name: "hello", arity: -1, noAuth: true, run: (*conn).hello,
			flags: []string{"noscript", "loading", "stale", "fast", "no_auth", "allow_busy"}, categories: []string{"@fast", "@connection"},
			group: "connection", since: "6.0.0", complexity: "O(1)",
			summary: "Handshakes with the server: RESP2 or RESP3, optionally authenticating.",
			docArgs: []argDoc{{name: "protover", typ: "integer", optional: true},
				{name: "username password", token: "AUTH", typ: "block", optional: true},
				{name: "clientname", token: "SETNAME", typ: "string", optional: true}}},
		cmdPING: {name: "ping", arity: -1, noAuth: true, run: (*conn).ping,
			flags: []string{"fast"}, categories: []string{"@fast", "@connection"},
			group: "connection", since: "1.0.0", complexity: "O(1)",
			summary: "Returns PONG, or the message given.",
			docArgs: []argDoc{{name: "message", typ: "string", optional: true}}},
		cmdQUIT: {name: "quit", arity: -1, noAuth: true, run: (*conn).quitCmd,
			flags: []string{"noscript", "loading", "stale", "fast", "no_auth", "allow_busy"}, categories: []string{"@fast", "@connection"},
			group: "connection", since: "1.0.0", complexity: "O(1)",
			summary: "Closes the connection."},
		cmdECHO: {name: "echo", arity: 2, run: (*conn).echo,
			flags: []string{"fast"}, categories: []string{"@fast", "@connection"},
			group: "connection", since: "1.0.0", complexity: "O(1)",
			summary: "Returns the given string.",
			docArgs: []argDoc{{name: "message", typ: "string"}}},
		cmdCLIENT: {name: "client", arity: -2, run: (*conn).client,
			flags: []string{"noscript", "loading", "stale"}, categories: []string{"@slow", "@connection"},
			group: "connection", since: "2.4.0", complexity: "O(1)",
			summary: "CLIENT SETNAME, GETNAME, SETINFO, ID: accepted for client libraries.",
			docArgs: []argDoc{{name: "subcommand", typ: "oneof", subs: []string{"SETNAME", "GETNAME", "SETINFO", "ID"}}, {name: "arg", typ: "string", optional: true, multiple: true}}},
		cmdCOMMAND: {name: "command", arity: -1, run: (*conn).commandCmd,
			flags: []string{"loading", "stale"}, categories: []string{"@slow", "@connection"},
			group: "server", since: "2.8.13", complexity: "O(N) where N is the number of commands",
			summary: "Describes the commands: COMMAND, COMMAND COUNT, COMMAND INFO, COMMAND DOCS, COMMAND LIST.",
			docArgs: []argDoc{{name: "subcommand", typ: "oneof", optional: true, subs: []string{"COUNT", "INFO", "DOCS", "LIST"}}, {name: "command-name", typ: "string", optional: true, multiple: true}}},
		cmdSISMEMBER: {name: "sismember", arity: 3,
			flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, keyStep: 1, categories: []string{"@read", "@set", "@fast"},
			group: "set", since: "1.0.0", complexity: "O(1)",
			summary: "Returns 1 if the user with that external id is in the cohort <partner>/<cohort_id>, else 0.",
			docArgs: []argDoc{{name: "key", typ: "key"}, {name: "member", typ: "string"}}},
		cmdSMISMEMBER: {name: "smismember", arity: -3,
			flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, keyStep: 1, categories: []string{"@read", "@set", "@fast"},
			group: "set", since: "6.2.0", complexity: "O(N) where N is the number of members",
			summary: "Returns, for each external id, 1 if its user is in the cohort, else 0.",
			docArgs: []argDoc{{name: "key", typ: "key"}, {name: "member", typ: "string", multiple: true}}},
		cmdSCARD: {name: "scard", arity: 2, run: (*conn).scard,
			flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, keyStep: 1, categories: []string{"@read", "@set", "@fast"},
			group: "set", since: "1.0.0", complexity: "O(1)",
			summary: "Returns the number of members of the cohort.",
			docArgs: []argDoc{{name: "key", typ: "key"}}},
		cmdSINTERCARD: {name: "sintercard", arity: -3, run: (*conn).sintercard,
			flags: []string{"readonly", "movablekeys"}, categories: []string{"@read", "@set", "@slow"},
			group: "set", since: "7.0.0", complexity: "O(N) in the cohorts' bitmap containers",
			summary: "Returns the number of users in every one of the cohorts, counting at most LIMIT (0: no limit).",
			docArgs: []argDoc{{name: "numkeys", typ: "integer"}, {name: "key", typ: "key", multiple: true}, {name: "limit", token: "LIMIT", typ: "integer", optional: true}}},
		cmdEXISTS: {name: "exists", arity: -2, run: (*conn).exists,
			flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: -1, keyStep: 1, categories: []string{"@keyspace", "@read", "@fast"},
			group: "generic", since: "1.0.0", complexity: "O(N) where N is the number of keys",
			summary: "Returns how many of the keys name a cohort the workspace has (a known cohort exists even when empty).",
			docArgs: []argDoc{{name: "key", typ: "key", multiple: true}}},
		cmdSSCAN: {name: "sscan", arity: -3, run: (*conn).sscan,
			flags: []string{"readonly"}, firstKey: 1, lastKey: 1, keyStep: 1, categories: []string{"@read", "@set", "@slow"},
			group: "set", since: "2.8.0", complexity: "O(1) for every call. O(N) for a complete iteration",
			summary: "Iterates the external ids of the cohort's members (members without one are skipped).",
			docArgs: []argDoc{{name: "key", typ: "key"}, {name: "cursor", typ: "integer"}, {name: "count", token: "COUNT", typ: "integer", optional: true}}},
		cmdCONTAINS: {name: "cohort.contains", arity: -4, run: (*conn).segmentContains,
			flags: []string{"readonly"}, categories: []string{"@read", "@slow"},
			group: "module", since: "1.0.0", complexity: "O(N) where N is the number of ids",
			summary: "Returns, for each id, 1 if its user is in the segment expression (JSON), else 0; a device id finds whoever holds it.",
			docArgs: []argDoc{{name: "expression", typ: "string"}, {name: "kind", typ: "oneof", subs: []string{"external_id", "device_id"}}, {name: "id", typ: "string", multiple: true}}},
		cmdCOUNT: {name: "cohort.count", arity: 2, run: (*conn).segmentCount,
			flags: []string{"readonly"}, categories: []string{"@read", "@slow"},
			group: "module", since: "1.0.0", complexity: "O(N) in the cohorts' bitmap containers",
			summary: "Returns the number of live users in the segment expression (JSON).",
			docArgs: []argDoc{{name: "expression", typ: "string"}}},
	}
	for id := cmdID(0); id < numCmds; id++ {
		if cmdTable[id].arity != 0 {
			names[cmdTable[id].name] = id
		}
	}
	for _, n := range writeCommands {
		names[n] = cmdWrite
	}
}

// lookup returns the id of the command named name (any case).
func lookup(name []byte) cmdID {
	var buf [24]byte
	if len(name) > len(buf) {
		return cmdUnknown
	}
	for i, b := range name {
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		buf[i] = b
	}
	// The membership commands skip the map: even looked up once a command,
	// hashing the name cost an unpipelined SISMEMBER served in process a
	// tenth of its time (BenchmarkServe/sismember 535 → 483 ns).
	switch lower := buf[:len(name)]; string(lower) {
	case "sismember":
		return cmdSISMEMBER
	case "smismember":
		return cmdSMISMEMBER
	default:
		return names[string(lower)]
	}
}

func arityOK(id cmdID, n int) bool {
	a := cmdTable[id].arity
	if a >= 0 {
		return n == a
	}
	return n >= -a
}

// quoteName returns a command name as an error reply shows it: at most 128
// bytes, CR and LF dropped by the writer.
func quoteName(b []byte) string {
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}

// cohortSet returns the published members of the cohort a key names
// ("<partner>/<cohort_id>"), and false for an unknown cohort (an empty set).
func cohortSet(w *engine.Workspace, key []byte) (engine.Set, bool) {
	c := cohortOf(w, key)
	if c == nil {
		return engine.Set{}, false
	}
	return c.Set(), true
}

func cohortOf(w *engine.Workspace, key []byte) *engine.Cohort {
	i := bytes.IndexByte(key, '/')
	if i <= 0 || i == len(key)-1 {
		return nil
	}
	return w.Cohort(b2s(key[:i]), b2s(key[i+1:]))
}

// ---- connection commands ----

func (c *conn) ping(args [][]byte) {
	switch len(args) {
	case 1:
		c.out = redcon.AppendString(c.out, "PONG")
	case 2:
		c.out = redcon.AppendBulk(c.out, args[1])
	default:
		c.fail(cmdPING, "ERR", "wrong number of arguments for 'ping' command")
	}
}

func (c *conn) echo(args [][]byte) { c.out = redcon.AppendBulk(c.out, args[1]) }

func (c *conn) quitCmd([][]byte) {
	c.out = redcon.AppendOK(c.out)
	c.quit = true
}

// auth serves AUTH <key> and AUTH default <key>.
func (c *conn) auth(args [][]byte) {
	var ok bool
	switch len(args) {
	case 2:
		ok = c.login(cmdAUTH, nil, args[1])
	case 3:
		ok = c.login(cmdAUTH, args[1], args[2])
	default:
		c.fail(cmdAUTH, "ERR", "syntax error")
		return
	}
	if ok {
		c.out = redcon.AppendOK(c.out)
	}
}

// login checks a workspace API key (user must be nil or "default") and,
// when it is valid, authenticates the connection; else it answers
// WRONGPASS (or LOADING before recovery) and leaves the connection as it
// was.
func (c *conn) login(id cmdID, user, key []byte) bool {
	if c.e == nil {
		c.fail(id, "LOADING", "cohortd is loading its data")
		return false
	}
	var w *engine.Workspace
	d := engine.SecretDigest(key)
	if user == nil || string(user) == "default" {
		w = c.s.workspace(c.e, d)
	}
	if w == nil {
		c.fail(id, "WRONGPASS", wrongPass)
		return false
	}
	c.authed, c.digest, c.ws = true, d, w
	return true
}

// hello serves HELLO [protover [AUTH username password] [SETNAME name]].
func (c *conn) hello(args [][]byte) {
	proto := c.proto
	if len(args) >= 2 {
		v, err := strconv.Atoi(string(args[1]))
		if err != nil {
			c.fail(cmdHELLO, "ERR", "Protocol version is not an integer or out of range")
			return
		}
		if v != 2 && v != 3 {
			c.fail(cmdHELLO, "NOPROTO", "unsupported protocol version")
			return
		}
		proto = v
	}
	var user, pass, name []byte
	for i := 2; i < len(args); i++ {
		left := len(args) - i - 1
		switch opt := string(bytes.ToLower(args[i])); {
		case opt == "auth" && left >= 2:
			user, pass = args[i+1], args[i+2]
			i += 2
		case opt == "setname" && left >= 1:
			name = args[i+1]
			i++
		default:
			c.fail(cmdHELLO, "ERR", "Syntax error in HELLO option '"+string(args[i])+"'")
			return
		}
	}
	if pass != nil {
		if !c.login(cmdHELLO, user, pass) {
			return
		}
	} else if !c.authed || c.ws == nil {
		c.fail(cmdHELLO, "NOAUTH", "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
		return
	}
	if name != nil {
		if !validClientName(name) {
			c.fail(cmdHELLO, "ERR", "Client names cannot contain spaces, newlines or special characters.")
			return
		}
		c.name = string(name)
	}
	c.proto = proto
	c.mapHeader(7)
	c.out = redcon.AppendBulkString(c.out, "server")
	c.out = redcon.AppendBulkString(c.out, "cohortd")
	c.out = redcon.AppendBulkString(c.out, "version")
	c.out = redcon.AppendBulkString(c.out, redisVersion)
	c.out = redcon.AppendBulkString(c.out, "proto")
	c.out = redcon.AppendInt(c.out, int64(c.proto))
	c.out = redcon.AppendBulkString(c.out, "id")
	c.out = redcon.AppendInt(c.out, c.id)
	c.out = redcon.AppendBulkString(c.out, "mode")
	c.out = redcon.AppendBulkString(c.out, "standalone")
	c.out = redcon.AppendBulkString(c.out, "role")
	c.out = redcon.AppendBulkString(c.out, "master")
	c.out = redcon.AppendBulkString(c.out, "modules")
	c.out = redcon.AppendArray(c.out, 0)
}

// redisVersion is the Redis version whose commands and replies cohortd
// follows; clients gate features on it (SMISMEMBER needs 6.2, SINTERCARD 7.0).
const redisVersion = "7.0.0"

// validClientName reports whether a client name is acceptable (Redis:
// printable ASCII without spaces).
func validClientName(b []byte) bool {
	for _, ch := range b {
		if ch < '!' || ch > '~' {
			return false
		}
	}
	return true
}

// client serves CLIENT SETNAME, GETNAME, SETINFO and ID: client libraries
// send them on connect.
func (c *conn) client(args [][]byte) {
	sub := string(bytes.ToLower(args[1]))
	switch {
	case sub == "setname" && len(args) == 3:
		if !validClientName(args[2]) {
			c.fail(cmdCLIENT, "ERR", "Client names cannot contain spaces, newlines or special characters.")
			return
		}
		c.name = string(args[2])
		c.out = redcon.AppendOK(c.out)
	case sub == "getname" && len(args) == 2:
		if c.name == "" {
			c.null()
			return
		}
		c.out = redcon.AppendBulkString(c.out, c.name)
	case sub == "setinfo" && len(args) == 4:
		attr := string(bytes.ToLower(args[2]))
		if attr != "lib-name" && attr != "lib-ver" {
			c.fail(cmdCLIENT, "ERR", "Unrecognized option '"+string(args[2])+"'")
			return
		}
		if !validClientName(args[3]) {
			c.fail(cmdCLIENT, "ERR", attr+" cannot contain spaces, newlines or special characters.")
			return
		}
		c.out = redcon.AppendOK(c.out)
	case sub == "id" && len(args) == 2:
		c.out = redcon.AppendInt(c.out, c.id)
	default:
		c.fail(cmdCLIENT, "ERR", "unknown subcommand '"+quoteName(args[1])+"'. Try CLIENT HELP.")
	}
}

// ---- membership commands ----

func (c *conn) scard(args [][]byte) {
	set, _ := cohortSet(c.ws, args[1])
	c.out = redcon.AppendUint(c.out, set.Len())
}

// sintercard serves SINTERCARD numkeys key… [LIMIT n].
func (c *conn) sintercard(args [][]byte) {
	numkeys, err := strconv.Atoi(string(args[1]))
	if err != nil || numkeys <= 0 {
		c.fail(cmdSINTERCARD, "ERR", "numkeys should be greater than 0")
		return
	}
	if numkeys > len(args)-2 {
		c.fail(cmdSINTERCARD, "ERR", "Number of keys can't be greater than number of args")
		return
	}
	limit := uint64(0)
	for i := 2 + numkeys; i < len(args); i++ {
		if !bytes.EqualFold(args[i], []byte("limit")) || i+1 == len(args) {
			c.fail(cmdSINTERCARD, "ERR", "syntax error")
			return
		}
		v, err := strconv.ParseInt(string(args[i+1]), 10, 64)
		if err != nil || v < 0 {
			c.fail(cmdSINTERCARD, "ERR", "LIMIT can't be negative")
			return
		}
		limit = uint64(v)
		i++
	}
	sets := make([]engine.Set, 0, numkeys)
	for _, k := range args[2 : 2+numkeys] {
		set, ok := cohortSet(c.ws, k)
		if !ok {
			c.out = redcon.AppendInt(c.out, 0)
			return
		}
		sets = append(sets, set)
	}
	n := engine.IntersectionLen(sets...)
	if limit > 0 && n > limit {
		n = limit
	}
	c.out = redcon.AppendUint(c.out, n)
}

func (c *conn) exists(args [][]byte) {
	n := int64(0)
	for _, k := range args[1:] {
		if cohortOf(c.ws, k) != nil {
			n++
		}
	}
	c.out = redcon.AppendInt(c.out, n)
}

// maxScanCount bounds the members one SSCAN step visits.
const maxScanCount = 100_000

// sscan serves SSCAN key cursor [COUNT n].
func (c *conn) sscan(args [][]byte) {
	cursor, err := strconv.ParseUint(string(args[2]), 10, 64)
	if err != nil {
		c.fail(cmdSSCAN, "ERR", "invalid cursor")
		return
	}
	count := 10
	for i := 3; i < len(args); i += 2 {
		if !bytes.EqualFold(args[i], []byte("count")) || i+1 == len(args) {
			c.fail(cmdSSCAN, "ERR", "syntax error")
			return
		}
		v, err := strconv.ParseInt(string(args[i+1]), 10, 64)
		if err != nil {
			c.fail(cmdSSCAN, "ERR", "value is not an integer or out of range")
			return
		}
		if v < 1 {
			c.fail(cmdSSCAN, "ERR", "syntax error")
			return
		}
		count = int(min(v, maxScanCount))
	}
	// The page's size is known only after the scan: members go to a
	// scratch buffer first, then behind the array header.
	var page []byte
	n := 0
	next, err := c.ws.ScanExternalIDs(cohortOf(c.ws, args[1]), cursor, count, func(id []byte) {
		page = redcon.AppendBulk(page, id)
		n++
	})
	if err != nil {
		c.engineError(cmdSSCAN, err)
		return
	}
	c.out = redcon.AppendArray(c.out, 2)
	c.out = redcon.AppendBulkString(c.out, strconv.FormatUint(next, 10))
	c.out = redcon.AppendArray(c.out, n)
	c.out = append(c.out, page...)
}

// ---- segment commands ----

func (c *conn) segmentCount(args [][]byte) {
	seg, err := c.ws.Segment(args[1], segment.Parse) // parsed once per workspace and text
	if err != nil {
		c.engineError(cmdCOUNT, err)
		return
	}
	c.out = redcon.AppendUint(c.out, c.ws.Bind(seg).Count())
}

// segmentContains serves COHORT.CONTAINS <E> <external_id|device_id> <id>…
func (c *conn) segmentContains(args [][]byte) {
	var kind engine.Kind
	switch string(bytes.ToLower(args[2])) {
	case "external_id":
		kind = engine.KindExternal
	case "device_id":
		kind = engine.KindDevice
	default:
		c.fail(cmdCONTAINS, "ERR", "identifier kind must be external_id or device_id")
		return
	}
	seg, err := c.ws.Segment(args[1], segment.Parse) // parsed once per workspace and text
	if err != nil {
		c.engineError(cmdCONTAINS, err)
		return
	}
	b := c.ws.Bind(seg)
	defer b.Release()
	c.ids = b.Resolve(kind, args[3:], c.ids[:0])
	b.Expect(len(c.ids))
	c.out = redcon.AppendArray(c.out, len(c.ids))
	for _, id := range c.ids {
		v := int64(0)
		if b.Contains(id) {
			v = 1
		}
		c.out = redcon.AppendInt(c.out, v)
	}
}

// engineError answers an engine error: a malformed request is "-ERR
// <message>", anything else is logged and answered without detail.
func (c *conn) engineError(id cmdID, err error) {
	var inv *engine.InvalidError
	if errors.As(err, &inv) {
		c.fail(id, "ERR", inv.Message)
		return
	}
	c.s.log.Error("resp command failed", "command", cmdTable[id].name, "err", err)
	c.fail(id, "ERR", "internal error")
}
