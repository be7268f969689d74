// Package ingest moves orders from Kafka (`order.created`) into the ledger:
// consumer-group workers that batch-COPY records into the partitioned orders
// table and commit offsets only after the database transaction committed.
package ingest

import (
	"flag"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Config configures the workers. Every default says why it is what it is.
type Config struct {
	Brokers []string
	// KafkaOpts are extra client options: TLS, SASL.
	KafkaOpts []kgo.Opt
	Group     string // consumer group; all ingest processes share it
	Workers   int    // consumer clients in this process
	// SessionTimeout: a worker that stops heartbeating (its process was
	// killed) keeps its partitions, unconsumed, this long before the group
	// hands them to the others or to its own restart. Heartbeats run beside
	// the batches, so a slow COPY does not count against it.
	SessionTimeout time.Duration

	// A batch (one COPY, one transaction) closes at BatchRows rows or
	// BatchBytes record bytes, or BatchAge after its first record: big
	// enough to amortise the transaction and fsync, small enough to keep
	// orders' time to the ledger short.
	BatchRows  int
	BatchBytes int
	BatchAge   time.Duration
	// PartitionsAheadDays: daily partitions kept made ahead of today.
	PartitionsAheadDays int
	// RetentionDays: daily partitions older than this are detached from
	// orders (0: never). See ledger.DetachPartitionsBefore.
	RetentionDays int
	// RetryMax caps the backoff between database retries.
	RetryMax time.Duration
	// Relay runs the ledger's outbox relay (order events and stock releases
	// to Kafka) in this process; any number may: one publishes at a time.
	Relay bool
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Group:               "flashgate-ingest",
		SessionTimeout:      10 * time.Second, // Kafka's 45 s default: a killed worker's last orders landed 28 s late in TestFaultSchedule (0.2 s with 10 s); 10 s is 3 heartbeats
		Workers:             2,                // two COPYs in flight: one batch decodes while the other is in PostgreSQL (bench/ingest.sh: 0.95x psql \copy against 0.6x with one)
		BatchRows:           5000,
		BatchBytes:          4 << 20, // ~20K orders of ~200 bytes: rows close batches first
		BatchAge:            50 * time.Millisecond,
		PartitionsAheadDays: 7,
		RetryMax:            5 * time.Second,
		Relay:               true,
	}
}

var flagConfig = DefaultConfig()

func init() {
	flag.IntVar(&flagConfig.Workers, "ingest.workers", flagConfig.Workers, "consumer workers per process; more than the partitions of order.created do nothing; flashgate dev: 0 runs none (run flashgate ingest with dev.env instead)")
	flag.IntVar(&flagConfig.BatchRows, "ingest.batchRows", flagConfig.BatchRows, "maximum rows per COPY batch; raise for throughput, lower for latency")
	flag.IntVar(&flagConfig.BatchBytes, "ingest.batchBytes", flagConfig.BatchBytes, "maximum record bytes per COPY batch")
	flag.DurationVar(&flagConfig.BatchAge, "ingest.batchAge", flagConfig.BatchAge, "how long a batch waits for more rows after its first before it is written")
	flag.IntVar(&flagConfig.PartitionsAheadDays, "ingest.partitionsAhead", flagConfig.PartitionsAheadDays, "daily partitions of orders made ahead of today")
	flag.IntVar(&flagConfig.RetentionDays, "ingest.retentionDays", flagConfig.RetentionDays, "detach (CONCURRENTLY) the daily partitions of orders older than this many days, never one holding orders of a sale still in sale_items; detached partitions stay as tables to archive and drop; 0 keeps all")
	flag.BoolVar(&flagConfig.Relay, "ingest.relay", flagConfig.Relay, "also publish the ledger's outbox (order events, stock releases) to Kafka; several processes may, one at a time")
	flag.DurationVar(&flagConfig.SessionTimeout, "ingest.sessionTimeout", flagConfig.SessionTimeout, "how long a worker that stopped heartbeating (a crashed process) holds its partitions before they move; the broker bounds it (group.min/max.session.timeout.ms)")
	flag.StringVar(&flagConfig.Group, "ingest.group", flagConfig.Group, "Kafka consumer group of the ingest workers")
}

// FlagConfig returns the configuration set by the command-line flags.
func FlagConfig() Config { return flagConfig }

func (c *Config) validate() error {
	switch {
	case len(c.Brokers) == 0:
		return fmt.Errorf("ingest: no Kafka brokers; possible fix: --kafka-brokers host:port")
	case c.Workers < 1:
		return fmt.Errorf("ingest: -ingest.workers must be at least 1")
	case c.BatchRows < 1:
		return fmt.Errorf("ingest: -ingest.batchRows must be at least 1")
	case c.BatchBytes < 1024:
		return fmt.Errorf("ingest: -ingest.batchBytes must be at least 1024")
	case c.RetentionDays < 0:
		return fmt.Errorf("ingest: -ingest.retentionDays must be 0 (keep all) or positive")
	case c.BatchAge <= 0:
		return fmt.Errorf("ingest: -ingest.batchAge must be positive")
	case c.SessionTimeout < 6*time.Second:
		return fmt.Errorf("ingest: -ingest.sessionTimeout must be at least 6s (two heartbeats of 3 s, and Kafka's group.min.session.timeout.ms)")
	}
	return nil
}
