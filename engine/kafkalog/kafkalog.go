// Package kafkalog is cohortd's replicated log on a topic of a
// Kafka-protocol cluster (Kafka, Redpanda, MSK, …): the engine's records
// are produced to it and every node consumes every partition in order, so
// the cluster, not cohortd, replicates (docs/API.md §7, docs/DESIGN.md
// "the log is the database").
//
// # Guarantees used
//
// Produce is idempotent with acks=all (franz-go's default for an
// idempotent producer): a record is acknowledged once every in-sync
// replica has it, and a retried produce never duplicates it. Records of
// one key (a workspace id) go to one partition, which orders them; the
// partition of a key is Kafka's own (murmur2), so any Kafka client would
// place them the same way. Consumption reads partitions directly (no
// consumer group): every node reads everything from the offsets its
// snapshot names.
//
// # Concurrency
//
// A Log is safe for concurrent use: any number of goroutines may Produce
// while one goroutine runs Consume.
package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// DefaultMaxRecordBytes is the default largest record. The topic's
// max.message.bytes (and the brokers' message.max.bytes) must allow it;
// records are zstd-compressed in their batches, so the compressed size is
// what the brokers check.
const DefaultMaxRecordBytes = 16 << 20

// Options configure a Log.
type Options struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string
	// Topic is the topic of the log; it must exist (see CreateTopic).
	Topic string
	// ClientID names this node in the brokers' logs.
	ClientID string
	// MaxRecordBytes bounds a record's value; zero means
	// DefaultMaxRecordBytes.
	MaxRecordBytes int
	// ProduceTimeout bounds one Produce call when its context has no
	// earlier deadline; zero means 10 seconds.
	ProduceTimeout time.Duration
	// Logger receives the client's warnings; nil means slog.Default().
	Logger *slog.Logger
}

// Position is a record's place in the log.
type Position struct {
	Partition int32
	Offset    int64
}

// String formats p as "<partition>:<offset>", the X-Cohortd-Position form.
func (p Position) String() string { return fmt.Sprintf("%d:%d", p.Partition, p.Offset) }

// Record is a consumed record. Key and Value are valid only during the
// callback that receives them.
type Record struct {
	Position
	Key   []byte
	Value []byte
	Time  time.Time // the record's log timestamp
	// HighWatermark is the partition's end offset (the offset the next
	// record gets) as the fetch that returned this record saw it.
	HighWatermark int64
}

// Errors of a Log.
var (
	// ErrUnavailable wraps a failure to reach the cluster or to have a
	// record acknowledged in time: the write was not acknowledged and may
	// be retried.
	ErrUnavailable = errors.New("kafkalog: log unavailable")
	// ErrTooLarge is returned by Produce for a record over MaxRecordBytes.
	ErrTooLarge = errors.New("kafkalog: record too large")
	// ErrGone is returned by Consume when records it must read were
	// deleted from the topic (retention): the node must bootstrap from a
	// peer's snapshot.
	ErrGone = errors.New("kafkalog: records were deleted from the log")
)

// Log is a connection to the log's topic.
type Log struct {
	opts       Options
	log        *slog.Logger
	prod       *kgo.Client
	adm        *kadm.Client
	partitions int32
}

// Open connects to the cluster and reads the topic's partition count. It
// fails when the topic does not exist.
func Open(ctx context.Context, o Options) (*Log, error) {
	if len(o.Brokers) == 0 || o.Topic == "" {
		return nil, errors.New("kafkalog: brokers and topic are required")
	}
	if o.MaxRecordBytes <= 0 {
		o.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if o.ProduceTimeout <= 0 {
		o.ProduceTimeout = 10 * time.Second
	}
	l := &Log{opts: o, log: o.Logger}
	if l.log == nil {
		l.log = slog.Default()
	}
	prod, err := kgo.NewClient(l.clientOpts(
		kgo.DefaultProduceTopic(o.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(kgo.ZstdCompression(), kgo.NoCompression()),
		// A batch holds one record at most this big plus headers.
		kgo.ProducerBatchMaxBytes(int32(o.MaxRecordBytes+64<<10)),
		// Writes wait for their record: linger would only add latency.
		kgo.ProducerLinger(0),
		kgo.RecordDeliveryTimeout(o.ProduceTimeout),
	)...)
	if err != nil {
		return nil, fmt.Errorf("kafkalog: %w", err)
	}
	l.prod = prod
	l.adm = kadm.NewClient(prod)
	n, err := l.partitionCount(ctx)
	if err != nil {
		prod.Close()
		return nil, err
	}
	l.partitions = n
	return l, nil
}

func (l *Log) clientOpts(extra ...kgo.Opt) []kgo.Opt {
	opts := []kgo.Opt{
		kgo.SeedBrokers(l.opts.Brokers...),
		kgo.ClientID(l.opts.ClientID),
		kgo.DialTimeout(5 * time.Second),
		kgo.WithLogger(slogAdapter{l.log}),
	}
	return append(opts, extra...)
}

func (l *Log) partitionCount(ctx context.Context) (int32, error) {
	td, err := l.adm.ListTopics(ctx, l.opts.Topic)
	if err != nil {
		return 0, fmt.Errorf("%w: list topic %q: %v", ErrUnavailable, l.opts.Topic, err)
	}
	d, ok := td[l.opts.Topic]
	if !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
		return 0, fmt.Errorf("kafkalog: topic %q does not exist: create it first (docs/OPERATIONS.md)", l.opts.Topic)
	}
	if d.Err != nil {
		return 0, fmt.Errorf("%w: topic %q: %v", ErrUnavailable, l.opts.Topic, d.Err)
	}
	return int32(len(d.Partitions)), nil
}

// CreateTopic creates the topic with the given partitions and replication
// factor, and the topic settings a log needs (no compaction, unlimited
// retention, messages up to MaxRecordBytes). Tests and first-time setups
// use it; operators usually create the topic themselves.
func CreateTopic(ctx context.Context, brokers []string, topic string, partitions int32, replication int16, maxRecordBytes int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return fmt.Errorf("kafkalog: %w", err)
	}
	defer cl.Close()
	if maxRecordBytes <= 0 {
		maxRecordBytes = DefaultMaxRecordBytes
	}
	maxMsg := fmt.Sprint(maxRecordBytes + 64<<10)
	retention := "-1"
	cleanup := "delete"
	res, err := kadm.NewClient(cl).CreateTopic(ctx, partitions, replication, map[string]*string{
		"max.message.bytes": &maxMsg,
		"retention.ms":      &retention,
		"cleanup.policy":    &cleanup,
	}, topic)
	if err == nil {
		err = res.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("kafkalog: create topic %q: %w", topic, err)
	}
	return nil
}

// Partitions is the topic's partition count, read at Open.
func (l *Log) Partitions() int32 { return l.partitions }

// MaxRecordBytes is the largest record value Produce accepts.
func (l *Log) MaxRecordBytes() int { return l.opts.MaxRecordBytes }

// Produce appends a record with key and value and returns its position
// once every in-sync replica has it. A failure to reach the cluster or a
// timeout is ErrUnavailable: the record may or may not be in the log, and
// the caller must not acknowledge it.
func (l *Log) Produce(ctx context.Context, key, value []byte) (Position, error) {
	if len(value) > l.opts.MaxRecordBytes {
		return Position{}, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, len(value), l.opts.MaxRecordBytes)
	}
	ctx, cancel := context.WithTimeout(ctx, l.opts.ProduceTimeout)
	defer cancel()
	// An idempotent producer may keep retrying a record it already sent
	// past its context (failing it could reorder later records), so the
	// wait is bounded here: on timeout the record may still land, which is
	// what ErrUnavailable says.
	type result struct {
		r   *kgo.Record
		err error
	}
	done := make(chan result, 1)
	l.prod.Produce(ctx, &kgo.Record{Key: key, Value: value}, func(r *kgo.Record, err error) { done <- result{r, err} })
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		res.err = ctx.Err()
	}
	r, err := res.r, res.err
	if err != nil {
		if errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
			return Position{}, fmt.Errorf("%w: the topic refused %d bytes (raise its max.message.bytes): %v", ErrTooLarge, len(value), err)
		}
		return Position{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return Position{Partition: r.Partition, Offset: r.Offset}, nil
}

// EndOffsets returns, per partition, the offset the next record will get
// (the log end as the leaders see it now).
func (l *Log) EndOffsets(ctx context.Context) ([]int64, error) {
	lo, err := l.adm.ListEndOffsets(ctx, l.opts.Topic)
	if err != nil {
		return nil, fmt.Errorf("%w: list end offsets: %v", ErrUnavailable, err)
	}
	out := make([]int64, l.partitions)
	for p := range l.partitions {
		o, ok := lo.Lookup(l.opts.Topic, p)
		if !ok || o.Err != nil {
			return nil, fmt.Errorf("%w: end offset of partition %d: %v", ErrUnavailable, p, o.Err)
		}
		out[p] = o.Offset
	}
	return out, nil
}

// StartOffsets returns, per partition, the offset of the oldest record
// still in the log (the end offset when it is empty).
func (l *Log) StartOffsets(ctx context.Context) ([]int64, error) {
	lo, err := l.adm.ListStartOffsets(ctx, l.opts.Topic)
	if err != nil {
		return nil, fmt.Errorf("%w: list start offsets: %v", ErrUnavailable, err)
	}
	out := make([]int64, l.partitions)
	for p := range l.partitions {
		o, ok := lo.Lookup(l.opts.Topic, p)
		if !ok || o.Err != nil {
			return nil, fmt.Errorf("%w: start offset of partition %d: %v", ErrUnavailable, p, o.Err)
		}
		out[p] = o.Offset
	}
	return out, nil
}

// Consume reads every partition from the offsets in from (one per
// partition: the next offset to read) and calls fn with each record, in
// order within a partition, until ctx ends (it then returns ctx.Err()) or
// fn fails (its error is returned). A partition whose next records were
// deleted by retention stops consumption with ErrGone. Failures to reach
// the cluster are retried for ever, logged; the caller sees them as lag.
func (l *Log) Consume(ctx context.Context, from []int64, fn func(Record) error) error {
	if len(from) != int(l.partitions) {
		return fmt.Errorf("kafkalog: %d start offsets for %d partitions", len(from), l.partitions)
	}
	parts := make(map[int32]kgo.Offset, len(from))
	for p, o := range from {
		parts[int32(p)] = kgo.NewOffset().At(o)
	}
	cl, err := kgo.NewClient(l.clientOpts(
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{l.opts.Topic: parts}),
		kgo.FetchMaxWait(200*time.Millisecond),
		kgo.FetchMaxPartitionBytes(int32(l.opts.MaxRecordBytes+64<<10)),
		kgo.FetchMaxBytes(int32(2*l.opts.MaxRecordBytes+128<<10)),
		kgo.BrokerMaxReadBytes(int32(2*l.opts.MaxRecordBytes+256<<10)),
	)...)
	if err != nil {
		return fmt.Errorf("kafkalog: %w", err)
	}
	defer cl.Close()
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		var ferr error
		fs.EachError(func(topic string, p int32, err error) {
			switch {
			case errors.Is(err, context.Canceled):
			case errors.Is(err, kerr.OffsetOutOfRange):
				ferr = fmt.Errorf("%w: partition %d: %v", ErrGone, p, err)
			default:
				l.log.Warn("kafkalog: fetch failed, retrying", "partition", p, "err", err)
			}
		})
		if ferr != nil {
			return ferr
		}
		var cerr error
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			for _, r := range fp.Records {
				if cerr != nil {
					return
				}
				cerr = fn(Record{Position: Position{Partition: r.Partition, Offset: r.Offset}, Key: r.Key, Value: r.Value, Time: r.Timestamp,
					HighWatermark: fp.HighWatermark})
			}
		})
		if cerr != nil {
			return cerr
		}
	}
}

// Close closes the producer. A running Consume ends with its context.
func (l *Log) Close() { l.prod.Close() }

// slogAdapter passes franz-go's warnings and errors to slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (a slogAdapter) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	switch level {
	case kgo.LogLevelError:
		a.l.Error("kafka: "+msg, keyvals...)
	case kgo.LogLevelWarn:
		a.l.Warn("kafka: "+msg, keyvals...)
	}
}
