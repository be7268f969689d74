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
	Lost      bool      // LeaseStocks: the lease expired with units out (ErrLeaseLost)
}

// LeaseStock leases up to want units of sku to node for ttl (renewing the
// node's lease of the SKU). Near the end of stock the grant shrinks: at most
// the pool divided among the nodes holding live leases, so that no edge sits
// on units another could sell. op numbers the request (increasing per node):
// asked again with the same op after an error, it answers what it granted
// then, if it had committed. unsettled is the node's report of its lease's
// units still open before the grant (see the top of this file).
func LeaseStock(ctx context.Context, db TxBeginner, sku string, node int, want int64, ttl time.Duration, op, unsettled int64) (Grant, error) {
	gs, err := LeaseStocks(ctx, db, node, ttl, []LeaseRequest{{SKU: sku, Want: want, Op: op, Unsettled: unsettled}})
	switch {
	case err != nil:
		return Grant{}, err
	case gs[0].Lost:
		return Grant{}, ErrLeaseLost
	}
	return gs[0], nil
}

// LeaseRequest asks for units of one SKU (see LeaseStock).
type LeaseRequest struct {
	SKU       string
	Want      int64
	Op        int64
	Unsettled int64
}

// LeaseStocks answers several lease requests of node, for distinct SKUs,
// in one transaction of six statements whatever their number: an edge tops
// up a thousand SKUs of a sale at once, and one transaction per SKU made it
// wait for round trips. The SKUs' rows are locked in SKU order, so batches
// of several edges never deadlock. A grant whose lease expired with units
// out is answered Lost (ErrLeaseLost for LeaseStock); a SKU the ledger does
// not know gets nothing.
func LeaseStocks(ctx context.Context, db TxBeginner, node int, ttl time.Duration, reqs []LeaseRequest) ([]Grant, error) {
	grants := make([]Grant, len(reqs))
	if len(reqs) == 0 {
		return grants, nil
	}
	err := pgx.BeginTxFunc(ctx, db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		skus := make([]string, len(reqs))
		seen := make(map[string]bool, len(reqs))
		for i, r := range reqs {
			if seen[r.SKU] { // two grants computed from one pool would hand out its units twice
				return fmt.Errorf("SKU %s asked for twice in one batch", r.SKU)
			}
			seen[r.SKU] = true
			skus[i] = r.SKU
		}
		pools, err := lockPools(ctx, tx, skus, 0)
		if err != nil {
			return err
		}
		var again struct {
			skus []string
			open []int64
		} // answered already: their reports
		var up struct { // the rows to write, as columns
			skus     []string
			started  []time.Time
			units    []int64
			base     []int64
			ops      []int64
			open     []int64
			starved  []bool
			granting []int // request index of each row
		}
		for i, r := range reqs {
			st, g := pools[r.SKU], &grants[i]
			if st == nil {
				continue
			}
			l, ok := st.leases[node]
			switch {
			case ok && l.lastOp == r.Op:
				// Answered already. The node's report leaves out the units
				// it never heard it got: count them in again.
				unsettled := max(0, r.Unsettled) + l.lastUnits
				l.unsettled = &unsettled
				st.leases[node] = l
				g.Units, g.Pool, g.ExpiresAt = l.lastUnits, st.pool, l.expiresAt
				g.Held, g.Open = st.held(), st.open()
				again.skus, again.open = append(again.skus, r.SKU), append(again.open, unsettled)
				continue
			case ok && !l.live && l.outstanding > 0:
				// Expired with units out: they come back when the ledger
				// reclaims them (ReclaimExpiredLeases), not by reviving the lease.
				g.Lost = true
				continue
			case !ok || !l.live:
				st.live++
			}
			share := st.pool
			if st.live > 1 {
				share = (st.pool + int64(st.live) - 1) / int64(st.live)
			}
			g.Units = max(0, min(r.Want, share))
			g.Pool = st.pool - g.Units
			g.Held = st.held() + g.Units
			unsettled := max(0, r.Unsettled)
			l.unsettled = &unsettled
			st.leases[node] = l
			g.Open = st.open() + g.Units
			up.skus = append(up.skus, r.SKU)
			up.started = append(up.started, st.startedAt)
			up.units = append(up.units, g.Units)
			up.base = append(up.base, st.sold[node])
			up.ops = append(up.ops, r.Op)
			up.open = append(up.open, unsettled+g.Units)
			// The pool itself is short of what was asked: the other edges
			// give back what they do not need (RenewLeases tells them).
			up.starved = append(up.starved, st.pool < r.Want)
			up.granting = append(up.granting, i)
		}
		if len(again.skus) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE stock_leases l SET unsettled = u.open
				FROM sale_items s JOIN unnest($2::text[], $3::bigint[]) AS u(sku, open) ON u.sku = s.sku
				WHERE l.node_id = $1 AND l.sku = s.sku AND l.sale_started_at = s.sale_started_at`, node, again.skus, again.open); err != nil {
				return err
			}
		}
		if len(up.skus) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE sale_items s SET starved_at = CASE WHEN u.starved THEN now() END,
				starved_by = CASE WHEN u.starved THEN $3::integer END
			FROM unnest($1::text[], $2::bool[]) AS u(sku, starved)
			WHERE s.sku = u.sku AND (u.starved OR s.starved_at IS NOT NULL)`, up.skus, up.starved, node); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `INSERT INTO stock_leases (sku, sale_started_at, node_id, granted, sold_base, last_op, last_units, expires_at, unsettled)
			SELECT u.sku, u.started, $1, u.units, u.base, u.op, u.units, now() + $2::interval, u.open
			FROM unnest($3::text[], $4::timestamptz[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[]) AS u(sku, started, units, base, op, open)
			ON CONFLICT (sku, sale_started_at, node_id) DO UPDATE
			SET granted = stock_leases.granted + EXCLUDED.granted, expires_at = EXCLUDED.expires_at,
				last_op = EXCLUDED.last_op, last_units = EXCLUDED.last_units, unsettled = EXCLUDED.unsettled, updated_at = now()
			RETURNING sku, expires_at`, node, ttl.String(), up.skus, up.started, up.units, up.base, up.ops, up.open)
		if err != nil {
			return err
		}
		expires := make(map[string]time.Time, len(up.skus))
		for rows.Next() {
			var sku string
			var at time.Time
			if err := rows.Scan(&sku, &at); err != nil {
				rows.Close()
				return err
			}
			expires[sku] = at
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, i := range up.granting {
			grants[i].ExpiresAt = expires[reqs[i].SKU]
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("leasing stock of %d SKUs: %w", len(reqs), err)
	}
	return grants, nil
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

// ReportUnsettled records node's reports of its live leases' open units
// (see the top of this file), without renewing them: an edge whose last
// open units of a SKU were just acknowledged says so at once, so that a
// sold-out answer elsewhere does not wait for its next renewal.
func ReportUnsettled(ctx context.Context, q Querier, node int, reports []Unsettled) error {
	if len(reports) == 0 {
		return nil
	}
	skus, units := unsettledColumns(reports)
	rows, err := q.Query(ctx, `UPDATE stock_leases l SET unsettled = u.units
		FROM sale_items s JOIN unnest($2::text[], $3::bigint[]) AS u(sku, units) ON u.sku = s.sku
		WHERE l.node_id = $1 AND l.sku = s.sku AND l.sale_started_at = s.sale_started_at AND l.expires_at > now()`, node, skus, units)
	if err != nil {
		return fmt.Errorf("reporting the open units of node %d's stock leases: %w", node, err)
	}
	rows.Close()
	return rows.Err()
}

// StarvingSKUs lists the SKUs of node's live leases whose pool another node
// found short lately (what RenewLeases reports as Starving): a read, so that
// edges holding units learn of it more often than they renew.
func StarvingSKUs(ctx context.Context, q Querier, node int) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT l.sku FROM stock_leases l JOIN sale_items s ON l.sku = s.sku AND l.sale_started_at = s.sale_started_at
		WHERE l.node_id = $1 AND l.expires_at > now() AND s.starved_at > now() - interval '5 seconds' AND s.starved_by <> $1`, node)
	if err != nil {
		return nil, fmt.Errorf("reading the starving SKUs of node %d: %w", node, err)
	}
	skus, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reading the starving SKUs of node %d: %w", node, err)
	}
	return skus, nil
}

// unsettledColumns turns reports into the SKU and units arrays the
// statements unnest (a report is never below 0).
func unsettledColumns(reports []Unsettled) ([]string, []int64) {
	skus, units := make([]string, len(reports)), make([]int64, len(reports))
	for i, u := range reports {
		skus[i], units[i] = u.SKU, max(0, u.Units)
	}
	return skus, units
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
	skus, units := unsettledColumns(reports)
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
				if l.live || !l.expiredFor {
					continue
				}
				// Marked reclaimed (updated after its expiry) even with
				// nothing to give back: ExpiredLeaseSKUs lists it no more.
				if _, err := tx.Exec(ctx, `UPDATE stock_leases SET returned = returned + $4, updated_at = now()
					WHERE sku = $1 AND sale_started_at = $2 AND node_id = $3`, sku, st.startedAt, node, max(0, l.outstanding)); err != nil {
					return err
				}
				if l.outstanding > 0 {
					out = append(out, Reclaimed{SKU: sku, Node: node, Units: l.outstanding})
				}
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
func lockPool(ctx context.Context, tx pgx.Tx, sku string) (*poolState, error) {
	return lockPoolGrace(ctx, tx, sku, 0)
}

func lockPoolGrace(ctx context.Context, tx pgx.Tx, sku string, grace time.Duration) (*poolState, error) {
	pools, err := lockPools(ctx, tx, []string{sku}, grace)
	if err != nil {
		return nil, err
	}
	if pools[sku] == nil {
		return nil, fmt.Errorf("no sale item %q", sku)
	}
	return pools[sku], nil
}

// lockPools locks the sale_items rows of skus (in SKU order: two callers
// never wait on each other in a cycle) and computes their pools and leases;
// a SKU without a sale item has none. grace sets leaseState.expiredFor.
func lockPools(ctx context.Context, tx pgx.Tx, skus []string, grace time.Duration) (map[string]*poolState, error) {
	pools := make(map[string]*poolState, len(skus))
	rows, err := tx.Query(ctx, `SELECT sku, stock, sale_started_at FROM sale_items WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`, skus)
	if err != nil {
		return nil, err
	}
	var keys []string
	var since []time.Time
	for rows.Next() {
		st := &poolState{leases: map[int]leaseState{}, sold: map[int]int64{}}
		var sku string
		if err := rows.Scan(&sku, &st.stock, &st.startedAt); err != nil {
			rows.Close()
			return nil, err
		}
		pools[sku] = st
		keys, since = append(keys, sku), append(since, st.startedAt)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return pools, nil
	}
	// Per SKU and node: the units of its orders of this generation, and of
	// those the units that hold stock. LATERAL keeps each SKU's scan on its
	// index and its days' partitions.
	rows, err = tx.Query(ctx, `SELECT k.sku, o.node, o.all_units, o.holding
		FROM unnest($1::text[], $2::timestamptz[]) AS k(sku, since)
		CROSS JOIN LATERAL (SELECT `+orderid.NodeSQL("order_id")+` AS node, sum(qty) AS all_units,
				COALESCE(sum(qty) FILTER (WHERE status NOT IN ('cancelled', 'expired')), 0) AS holding
			FROM orders WHERE sku = k.sku AND created_at >= k.since GROUP BY 1) o`, keys, since)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var sku string
		var node int
		var all, holding int64
		if err := rows.Scan(&sku, &node, &all, &holding); err != nil {
			rows.Close()
			return nil, err
		}
		st := pools[sku]
		st.sold[node] = all
		st.taken += holding
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = tx.Query(ctx, `SELECT l.sku, l.node_id, l.granted - l.returned + l.sold_base, l.expires_at, l.expires_at > now(),
			l.expires_at < now() - $3::interval, l.last_op, l.last_units, l.unsettled
		FROM stock_leases l JOIN unnest($1::text[], $2::timestamptz[]) AS k(sku, since)
			ON l.sku = k.sku AND l.sale_started_at = k.since`, keys, since, grace.String())
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var sku string
		var node int
		var l leaseState
		var net int64
		if err := rows.Scan(&sku, &node, &net, &l.expiresAt, &l.live, &l.expiredFor, &l.lastOp, &l.lastUnits, &l.unsettled); err != nil {
			rows.Close()
			return nil, err
		}
		st := pools[sku]
		// Never below zero: a node's orders beyond its lease would be a
		// bug, and counting them as negative holdings would grow the pool.
		l.outstanding = max(0, net-st.sold[node])
		st.leases[node] = l
		if l.live {
			st.live++
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, st := range pools {
		st.pool = st.stock - st.taken - st.held()
	}
	return pools, nil
}
