package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flashgate/flashgate/lib/orderid"
)

// ActorAdmin is the actor of changes an operator made through the admin
// plane (bulk cancel). The reason stays that of the change ("cancelled"):
// consumers that only read reason see an ordinary cancellation.
const ActorAdmin = "admin"

// MaxBulkCancel bounds the orders one CancelByAdmin call changes: they are
// locked and changed in one transaction.
const MaxBulkCancel = 1000

// ErrBulkInput wraps the refusals of a bulk request as a whole (too many
// ids, duplicates): the caller's mistake; nothing was tried.
var ErrBulkInput = errors.New("invalid bulk request")

// BulkResult is what a bulk change did to one order.
type BulkResult struct {
	OrderID int64
	// Record is the order after the change, or as it is when Err is an
	// *IllegalTransitionError; zero for ErrNotFound.
	Record Record
	// Err is nil when the order changed, ErrNotFound for an order the ledger
	// does not hold, an *IllegalTransitionError for one whose state does not
	// allow the change (it is left as it is).
	Err error
}

// CancelByAdmin cancels the orders ids that await payment, whoever placed
// them, and releases their units to their sales: each one the same
// transition as Cancel (one UPDATE conditional on status and version, its
// order_events row with actor "admin", its outbox rows and its numbered
// stock release). All ids are locked in one transaction, in id order (two
// bulk cancels cannot deadlock each other); an order another transaction
// holds is waited for. The results follow the order of ids. Orders that
// cannot be cancelled do not stop the others. An error return means nothing
// changed: ErrBulkInput (ids duplicated or more than MaxBulkCancel), or the
// ledger failing.
func CancelByAdmin(ctx context.Context, pool *pgxpool.Pool, ids []int64) ([]BulkResult, error) {
	if len(ids) > MaxBulkCancel {
		return nil, fmt.Errorf("%w: %d orders to cancel at once, at most %d", ErrBulkInput, len(ids), MaxBulkCancel)
	}
	seen := make(map[int64]struct{}, len(ids))
	var lookup []int64
	var created []time.Time
	for _, id := range ids {
		if _, dup := seen[id]; dup {
			return nil, fmt.Errorf("%w: order %d is listed twice", ErrBulkInput, id)
		}
		seen[id] = struct{}{}
		if orderid.Valid(id) { // an invalid id is not in the ledger
			lookup, created = append(lookup, id), append(created, orderid.Time(id))
		}
	}
	results := make([]BulkResult, len(ids))
	var steps []*step
	err := inTx(ctx, pool, func(tx pgx.Tx) error {
		steps = steps[:0]
		locked, err := lockOrders(ctx, tx, lookup, created)
		if err != nil {
			return err
		}
		at := make(map[int64]*step, len(locked))
		for i, id := range ids {
			results[i] = BulkResult{OrderID: id, Err: ErrNotFound}
			r, ok := locked[id]
			switch {
			case !ok:
			case r.Status != StatusPendingPayment:
				results[i].Record = r
				results[i].Err = &IllegalTransitionError{OrderID: id, From: r.Status, To: StatusCancelled}
			default:
				s := &step{rec: r, from: r.Status,
					ch: change{to: StatusCancelled, reason: ReasonCancelled, actor: ActorAdmin, release: true}}
				steps = append(steps, s)
				at[id] = s
			}
		}
		if err := applySteps(ctx, tx, steps); err != nil {
			return err
		}
		for i := range results {
			if s := at[results[i].OrderID]; s != nil {
				results[i].Record, results[i].Err = s.rec, nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	counted(steps)
	return results, nil
}

// lockOrders reads and locks the orders ids (created at created), in id
// order, and returns those the ledger holds.
func lockOrders(ctx context.Context, tx pgx.Tx, ids []int64, created []time.Time) (map[int64]Record, error) {
	out := make(map[int64]Record, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := tx.Query(ctx, `SELECT `+prefixed("o.", recordColumns)+`
		FROM orders o
		JOIN unnest($1::bigint[], $2::timestamptz[]) AS b(order_id, created_at)
			ON o.order_id = b.order_id AND o.created_at = b.created_at
		ORDER BY o.order_id
		FOR UPDATE OF o`, ids, created)
	if err != nil {
		return nil, fmt.Errorf("locking %d orders: %w", len(ids), err)
	}
	recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) { return scanRecord(row) })
	if err != nil {
		return nil, fmt.Errorf("locking %d orders: %w", len(ids), err)
	}
	for _, r := range recs {
		out[r.ID] = r
	}
	return out, nil
}
