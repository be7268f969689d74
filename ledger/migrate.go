// Package ledger owns flashgate's PostgreSQL schema and the order records in
// it: versioned migrations, partition maintenance, and the queries the other
// components need.
package ledger

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migration is one versioned schema change, applied once, in a transaction.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the embedded migrations in version order. File names are
// NNNN_name.sql; versions must be unique.
func Migrations() ([]Migration, error) {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []Migration
	for _, n := range names {
		base := strings.TrimSuffix(n[len("migrations/"):], ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("BUG: migration file %s is not named NNNN_name.sql", n)
		}
		b, err := migrationFS.ReadFile(n)
		if err != nil {
			return nil, err
		}
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i := 1; i < len(ms); i++ {
		if ms[i].Version == ms[i-1].Version {
			return nil, fmt.Errorf("BUG: two migrations with version %d", ms[i].Version)
		}
	}
	return ms, nil
}

// migrateLockID serialises migrators across processes (pg_advisory_xact_lock).
const migrateLockID = 0x666c617368 // "flash"

// Migrate applies the migrations not applied yet, each in its own transaction
// together with its row in schema_migrations. It returns how many it applied.
// Several processes may call it at once: an advisory lock serialises them.
func Migrate(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	ms, err := Migrations()
	if err != nil {
		return 0, err
	}
	// CREATE TABLE IF NOT EXISTS races with itself: take the lock first.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    integer PRIMARY KEY,
			name       text NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now())`)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("creating schema_migrations: %w", err)
	}
	applied := 0
	for _, m := range ms {
		did, err := applyOne(ctx, pool, m)
		if err != nil {
			return applied, err
		}
		if did {
			applied++
			slog.Info("ledger: migration applied", "version", m.Version, "name", m.Name)
		}
	}
	return applied, nil
}

func applyOne(ctx context.Context, pool *pgxpool.Pool, m Migration) (bool, error) {
	did := false
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockID); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)", m.Version).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil
		}
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
			return err
		}
		did = true
		return nil
	})
	return did, err
}
