package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
)

// EventFormatVersion is the value of "v" in the lifecycle records.
const EventFormatVersion = 1

// EventIDHeader is the record header carrying the event id (decimal), the
// same on every record one event produced: consumers dedupe by it.
const EventIDHeader = "event_id"

var outboxColumns = []string{"topic", "key", "value", "event_id"}

// writeOutbox queues the Kafka records of applied steps, in step order:
// order.updated for every event (keyed by user id, as order.created, so an
// order's records share a partition), order.cancelled for a cancellation or
// an expiry, order.completed for a fulfilment, and a stock_released on
// flash-sale.events (keyed by SKU) for a release.
func writeOutbox(ctx context.Context, tx pgx.Tx, steps []*step) error {
	rows := make([][]any, 0, 2*len(steps))
	for _, s := range steps {
		v := appendOrderEvent(nil, s)
		rows = append(rows, []any{broker.TopicOrderUpdated, s.rec.UserID, v, s.eventID})
		if s.from != s.ch.to {
			switch s.ch.to {
			case StatusCancelled, StatusExpired:
				rows = append(rows, []any{broker.TopicOrderCancelled, s.rec.UserID, v, s.eventID})
			case StatusFulfilled:
				rows = append(rows, []any{broker.TopicOrderCompleted, s.rec.UserID, v, s.eventID})
			}
		}
		if s.releaseSeq > 0 {
			rows = append(rows, []any{broker.TopicSaleEvents, s.rec.SKU, appendStockReleased(nil, s), s.eventID})
		}
	}
	// COPY takes each row's id from the sequence in the order given.
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"outbox"}, outboxColumns, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("writing %d outbox records: %w", len(rows), err)
	}
	return nil
}

// appendOrderEvent appends the value of the order.updated (order.cancelled,
// order.completed) record of an applied step; see docs/records.md.
func appendOrderEvent(dst []byte, s *step) []byte {
	r := &s.rec
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, EventFormatVersion, 10)
	dst = append(dst, `,"event_id":"`...)
	dst = strconv.AppendInt(dst, s.eventID, 10)
	dst = append(dst, `","order_id":"`...)
	dst = strconv.AppendInt(dst, r.ID, 10)
	dst = append(dst, `","user_id":`...)
	dst = order.AppendJSONString(dst, r.UserID)
	dst = append(dst, `,"sku":`...)
	dst = order.AppendJSONString(dst, r.SKU)
	dst = append(dst, `,"qty":`...)
	dst = strconv.AppendInt(dst, int64(r.Qty), 10)
	dst = append(dst, `,"price_cents":`...)
	dst = strconv.AppendInt(dst, r.PriceCents, 10)
	dst = append(dst, `,"from":`...)
	dst = order.AppendJSONString(dst, s.from)
	dst = append(dst, `,"status":`...)
	dst = order.AppendJSONString(dst, r.Status)
	dst = append(dst, `,"reason":`...)
	dst = order.AppendJSONString(dst, s.ch.reason)
	dst = append(dst, `,"actor":`...)
	dst = order.AppendJSONString(dst, s.ch.actor)
	dst = append(dst, `,"version":`...)
	dst = strconv.AppendInt(dst, int64(r.Version), 10)
	dst = append(dst, `,"amount_cents":`...)
	dst = strconv.AppendInt(dst, s.ch.amount, 10)
	dst = append(dst, `,"paid_cents":`...)
	dst = strconv.AppendInt(dst, r.PaidCents, 10)
	dst = append(dst, `,"refunded_cents":`...)
	dst = strconv.AppendInt(dst, r.RefundedCents, 10)
	dst = append(dst, `,"refund_due":`...)
	dst = strconv.AppendBool(dst, r.RefundDue)
	if r.PaymentID != "" {
		dst = append(dst, `,"payment_id":`...)
		dst = order.AppendJSONString(dst, r.PaymentID)
	}
	if s.releaseSeq > 0 {
		dst = append(dst, `,"release_seq":`...)
		dst = strconv.AppendInt(dst, s.releaseSeq, 10)
	}
	dst = append(dst, `,"at":"`...)
	dst = order.AppendTime(dst, s.at)
	dst = append(dst, `","created_at":"`...)
	dst = order.AppendTime(dst, r.CreatedAt)
	return append(dst, `"}`...)
}

// appendStockReleased appends the value of the flash-sale.events record of a
// release; see docs/records.md.
func appendStockReleased(dst []byte, s *step) []byte {
	r := &s.rec
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, EventFormatVersion, 10)
	dst = append(dst, `,"type":"stock_released","sku":`...)
	dst = order.AppendJSONString(dst, r.SKU)
	dst = append(dst, `,"qty":`...)
	dst = strconv.AppendInt(dst, int64(r.Qty), 10)
	dst = append(dst, `,"user_id":`...)
	dst = order.AppendJSONString(dst, r.UserID)
	dst = append(dst, `,"order_id":"`...)
	dst = strconv.AppendInt(dst, r.ID, 10)
	dst = append(dst, `","release_seq":`...)
	dst = strconv.AppendInt(dst, s.releaseSeq, 10)
	dst = append(dst, `,"reason":`...)
	dst = order.AppendJSONString(dst, s.ch.reason)
	dst = append(dst, `,"event_id":"`...)
	dst = strconv.AppendInt(dst, s.eventID, 10)
	dst = append(dst, `","at":"`...)
	dst = order.AppendTime(dst, s.at)
	return append(dst, `"}`...)
}

// RelayConfig configures the outbox relay.
type RelayConfig struct {
	// Batch: outbox rows read, produced and deleted per round. Larger
	// rounds amortise the produce round trip and the DELETE; each round
	// waits for all its acks.
	Batch int
	// Poll: how long an idle relay waits before looking for new rows again:
	// the most a change waits before it is published, beyond the produce.
	Poll time.Duration
	// Standby: how often a relay that another one holds off tries to take
	// over: the longest the outbox waits after the publishing relay died.
	Standby time.Duration
	// ProduceTimeout bounds one round's wait for acks; past it the round's
	// rows stay and are published again (at least once).
	ProduceTimeout time.Duration
}

// DefaultRelayConfig returns the defaults.
func DefaultRelayConfig() RelayConfig {
	return RelayConfig{Batch: 1000, Poll: 50 * time.Millisecond, Standby: time.Second, ProduceTimeout: 30 * time.Second}
}

// MaxRelayBatch bounds RelayConfig.Batch.
const MaxRelayBatch = 100_000

func (c *RelayConfig) validate() error {
	switch {
	case c.Batch < 1 || c.Batch > MaxRelayBatch:
		return fmt.Errorf("relay batch %d outside [1, %d]", c.Batch, MaxRelayBatch)
	case c.Poll <= 0 || c.Standby <= 0:
		return fmt.Errorf("relay poll intervals %v and %v must be positive", c.Poll, c.Standby)
	case c.ProduceTimeout <= 0:
		return fmt.Errorf("relay produce timeout %v is not positive", c.ProduceTimeout)
	}
	return nil
}

// relayLockID makes one relay publish at a time (pg_advisory_lock), so the
// outbox leaves in id order.
const relayLockID = 0x72656c6179 // "relay"

// ErrRelayBusy: another relay holds the outbox.
var ErrRelayBusy = errors.New("another relay is publishing the outbox")

var (
	outboxPublished = metrics.NewCounter(`flashgate_ledger_outbox_published_total`)
	outboxErrors    = metrics.NewCounter(`flashgate_ledger_outbox_errors_total`)
	relayActive     = metrics.NewGauge(`flashgate_ledger_outbox_relay_active`, nil)
)

// relayBeforeDelete, when set (tests), runs after a round's records were
// acked and before their rows are deleted; an error stops the round there,
// as a crash would.
var relayBeforeDelete func() error

// RunRelay publishes the outbox to Kafka with the default configuration
// until ctx is done; see RunRelayConfig.
func RunRelay(ctx context.Context, pool *pgxpool.Pool, cl *kgo.Client) error {
	return RunRelayConfig(ctx, pool, cl, DefaultRelayConfig())
}

// RunRelayConfig publishes the outbox to Kafka until ctx is done, then
// returns nil. Any number may run: one holds a PostgreSQL advisory lock and
// publishes, the others wait for it. Rows leave in id order (which per order
// and per SKU is the order of the changes), keyed, each record with the
// EventIDHeader; a row is deleted only after its record was acked, so a
// crash publishes again what was not yet deleted: consumers see every
// record at least once and dedupe by event id (releases: by release_seq).
//
// cl must keep per-partition order: the idempotent producer (kgo's default)
// with the default unlimited retries, and a partitioner that hashes keys.
func RunRelayConfig(ctx context.Context, pool *pgxpool.Pool, cl *kgo.Client, cfg RelayConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	for ctx.Err() == nil {
		err := relaySession(ctx, pool, cl, cfg)
		if err != nil && ctx.Err() == nil {
			outboxErrors.Inc()
			slog.Error("ledger: outbox relay failed; will retry", "err", err)
			sleep(ctx, time.Second)
		}
	}
	return nil
}

// relaySession takes the relay lock on a connection of its own and
// publishes until ctx is done or an error; if another relay holds the lock
// it waits cfg.Standby and returns.
func relaySession(ctx context.Context, pool *pgxpool.Pool, cl *kgo.Client, cfg RelayConfig) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", relayLockID).Scan(&locked); err != nil || !locked {
		conn.Release()
		if err == nil {
			sleep(ctx, cfg.Standby)
		}
		return err
	}
	defer func() {
		relayActive.Set(0)
		// The lock belongs to the session: a connection that cannot give
		// it back must not return to the pool holding it.
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", relayLockID); err != nil {
			conn.Conn().Close(context.WithoutCancel(ctx)) //nolint:errcheck // closing a broken connection
		}
		conn.Release()
	}()
	relayActive.Set(1)
	slog.Info("ledger: outbox relay publishing")
	for {
		n, err := relayRound(ctx, conn.Conn(), cl, cfg)
		if err != nil {
			return err
		}
		if n < cfg.Batch && !sleep(ctx, cfg.Poll) {
			return nil
		}
	}
}

// RelayOnce publishes one round of at most max outbox rows and returns how
// many it published, or ErrRelayBusy while another relay runs.
func RelayOnce(ctx context.Context, pool *pgxpool.Pool, cl *kgo.Client, max int) (int, error) {
	cfg := DefaultRelayConfig()
	cfg.Batch = max
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", relayLockID).Scan(&locked); err != nil {
		return 0, err
	}
	if !locked {
		return 0, ErrRelayBusy
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", relayLockID); err != nil {
			conn.Conn().Close(context.WithoutCancel(ctx)) //nolint:errcheck // closing a broken connection
		}
	}()
	return relayRound(ctx, conn.Conn(), cl, cfg)
}

// relayRound publishes the oldest rows of the outbox and deletes those
// acked. A record that failed fails the records after it in its partition
// too (the idempotent producer keeps a partition's order), so the rows left
// are republished, in order, next round.
func relayRound(ctx context.Context, conn *pgx.Conn, cl *kgo.Client, cfg RelayConfig) (int, error) {
	rows, err := conn.Query(ctx, `SELECT id, topic, key, value, event_id FROM outbox ORDER BY id LIMIT $1`, cfg.Batch)
	if err != nil {
		return 0, fmt.Errorf("reading the outbox: %w", err)
	}
	var ids []int64
	var recs []*kgo.Record
	for rows.Next() {
		var id, eventID int64
		r := &kgo.Record{}
		var key string
		if err := rows.Scan(&id, &r.Topic, &key, &r.Value, &eventID); err != nil {
			rows.Close()
			return 0, fmt.Errorf("reading the outbox: %w", err)
		}
		r.Key = []byte(key)
		r.Headers = []kgo.RecordHeader{{Key: EventIDHeader, Value: strconv.AppendInt(nil, eventID, 10)}}
		ids = append(ids, id)
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("reading the outbox: %w", err)
	}
	if len(recs) == 0 {
		return 0, nil
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.ProduceTimeout)
	results := cl.ProduceSync(pctx, recs...)
	cancel()
	acked := ids[:0:0]
	var firstErr error
	for i, res := range results {
		if res.Err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("publishing outbox row %d to %s: %w", ids[i], recs[i].Topic, res.Err)
			}
			continue
		}
		acked = append(acked, ids[i])
	}
	if len(acked) > 0 {
		if relayBeforeDelete != nil {
			if err := relayBeforeDelete(); err != nil {
				return 0, err
			}
		}
		if _, err := conn.Exec(ctx, `DELETE FROM outbox WHERE id = ANY($1)`, acked); err != nil {
			return 0, fmt.Errorf("deleting %d published outbox rows (they will be published again): %w", len(acked), err)
		}
		outboxPublished.Add(len(acked))
	}
	return len(acked), firstErr
}

// sleep waits d or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
