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

// EnsurePartitions makes the daily partitions of orders covering [from, to]
// (UTC days, inclusive) that do not exist yet, in the layout set by
// SetUserHashPartitions, and returns how many it made. Make them ahead of a
// sale: creating one locks the parent table.
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
		name := PartitionName(day)
		var exists bool
		if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", name).Scan(&exists); err != nil {
			return made, err
		}
		if exists {
			continue
		}
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", partitionLockID); err != nil {
				return err
			}
			sql := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s PARTITION OF orders FOR VALUES FROM ('%s') TO ('%s')",
				pgx.Identifier{name}.Sanitize(), day.Format(time.RFC3339), day.AddDate(0, 0, 1).Format(time.RFC3339))
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
		if err != nil {
			return made, fmt.Errorf("creating partition %s: %w", name, err)
		}
		made++
	}
	return made, nil
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
// orders are not blocked), the daily partitions of orders that end on or
// before cutoff, and returns their names. It never detaches a partition that
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
	rows, err := conn.Query(ctx, `SELECT c.relname, i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'orders'::regclass ORDER BY c.relname`)
	if err != nil {
		return nil, err
	}
	type part struct {
		name    string
		pending bool
	}
	var parts []part
	for rows.Next() {
		var p part
		if err := rows.Scan(&p.name, &p.pending); err != nil {
			return nil, err
		}
		parts = append(parts, p)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var detached []string
	for _, p := range parts {
		day, err := time.Parse("orders_p20060102", p.name)
		if err != nil || day.AddDate(0, 0, 1).After(cutoff) {
			continue // not one of ours, or too recent
		}
		mode := "CONCURRENTLY"
		if p.pending {
			mode = "FINALIZE"
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE orders DETACH PARTITION %s %s", pgx.Identifier{p.name}.Sanitize(), mode)); err != nil {
			return detached, fmt.Errorf("detaching partition %s: %w", p.name, err)
		}
		detached = append(detached, p.name)
	}
	return detached, nil
}
