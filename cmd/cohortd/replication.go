package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/engine/kafkalog"
)

// Replication flags and start-up (docs/API.md §7, docs/OPERATIONS.md
// "Running a replicated group").

// replConfig is the replication part of the command line.
type replConfig struct {
	mode           string // "local" or "kafka"
	brokers        string
	topic          string
	nodeID         string
	bootstrapFrom  string
	maxRecord      byteSize
	produceTimeout time.Duration
}

func (c *replConfig) kafka() bool { return c.mode == "kafka" }

func (c *replConfig) flags(fs *flag.FlagSet) {
	c.maxRecord = kafkalog.DefaultMaxRecordBytes
	fs.StringVar(&c.mode, "log", "local", "local: a single node with its own WAL; kafka: a node of a group sharing a Kafka-protocol log")
	fs.StringVar(&c.brokers, "kafka-brokers", "", "`host:port,…` of the Kafka or Redpanda cluster (with -log kafka)")
	fs.StringVar(&c.topic, "kafka-topic", "cohortd", "the topic that carries the group's records (with -log kafka)")
	fs.Var(&c.maxRecord, "kafka-max-record", "largest record `size` a write may produce; the topic's max.message.bytes must allow it (with -log kafka)")
	fs.DurationVar(&c.produceTimeout, "kafka-timeout", 10*time.Second, "how long a write waits for the log to acknowledge its record before it answers 503 (with -log kafka)")
	fs.StringVar(&c.nodeID, "node-id", "", "this node's name in GET /v1/admin/replication and the log (default: the host name)")
	fs.StringVar(&c.bootstrapFrom, "bootstrap-from", "", "a peer's base `URL`: a node whose data directory holds no snapshot starts from the peer's (with -log kafka)")
}

func (c *replConfig) check() error {
	switch c.mode {
	case "local":
		switch {
		case c.brokers != "":
			return errors.New("-kafka-brokers needs -log kafka")
		case c.bootstrapFrom != "":
			return errors.New("-bootstrap-from needs -log kafka")
		}
		return nil
	case "kafka":
	default:
		return fmt.Errorf("-log: %q is not local or kafka", c.mode)
	}
	switch {
	case len(c.brokerList()) == 0:
		return errors.New("-log kafka needs -kafka-brokers host:port,…")
	case c.topic == "":
		return errors.New("-kafka-topic must not be empty")
	case c.maxRecord < 1<<10 || c.maxRecord > 1<<30:
		return errors.New("-kafka-max-record must be between 1KiB and 1GiB")
	case c.produceTimeout <= 0:
		return errors.New("-kafka-timeout must be positive")
	}
	if c.bootstrapFrom != "" {
		u, err := url.Parse(c.bootstrapFrom)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-bootstrap-from: %q is not an http(s) URL of a peer", c.bootstrapFrom)
		}
	}
	return nil
}

func (c *replConfig) brokerList() []string {
	var out []string
	for _, b := range strings.Split(c.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// node is -node-id, or the host name.
func (c *replConfig) node() string {
	if c.nodeID != "" {
		return c.nodeID
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return "cohortd"
}

// cursorSecret derives the key of member-page and SSCAN cursors from the
// admin token, so that every node of a group (all configured with the same
// token) reads the cursors the others hand out.
func cursorSecret(adminToken string) []byte {
	s := sha256.Sum256([]byte("cohortd group cursor key\x00" + adminToken))
	return s[:]
}

// openLog connects to the log, retrying until it answers or ctx ends (the
// process answers /livez meanwhile; /readyz stays 503).
func openLog(ctx context.Context, c replConfig, log *slog.Logger) (*kafkalog.Log, error) {
	for delay := time.Second; ; delay = min(2*delay, 30*time.Second) {
		octx, cancel := context.WithTimeout(ctx, 15*time.Second)
		l, err := kafkalog.Open(octx, kafkalog.Options{
			Brokers:        c.brokerList(),
			Topic:          c.topic,
			ClientID:       "cohortd-" + c.node(),
			MaxRecordBytes: int(c.maxRecord),
			ProduceTimeout: c.produceTimeout,
			Logger:         log,
		})
		cancel()
		if err == nil {
			log.Info("connected to the log", "brokers", c.brokers, "topic", c.topic, "partitions", l.Partitions())
			return l, nil
		}
		if !errors.Is(err, kafkalog.ErrUnavailable) {
			return nil, err // a missing topic: retrying will not help
		}
		log.Warn("cannot reach the log, retrying", "brokers", c.brokers, "err", err, "in", delay.String())
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// bootstrap fetches a peer's newest snapshot into dataDir when it holds
// none (docs/API.md §7): GET <peer>/v1/admin/snapshot with the admin token.
// The engine then starts from it and consumes the log from its offsets.
func bootstrap(ctx context.Context, dataDir, peer, adminToken string, log *slog.Logger) error {
	has, err := engine.HasSnapshot(dataDir)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if has {
		log.Info("data directory holds a snapshot: -bootstrap-from is not needed", "peer", peer)
		return nil
	}
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(peer, "/")+"/v1/admin/snapshot", nil)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("bootstrap from %s: %w", peer, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("bootstrap from %s: GET /v1/admin/snapshot answered %s (every node of a group needs the same admin token)", peer, resp.Status)
	}
	name := resp.Header.Get("X-Cohortd-Snapshot")
	if err := engine.InstallSnapshot(dataDir, name, resp.Body); err != nil {
		return fmt.Errorf("bootstrap from %s: %w", peer, err)
	}
	log.Info("bootstrapped from a peer's snapshot", "peer", peer, "file", name, "duration", time.Since(start).String())
	return nil
}
