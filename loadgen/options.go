package loadgen

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Shape is how an exporter sends cohort changes (the -sender flag).
type Shape string

// The sync shapes: the two of docs/WORKLOADS.md and Mixpanel's webhook.
const (
	// ShapePartner sends gzip JSON to the partner endpoint, at most 1,000
	// identifiers a request, with a cohort upsert before every batch.
	ShapePartner Shape = "partner"
	// ShapeBulk sends zstd NDJSON to /v1/cohorts/{p}/{id}/changes, 100 lines
	// of 1,000 identifiers a request.
	ShapeBulk Shape = "bulk"
	// ShapeMixpanelWebhook replays Mixpanel's native cohort webhook (docs/API.md
	// §3b) against POST /webhooks/mixpanel: a paged "members" snapshot, then
	// add_members/remove_members diffs, with Basic auth. See webhook.go.
	ShapeMixpanelWebhook Shape = "mixpanel-webhook"
)

// Options configures a run. The zero value of a field means its default
// (see withDefaults) unless Exact is set; every load loop is bounded by
// Duration and/or a count.
type Options struct {
	// Exact takes every numeric field as given: a zero is a zero (no churn,
	// no retries, seed 0), never replaced by a default, and a zero where
	// only a positive value makes sense is an error. Start from
	// DefaultOptions to get the defaults and set Exact in one step.
	Exact bool

	// Addr is the server's base URL, default "http://127.0.0.1:8080", or
	// several joined by commas: the nodes of a replicated group
	// (docs/API.md §7). Requests are spread over them in turn, a retry goes
	// to the next one, and Mixed verifies the final cohort sizes on every
	// one.
	Addr string
	// AdminToken authorises the admin API, used to create whatever
	// Credentials lacks.
	AdminToken string
	// Credentials are pre-existing keys; empty fields are created through the
	// admin API when AdminToken is set.
	Credentials Credentials
	// OnCredentials, when set, is called once after setup created any
	// credential, with the complete set the run uses. Secrets are never
	// written to the progress log, so this is the only way to keep them.
	OnCredentials func(Credentials) error

	// Users is the number of seeded users (Seed creates them; the other
	// commands assume they exist). Default 100,000.
	Users int
	// Seed makes every generated thing deterministic. Default 1.
	Seed uint64
	// Cohorts is the number of cohorts exported. Default 3.
	Cohorts int
	// Flavour is the cohort membership shape. Default clustered.
	Flavour Flavour
	// Shape is the sync shape (the sender). Default partner.
	Shape Shape

	// Duration bounds the timed phase (change sets, queries). Zero means
	// only counts bound the run; Query and Mixed then default to 10s.
	Duration time.Duration
	// Rate is the offered rate in requests a second of the main stream
	// (export requests in Export, queries in Query and Mixed); 0 is a closed
	// loop at maximum speed.
	Rate float64
	// ExportRate is the offered rate of export requests in Mixed; 0 is a
	// closed loop.
	ExportRate float64
	// Concurrency is the number of concurrent export senders (and of seed
	// body encoders). Default 4.
	Concurrency int
	// QueryConcurrency is the number of concurrent query workers. Default 4.
	QueryConcurrency int

	// Interval is the time-compressed cadence of change sets (a 15-minute
	// cadence replayed; Mixpanel's 30 minutes for the webhook). Default 1s.
	Interval time.Duration
	// ChangeSets bounds the number of change sets per cohort; 0 means until
	// Duration ends (with Duration 0 too: the first load only).
	ChangeSets int
	// ChurnLeave is the share of members that leave per change set.
	// Default 0.01.
	ChurnLeave float64
	// ChurnJoin is the share of non-members that join per change set.
	// Zero (the default) means as many non-members join as members leave,
	// so that sizes stay level (docs/WORKLOADS.md).
	ChurnJoin float64

	// Mix is the query mix. Default DefaultMix.
	Mix Mix
	// Requests bounds the number of queries; 0 means until Duration ends.
	Requests int
	// SkipSeed makes Mixed assume the users already exist.
	SkipSeed bool

	// UsersPerBody is the number of user records per seeding body.
	// Default 100,000.
	UsersPerBody int
	// PartnerMaxIDs is the identifier cap of a partner request. Default 1,000.
	PartnerMaxIDs int
	// BulkIDs is the number of identifiers per bulk request. Default 100,000.
	BulkIDs int
	// BulkLineIDs is the number of identifiers per bulk NDJSON line.
	// Default 1: one change object a line, as exporters write one user a
	// line (the headline bulk shape of docs/WORKLOADS.md).
	BulkLineIDs int

	// WebhookPageSize is the number of members per Mixpanel webhook call.
	// Default 1,000, as Mixpanel sends.
	WebhookPageSize int
	// WebhookGzip sends webhook bodies gzip-compressed (Mixpanel sends
	// plain JSON; the server accepts both).
	WebhookGzip bool
	// InjectFailureRate is the share of webhook syncs the sender abandons
	// on purpose part-way (deterministically from Seed) before re-sending
	// the whole cohort with a new session id, as Mixpanel does after a
	// failure. 0 (the default) injects nothing; it must be below 1.
	InjectFailureRate float64

	// MaxRetries bounds the retries of one request. Default 8. Webhook
	// calls always get Mixpanel's 5.
	MaxRetries int
	// BackoffBase is the first retry delay before jitter. Default 50ms.
	BackoffBase time.Duration
	// BackoffMax caps a retry delay. Default 5s.
	BackoffMax time.Duration
	// RequestTimeout bounds one attempt. Default 60s.
	RequestTimeout time.Duration

	// Progress receives progress output; nil means none.
	Progress io.Writer
	// ProgressBar draws a bar on Progress (for a terminal) instead of
	// periodic lines.
	ProgressBar bool
	// ReportEvery is the period of progress lines. Default 5s.
	ReportEvery time.Duration

	// Protocol is how Query asks: ProtocolHTTP (default, the /v1 segment
	// endpoints) or ProtocolRESP (the Redis protocol at RESPAddr; see
	// runRESP).
	Protocol string
	// RESPAddr is the host:port of the Redis-protocol listener (cohortd's
	// -resp-addr, or a redis-server peer). Default 127.0.0.1:6380.
	RESPAddr string
	// Pipeline is the number of SISMEMBERs a RESP contains query sends in
	// one pipeline. Default 1.
	Pipeline int
	// Client is what sends Query's requests: ClientGo (default: go-redis
	// for RESP, the run's HTTP client for HTTP, every query kind) or
	// ClientRaw (RunRaw, Linux: single contains, or over RESP SMISMEMBER
	// of 1,000 users; the client to saturate a server with).
	Client string

	// Dial, when set, replaces TCP dialing (tests use an in-memory
	// listener).
	Dial func(addr string) (net.Conn, error)

	// ServerPID, when set, is the process id of the server on this
	// machine: the report then gives the server's CPU time over the run and
	// requests and identifiers per server CPU-second (docs/WORKLOADS.md:
	// the client's cost differs between protocols, the server's is what
	// compares).
	ServerPID int
}

// bases returns the normalised base URLs of Addr.
func (o Options) bases() []string {
	var out []string
	for _, a := range strings.Split(o.Addr, ",") {
		a = strings.TrimRight(strings.TrimSpace(a), "/")
		if a == "" {
			continue
		}
		if !strings.Contains(a, "://") {
			a = "http://" + a
		}
		out = append(out, a)
	}
	return out
}

// DefaultOptions returns Options with every default filled in and Exact
// set: start from it to state explicit zero values (no churn, no retries,
// seed 0), which the zero-means-default rule of a plain Options literal
// cannot express. cmd/loadgen binds its flags to these values.
func DefaultOptions() Options {
	o := Options{}.withDefaults()
	o.Exact = true
	return o
}

// withDefaults fills the zero fields of o with their defaults, unless
// o.Exact, and normalises Addr.
func (o Options) withDefaults() Options {
	setDefault(&o.Addr, "http://127.0.0.1:8080")
	o.Addr = strings.Join(o.bases(), ",")
	setDefault(&o.Flavour, FlavourClustered)
	setDefault(&o.Shape, ShapePartner)
	if o.Shape == ShapeMixpanelWebhook {
		// The server files webhook cohorts under partner mixpanel, so
		// queries must name them so too.
		setDefault(&o.Credentials.Partner, webhookPartner)
	}
	if o.Mix.total() == 0 {
		o.Mix = DefaultMix
	}
	if o.Exact {
		return o
	}
	setDefault(&o.Users, 100_000)
	setDefault(&o.Seed, 1)
	setDefault(&o.Cohorts, 3)
	setDefault(&o.Concurrency, 4)
	setDefault(&o.QueryConcurrency, 4)
	setDefault(&o.Protocol, ProtocolHTTP)
	setDefault(&o.RESPAddr, "127.0.0.1:6380")
	setDefault(&o.Pipeline, 1)
	setDefault(&o.Client, ClientGo)
	setDefault(&o.Interval, time.Second)
	setDefault(&o.ChurnLeave, 0.01)
	setDefault(&o.UsersPerBody, 100_000)
	setDefault(&o.PartnerMaxIDs, 1_000)
	setDefault(&o.BulkIDs, 100_000)
	setDefault(&o.BulkLineIDs, 1)
	setDefault(&o.WebhookPageSize, 1_000)
	setDefault(&o.MaxRetries, 8)
	setDefault(&o.BackoffBase, 50*time.Millisecond)
	setDefault(&o.BackoffMax, 5*time.Second)
	setDefault(&o.RequestTimeout, 60*time.Second)
	setDefault(&o.ReportEvery, 5*time.Second)
	return o
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// ErrInvalidOptions is wrapped by every error about the options themselves
// (as opposed to the server or the run).
var ErrInvalidOptions = errors.New("loadgen: invalid options")

// validate checks o after withDefaults; its errors wrap ErrInvalidOptions.
func (o Options) validate() error {
	if err := o.check(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return nil
}

func (o Options) check() error {
	switch o.Flavour {
	case FlavourClustered, FlavourUniform:
	default:
		return fmt.Errorf("unknown flavour %q (clustered or uniform)", o.Flavour)
	}
	switch o.Shape {
	case ShapePartner, ShapeBulk:
		if o.InjectFailureRate != 0 {
			return fmt.Errorf("failure injection is only for sender %s", ShapeMixpanelWebhook)
		}
	case ShapeMixpanelWebhook:
		if p := o.Credentials.Partner; p != "" && p != webhookPartner {
			return fmt.Errorf("sender %s needs partner %q, not %q", o.Shape, webhookPartner, p)
		}
	default:
		return fmt.Errorf("unknown sender %q (partner, bulk or %s)", o.Shape, ShapeMixpanelWebhook)
	}
	if o.Protocol != ProtocolHTTP && o.Protocol != ProtocolRESP {
		return fmt.Errorf("loadgen: unknown protocol %q (http or resp)", o.Protocol)
	}
	if o.Client != ClientGo && o.Client != ClientRaw {
		return fmt.Errorf("loadgen: unknown client %q (go or raw)", o.Client)
	}
	if o.Client == ClientRaw {
		m := o.Mix
		contains := m.Contains > 0 && m.Batch == 0
		batch := o.Protocol == ProtocolRESP && m.Batch > 0 && m.Contains == 0 && o.Pipeline == 1
		if (!contains && !batch) || m.Compact != 0 || m.Count != 0 || m.Page != 0 || o.Requests != 0 {
			return fmt.Errorf("loadgen: the raw client sends one kind of query for a duration: -mix contains=1, or over RESP -mix batch=1 (SMISMEMBER, no -pipeline); no -requests")
		}
	}
	if o.Pipeline < 1 {
		return fmt.Errorf("loadgen: pipeline must be positive")
	}
	if o.InjectFailureRate < 0 || o.InjectFailureRate >= 1 {
		return fmt.Errorf("inject failure rate must be in [0, 1)")
	}
	if o.Users < 1 || o.Cohorts < 1 || o.Concurrency < 1 || o.QueryConcurrency < 1 {
		return fmt.Errorf("users, cohorts and concurrency must be positive")
	}
	if o.Rate < 0 || o.ExportRate < 0 || o.ChurnLeave < 0 || o.ChurnLeave > 1 || o.ChurnJoin < 0 || o.ChurnJoin > 1 {
		return fmt.Errorf("rates and churn shares must be non-negative (churn at most 1)")
	}
	if o.PartnerMaxIDs < 1 || o.BulkIDs < 1 || o.BulkLineIDs < 1 || o.UsersPerBody < 1 || o.WebhookPageSize < 1 {
		return fmt.Errorf("batch sizes must be positive")
	}
	if o.Interval <= 0 || o.RequestTimeout <= 0 || o.ReportEvery <= 0 || o.BackoffBase <= 0 || o.BackoffMax < o.BackoffBase {
		return fmt.Errorf("interval, timeout, report period and backoff must be positive")
	}
	if o.Duration < 0 || o.ChangeSets < 0 || o.Requests < 0 || o.MaxRetries < 0 {
		return fmt.Errorf("duration, change sets, requests and retries must not be negative")
	}
	return nil
}

// Mix is the query mix in relative weights.
type Mix struct {
	Contains int // single contains of one user
	Batch    int // contains of 1,000 users ({"users":[…]})
	Compact  int // contains of 1,000 external ids, the compact form ({"external_ids":[…]})
	Count    int // count of an expression
	Page     int // one page of 1,000 members
}

// DefaultMix is the segment-evaluator mix of docs/WORKLOADS.md: its 20% of
// batch contains are split between the users form and the compact form.
var DefaultMix = Mix{Contains: 70, Batch: 10, Compact: 10, Count: 9, Page: 1}

func (m Mix) total() int { return m.Contains + m.Batch + m.Compact + m.Count + m.Page }

// String formats the mix as ParseMix reads it.
func (m Mix) String() string {
	return fmt.Sprintf("contains=%d,batch=%d,compact=%d,count=%d,page=%d", m.Contains, m.Batch, m.Compact, m.Count, m.Page)
}

// ParseMix reads a mix like "contains=70,batch=10,compact=10,count=9,page=1".
// Kinds left out get weight 0.
func ParseMix(s string) (Mix, error) {
	var m Mix
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if !ok || err != nil || n < 0 {
			return Mix{}, fmt.Errorf("loadgen: bad mix entry %q (want kind=weight)", part)
		}
		switch strings.TrimSpace(k) {
		case "contains":
			m.Contains = n
		case "batch":
			m.Batch = n
		case "compact":
			m.Compact = n
		case "count":
			m.Count = n
		case "page":
			m.Page = n
		default:
			return Mix{}, fmt.Errorf("loadgen: unknown query kind %q (contains, batch, compact, count, page)", k)
		}
	}
	if m.total() == 0 {
		return Mix{}, fmt.Errorf("loadgen: mix %q has no weight", s)
	}
	return m, nil
}
