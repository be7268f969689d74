// Command textbook is the "textbook flash-sale stack" that flashgate's
// benchmarks compare against: net/http + encoding/json, one Redis EVALSHA per
// order (check-and-decrement in a Lua script), then one INSERT per order into
// PostgreSQL through a pgx pool. It speaks the parts of flashgate's edge API
// and admin plane that a replay uses, so the same trace runs against both.
// See bench/peers/README.md.
//
//	go run ./bench/peers/textbook -start-deps /tmp/textbook   # private redis-server and PostgreSQL
//	go run ./bench/peers/textbook -redis 127.0.0.1:6390 -database-url postgres://...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

var (
	addrFlag  = flag.String("addr", "127.0.0.1:8090", "listen address of the order API (flashgate's edge API)")
	adminFlag = flag.String("admin-addr", "127.0.0.1:8091", "listen address of the admin plane (PUT/GET /admin/v1/skus/{sku})")
	redisFlag = flag.String("redis", "", "Redis host:port; with -start-deps, the address the private redis-server listens on (empty = a free port)")
	dbURLFlag = flag.String("database-url", "", "PostgreSQL URL; ignored with -start-deps")
	depsFlag  = flag.String("start-deps", "", "start a private redis-server and PostgreSQL cluster under this directory, stopped on exit")
	redisAOF  = flag.Bool("redis.appendonly", false, "with -start-deps: run redis-server with appendonly yes, appendfsync everysec (the textbook production setting); "+
		"default off, the peer's fastest setting (see README: orders are durable in PostgreSQL either way)")
	redisPool   = flag.Int("redis.poolSize", 10*runtime.GOMAXPROCS(0), "Redis connections (go-redis's default, 10 per CPU); a request holds one only for its EVALSHA")
	pgConns     = flag.Int("pg.maxConns", 32, "PostgreSQL pool size; commits wait for the WAL flush, so more concurrent INSERTs share each fsync (group commit)")
	pgNoFsync   = flag.Bool("pg.noFsync", false, "with -start-deps: fsync off for the private cluster (tests only; flashgate's benchmarks keep fsync on for both sides)")
	shutdownMax = 10 * time.Second
)

func main() {
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "textbook: unexpected arguments %q (all options are flags)\n", flag.Args())
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := config{
		addr: *addrFlag, adminAddr: *adminFlag, redisAddr: *redisFlag, databaseURL: *dbURLFlag,
		depsDir: *depsFlag, redisAOF: *redisAOF, redisPool: *redisPool, pgConns: *pgConns, pgNoFsync: *pgNoFsync,
	}
	p, err := start(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "textbook:", err)
		os.Exit(1)
	}
	fmt.Printf("READY edge=%s admin=%s redis=%s database_url=%s\n", p.edgeAddr(), p.adminAddr(), p.redisAddr, p.databaseURL)
	<-ctx.Done()
	stop() // a second signal kills at once
	p.close()
}

// config is what start needs; main fills it from the flags, the test directly.
type config struct {
	addr, adminAddr string
	redisAddr       string
	databaseURL     string
	depsDir         string
	redisAOF        bool
	redisPool       int
	pgConns         int
	pgNoFsync       bool
}

// peer is a running textbook stack.
type peer struct {
	deps        *deps
	rdb         *redis.Client
	db          *pgxpool.Pool
	redisAddr   string
	databaseURL string
	edge, admin *http.Server
	edgeLn      net.Listener
	adminLn     net.Listener
}

// start starts the dependencies (with cfg.depsDir), connects, creates the
// schema, loads the Lua scripts and starts serving.
func start(ctx context.Context, cfg config) (_ *peer, err error) {
	p := &peer{redisAddr: cfg.redisAddr, databaseURL: cfg.databaseURL}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	if cfg.depsDir != "" {
		if p.deps, err = startDeps(ctx, cfg.depsDir, cfg.redisAddr, cfg.redisAOF, cfg.pgNoFsync); err != nil {
			return nil, err
		}
		p.redisAddr, p.databaseURL = p.deps.redisAddr, p.deps.pg.URL()
	}
	if p.redisAddr == "" || p.databaseURL == "" {
		return nil, errors.New("need -redis and -database-url, or -start-deps DIR to start private ones")
	}
	p.rdb = redis.NewClient(&redis.Options{Addr: p.redisAddr, PoolSize: cfg.redisPool, MinIdleConns: cfg.redisPool / 2})
	if err := waitRedis(ctx, p.rdb, p.deps); err != nil {
		return nil, err
	}
	if err := loadScripts(ctx, p.rdb); err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig(p.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("-database-url: %w", err)
	}
	pcfg.MaxConns = int32(cfg.pgConns)
	if p.db, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, err
	}
	if err := migrate(ctx, p.db); err != nil {
		return nil, fmt.Errorf("creating the orders table: %w", err)
	}
	if p.edgeLn, err = net.Listen("tcp", cfg.addr); err != nil {
		return nil, err
	}
	if p.adminLn, err = net.Listen("tcp", cfg.adminAddr); err != nil {
		return nil, err
	}
	s := &server{rdb: p.rdb, db: p.db}
	p.edge = newHTTPServer(s.edgeHandler())
	p.admin = newHTTPServer(s.adminHandler())
	go serve(p.edge, p.edgeLn)
	go serve(p.admin, p.adminLn)
	return p, nil
}

func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 16 << 10}
}

func serve(s *http.Server, ln net.Listener) {
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		slog.Error("textbook: serving", "addr", ln.Addr(), "err", err)
	}
}

func (p *peer) edgeAddr() string  { return p.edgeLn.Addr().String() }
func (p *peer) adminAddr() string { return p.adminLn.Addr().String() }

// close stops serving (in-flight requests finish), then closes the pools and
// stops the private dependencies.
func (p *peer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownMax)
	defer cancel()
	for _, s := range []*http.Server{p.edge, p.admin} {
		if s != nil {
			_ = s.Shutdown(ctx)
		}
	}
	for _, ln := range []net.Listener{p.edgeLn, p.adminLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if p.db != nil {
		p.db.Close()
	}
	if p.rdb != nil {
		p.rdb.Close()
	}
	if p.deps != nil {
		p.deps.stop()
	}
}
