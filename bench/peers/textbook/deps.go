package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashgate/flashgate/lib/pgcluster"
)

// errNoRedis is returned by startDeps when redis-server is not installed.
var errNoRedis = errors.New("redis-server not found on PATH; possible fix: `apt-get install -y redis-server`, or pass -redis HOST:PORT of a running one")

// deps are the private redis-server and PostgreSQL cluster of -start-deps.
type deps struct {
	redisAddr string
	redis     *exec.Cmd
	redisDone chan error
	pg        *pgcluster.Cluster
}

// startDeps starts redis-server (on redisAddr, or a free loopback port) and a
// PostgreSQL cluster under dir. Both die with this process (Pdeathsig) if it
// is killed before stop.
//
// Redis runs with `--save ” --appendonly no`: no persistence at all. The
// textbook production setting is appendonly yes + appendfsync everysec
// (-redis.appendonly); for a speed comparison we give the peer its fastest
// setting, and it loses no accepted order either way: an order is answered
// 202 only after its INSERT committed in PostgreSQL (fsync on, like
// flashgate's ledger and broker). What a Redis crash would lose is the stock
// and purchase counters, which this peer does not rebuild.
func startDeps(ctx context.Context, dir, redisAddr string, redisAOF, pgNoFsync bool) (_ *deps, err error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errNoRedis
	}
	if err := os.MkdirAll(filepath.Join(dir, "redis"), 0o755); err != nil {
		return nil, err
	}
	// The postgres user (when we are root) must be able to reach dir/pg.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	d := &deps{}
	defer func() {
		if err != nil {
			d.stop()
		}
	}()
	if redisAddr == "" {
		if redisAddr, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	host, port, err := net.SplitHostPort(redisAddr)
	if err != nil {
		return nil, fmt.Errorf("-redis %q: %w", redisAddr, err)
	}
	d.redisAddr = redisAddr
	args := []string{"--port", port, "--bind", host, "--dir", filepath.Join(dir, "redis"),
		"--logfile", filepath.Join(dir, "redis.log"), "--daemonize", "no", "--save", ""}
	if redisAOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "everysec")
	} else {
		args = append(args, "--appendonly", "no")
	}
	if err := d.startRedis(bin, args); err != nil {
		return nil, err
	}
	if d.pg, err = pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "pg"), NoFsync: pgNoFsync, Database: "textbook"}); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *deps) startRedis(bin string, args []string) error {
	d.redis = exec.Command(bin, args...)
	d.redis.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	d.redisDone = make(chan error, 1)
	started := make(chan error, 1)
	// Pdeathsig fires when the forking *thread* exits: fork from a locked
	// thread that lives as long as the server (as lib/pgcluster does).
	go func() {
		runtime.LockOSThread()
		if err := d.redis.Start(); err != nil {
			started <- fmt.Errorf("cannot start redis-server: %w", err)
			return
		}
		started <- nil
		d.redisDone <- d.redis.Wait()
	}()
	return <-started
}

// waitRedis waits until Redis answers PING, for at most 10 s; d (nil
// without -start-deps) reports a private redis-server that exited instead.
func waitRedis(ctx context.Context, rdb *redis.Client, d *deps) error {
	var exited chan error
	if d != nil {
		exited = d.redisDone
	}
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		select {
		case werr := <-exited:
			exited <- werr // for stop
			return fmt.Errorf("redis-server exited during start-up (%v); see its log, redis.log under -start-deps", werr)
		default:
		}
		if err = rdb.Ping(ctx).Err(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("redis at %s did not answer PING within 10s: %w", rdb.Options().Addr, err)
}

// stop stops redis-server (SIGTERM: with --save ” it writes nothing) and
// PostgreSQL (fast shutdown).
func (d *deps) stop() {
	if d.redis != nil && d.redis.Process != nil {
		_ = d.redis.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.redisDone:
		case <-time.After(10 * time.Second):
			_ = d.redis.Process.Kill()
			<-d.redisDone
		}
	}
	if d.pg != nil {
		if err := d.pg.Stop(); err != nil {
			slog.Warn("textbook: stopping PostgreSQL", "err", err)
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}
