// Package broker holds what every Kafka user in flashgate shares: the topic
// names, client options, topic creation, and the embedded Kafka-protocol
// broker (franz-go's kfake) that `flashgate dev` and the tests run.
package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The contract's topics.
const (
	TopicOrderCreated   = "order.created"
	TopicOrderUpdated   = "order.updated"
	TopicOrderCancelled = "order.cancelled"
	TopicOrderCompleted = "order.completed"
	TopicSaleEvents     = "flash-sale.events"
	TopicOrderDLQ       = "order.created.dlq"
)

// Topics lists every topic flashgate uses.
var Topics = []string{TopicOrderCreated, TopicOrderUpdated, TopicOrderCancelled, TopicOrderCompleted, TopicSaleEvents, TopicOrderDLQ}

// Seeds splits a comma list of host:port brokers.
func Seeds(list string) []string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// EnsureTopics creates the missing topics with the given partition count and
// replication factor (-1: the broker's default). Existing topics are left as
// they are.
func EnsureTopics(ctx context.Context, cl *kgo.Client, partitions int32, replication int16) error {
	adm := kadm.NewClient(cl)
	resp, err := adm.CreateTopics(ctx, partitions, replication, nil, Topics...)
	if err != nil {
		return fmt.Errorf("creating topics: %w", err)
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("creating topic %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}

// Embedded is a kfake cluster with one broker.
type Embedded struct {
	c    *kfake.Cluster
	addr string
}

// segmentBytes is the embedded broker's log segment size. kfake keeps an
// in-memory index of each segment's batches, one entry per batch, and grows
// it by appending: with its default 100 MiB segments that index reaches
// ~100K entries, and each time it grows the broker's single loop copies it
// into fresh memory. That is the likely cause of the loop's 13-36 ms runs
// inside pushBatch, with no ack meanwhile, that runtime traces of flashgate
// dev showed at 18K orders/s (2026-12-08; every 10-20 s once the log held a
// few hundred MB; the traces show the function, not the line). With
// 8 MiB segments the index stays under ~2 MB and no such stall was seen
// (tuning.md, "p99 spikes every few seconds").
const segmentBytes = 8 << 20

// StartEmbedded starts the embedded broker on addr (host:port; port 0 picks a
// free one). With dataDir it persists its log there; without, it is in-memory
// (tests). With sync, every batch is fsync'd before its ack, so a 202
// (acks=all) survives a power loss; without, a batch is written to the OS
// page cache before its ack (kill -9 of the process loses nothing, a power
// loss may), which is a Kafka broker's default (log.flush.interval.messages
// = MAX) and about 10x faster here: kfake syncs one partition batch after
// another on its single loop.
func StartEmbedded(addr, dataDir string, partitions int32, sync bool) (*Embedded, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("embedded Kafka broker cannot listen on %s: %w; possible fix: --kafka-addr with a free port", addr, err)
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(int(partitions)),
		kfake.SeedTopics(partitions, Topics...),
		// kfake listens on 127.0.0.1:<port>; hand it our listener instead so
		// --kafka-addr is honoured exactly.
		kfake.ListenFn(func(string, string) (net.Listener, error) { return ln, nil }),
	}
	if dataDir != "" {
		opts = append(opts, kfake.DataDir(dataDir), kfake.BrokerConfigs(map[string]string{
			"log.segment.bytes": strconv.Itoa(segmentBytes),
		}))
		if sync {
			opts = append(opts, kfake.SyncWrites())
		}
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("starting embedded Kafka broker: %w", err)
	}
	return &Embedded{c: c, addr: ln.Addr().String()}, nil
}

// Addr is the broker's host:port.
func (e *Embedded) Addr() string { return e.addr }

// Cluster exposes kfake's controls (fault injection in tests).
func (e *Embedded) Cluster() *kfake.Cluster { return e.c }

// Close stops the broker, flushing its log.
func (e *Embedded) Close() { e.c.Close() }

// NewAdmin returns a plain client for admin requests against brokers.
func NewAdmin(brokers []string, opts ...kgo.Opt) (*kgo.Client, error) {
	return kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.RequestTimeoutOverhead(5 * time.Second)}, opts...)...)
}
