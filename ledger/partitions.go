package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// partitionLockID serialises partition DDL across processes: creating a
// partition takes an exclusive lock on the parent, and two creators of the
// same partition would otherwise race to a duplicate-table error.
const partitionLockID = 0x7061727473 // "parts"

// PartitionName is the name of the daily partition of orders holding day
// (UTC): orders_pYYYYMMDD.
func PartitionName(day time.Time) string {
	return "orders_p" + day.UTC().Format("20060102")
}

// EventsPartitionName is the name of the daily partition of order_events
// holding the events of the orders created on day (UTC): order_events_pYYYYMMDD.
func EventsPartitionName(day time.Time) string {
	return "order_events_p" + day.UTC().Format("20060102")
}

// dailyTable is a table partitioned by day: orders, and order_events (by
// its order's created_at, so an order and its history share a day).
type dailyTable struct {
	parent string
	name   func(time.Time) string
	layout string // time.Parse layout of its partitions' names
	hashed bool   // days follow partition_layout's hash sub-partitioning
}

var dailyTables = []dailyTable{
	{parent: "orders", name: PartitionName, layout: "orders_p20060102", hashed: true},
	{parent: "order_events", name: EventsPartitionName, layout: "order_events_p20060102"},
}

// MaxUserHashPartitions bounds the hash sub-partitions of a day.
const MaxUserHashPartitions = 64

// SetUserHashPartitions sets how many hash-of-user_id tables each daily
// partition made from now on has (0: none). Days already made keep theirs.
func SetUserHashPartitions(ctx context.Context, pool *pgxpool.Pool, n int) error {
	if n < 0 || n > MaxUserHashPartitions {
		return fmt.Errorf("user hash partitions %d outside [0, %d]", n, MaxUserHashPartitions)
	}
	_, err := pool.Exec(ctx, "UPDATE partition_layout SET user_hash_partitions = $1", n)
	return err
}

// EnsurePartitions makes the daily partitions of orders and of order_events
// covering [from, to] (UTC days, inclusive) that do not exist yet, those of
// orders in the layout set by SetUserHashPartitions, and returns how many
// tables it made. Make them ahead of a sale: creating one locks the parent
// table.
func EnsurePartitions(ctx context.Context, pool *pgxpool.Pool, from, to time.Time) (int, error) {
	from = truncDay(from)
	to = truncDay(to)
	if to.Before(from) {
		return 0, fmt.Errorf("BUG: EnsurePartitions from %v after to %v", from, to)
	}
	var hashN int
	if err := pool.QueryRow(ctx, "SELECT user_hash_partitions FROM partition_layout").Scan(&hashN); err != nil {
		return 0, fmt.Errorf("reading the partition layout: %w", err)
	}
	made := 0
	for day := from; !day.After(to); day = day.AddDate(0, 0, 1) {
		for _, t := range dailyTables {
			name := t.name(day)
			var exists bool
			if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", name).Scan(&exists); err != nil {
				return made, err
			}
			if exists {
				continue
			}
			n := 0
			if t.hashed {
				n = hashN
			}
			if err := makePartition(ctx, pool, t.parent, name, day, n); err != nil {
				return made, fmt.Errorf("creating partition %s: %w", name, err)
			}
			made++
		}
	}
	return made, nil
}

func makePartition(ctx context.Context, pool *pgxpool.Pool, parent, name string, day time.Time, hashN int) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", partitionLockID); err != nil {
			return err
		}
		sql := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s')",
			pgx.Identifier{name}.Sanitize(), pgx.Identifier{parent}.Sanitize(),
			day.Format(time.RFC3339), day.AddDate(0, 0, 1).Format(time.RFC3339))
		if hashN > 0 {
			sql += " PARTITION BY HASH (user_id)"
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			return err
		}
		for r := 0; r < hashN; r++ {
			sub := fmt.Sprintf("%s_h%d", name, r)
			if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s PARTITION OF %s FOR VALUES WITH (MODULUS %d, REMAINDER %d)",
				pgx.Identifier{sub}.Sanitize(), pgx.Identifier{name}.Sanitize(), hashN, r)); err != nil {
				return err
			}
		}
		return nil
	})
}

// EnsurePartitionsAround makes the partitions from yesterday to aheadDays
// after today (UTC): what running services call at start and periodically.
func EnsurePartitionsAround(ctx context.Context, pool *pgxpool.Pool, now time.Time, aheadDays int) (int, error) {
	return EnsurePartitions(ctx, pool, now.AddDate(0, 0, -1), now.AddDate(0, 0, aheadDays))
}

func truncDay(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

// DetachPartitionsBefore detaches, CONCURRENTLY (readers and writers of
// orders are not blocked), the daily partitions of orders and of
// order_events that end on or before cutoff, and returns their names (those
// of orders first). It never detaches a partition that
// could hold orders of a sale still in sale_items (one ending after the
// earliest sale_started_at): edges rebuild stock from those orders, and
// losing them would oversell. A detached partition stays a table of its own:
// archive it (pg_dump -t) and drop it when you are done with it. A detach
// interrupted earlier (a pending detach) is finalized first.
func DetachPartitionsBefore(ctx context.Context, pool *pgxpool.Pool, cutoff time.Time) ([]string, error) {
	cutoff = truncDay(cutoff)
	var oldestSale *time.Time
	if err := pool.QueryRow(ctx, "SELECT min(sale_started_at) FROM sale_items").Scan(&oldestSale); err != nil {
		return nil, fmt.Errorf("reading the oldest sale: %w", err)
	}
	if oldestSale != nil && oldestSale.Before(cutoff) {
		cutoff = truncDay(*oldestSale)
	}
	// DETACH ... CONCURRENTLY cannot run in a transaction: hold the
	// partition lock on one connection for the whole pass instead.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", partitionLockID); err != nil {
		return nil, err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", partitionLockID) //nolint:errcheck // released with the session anyway
	rows, err := conn.Query(ctx, `SELECT p.relname, c.relname, i.inhdetachpending
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
		WHERE i.inhparent IN ('orders'::regclass, 'order_events'::regclass)
		ORDER BY p.relname = 'orders' DESC, c.relname`)
	if err != nil {
		return nil, err
	}
	type part struct {
		parent, name string
		pending      bool
	}
	var parts []part
	for rows.Next() {
		var p part
		if err := rows.Scan(&p.parent, &p.name, &p.pending); err != nil {
			return nil, err
		}
		parts = append(parts, p)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var detached []string
	for _, p := range parts {
		layout := ""
		for _, t := range dailyTables {
			if t.parent == p.parent {
				layout = t.layout
			}
		}
		day, err := time.Parse(layout, p.name)
		if layout == "" || err != nil || day.AddDate(0, 0, 1).After(cutoff) {
			continue // not one of ours, or too recent
		}
		mode := "CONCURRENTLY"
		if p.pending {
			mode = "FINALIZE"
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DETACH PARTITION %s %s",
			pgx.Identifier{p.parent}.Sanitize(), pgx.Identifier{p.name}.Sanitize(), mode)); err != nil {
			return detached, fmt.Errorf("detaching partition %s: %w", p.name, err)
		}
		detached = append(detached, p.name)
	}
	return detached, nil
}
