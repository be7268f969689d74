// Package testenv gives integration tests the real components: a private
// PostgreSQL cluster (one per test binary, a fresh database per test) and an
// embedded Kafka-protocol broker (one per test). Nothing but loopback is used.
package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/pgcluster"
)

var (
	pgOnce    sync.Once
	pgCluster *pgcluster.Cluster
	pgErr     error
	baseDir   string
	dbSeq     atomic.Int64
)

// Main wraps testing.M: it runs the tests, then stops the shared cluster and
// removes its files. Use it from TestMain in packages that call PG.
func Main(m *testing.M) {
	code := m.Run()
	if pgCluster != nil {
		pgCluster.Stop()
	}
	if baseDir != "" {
		os.RemoveAll(baseDir)
	}
	os.Exit(code)
}

// TempDir returns a fresh directory that the postgres user can reach
// (t.TempDir is mode 0700, which it cannot when tests run as root).
func TempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "flashgate-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func cluster(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	pgOnce.Do(func() {
		baseDir, pgErr = os.MkdirTemp("", "flashgate-pg-")
		if pgErr != nil {
			return
		}
		if pgErr = os.Chmod(baseDir, 0o755); pgErr != nil {
			return
		}
		logf, _ := os.Create(filepath.Join(baseDir, "pg.log"))
		pgCluster, pgErr = pgcluster.Start(context.Background(), pgcluster.Options{
			Dir: filepath.Join(baseDir, "pg"), NoFsync: true, Log: logf, Database: "postgres",
		})
	})
	if pgErr != nil {
		t.Fatalf("integration tests need a private PostgreSQL cluster: %v", pgErr)
	}
	return pgCluster
}

// DatabaseURL returns the URL of a new, empty database in the shared cluster.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	c := cluster(t)
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", pgcluster.User, c.Port(), name)
}

// Cluster returns the shared cluster (for tests that stop or kill it).
func Cluster(t testing.TB) *pgcluster.Cluster { return cluster(t) }

// Ledger returns a pool on a new database with the migrations applied and
// the partitions around today made.
func Ledger(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	url := DatabaseURL(t)
	ctx := context.Background()
	pool, err := ledger.Open(ctx, url, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := ledger.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool, url
}

// Broker starts an in-memory embedded broker with the contract's topics.
func Broker(t testing.TB, partitions int32) *broker.Embedded {
	t.Helper()
	b, err := broker.StartEmbedded("127.0.0.1:0", "", partitions, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}
