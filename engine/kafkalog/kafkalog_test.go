package kafkalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func cluster(t *testing.T, partitions int32) (*kfake.Cluster, *Log) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx := context.Background()
	if err := CreateTopic(ctx, c.ListenAddrs(), "cohortd", partitions, 3, 0); err != nil {
		t.Fatal(err)
	}
	l, err := Open(ctx, Options{Brokers: c.ListenAddrs(), Topic: "cohortd", ClientID: "test", Logger: quiet(), ProduceTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return c, l
}

// TestProduceConsumeOrder: records of a key land in one partition, in
// order, and every record produced is consumed exactly once from the
// offsets given.
func TestProduceConsumeOrder(t *testing.T) {
	_, l := cluster(t, 4)
	if l.Partitions() != 4 {
		t.Fatalf("partitions %d", l.Partitions())
	}
	ctx := context.Background()
	keys := []string{"acme", "globex", "initech", "umbrella", "hooli"}
	var mu sync.Mutex
	produced := map[string][]Position{}
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				pos, err := l.Produce(ctx, []byte(k), []byte(fmt.Sprintf("%s-%03d", k, i)))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				produced[k] = append(produced[k], pos)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for k, ps := range produced {
		for i, p := range ps {
			if p.Partition != ps[0].Partition {
				t.Fatalf("key %s in partitions %d and %d", k, ps[0].Partition, p.Partition)
			}
			if i > 0 && p.Offset <= ps[i-1].Offset {
				t.Fatalf("key %s: offsets out of order", k)
			}
		}
	}
	end, err := l.EndOffsets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := int64(0)
	for _, o := range end {
		total += o
	}
	if total != int64(50*len(keys)) {
		t.Fatalf("end offsets %v sum to %d", end, total)
	}

	got := map[string][]string{}
	cctx, cancel := context.WithCancel(ctx)
	n := 0
	err = l.Consume(cctx, make([]int64, l.Partitions()), func(r Record) error {
		got[string(r.Key)] = append(got[string(r.Key)], string(r.Value))
		if r.Time.IsZero() {
			t.Error("record without a timestamp")
		}
		if n++; n == 50*len(keys) {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	for _, k := range keys {
		if len(got[k]) != 50 {
			t.Fatalf("key %s: %d records", k, len(got[k]))
		}
		for i, v := range got[k] {
			if v != fmt.Sprintf("%s-%03d", k, i) {
				t.Fatalf("key %s record %d is %s", k, i, v)
			}
		}
	}

	// From the middle: only what follows.
	from := make([]int64, l.Partitions())
	p := produced["acme"][10]
	from[p.Partition] = p.Offset
	for q := range from {
		if int32(q) != p.Partition {
			from[q] = end[q]
		}
	}
	cctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var first []byte
	err = l.Consume(cctx, from, func(r Record) error {
		first = bytes.Clone(r.Value)
		return errStop
	})
	if !errors.Is(err, errStop) || string(first) != "acme-010" {
		t.Fatalf("consume from %v: %v, first %q", from, err, first)
	}
}

var errStop = errors.New("stop")

// TestProduceLimits: a record over the limit is refused before it is
// sent, and an unreachable cluster is ErrUnavailable within the timeout.
func TestProduceLimits(t *testing.T) {
	c, l := cluster(t, 1)
	ctx := context.Background()
	if _, err := l.Produce(ctx, []byte("k"), make([]byte, DefaultMaxRecordBytes+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized record: %v", err)
	}
	if _, err := l.Produce(ctx, []byte("k"), make([]byte, 4<<20)); err != nil {
		t.Fatalf("a 4 MiB record: %v", err)
	}
	c.Close()
	start := time.Now()
	_, err := l.Produce(ctx, []byte("k"), []byte("v"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("cluster down: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s to give up", d)
	}
}

// TestOpenNeedsTopic: a missing topic is a clear error, not a hang.
func TestOpenNeedsTopic(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = Open(context.Background(), Options{Brokers: c.ListenAddrs(), Topic: "missing", Logger: quiet()})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("does not exist")) {
		t.Fatalf("missing topic: %v", err)
	}
}
