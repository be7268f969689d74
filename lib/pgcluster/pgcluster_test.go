package pgcluster_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
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

// A freely chosen port taken by someone else while the server was down (other
// tests, other services) does not stop a restart: it moves to another port.
func TestRestartMovesOffATakenPort(t *testing.T) {
	dir := filepath.Join(testenv.TempDir(t), "pg")
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir, NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	exec(t, c.URL(), "CREATE TABLE kept (x int)")
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	old := c.Port()
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", old))
	if err != nil {
		t.Fatalf("cannot take the freed port: %v", err)
	}
	defer l.Close()
	if err := c.Restart(ctx); err != nil {
		t.Fatalf("restart with its port taken: %v", err)
	}
	if c.Port() == old {
		t.Fatal("the server claims the port someone else holds")
	}
	exec(t, c.URL(), "INSERT INTO kept VALUES (1)")
}

// A server that cannot start says why in the error, not only in a log file.
func TestStartErrorCarriesTheServerOutput(t *testing.T) {
	dir := filepath.Join(testenv.TempDir(t), "pg")
	_, err := pgcluster.Start(context.Background(), pgcluster.Options{Dir: dir, NoFsync: true, Settings: map[string]string{"shared_buffers": "nonsense"}})
	if err == nil || !strings.Contains(err.Error(), "shared_buffers") {
		t.Fatalf("start with a bad setting: %v; want the server's complaint about shared_buffers", err)
	}
}

// A restart right after the previous server was told to stop (as after a
// kill -9 of `flashgate dev`, whose postmaster then gets SIGINT) waits for it
// instead of failing on its lock file; a server that keeps serving the
// directory is refused with an error that says what to do.
func TestStartWaitsForAStoppingServerAndRefusesARunningOne(t *testing.T) {
	dir := filepath.Join(testenv.TempDir(t), "pg")
	ctx := context.Background()
	first, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir, NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	exec(t, first.URL(), "CREATE TABLE kept (x int)")

	second, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir, NoFsync: true})
	if err == nil {
		second.Stop()
		t.Fatal("a second server started on a directory the first one serves")
	}
	if !strings.Contains(err.Error(), "another PostgreSQL server") || !strings.Contains(err.Error(), "kill -INT") {
		t.Fatalf("start beside a running server: %v; want a message naming the other server and how to stop it", err)
	}

	stopped := make(chan error, 1)
	go func() { stopped <- first.Stop() }()
	second, err = pgcluster.Start(ctx, pgcluster.Options{Dir: dir, NoFsync: true})
	if err != nil {
		t.Fatalf("start while the previous server stops: %v", err)
	}
	defer second.Stop()
	if err := <-stopped; err != nil {
		t.Fatalf("first Stop: %v", err)
	}
	exec(t, second.URL(), "INSERT INTO kept VALUES (1)")
}
