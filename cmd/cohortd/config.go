package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/cohortd/cohortd/engine"
)

// config is the parsed command line and environment.
type config struct {
	addr              string
	respAddr          string
	dataDir           string
	adminToken        string
	fsyncName         string
	fsync             engine.SyncMode
	maxBody           byteSize
	partnerMaxBody    byteSize
	partnerMaxIDs     int
	queryMaxBody      byteSize
	partnerInflight   int
	retentionFloor    time.Time
	webhookSessionTTL time.Duration
	shutdownTimeout   time.Duration
	rateLimit         float64
	rateBurst         int
	snapshotInterval  time.Duration
	snapshotWALBytes  byteSize
	logLevel          slog.Level
	demo              bool
	// Operator tools (ops.go).
	adminTokenFile string
	logFormat      string // "auto", "text" or "json"
	tlsCert        string
	tlsKey         string
	version        bool
	// Replication (replication.go).
	repl replConfig
}

// envPrefix starts the environment twin of every flag.
const envPrefix = "COHORTD_"

// noEnv lists the flags without an environment twin: COHORTD_VERSION is
// too likely to be set for other reasons to turn a server into a one-shot
// version print.
var noEnv = map[string]bool{"version": true}

// envName is the environment twin of a flag: -data-dir is COHORTD_DATA_DIR.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig parses args and the environment (through lookupEnv). An
// explicit flag wins over its environment twin, which wins over the default.
// The usage goes to usageOut on -h, and parseConfig then returns flag.ErrHelp.
func parseConfig(args []string, lookupEnv func(string) (string, bool), usageOut io.Writer) (config, error) {
	c := config{
		maxBody:          256 << 20,
		partnerMaxBody:   8 << 20,
		queryMaxBody:     8 << 20,
		snapshotWALBytes: 1 << 30,
		retentionFloor:   engine.DefaultRetentionFloor,
	}
	fs := flag.NewFlagSet("cohortd", flag.ContinueOnError)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "listen address (host:port; port 0 picks a free one)")
	fs.StringVar(&c.respAddr, "resp-addr", "", "Redis-protocol listen address for membership queries, e.g. 127.0.0.1:6380 (empty = off)")
	fs.StringVar(&c.dataDir, "data-dir", "./data", "data directory (WAL, snapshots, admin.token)")
	fs.StringVar(&c.adminToken, "admin-token", "", "admin bearer token; if empty, read <data-dir>/admin.token or generate it there and print it once")
	fs.StringVar(&c.fsyncName, "fsync", "always", "WAL durability: always (ack after fsync, group commit), interval or off")
	fs.Var(&c.maxBody, "max-body", "largest decoded /v1 body, `size` in bytes or with a suffix (256MiB, 8MB, 1GiB)")
	fs.Var(&c.partnerMaxBody, "partner-max-body", "largest decoded partner or webhook body (`size`)")
	fs.IntVar(&c.partnerMaxIDs, "partner-max-ids", 1000, "most identifiers per partner cohorts/users request")
	fs.Var(&c.queryMaxBody, "query-max-body", "largest decoded body of /v1/segments/* and /v1/users/delete (`size`)")
	fs.IntVar(&c.partnerInflight, "partner-max-inflight", 16, "partner and webhook bodies handled at once; one more is answered 503 with Retry-After")
	fs.TextVar(&c.retentionFloor, "retention-floor", c.retentionFloor, "drop changes stamped before this RFC 3339 `time`")
	fs.DurationVar(&c.webhookSessionTTL, "webhook-session-ttl", time.Hour, "drop an incomplete Mixpanel snapshot session after this long without a page")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long in-flight requests may run after SIGTERM/SIGINT")
	fs.Float64Var(&c.rateLimit, "rate-limit", 0, "requests per second per credential (0 = no limit)")
	fs.IntVar(&c.rateBurst, "rate-burst", 0, "burst allowed above -rate-limit (0 = the rate rounded up)")
	fs.DurationVar(&c.snapshotInterval, "snapshot-interval", 5*time.Minute, "take a snapshot this often (0 = only on WAL growth and shutdown)")
	fs.Var(&c.snapshotWALBytes, "snapshot-wal-bytes", "take a snapshot after the WAL grew by this `size` (0 = off)")
	fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error")
	fs.BoolVar(&c.demo, "demo", false, "on first start create a demo workspace with 100k users and cohorts; print curl commands")
	fs.StringVar(&c.adminTokenFile, "admin-token-file", "", "read the admin token from this `file` (keeps it out of ps); excludes -admin-token")
	fs.StringVar(&c.logFormat, "log-format", "auto", "log format: text, json, or auto (text when stderr is a terminal, else json)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "serve HTTPS with this PEM certificate `file` (with -tls-key; re-read when it changes)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key `file` of -tls-cert")
	fs.BoolVar(&c.version, "version", false, "print the version and exit")
	c.repl.flags(fs)

	fs.VisitAll(func(f *flag.Flag) {
		if !noEnv[f.Name] {
			f.Usage += " [$" + envName(f.Name) + "]"
		}
	})
	// Parse quietly: a bad flag gets a one-line error from main, and only
	// -h prints the full usage.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(usageOut, "Usage: cohortd [flags]\n"+
				"       cohortd check -data-dir DIR      verify a data dir offline (-h for more)\n"+
				"       cohortd wal dump -data-dir DIR   print its WAL as JSON lines (-h for more)\n"+
				"       cohortd healthcheck [-addr A]    exit 0 if the server at A is ready (-h for more)\n\n"+
				"Every flag can also be set through the environment variable shown in\n"+
				"brackets. An explicit flag wins over the environment, which wins over\n"+
				"the default.\n\n")
			fs.SetOutput(usageOut)
			fs.PrintDefaults()
			return c, err
		}
		return c, fmt.Errorf("%w (see cohortd -h)", err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || noEnv[f.Name] {
			return
		}
		v, ok := lookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("invalid value %q for %s: %v", v, envName(f.Name), err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return c, err
	}

	var err error
	if c.fsync, err = engine.ParseSyncMode(c.fsyncName); err != nil {
		return c, fmt.Errorf("-fsync: %w", err)
	}
	switch {
	case c.addr == "":
		return c, errors.New("-addr must not be empty")
	case c.dataDir == "":
		return c, errors.New("-data-dir must not be empty")
	case c.maxBody <= 0:
		return c, errors.New("-max-body must be positive")
	case c.partnerMaxBody <= 0:
		return c, errors.New("-partner-max-body must be positive")
	case c.partnerMaxIDs <= 0:
		return c, errors.New("-partner-max-ids must be positive")
	case c.queryMaxBody <= 0:
		return c, errors.New("-query-max-body must be positive")
	case c.partnerInflight <= 0:
		return c, errors.New("-partner-max-inflight must be positive")
	case c.webhookSessionTTL <= 0:
		return c, errors.New("-webhook-session-ttl must be positive")
	case c.shutdownTimeout < 0:
		return c, errors.New("-shutdown-timeout must not be negative")
	case c.rateLimit < 0:
		return c, errors.New("-rate-limit must not be negative")
	case c.rateBurst < 0:
		return c, errors.New("-rate-burst must not be negative")
	case c.snapshotInterval < 0:
		return c, errors.New("-snapshot-interval must not be negative")
	}
	if strings.TrimSpace(c.adminToken) != c.adminToken {
		return c, errors.New("-admin-token must not start or end with white space")
	}
	if err := c.checkOps(); err != nil {
		return c, err
	}
	if err := c.repl.check(); err != nil {
		return c, err
	}
	return c, nil
}

// byteSize is a flag value in bytes that also accepts a unit suffix:
// binary KiB/MiB/GiB/TiB (and the short K/M/G/T), decimal KB/MB/GB/TB.
type byteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	// Longest suffixes first so that "MiB" is not read as "B".
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

func (b *byteSize) String() string {
	if b == nil {
		return "0"
	}
	n := int64(*b)
	for _, u := range []struct {
		s string
		m int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.m == 0 {
			return strconv.FormatInt(n/u.m, 10) + u.s
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(s string) error {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("not a byte size (want e.g. 1048576, 256MiB or 8MB)")
	}
	if n > (1<<62)/mult {
		return fmt.Errorf("byte size too large")
	}
	*b = byteSize(n * mult)
	return nil
}
