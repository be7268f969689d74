package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/orderid"
)

// ErrNotFound is returned for an order or sale item the ledger does not hold.
var ErrNotFound = errors.New("not found")

// PostgreSQL error codes the ledger reacts to.
const (
	codeUniqueViolation = "23505"
	codeCheckViolation  = "23514" // also "no partition of relation found for row"
)

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// IsUniqueViolation reports whether err is PostgreSQL's unique_violation.
func IsUniqueViolation(err error) bool { return pgCode(err) == codeUniqueViolation }

// IsNoPartition reports whether err says a row had no partition to go to.
func IsNoPartition(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == codeCheckViolation && pe.Routine == "ExecFindPartition"
}

var orderColumns = []string{"order_id", "user_id", "sku", "qty", "price_cents", "idempotency_key", "client_ip", "created_at"}

type orderRows struct {
	os  []order.Order
	i   int
	row [8]any
}

func (r *orderRows) Next() bool { r.i++; return r.i <= len(r.os) }
func (r *orderRows) Err() error { return nil }
func (r *orderRows) Values() ([]any, error) {
	o := &r.os[r.i-1]
	r.row = [8]any{o.ID, o.UserID, o.SKU, o.Qty, o.PriceCents, nullable(o.IdemKey), nullable(o.ClientIP), o.CreatedAt}
	return r.row[:], nil
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// InsertResult says what InsertOrders did.
type InsertResult struct {
	Inserted   int64 // rows new to the ledger
	Staged     bool  // the batch went through the staging (dedupe) path
	Duplicates int64 // orders cancelled because their Idempotency-Key belonged to another order
}

// InsertOrders writes a batch of orders in one transaction with
// synchronous_commit=on, exactly once per order id, together with their
// idempotency keys (see recordKeys):
//
//   - first optimistically, COPY straight into the partitioned table;
//   - if that hits a unique violation (a redelivery after a crash or a
//     rebalance), again through a temporary staging table and
//     INSERT … ON CONFLICT DO NOTHING.
//
// When a row has no partition, the missing daily partitions are made and the
// batch is tried again. Once InsertOrders returns nil every order of the batch
// is durably in the ledger.
func InsertOrders(ctx context.Context, pool *pgxpool.Pool, os []order.Order) (InsertResult, error) {
	if len(os) == 0 {
		return InsertResult{}, nil
	}
	for attempt := 0; ; attempt++ {
		n, dups, err := copyOrders(ctx, pool, os)
		if err == nil {
			return InsertResult{Inserted: n, Duplicates: dups}, nil
		}
		if IsUniqueViolation(err) {
			n, dups, err = stageOrders(ctx, pool, os)
			if err == nil {
				return InsertResult{Inserted: n, Staged: true, Duplicates: dups}, nil
			}
		}
		if IsNoPartition(err) && attempt == 0 {
			lo, hi := timeRange(os)
			if _, perr := EnsurePartitions(ctx, pool, lo, hi); perr != nil {
				return InsertResult{}, perr
			}
			continue
		}
		return InsertResult{}, err
	}
}

func timeRange(os []order.Order) (lo, hi time.Time) {
	lo, hi = os[0].CreatedAt, os[0].CreatedAt
	for i := range os {
		if t := os[i].CreatedAt; t.Before(lo) {
			lo = t
		} else if t.After(hi) {
			hi = t
		}
	}
	return lo, hi
}

func beginSync(ctx context.Context, pool *pgxpool.Pool) (pgx.Tx, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	// The offsets are committed after this transaction: it must be durable
	// even if the server's default is asynchronous commit.
	if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
		tx.Rollback(ctx)
		return nil, err
	}
	return tx, nil
}

func copyOrders(ctx context.Context, pool *pgxpool.Pool, os []order.Order) (n, dups int64, err error) {
	tx, err := beginSync(ctx, pool)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback(ctx)
	if n, err = tx.CopyFrom(ctx, pgx.Identifier{"orders"}, orderColumns, &orderRows{os: os}); err != nil {
		return 0, 0, err
	}
	if dups, err = recordKeys(ctx, tx, os); err != nil {
		return 0, 0, err
	}
	return n, dups, tx.Commit(ctx)
}

// recordKeys records the batch's idempotency keys and cancels the orders
// whose key already belongs to another order (the edge admitted a retry
// after the key left its cache), releasing their units like any
// cancellation (see cancelDuplicates). It returns how many it cancelled. A
// redelivered order finds its key with its own id: not a duplicate.
func recordKeys(ctx context.Context, tx pgx.Tx, os []order.Order) (int64, error) {
	var ids []int64
	var created []time.Time
	var users, keys []string
	for i := range os {
		if os[i].IdemKey != "" {
			ids = append(ids, os[i].ID)
			created = append(created, os[i].CreatedAt)
			users = append(users, os[i].UserID)
			keys = append(keys, os[i].IdemKey)
		}
	}
	if len(ids) == 0 {
		return 0, nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (user_id, idempotency_key, order_id)
		SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING`, users, keys, ids); err != nil {
		return 0, fmt.Errorf("recording idempotency keys: %w", err)
	}
	return cancelDuplicates(ctx, tx, ids, created, users, keys)
}

func stageOrders(ctx context.Context, pool *pgxpool.Pool, os []order.Order) (n, dups int64, err error) {
	tx, err := beginSync(ctx, pool)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE orders_staging
		(LIKE orders INCLUDING DEFAULTS) ON COMMIT DROP`); err != nil {
		return 0, 0, err
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"orders_staging"}, orderColumns, &orderRows{os: os}); err != nil {
		return 0, 0, err
	}
	tag, err := tx.Exec(ctx, `INSERT INTO orders SELECT * FROM orders_staging ON CONFLICT DO NOTHING`)
	if err != nil {
		return 0, 0, err
	}
	if dups, err = recordKeys(ctx, tx, os); err != nil {
		return 0, 0, err
	}
	return tag.RowsAffected(), dups, tx.Commit(ctx)
}

// Record is an order as the ledger holds it.
type Record struct {
	order.Order
	Status    string
	UpdatedAt time.Time
	Version   int32 // +1 on every change; transitions are conditional on it

	PaidCents     int64  // money the payment provider reported received
	RefundedCents int64  // money the payment provider reported refunded
	PaymentID     string // the provider's id of the payment that paid the order
	RefundDue     bool   // money was received that bought nothing: refund it
}

// recordColumns are the columns scanRecord reads, in its order.
const recordColumns = `order_id, user_id, sku, qty, price_cents, idempotency_key, client_ip, created_at, status, updated_at,
	version, paid_cents, refunded_cents, payment_id, refund_due`

func scanRecord(row pgx.Row) (Record, error) {
	var r Record
	var idem, ip, pid *string
	err := row.Scan(&r.ID, &r.UserID, &r.SKU, &r.Qty, &r.PriceCents, &idem, &ip, &r.CreatedAt, &r.Status, &r.UpdatedAt,
		&r.Version, &r.PaidCents, &r.RefundedCents, &pid, &r.RefundDue)
	if idem != nil {
		r.IdemKey = *idem
	}
	if ip != nil {
		r.ClientIP = *ip
	}
	if pid != nil {
		r.PaymentID = *pid
	}
	return r, err
}

// GetOrder returns the order with the given id. The id carries the partition
// key, so the lookup touches one partition.
func GetOrder(ctx context.Context, q Querier, id int64) (Record, error) {
	r, err := scanRecord(q.QueryRow(ctx, `SELECT `+recordColumns+`
		FROM orders WHERE order_id = $1 AND created_at = $2`, id, orderid.Time(id)))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, ErrNotFound
	}
	if err != nil {
		return r, fmt.Errorf("reading order %d: %w", id, err)
	}
	return r, nil
}

// MaxListOrders bounds one page of ListOrders.
const MaxListOrders = 100

// ListOrders returns up to limit of user's orders, newest first, placed
// before the order before (0: from the newest). The next page starts before
// the last order returned. The user's index (user_id, created_at) serves it.
func ListOrders(ctx context.Context, q Querier, userID string, before int64, limit int) ([]Record, error) {
	if limit < 1 || limit > MaxListOrders {
		return nil, fmt.Errorf("list limit %d outside [1, %d]", limit, MaxListOrders)
	}
	until, beforeID := time.Unix(1<<40, 0), int64(1<<63-1)
	if before > 0 {
		until, beforeID = orderid.Time(before), before
	}
	rows, err := q.Query(ctx, `SELECT `+recordColumns+` FROM orders
		WHERE user_id = $1 AND (created_at, order_id) < ($2, $3)
		ORDER BY created_at DESC, order_id DESC LIMIT $4`, userID, until, beforeID, limit)
	if err != nil {
		return nil, fmt.Errorf("listing the orders of %q: %w", userID, err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Querier is what read queries need: a pool, a connection or a transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// FindOrders returns which of ids the ledger holds. The ids' times bound the
// partitions scanned.
func FindOrders(ctx context.Context, q Querier, ids []int64) (map[int64]bool, error) {
	found := make(map[int64]bool, len(ids))
	if len(ids) == 0 {
		return found, nil
	}
	lo, hi := ids[0], ids[0]
	for _, id := range ids {
		lo, hi = min(lo, id), max(hi, id)
	}
	rows, err := q.Query(ctx, `SELECT order_id FROM orders WHERE order_id = ANY($1) AND created_at BETWEEN $2 AND $3`,
		ids, orderid.Time(lo), orderid.Time(hi))
	if err != nil {
		return nil, fmt.Errorf("looking up %d orders: %w", len(ids), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		found[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("looking up %d orders: %w", len(ids), err)
	}
	return found, nil
}
