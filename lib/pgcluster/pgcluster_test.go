package pgcluster_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/flashgate/flashgate/lib/pgcluster"
	"github.com/flashgate/flashgate/lib/testenv"
)

func exec(t *testing.T, url, sql string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}

// A cluster is initialised once and reused: after a stop, and after a crash.
func TestStartReuseAfterStopAndKill(t *testing.T) {
	dir := filepath.Join(testenv.TempDir(t), "pg")
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	exec(t, c.URL(), "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	stamp, _ := os.Stat(filepath.Join(dir, "PG_VERSION"))

	c, err = pgcluster.Start(ctx, pgcluster.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Stat(filepath.Join(dir, "PG_VERSION")); !again.ModTime().Equal(stamp.ModTime()) {
		t.Fatal("the cluster was initialised again")
	}
	exec(t, c.URL(), "INSERT INTO kept VALUES (43)") // committed, then a crash
	if err := c.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatalf("restart after a crash: %v", err)
	}
	defer c.Stop()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM kept").Scan(&n); err != nil || n != 2 {
		t.Fatalf("after a crash: %d rows (%v), want 2", n, err)
	}
}
