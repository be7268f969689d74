// Command flashgate is the flash-sale order service: one binary, subcommands
// for each component and for the whole stack on one machine (`dev`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/flashgate/flashgate/lib/broker"
)

// Flags of the contract (shared by the subcommands that use them).
var (
	edgeAddr        = flag.String("edge-addr", "127.0.0.1:8080", "listen address of the edge (orders HTTP API)")
	adminAddr       = flag.String("admin-addr", "127.0.0.1:8081", "listen address of the admin plane (sale setup, /metrics, /debug/pprof); keep it on loopback")
	kafkaAddr       = flag.String("kafka-addr", "127.0.0.1:9092", "listen address of the embedded Kafka broker (dev only; ignored with --kafka-brokers)")
	kafkaBrokers    = flag.String("kafka-brokers", "", "comma list of Kafka brokers; empty in dev = the embedded broker")
	databaseURL     = flag.String("database-url", "", "PostgreSQL URL; empty in dev = a private cluster under --data-dir")
	readURL         = flag.String("database-read-url", "", "edge: a PostgreSQL read replica for order queries (GET /v1/orders, /v1/orders/{id}); empty: --database-url")
	dataDir         = flag.String("data-dir", "./var", "where dev keeps its PostgreSQL cluster (pg/), broker log (kafka/) and dev.env")
	authMode        = flag.String("auth", "dev", "identity: dev (trust X-User-ID) or jwt (verified bearer token, user from sub; see -auth.*)")
	demo            = flag.Bool("demo", false, "dev: load a demo sale (a few SKUs with stock) unless they exist already")
	trustProxy      = flag.String("trust-proxy", "127.0.0.0/8", "comma list of CIDRs whose X-Forwarded-For is believed for the client IP")
	partitions      = flag.Int("kafka.partitions", 6, "partitions of the topics flashgate creates when they are missing (dev's embedded broker: 2 unless given)")
	hashParts       = flag.Int("ledger.userHashPartitions", -1, "ledger partitions: sub-partition each daily partition of orders made from now on by hash of user_id into this many tables (0: none, at most 64); -1 leaves the layout as it is")
	payWindow       = flag.Duration("ledger.paymentWindow", 15*time.Minute, "an order not paid within this time after it was placed expires, and its units go back to the sale")
	expireEvery     = flag.Duration("ledger.expireEvery", time.Second, "ledger expire (and dev): how often the expirer looks for orders past the payment window")
	payKeep         = flag.Duration("ledger.paymentEventsRetention", 30*24*time.Hour, "ledger expire (and dev): payment events older than this are forgotten (a provider's replay of one would apply again: keep it above the providers' retry period)")
	reconcileEdges  = flag.String("reconcile.edges", "", "ledger reconcile: comma list of the edges' admin plane URLs (default: http://<--admin-addr>)")
	reconcileRepair = flag.Bool("reconcile.repair", false, "ledger reconcile: reload the stock of each SKU that differs on its edge from the ledger (the SKU pauses for the reload)")
	expireOnce      = flag.Bool("ledger.expireOnce", false, "ledger expire: one pass, then exit (for cron)")
	kafkaSync       = flag.Bool("kafka.syncWrites", true, "dev: the embedded broker fsyncs every batch before acking it (a 202 survives a power loss); false: page cache only, like a Kafka broker's default (survives kill -9, ~10x faster here)")
	handoverFrom    = flag.String("edge.handoverFrom", "", "edge: take over from the edge running on the same --edge-addr, whose admin plane is at this URL (http://host:port): it drains, this one loads the stock and serves, then it shuts down; no request fails (see README, rolling restarts)")
	handoverGrace   = flag.Duration("edge.handoverGrace", 2*time.Second, "edge: with -edge.handoverFrom, how long the old edge keeps answering (with Connection: close) after this one serves, so its clients reconnect here")
	ingestAdmin     = flag.String("ingest.adminAddr", "", "ingest: listen address for /metrics, /healthz (200 while running) and /debug/pprof/ (empty: none; keep it off the public network)")
	logLevel        = flag.String("log.level", "info", "log level: debug, info, warn, error")
	mutexFraction   = flag.Int("pprof.mutexFraction", 0, "sample 1 in N mutex contention events for /debug/pprof/mutex (0: off; 5 costs little; make profile sets it)")
	blockRate       = flag.Int("pprof.blockRate", 0, "sample goroutine blocking events lasting about this many nanoseconds for /debug/pprof/block (0: off; 10000 costs little; make profile sets it)")
	// TLS and SASL towards real Kafka clusters (--kafka-tls*, --kafka-sasl-*).
	kafkaSecurity = broker.RegisterFlags(flag.CommandLine)
)

const usage = `flashgate: flash-sale order intake.

Usage: flashgate <command> [flags]

Commands:
  dev                  the whole stack on one machine: PostgreSQL, embedded Kafka, ingest, edge, admin
  edge                 the order edge and its admin plane (needs --kafka-brokers and --database-url)
  ingest               ingest workers: order.created -> PostgreSQL (needs --kafka-brokers and --database-url)
  ledger migrate       apply the schema migrations
  ledger reconcile     compare the edges' stock with the ledger's orders; -reconcile.repair reloads what differs
  ledger expire        expire orders unpaid after -ledger.paymentWindow, releasing their stock (runs until stopped; -ledger.expireOnce for one pass)
  ledger partitions    make the daily partitions of orders ahead (-ingest.partitionsAhead days), detach old ones (-ingest.retentionDays)
  tracegen             write a synthetic flash-sale trace (or import a CSV of real orders) for replay
  replay               replay a trace against an edge, open loop; -replay.verify checks the invariants after it
  version              print the version

Run 'flashgate <command> -help' for the flags.
`

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "-help" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	if cmd == "ledger" {
		if len(args) == 0 {
			fatalUsage("ledger needs a subcommand: migrate, partitions, expire or reconcile")
		}
		cmd, args = "ledger "+args[0], args[1:]
	}
	flag.CommandLine.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: flashgate %s [flags]\n\nFlags:\n", cmd)
		flag.PrintDefaults()
	}
	if err := flag.CommandLine.Parse(args); err != nil {
		os.Exit(2)
	}
	if flag.NArg() > 0 {
		fatalUsage(fmt.Sprintf("unexpected argument %q; flags come as -name value", flag.Arg(0)))
	}
	setupLogging()
	runtime.SetMutexProfileFraction(*mutexFraction)
	runtime.SetBlockProfileRate(*blockRate)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once
	}()
	var err error
	switch cmd {
	case "dev":
		err = runDev(ctx, devOptionsFromFlags(), nil)
	case "edge":
		err = runEdge(ctx)
	case "ingest":
		err = runIngest(ctx)
	case "ledger migrate":
		err = runMigrate(ctx)
	case "ledger partitions":
		err = runPartitions(ctx)
	case "ledger expire":
		err = runExpire(ctx)
	case "ledger reconcile":
		err = runReconcile(ctx)
	case "version":
		fmt.Println("flashgate", version)
	case "tracegen":
		err = runTracegen(ctx)
	case "replay":
		err = runReplay(ctx)
	case "bench":
		err = fmt.Errorf("%q is not available yet in this version", cmd)
	default:
		fatalUsage(fmt.Sprintf("unknown command %q", cmd))
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		slog.Error("flashgate "+cmd+" failed", "err", err)
		os.Exit(1)
	}
}

func fatalUsage(msg string) {
	fmt.Fprintf(os.Stderr, "flashgate: %s\n\n%s", msg, usage)
	os.Exit(2)
}

func setupLogging() {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fatalUsage(fmt.Sprintf("-log.level %q: want debug, info, warn or error", *logLevel))
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
}

// stopWithin runs a shutdown step with its own deadline, logging failures.
func stopWithin(what string, d time.Duration, fn func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := fn(ctx); err != nil {
		slog.Warn("stopping "+what, "err", err)
	}
}
