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

// EnsurePartitions makes the daily partitions of orders covering [from, to]
// (UTC days, inclusive) that do not exist yet, and returns how many it made.
// Make them ahead of a sale: creating one locks the parent table.
func EnsurePartitions(ctx context.Context, pool *pgxpool.Pool, from, to time.Time) (int, error) {
	from = truncDay(from)
	to = truncDay(to)
	if to.Before(from) {
		return 0, fmt.Errorf("BUG: EnsurePartitions from %v after to %v", from, to)
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
			_, err := tx.Exec(ctx, sql)
			return err
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
