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
	batchRows      = metrics.NewHistogram(`flashgate_ingest_batch_rows`)
	batchBytes     = metrics.NewHistogram(`flashgate_ingest_batch_bytes`)
	// consumerLag is what the group has not committed of order.created:
	// the orders accepted but not yet in the ledger.
	consumerLag = metrics.NewGauge(`flashgate_ingest_consumer_lag_records`, nil)
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
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.maintainPartitions(ctx)
	}()
	go func() {
		defer s.wg.Done()
		s.watchLag(ctx)
	}()
	if cfg.Relay {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.relay(ctx)
		}()
	}
	return s, nil
}

// Stop stops the workers after their current batch (a batch not yet
// committed to the database is rolled back and redelivered later) and leaves
// the group.
func (s *Service) Stop() {
	s.stop()
	s.wg.Wait()
}

// relay publishes the ledger's outbox until ctx ends, restarting after an
// error.
func (s *Service) relay(ctx context.Context) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(s.cfg.Brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		broker.Compression(broker.CompressMin),
	}, s.cfg.KafkaOpts...)...)
	if err != nil {
		slog.Error("ingest: no client for the outbox relay; order events and stock releases are not published", "err", err)
		return
	}
	defer cl.Close()
	for ctx.Err() == nil {
		if err := ledger.RunRelay(ctx, s.pool, cl); err != nil && ctx.Err() == nil {
			slog.Error("ingest: outbox relay stopped; restarting", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// watchLag sets the consumer-lag gauge every few seconds.
func (s *Service) watchLag(ctx context.Context) {
	adm, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(s.cfg.Brokers...)}, s.cfg.KafkaOpts...)...)
	if err != nil {
		slog.Error("ingest: no client to measure the consumer lag", "err", err)
		return
	}
	defer adm.Close()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if lag, err := Lag(ctx, adm, s.cfg.Group); err == nil {
			consumerLag.Set(float64(lag))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Service) maintainPartitions(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if _, err := ledger.EnsurePartitionsAround(ctx, s.pool, time.Now(), s.cfg.PartitionsAheadDays); err != nil && ctx.Err() == nil {
			slog.Error("ingest: making partitions ahead failed; will retry", "err", err)
		}
		if s.cfg.RetentionDays > 0 {
			detached, err := ledger.DetachPartitionsBefore(ctx, s.pool, time.Now().AddDate(0, 0, -s.cfg.RetentionDays))
			if len(detached) > 0 {
				slog.Info("ingest: old partitions detached from orders (archive, then drop them)", "partitions", detached)
			}
			if err != nil && ctx.Err() == nil {
				slog.Error("ingest: detaching old partitions failed; will retry", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type worker struct {
	s    *Service
	id   int
	cl   *kgo.Client
	buf  []order.Order
	recs []*kgo.Record
	// commitPending: the offsets of batches already in the ledger are not
	// committed yet (a commit failed); retried while the partitions are quiet.
	commitPending bool
}

func newWorker(s *Service, id int) (*worker, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(s.cfg.Brokers...),
		kgo.ConsumerGroup(s.cfg.Group),
		kgo.SessionTimeout(s.cfg.SessionTimeout),
		kgo.ConsumeTopics(broker.TopicOrderCreated),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		// A rebalance waits until the batch in hand is in the database and its
		// offsets are committed: no partition is handed over mid-batch.
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchMaxWait(s.cfg.BatchAge),
		// Poison records go to the DLQ with acks=all before their offset is committed.
		kgo.RequiredAcks(kgo.AllISRAcks()),
	}, s.cfg.KafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("ingest: kafka client: %w", err)
	}
	return &worker{s: s, id: id, cl: cl, buf: make([]order.Order, 0, s.cfg.BatchRows), recs: make([]*kgo.Record, 0, s.cfg.BatchRows)}, nil
}

func (w *worker) run(ctx context.Context) {
	defer w.cl.Close() // leaves the group
	for ctx.Err() == nil {
		recs, ok := w.collect(ctx)
		if !ok {
			return
		}
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

// collect polls records until the batch is full (rows or bytes) or its age
// has passed since its first record. It returns false once the client is
// closed.
func (w *worker) collect(ctx context.Context) ([]*kgo.Record, bool) {
	cfg := &w.s.cfg
	w.recs = w.recs[:0]
	size := 0
	var closeAt time.Time
	for len(w.recs) < cfg.BatchRows && size < cfg.BatchBytes {
		pctx, cancel := ctx, context.CancelFunc(func() {})
		if len(w.recs) > 0 && time.Now().After(closeAt) {
			break
		}
		switch {
		case len(w.recs) > 0:
			pctx, cancel = context.WithDeadline(ctx, closeAt)
		case w.commitPending:
			// Nothing may arrive for a long time: retry the commit now and
			// then, or the group's lag never reaches zero.
			pctx, cancel = context.WithTimeout(ctx, cfg.RetryMax)
		}
		fetches := w.cl.PollRecords(pctx, cfg.BatchRows-len(w.recs))
		cancel()
		if fetches.IsClientClosed() {
			return nil, false
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				slog.Warn("ingest: fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		fetches.EachRecord(func(r *kgo.Record) {
			if len(w.recs) == 0 {
				closeAt = time.Now().Add(cfg.BatchAge)
			}
			w.recs = append(w.recs, r)
			size += len(r.Key) + len(r.Value)
		})
		if ctx.Err() != nil {
			break
		}
		if len(w.recs) == 0 {
			if w.commitPending {
				w.commit(ctx)
			}
			// Nothing in hand: let a rebalance go ahead before polling
			// again. A poll blocks rebalances until AllowRebalance, and the
			// group's recovery after a broker restart waits for that while
			// the next poll waits for the group: both waited forever (found
			// by TestFaultSchedule: the broker down, then no batch again).
			w.cl.AllowRebalance()
		}
	}
	if len(w.recs) > 0 {
		batchRows.Update(float64(len(w.recs)))
		batchBytes.Update(float64(size))
	}
	return w.recs, true
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
		if err != nil && ctx.Err() == nil { // on shutdown the batch is left to be redelivered (it may have committed)
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
	// The rows are durable: now the offsets may move.
	w.commit(ctx)
	return nil
}

// commit commits the offsets of everything polled: while rebalances are
// blocked that is exactly what is in the ledger, including the batches whose
// commit failed before. A failure is retried before the next batch or while
// the partitions are quiet; if the worker dies first, the batch is
// redelivered to the next owner and deduplicated by the staging path.
func (w *worker) commit(ctx context.Context) {
	if err := w.cl.CommitUncommittedOffsets(ctx); err != nil {
		if !w.commitPending {
			slog.Warn("ingest: offset commit failed; retrying (the rows are in the ledger: a redelivery is deduplicated)", "err", err)
		}
		commitErrTotal.Inc()
		w.commitPending = true
		return
	}
	if w.commitPending {
		slog.Info("ingest: offset commit succeeded after failing")
	}
	w.commitPending = false
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
