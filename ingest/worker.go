package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
)

var (
	batchesTotal   = metrics.NewCounter(`flashgate_ingest_batches_total`)
	rowsTotal      = metrics.NewCounter(`flashgate_ingest_rows_total`)
	rowsNewTotal   = metrics.NewCounter(`flashgate_ingest_rows_inserted_total`)
	stagedTotal    = metrics.NewCounter(`flashgate_ingest_staging_fallbacks_total`)
	dlqTotal       = metrics.NewCounter(`flashgate_ingest_dlq_total`)
	dupsTotal      = metrics.NewCounter(`flashgate_ingest_duplicate_idempotency_keys_total`)
	dbErrorsTotal  = metrics.NewCounter(`flashgate_ingest_db_errors_total`)
	commitErrTotal = metrics.NewCounter(`flashgate_ingest_offset_commit_errors_total`)
	batchDuration  = metrics.NewHistogram(`flashgate_ingest_batch_duration_seconds`)
)

// Service runs the ingest workers of one process.
type Service struct {
	cfg  Config
	pool *pgxpool.Pool
	wg   sync.WaitGroup
	stop context.CancelFunc
	errc chan error
}

// Start starts cfg.Workers consumer workers writing into pool. They run until
// Stop, retrying database errors forever (with backoff) without committing.
func Start(cfg Config, pool *pgxpool.Pool) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{cfg: cfg, pool: pool, stop: cancel, errc: make(chan error, cfg.Workers)}
	for i := 0; i < cfg.Workers; i++ {
		w, err := newWorker(s, i)
		if err != nil {
			cancel()
			return nil, err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			w.run(ctx)
		}()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.maintainPartitions(ctx)
	}()
	return s, nil
}

// Stop stops the workers after their current batch (a batch not yet
// committed to the database is rolled back and redelivered later) and leaves
// the group.
func (s *Service) Stop() {
	s.stop()
	s.wg.Wait()
}

func (s *Service) maintainPartitions(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if _, err := ledger.EnsurePartitionsAround(ctx, s.pool, time.Now(), s.cfg.PartitionsAheadDays); err != nil && ctx.Err() == nil {
			slog.Error("ingest: making partitions ahead failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type worker struct {
	s   *Service
	id  int
	cl  *kgo.Client
	buf []order.Order
}

func newWorker(s *Service, id int) (*worker, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(s.cfg.Brokers...),
		kgo.ConsumerGroup(s.cfg.Group),
		kgo.ConsumeTopics(broker.TopicOrderCreated),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		// A rebalance waits until the batch in hand is in the database and its
		// offsets are committed: no partition is handed over mid-batch.
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchMaxWait(s.cfg.FetchMaxWait),
		// Poison records go to the DLQ with acks=all before their offset is committed.
		kgo.RequiredAcks(kgo.AllISRAcks()),
	}, s.cfg.KafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("ingest: kafka client: %w", err)
	}
	return &worker{s: s, id: id, cl: cl, buf: make([]order.Order, 0, s.cfg.BatchRows)}, nil
}

func (w *worker) run(ctx context.Context) {
	defer w.cl.Close() // leaves the group
	for ctx.Err() == nil {
		fetches := w.cl.PollRecords(ctx, w.s.cfg.BatchRows)
		if fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				slog.Warn("ingest: fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		recs := fetches.Records()
		if len(recs) > 0 {
			if err := w.handle(ctx, recs); err != nil {
				// Only shutdown gets here: the batch is not committed and
				// will be redelivered to whoever owns the partitions next.
				w.cl.AllowRebalance()
				return
			}
		}
		w.cl.AllowRebalance()
	}
}

// handle writes recs to the ledger (retrying until it succeeds or ctx ends),
// then commits their offsets.
func (w *worker) handle(ctx context.Context, recs []*kgo.Record) error {
	start := time.Now()
	w.buf = w.buf[:0]
	for _, r := range recs {
		var o order.Order
		if err := order.Decode(r.Value, &o); err != nil {
			if err := w.deadLetter(ctx, r, err); err != nil {
				return err
			}
			continue
		}
		w.buf = append(w.buf, o)
	}
	var res ledger.InsertResult
	err := retry(ctx, w.s.cfg.RetryMax, func() (err error) {
		res, err = ledger.InsertOrders(ctx, w.s.pool, w.buf)
		if err != nil {
			dbErrorsTotal.Inc()
			slog.Warn("ingest: batch not written; retrying", "rows", len(w.buf), "err", err)
		}
		return err
	})
	if err != nil {
		return err
	}
	batchesTotal.Inc()
	rowsTotal.Add(len(w.buf))
	rowsNewTotal.Add(int(res.Inserted))
	if res.Staged {
		stagedTotal.Inc()
	}
	if res.Duplicates > 0 {
		dupsTotal.Add(int(res.Duplicates))
		slog.Warn("ingest: orders cancelled as duplicates of an earlier order with the same Idempotency-Key (the key had left the edge's cache; see -edge.idempotencyBytes)", "orders", res.Duplicates)
	}
	batchDuration.UpdateDuration(start)
	// The rows are durable: now the offsets may move. A failure here only
	// means a redelivery, which the staging path makes harmless.
	if err := w.cl.CommitRecords(ctx, recs...); err != nil {
		commitErrTotal.Inc()
		slog.Warn("ingest: offset commit failed; the batch will be redelivered and deduplicated", "err", err)
	}
	return nil
}

func (w *worker) deadLetter(ctx context.Context, r *kgo.Record, reason error) error {
	dlqTotal.Inc()
	slog.Warn("ingest: poison record to the DLQ", "partition", r.Partition, "offset", r.Offset, "reason", reason)
	dl := &kgo.Record{
		Topic: broker.TopicOrderDLQ,
		Key:   r.Key,
		Value: r.Value,
		Headers: append(r.Headers[:len(r.Headers):len(r.Headers)],
			kgo.RecordHeader{Key: "dlq.reason", Value: []byte(reason.Error())},
			kgo.RecordHeader{Key: "dlq.source", Value: fmt.Appendf(nil, "%s/%d/%d", r.Topic, r.Partition, r.Offset)}),
	}
	return retry(ctx, w.s.cfg.RetryMax, func() error {
		return w.cl.ProduceSync(ctx, dl).FirstErr()
	})
}

// retry calls fn until it succeeds or ctx ends, with exponential backoff and
// full jitter, starting at 50ms and capped at max.
func retry(ctx context.Context, max time.Duration, fn func() error) error {
	backoff := 50 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(rand.N(backoff) + time.Millisecond):
		}
		backoff = min(2*backoff, max)
	}
}
