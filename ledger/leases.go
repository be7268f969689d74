package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/flashgate/flashgate/lib/orderid"
)

// Stock leases let several edges sell one SKU without a shared counter: each
// edge (node) leases blocks of units from the ledger, sells them from its own
// striped counters, and gives back what it does not need.
//
// A unit is always in exactly one of three places: the SKU's pool, a lease,
// or an order holding stock. With, per lease, granted and returned as running
// totals and sold the units of the node's orders of the sale generation
// (whatever their state):
//
//	outstanding(lease) = granted - returned - (sold - sold_base)   units the edge may still sell
//	pool               = stock - taken - Σ outstanding    taken: units of orders holding stock
//
// An order that lands moves its units from outstanding to taken (pool
// unchanged); one cancelled or expired moves them from taken to the pool. So
// the pool is exact at any moment, with orders still in Kafka counted in
// their lease, and grants need not wait for ingest. An edge whose lease
// expires (it died, or lost the ledger) has its outstanding units reclaimed
// into the pool, once ingest has caught up past the end of its last produce.
//
// Every change to a SKU's leases locks its sale_items row, so grants, returns
// and reclaims of one SKU are serialised and never hand out a unit twice.
//
// Sold out is another question: the pool is empty and no lease holds a unit
// that may still be sold or come back (an order Kafka has not acknowledged
// may fail). Outstanding units include orders acknowledged but not yet in
// the ledger, which are sold; waiting for ingest to write them would make
// every client of a sold-out SKU wait as long as ingest lags. So each edge
// reports, with every grant, return and renewal, an upper bound of its
// lease's unsettled units (leased in, less the units of its orders the
// broker acknowledged; see edge/leases.go). A lease's units still open are
// least(outstanding, unsettled). A report can only be too high later: an
// edge gains units only by a grant, which adds them to its report.

// ErrLeaseLost is returned when a lease expired before it was renewed or
// returned: its units are (or will be) reclaimed by the ledger, and the edge
// must not sell them.
var ErrLeaseLost = errors.New("the stock lease expired")

// Grant is the answer to a lease request.
type Grant struct {
	Units int64 // units granted now (0 when the pool is empty)
	Pool  int64 // units left in the pool after the grant
	// Held is what all leases hold after the grant, this node's included:
	// units the edges may still sell, and orders not in the ledger yet.
	Held int64
	// Open is the part of Held whose fate is open: units the edges may
	// still sell and orders Kafka has not acknowledged (they may fail and
	// give their units back), as the edges last reported. With the pool
	// empty, the SKU is sold out only when this is 0 too.
	Open      int64
	ExpiresAt time.Time // the lease's expiry, by the ledger's clock
}

// LeaseStock leases up to want units of sku to node for ttl (renewing the
// node's lease of the SKU). Near the end of stock the grant shrinks: at most
// the pool divided among the nodes holding live leases, so that no edge sits
// on units another could sell. op numbers the request (increasing per node):
// asked again with the same op after an error, it answers what it granted
// then, if it had committed. unsettled is the node's report of its lease's
// units still open before the grant (see the top of this file).
func LeaseStock(ctx context.Context, db TxBeginner, sku string, node int, want int64, ttl time.Duration, op, unsettled int64) (Grant, error) {
	var g Grant
	err := pgx.BeginTxFunc(ctx, db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		st, err := lockPool(ctx, tx, sku)
		if err != nil {
			return err
		}
		l, ok := st.leases[node]
		switch {
		case ok && l.lastOp == op:
			g.Units, g.Pool, g.ExpiresAt = l.lastUnits, st.pool, l.expiresAt // answered already
			g.Held, g.Open = st.held(), st.open()
			return nil
		case ok && !l.live && l.outstanding > 0:
			// Expired with units out: they come back when the ledger
			// reclaims them (ReclaimExpiredLeases), not by reviving the lease.
			return ErrLeaseLost
		case !ok || !l.live:
			st.live++
		}
		share := st.pool
		if st.live > 1 {
			share = (st.pool + int64(st.live) - 1) / int64(st.live)
		}
		g.Units = max(0, min(want, share))
		g.Pool = st.pool - g.Units
		g.Held = st.held() + g.Units
		l.unsettled = &unsettled
		st.leases[node] = l
		g.Open = st.open() + g.Units
		// The pool itself is short of what was asked: the other edges give
		// back what they do not need (RenewLeases tells them).
		starved := st.pool < want
		if _, err := tx.Exec(ctx, `UPDATE sale_items SET starved_at = CASE WHEN $2 THEN now() END, starved_by = CASE WHEN $2 THEN $3::integer END
			WHERE sku = $1 AND ($2 OR starved_at IS NOT NULL)`, sku, starved, node); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `INSERT INTO stock_leases (sku, sale_started_at, node_id, granted, sold_base, last_op, last_units, expires_at, unsettled)
			VALUES ($1, $2, $3, $4, $5, $6, $4, now() + $7::interval, $8)
			ON CONFLICT (sku, sale_started_at, node_id) DO UPDATE
			SET granted = stock_leases.granted + EXCLUDED.granted, expires_at = EXCLUDED.expires_at,
				last_op = EXCLUDED.last_op, last_units = EXCLUDED.last_units, unsettled = EXCLUDED.unsettled, updated_at = now()
			RETURNING expires_at`, sku, st.startedAt, node, g.Units, st.sold[node], op, ttl.String(), max(0, unsettled)+g.Units).Scan(&g.ExpiresAt)
	})
	if errors.Is(err, ErrLeaseLost) {
		return Grant{}, err
	} else if err != nil {
		return Grant{}, fmt.Errorf("leasing stock of %s: %w", sku, err)
	}
	return g, nil
}

// ReturnStock gives units of node's lease of sku back to the pool. It fails
// with ErrLeaseLost when the lease has expired (the ledger reclaims its
// units itself; returning them too would count them twice). op numbers the
// request as for LeaseStock: a retry of a return that committed is a no-op.
// unsettled is the node's report of its lease's open units, the returned
// ones included.
func ReturnStock(ctx context.Context, db TxBeginner, sku string, node int, units, op, unsettled int64) error {
	if units <= 0 {
		return nil
	}
	return pgx.BeginTxFunc(ctx, db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		st, err := lockPool(ctx, tx, sku)
		if err != nil {
			return err
		}
		l, ok := st.leases[node]
		switch {
		case ok && l.lastOp == op:
			return nil // returned already
		case !ok || !l.live:
			return ErrLeaseLost
		case units > l.outstanding:
			return fmt.Errorf("returning %d units of %s, but node %d's lease holds %d", units, sku, node, l.outstanding)
		}
		_, err = tx.Exec(ctx, `UPDATE stock_leases SET returned = returned + $4, last_op = $5, last_units = $4, unsettled = $6, updated_at = now()
			WHERE sku = $1 AND sale_started_at = $2 AND node_id = $3`, sku, st.startedAt, node, units, op, max(0, unsettled-units))
		return err
	})
}

// Renewal is what RenewLeases found.
type Renewal struct {
	Lost     []string // SKUs whose lease had expired: stop selling their units
	Starving []string // SKUs renewed whose pool another edge found short lately: give back what is not needed
}

// Unsettled is an edge's report of one lease's open units (see the top).
type Unsettled struct {
	SKU   string
	Units int64
}

// RenewLeases extends node's live leases by ttl, and records the node's
// reports of their open units (leases not in reports keep theirs).
func RenewLeases(ctx context.Context, q Querier, node int, ttl time.Duration, reports []Unsettled) (Renewal, error) {
	var r Renewal
	skus, units := make([]string, len(reports)), make([]int64, len(reports))
	for i, u := range reports {
		skus[i], units[i] = u.SKU, max(0, u.Units)
	}
	rows, err := q.Query(ctx, `WITH renewed AS (
			UPDATE stock_leases l SET expires_at = now() + $2::interval, unsettled = COALESCE(u.units, l.unsettled)
			FROM sale_items s LEFT JOIN unnest($3::text[], $4::bigint[]) AS u(sku, units) ON u.sku = s.sku
			WHERE l.node_id = $1 AND l.sku = s.sku AND l.sale_started_at = s.sale_started_at AND l.expires_at > now()
			RETURNING l.sku, s.starved_at, s.starved_by)
		SELECT l.sku, r.sku IS NOT NULL, COALESCE(r.starved_at > now() - interval '5 seconds' AND r.starved_by <> $1, false)
		FROM stock_leases l JOIN sale_items s ON l.sku = s.sku AND l.sale_started_at = s.sale_started_at
		LEFT JOIN renewed r ON r.sku = l.sku
		WHERE l.node_id = $1`, node, ttl.String(), skus, units)
	if err != nil {
		return r, fmt.Errorf("renewing the stock leases of node %d: %w", node, err)
	}
	defer rows.Close()
	for rows.Next() {
		var sku string
		var renewed, starving bool
		if err := rows.Scan(&sku, &renewed, &starving); err != nil {
			return r, err
		}
		switch {
		case !renewed:
			r.Lost = append(r.Lost, sku)
		case starving:
			r.Starving = append(r.Starving, sku)
		}
	}
	if err := rows.Err(); err != nil {
		return r, fmt.Errorf("renewing the stock leases of node %d: %w", node, err)
	}
	return r, nil
}

// ExpireLeases ends node's leases now: what an edge does when it starts (a
// previous process with its node id may have held units it no longer has)
// and when it gave up its units after failing to renew. Their outstanding
// units come back through ReclaimExpiredLeases.
func ExpireLeases(ctx context.Context, q Querier, node int) error {
	rows, err := q.Query(ctx, `UPDATE stock_leases SET expires_at = now(), updated_at = now() WHERE node_id = $1 AND expires_at > now()`, node)
	if err != nil {
		return fmt.Errorf("expiring the stock leases of node %d: %w", node, err)
	}
	rows.Close()
	return rows.Err()
}

// Reclaimed is a lease whose outstanding units went back to the pool.
type Reclaimed struct {
	SKU   string
	Node  int
	Units int64
}

// ReclaimExpiredLeases puts the outstanding units of every lease expired for
// longer than grace (by the ledger's clock) back into its SKU's pool. Call
// it only when ingest has caught up with every record produced until grace
// ago: an edge stops selling before its lease expires, and its last produce
// lands within its delivery timeout (the grace to use); the units of orders
// still in Kafka would otherwise be counted free.
func ReclaimExpiredLeases(ctx context.Context, db TxBeginner, grace time.Duration) ([]Reclaimed, error) {
	skus, err := ExpiredLeaseSKUs(ctx, db, grace)
	if err != nil {
		return nil, err
	}
	var out []Reclaimed
	for _, sku := range skus {
		err := pgx.BeginTxFunc(ctx, db, pgx.TxOptions{}, func(tx pgx.Tx) error {
			st, err := lockPoolGrace(ctx, tx, sku, grace)
			if err != nil {
				return err
			}
			for node, l := range st.leases {
				if l.live || !l.expiredFor || l.outstanding <= 0 {
					continue
				}
				if _, err := tx.Exec(ctx, `UPDATE stock_leases SET returned = returned + $4, updated_at = now()
					WHERE sku = $1 AND sale_started_at = $2 AND node_id = $3`, sku, st.startedAt, node, l.outstanding); err != nil {
					return err
				}
				out = append(out, Reclaimed{SKU: sku, Node: node, Units: l.outstanding})
			}
			return nil
		})
		if err != nil {
			return out, fmt.Errorf("reclaiming the expired stock leases of %s: %w", sku, err)
		}
	}
	return out, nil
}

// ExpiredLeaseSKUs lists the SKUs of the current sales with a lease expired
// for longer than grace that may still hold units and was not reclaimed
// since (a reclaim updates it after its expiry; ExpireLeases sets both to
// now()): what ReclaimExpiredLeases would reclaim. One cheap query: a
// caller checks it before it waits for ingest to catch up.
func ExpiredLeaseSKUs(ctx context.Context, db TxBeginner, grace time.Duration) ([]string, error) {
	var skus []string
	err := pgx.BeginTxFunc(ctx, db, snapshotTx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT DISTINCT l.sku FROM stock_leases l JOIN sale_items s
			ON l.sku = s.sku AND l.sale_started_at = s.sale_started_at
			WHERE l.expires_at < now() - $1::interval AND l.granted > l.returned
				AND l.updated_at <= l.expires_at -- not reclaimed since it expired`, grace.String())
		if err != nil {
			return err
		}
		skus, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("finding expired stock leases: %w", err)
	}
	return skus, nil
}

// LeasePool is a SKU's pool and leases, for status pages and tests.
type LeasePool struct {
	Stock, Taken, Pool int64
	Outstanding        map[int]int64 // per node
}

// StockPool reads sku's pool and the outstanding units of each lease.
func StockPool(ctx context.Context, db TxBeginner, sku string) (LeasePool, error) {
	var p LeasePool
	err := pgx.BeginTxFunc(ctx, db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		st, err := lockPool(ctx, tx, sku)
		if err != nil {
			return err
		}
		p = LeasePool{Stock: st.stock, Taken: st.taken, Pool: st.pool, Outstanding: map[int]int64{}}
		for node, l := range st.leases {
			p.Outstanding[node] = l.outstanding
		}
		return nil
	})
	return p, err
}

type leaseState struct {
	outstanding int64
	unsettled   *int64 // the node's last report of its open units; nil: none
	live        bool   // not expired
	expiredFor  bool   // expired for longer than the grace asked (lockPoolGrace)
	expiresAt   time.Time
	lastOp      int64
	lastUnits   int64
}

type poolState struct {
	startedAt          time.Time
	stock, taken, pool int64
	sold               map[int]int64 // per node: units of its orders of the generation
	leases             map[int]leaseState
	live               int // leases not expired
}

// held is the units all leases hold.
func (st *poolState) held() int64 {
	var n int64
	for _, l := range st.leases {
		n += l.outstanding
	}
	return n
}

// open is the units of all leases whose fate is open (see the top).
func (st *poolState) open() int64 {
	var n int64
	for _, l := range st.leases {
		n += l.open()
	}
	return n
}

func (l leaseState) open() int64 {
	if l.unsettled != nil {
		return max(0, min(l.outstanding, *l.unsettled))
	}
	return l.outstanding
}

// lockPool locks sku's sale_items row and computes its pool and leases.
func lockPool(ctx context.Context, tx pgx.Tx, sku string) (poolState, error) {
	return lockPoolGrace(ctx, tx, sku, 0)
}

func lockPoolGrace(ctx context.Context, tx pgx.Tx, sku string, grace time.Duration) (poolState, error) {
	st := poolState{leases: map[int]leaseState{}, sold: map[int]int64{}}
	err := tx.QueryRow(ctx, `SELECT stock, sale_started_at FROM sale_items WHERE sku = $1 FOR UPDATE`, sku).Scan(&st.stock, &st.startedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("no sale item %q", sku)
	} else if err != nil {
		return st, err
	}
	// Per node: the units of its orders of this generation, and of those
	// the units that hold stock.
	rows, err := tx.Query(ctx, `SELECT `+orderid.NodeSQL("order_id")+`, sum(qty),
			COALESCE(sum(qty) FILTER (WHERE status NOT IN ('cancelled', 'expired')), 0)
		FROM orders WHERE sku = $1 AND created_at >= $2 GROUP BY 1`, sku, st.startedAt)
	if err != nil {
		return st, err
	}
	for rows.Next() {
		var node int
		var all, holding int64
		if err := rows.Scan(&node, &all, &holding); err != nil {
			rows.Close()
			return st, err
		}
		st.sold[node] = all
		st.taken += holding
	}
	if err := rows.Err(); err != nil {
		return st, err
	}
	rows, err = tx.Query(ctx, `SELECT node_id, granted - returned + sold_base, expires_at, expires_at > now(),
			expires_at < now() - $3::interval, last_op, last_units, unsettled
		FROM stock_leases WHERE sku = $1 AND sale_started_at = $2`, sku, st.startedAt, grace.String())
	if err != nil {
		return st, err
	}
	var held int64
	for rows.Next() {
		var node int
		var l leaseState
		var net int64
		if err := rows.Scan(&node, &net, &l.expiresAt, &l.live, &l.expiredFor, &l.lastOp, &l.lastUnits, &l.unsettled); err != nil {
			rows.Close()
			return st, err
		}
		// Never below zero: a node's orders beyond its lease would be a
		// bug, and counting them as negative holdings would grow the pool.
		l.outstanding = max(0, net-st.sold[node])
		st.leases[node] = l
		held += l.outstanding
		if l.live {
			st.live++
		}
	}
	if err := rows.Err(); err != nil {
		return st, err
	}
	st.pool = st.stock - st.taken - held
	return st, nil
}
