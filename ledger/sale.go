package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SaleItem is a SKU on sale.
type SaleItem struct {
	SKU           string
	Stock         int64 // units for the whole sale
	PriceCents    int64
	PerUserLimit  int32 // units one user may buy; 0 = no limit
	StartsAt      time.Time
	EndsAt        time.Time // zero = open-ended
	SaleStartedAt time.Time // orders from this time on count against Stock (kept when replaced)
}

// PutSaleItem creates or replaces a sale item. Replacing keeps the sale's
// generation (SaleStartedAt), so units already sold still count. A new item's
// generation starts at it.SaleStartedAt, or now by the caller's clock: the
// clock that stamps order ids, so no order admitted after the PUT is dated
// before it.
func PutSaleItem(ctx context.Context, pool *pgxpool.Pool, it SaleItem) (SaleItem, error) {
	if it.SaleStartedAt.IsZero() {
		// Rounded down to the millisecond, the resolution of order ids: an
		// order admitted in the same millisecond after the PUT is dated that
		// millisecond, and must count (it did not, and a restart forgot it).
		it.SaleStartedAt = time.Now().Truncate(time.Millisecond)
	}
	err := pool.QueryRow(ctx, `INSERT INTO sale_items (sku, stock, price_cents, per_user_limit, starts_at, ends_at, sale_started_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (sku) DO UPDATE SET stock = EXCLUDED.stock, price_cents = EXCLUDED.price_cents,
			per_user_limit = EXCLUDED.per_user_limit, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
			updated_at = now()
		RETURNING sale_started_at`,
		it.SKU, it.Stock, it.PriceCents, it.PerUserLimit, nullTime(it.StartsAt), nullTime(it.EndsAt), it.SaleStartedAt).Scan(&it.SaleStartedAt)
	if err != nil {
		return it, fmt.Errorf("saving sale item %s: %w", it.SKU, err)
	}
	return it, nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// SaleItemState is a sale item with the units the ledger already holds orders for.
type SaleItemState struct {
	SaleItem
	TakenUnits int64 // units of its orders that hold stock (not cancelled or expired)
	Orders     int64 // its orders, whatever their state
	// ReleaseSeq is the number of the last stock release of the SKU, read in
	// the same snapshot as TakenUnits: the releases numbered above it (on
	// flash-sale.events) are of orders TakenUnits still counts.
	ReleaseSeq int64
}

// TxBeginner opens transactions: a *pgxpool.Pool or a *pgx.Conn.
type TxBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// snapshotTx is a read-only transaction that sees one snapshot for all its
// statements.
var snapshotTx = pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}

// LoadSaleItems returns every sale item with the units ordered since its sale
// started, as recorded in the ledger (orders still in Kafka are not counted:
// wait for ingest to catch up first), and its ReleaseSeq. Given a pool or a
// connection, it reads in a REPEATABLE READ transaction of its own; given a
// transaction, in that one.
func LoadSaleItems(ctx context.Context, q Querier) ([]SaleItemState, error) {
	if b, ok := q.(TxBeginner); ok {
		var items []SaleItemState
		err := pgx.BeginTxFunc(ctx, b, snapshotTx, func(tx pgx.Tx) (err error) {
			items, err = loadSaleItems(ctx, tx)
			return err
		})
		return items, err
	}
	return loadSaleItems(ctx, q)
}

// LoadSaleSnapshot returns what LoadSaleItems does and calls purchase with
// what LoadPurchases would, both from one snapshot: an edge that rebuilds its
// stock and purchase counters from it and then applies the releases
// numbered above each item's ReleaseSeq counts every released order exactly
// once in both.
func LoadSaleSnapshot(ctx context.Context, db TxBeginner, purchase func(user, sku string, units int64) error) ([]SaleItemState, error) {
	var items []SaleItemState
	err := pgx.BeginTxFunc(ctx, db, snapshotTx, func(tx pgx.Tx) (err error) {
		if items, err = loadSaleItems(ctx, tx); err != nil {
			return err
		}
		return LoadPurchases(ctx, tx, purchase)
	})
	return items, err
}

func loadSaleItems(ctx context.Context, q Querier) ([]SaleItemState, error) {
	rows, err := q.Query(ctx, `SELECT s.sku, s.stock, s.price_cents, s.per_user_limit, s.starts_at, s.ends_at, s.sale_started_at,
			COALESCE(o.taken, 0), COALESCE(o.orders, 0), s.release_seq
		FROM sale_items s LEFT JOIN LATERAL (
			SELECT sum(qty) FILTER (WHERE status NOT IN ('cancelled', 'expired')) AS taken, count(*) AS orders
			FROM orders WHERE sku = s.sku AND created_at >= s.sale_started_at) o ON true
		ORDER BY s.sku`)
	if err != nil {
		return nil, fmt.Errorf("loading sale items: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (SaleItemState, error) {
		var s SaleItemState
		var starts, ends *time.Time
		err := r.Scan(&s.SKU, &s.Stock, &s.PriceCents, &s.PerUserLimit, &starts, &ends, &s.SaleStartedAt, &s.TakenUnits, &s.Orders, &s.ReleaseSeq)
		if starts != nil {
			s.StartsAt = *starts
		}
		if ends != nil {
			s.EndsAt = *ends
		}
		return s, err
	})
}

// GetSaleItem returns one sale item.
func GetSaleItem(ctx context.Context, q Querier, sku string) (SaleItem, error) {
	var s SaleItem
	var starts, ends *time.Time
	err := q.QueryRow(ctx, `SELECT sku, stock, price_cents, per_user_limit, starts_at, ends_at, sale_started_at
		FROM sale_items WHERE sku = $1`, sku).Scan(&s.SKU, &s.Stock, &s.PriceCents, &s.PerUserLimit, &starts, &ends, &s.SaleStartedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, ErrNotFound
	}
	if starts != nil {
		s.StartsAt = *starts
	}
	if ends != nil {
		s.EndsAt = *ends
	}
	return s, err
}

// LoadIdempotencyKeys calls fn with each Idempotency-Key of the orders of
// the sale items' current sales: the user, the key, and the order the key
// belongs to (the first under it; a later order under the same key was
// cancelled as a duplicate). The edge loads them at start so that a retry
// after a restart replays the order it retries instead of making a second.
func LoadIdempotencyKeys(ctx context.Context, q Querier, fn func(user, key, sku string, qty, orderID int64) error) error {
	rows, err := q.Query(ctx, `SELECT o.user_id, o.idempotency_key, o.sku, o.qty, o.order_id
		FROM sale_items s JOIN orders o ON o.sku = s.sku AND o.created_at >= s.sale_started_at
		JOIN idempotency_keys k ON k.user_id = o.user_id AND k.idempotency_key = o.idempotency_key AND k.order_id = o.order_id
		WHERE o.idempotency_key IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("loading idempotency keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var user, key, sku string
		var qty, id int64
		if err := rows.Scan(&user, &key, &sku, &qty, &id); err != nil {
			return err
		}
		if err := fn(user, key, sku, qty, id); err != nil {
			return err
		}
	}
	return rows.Err()
}

// LoadPurchases calls fn with the units each user holds of each SKU that has a
// per-user limit, counting the orders of the SKU's current sale that hold
// stock (not cancelled or expired), to rebuild the edge's purchase counters
// at start. Prefer LoadSaleSnapshot, which reads them in the snapshot of the
// items' ReleaseSeq.
func LoadPurchases(ctx context.Context, q Querier, fn func(user, sku string, units int64) error) error {
	rows, err := q.Query(ctx, `SELECT o.user_id, o.sku, sum(o.qty)
		FROM sale_items s JOIN orders o ON o.sku = s.sku AND o.created_at >= s.sale_started_at
		WHERE s.per_user_limit > 0 AND o.status NOT IN ('cancelled', 'expired')
		GROUP BY o.user_id, o.sku`)
	if err != nil {
		return fmt.Errorf("loading purchases: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var user, sku string
		var units int64
		if err := rows.Scan(&user, &sku, &units); err != nil {
			return err
		}
		if err := fn(user, sku, units); err != nil {
			return err
		}
	}
	return rows.Err()
}

// SaleItemTerms returns every sale item without counting its orders: what an
// edge that leases its stock needs to learn of items put through another
// edge, cheaply enough to ask every second.
func SaleItemTerms(ctx context.Context, q Querier) ([]SaleItem, error) {
	rows, err := q.Query(ctx, `SELECT sku, stock, price_cents, per_user_limit, starts_at, ends_at, sale_started_at FROM sale_items ORDER BY sku`)
	if err != nil {
		return nil, fmt.Errorf("reading sale items: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (SaleItem, error) {
		var s SaleItem
		var starts, ends *time.Time
		err := r.Scan(&s.SKU, &s.Stock, &s.PriceCents, &s.PerUserLimit, &starts, &ends, &s.SaleStartedAt)
		if starts != nil {
			s.StartsAt = *starts
		}
		if ends != nil {
			s.EndsAt = *ends
		}
		return s, err
	})
}
