package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/edge"
	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/payment"
	"github.com/flashgate/flashgate/lib/pgcluster"
)

// devOptions configures `flashgate dev`.
type devOptions struct {
	DataDir      string
	EdgeAddr     string
	AdminAddr    string
	KafkaAddr    string
	KafkaBrokers string // empty = embedded broker
	// KafkaSecurity is TLS and SASL towards KafkaBrokers.
	KafkaSecurity *broker.Security
	KafkaSync     bool // the embedded broker fsyncs every batch before its ack
	PaymentWindow time.Duration
	ExpireEvery   time.Duration
	DatabaseURL   string // empty = private cluster
	Demo          bool
	Partitions    int32
	Edge          edge.Config
	Ingest        ingest.Config
	PGNoFsync     bool // throwaway clusters in tests
}

// devPartitions is dev's partition count unless -kafka.partitions is given:
// the embedded broker fsyncs each partition's batch of a produce request
// one after the other, so on one machine fewer partitions answer sooner
// (acks at 25K orders/s, p99: 692 ms with 6 partitions, 60 ms with 2, 52 ms
// with 1; tuning.md). Two keep both default ingest workers busy.
const devPartitions = 2

func devOptionsFromFlags() devOptions {
	parts := int32(devPartitions)
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "kafka.partitions" {
			parts = int32(*partitions)
		}
	})
	return devOptions{
		DataDir: *dataDir, EdgeAddr: *edgeAddr, AdminAddr: *adminAddr, KafkaAddr: *kafkaAddr,
		KafkaBrokers: *kafkaBrokers, KafkaSecurity: kafkaSecurity, KafkaSync: *kafkaSync, PaymentWindow: *payWindow, ExpireEvery: *expireEvery, DatabaseURL: *databaseURL, Demo: *demo, Partitions: parts,
		Edge: edgeConfigFromFlags(), Ingest: ingest.FlagConfig(),
	}
}

func edgeConfigFromFlags() edge.Config {
	cfg, err := edge.FlagConfig()
	if err != nil {
		fatalUsage(err.Error())
	}
	cfg.Addr, cfg.Auth = *edgeAddr, *authMode
	prefixes, err := edge.ParsePrefixes(*trustProxy)
	if err != nil {
		fatalUsage(err.Error())
	}
	cfg.TrustProxy = prefixes
	return cfg
}

// devEnv is what dev.env holds.
type devEnv struct {
	DatabaseURL, KafkaBrokers, EdgeURL, AdminURL string
	// WebhookProvider and WebhookSecret sign payment webhooks for the edge.
	WebhookProvider, WebhookSecret string
}

func (e devEnv) String() string {
	s := fmt.Sprintf("DATABASE_URL=%s\nKAFKA_BROKERS=%s\nEDGE_URL=%s\nADMIN_URL=%s\n", e.DatabaseURL, e.KafkaBrokers, e.EdgeURL, e.AdminURL)
	if e.WebhookSecret != "" {
		s += fmt.Sprintf("WEBHOOK_PROVIDER=%s\nWEBHOOK_SECRET=%s\n", e.WebhookProvider, e.WebhookSecret)
	}
	return s
}

// devWebhookSecret returns the payment provider dev takes webhooks from when
// none is configured: the HMAC adapter named flashpay with a random secret
// kept in <data-dir>/webhook.secret (reused by the next start).
func devWebhookSecret(dir string) (payment.Provider, string, error) {
	path := filepath.Join(dir, "webhook.secret")
	secret, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return nil, "", err
		}
		secret = []byte(hex.EncodeToString(b))
		err = os.WriteFile(path, secret, 0o600)
	}
	if err != nil {
		return nil, "", err
	}
	p, err := payment.NewHMAC("flashpay", secret)
	return p, string(secret), err
}

// demoSale is what --demo loads (only SKUs the ledger does not know yet, so
// a restart never resets a sale's stock).
var demoSale = []ledger.SaleItem{
	{SKU: "DEMO-PHONE", Stock: 1000, PriceCents: 49900, PerUserLimit: 2},
	{SKU: "DEMO-WATCH", Stock: 500, PriceCents: 19900, PerUserLimit: 1},
	{SKU: "DEMO-TICKET", Stock: 10000, PriceCents: 2500, PerUserLimit: 4},
}

// runDev runs the whole stack until ctx ends, then stops it in order: admin,
// edge (drained: every accepted order answered), ingest (after it caught
// up, briefly), broker, ledger pool, PostgreSQL. ready, if set, is called
// once everything serves.
func runDev(ctx context.Context, o devOptions, ready func(devEnv)) (err error) {
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cannot create --data-dir: %w", err)
	}
	var stops []func() // run in reverse order on the way out
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()

	dbURL := o.DatabaseURL
	if dbURL == "" {
		slog.Info("dev: starting the private PostgreSQL cluster", "dir", filepath.Join(dir, "pg"))
		pg, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "pg"), NoFsync: o.PGNoFsync})
		if err != nil {
			return err
		}
		stops = append(stops, func() {
			if err := pg.Stop(); err != nil {
				slog.Warn("stopping PostgreSQL", "err", err)
			}
		})
		dbURL = pg.URL()
	}

	brokers := broker.Seeds(o.KafkaBrokers)
	var kafkaOpts []kgo.Opt // TLS and SASL apply to real clusters, not the embedded broker
	if o.KafkaSecurity == nil {
		o.KafkaSecurity = &broker.Security{}
	}
	if len(brokers) > 0 {
		var err error
		if kafkaOpts, err = o.KafkaSecurity.Opts(); err != nil {
			return err
		}
	} else {
		kf, err := broker.StartEmbedded(o.KafkaAddr, filepath.Join(dir, "kafka"), o.Partitions, o.KafkaSync)
		if err != nil {
			return err
		}
		stops = append(stops, kf.Close)
		brokers = []string{kf.Addr()}
		slog.Info("dev: embedded Kafka broker up", "addr", kf.Addr(), "log", filepath.Join(dir, "kafka"))
	}
	adm, err := broker.NewAdmin(brokers, kafkaOpts...)
	if err != nil {
		return err
	}
	stops = append(stops, adm.Close)
	if err := broker.EnsureTopics(ctx, adm, o.Partitions, -1); err != nil {
		return o.KafkaSecurity.Explain(err)
	}

	pool, err := prepareLedger(ctx, dbURL, o.Ingest.PartitionsAheadDays)
	if err != nil {
		return err
	}
	stops = append(stops, pool.Close)

	o.Ingest.Brokers, o.Ingest.KafkaOpts = brokers, kafkaOpts
	if o.Ingest.Workers == 0 {
		// Ingest runs elsewhere (`flashgate ingest` with dev.env's
		// DATABASE_URL and KAFKA_BROKERS), e.g. on other cores.
		slog.Info("dev: no ingest workers in this process (-ingest.workers 0); orders stay in Kafka until a `flashgate ingest` takes them")
	} else {
		ing, err := ingest.Start(o.Ingest, pool)
		if err != nil {
			return err
		}
		stops = append(stops, func() {
			// Let ingest take what the edge accepted last, so the ledger is
			// complete on exit (it would be on the next start anyway).
			if err := ingest.WaitCaughtUp(context.Background(), adm, o.Ingest.Group, 10*time.Second); err != nil {
				slog.Warn("dev: ingest did not catch up before stopping; the rest is taken on the next start", "err", err)
			}
			ing.Stop()
		})
	}

	expCtx, stopExpirer := context.WithCancel(ctx)
	expDone := make(chan struct{})
	go func() { defer close(expDone); runExpirer(expCtx, pool, o.PaymentWindow, o.ExpireEvery) }()
	stops = append(stops, func() { stopExpirer(); <-expDone })

	o.Edge.Addr, o.Edge.Brokers, o.Edge.KafkaOpts = o.EdgeAddr, brokers, kafkaOpts
	var hookSecret, hookProvider string
	if len(o.Edge.Payments) == 0 {
		p, secret, err := devWebhookSecret(dir)
		if err != nil {
			return err
		}
		o.Edge.Payments, hookSecret, hookProvider = []payment.Provider{p}, secret, p.Name()
	}
	e, err := startEdge(ctx, o.Edge, pool, nil, adm, o.Ingest.Group, o.AdminAddr, "")
	if err != nil {
		return err
	}
	stops = append(stops, e.stop)

	if o.Demo {
		if err := loadDemo(ctx, e.srv); err != nil {
			return err
		}
	}

	env := devEnv{DatabaseURL: dbURL, KafkaBrokers: strings.Join(brokers, ","), EdgeURL: "http://" + o.EdgeAddr, AdminURL: "http://" + e.admin.Addr(),
		WebhookProvider: hookProvider, WebhookSecret: hookSecret}
	if err := os.WriteFile(filepath.Join(dir, "dev.env"), []byte(env.String()), 0o644); err != nil {
		return err
	}
	fmt.Printf("flashgate dev is ready (Ctrl-C stops it). %s:\n%s", filepath.Join(dir, "dev.env"), env)
	if ready != nil {
		ready(env)
	}
	<-ctx.Done()
	slog.Info("dev: stopping")
	return nil
}

func loadDemo(ctx context.Context, srv *edge.Server) error {
	for _, it := range demoSale {
		if _, ok := srv.SKU(it.SKU); ok {
			continue
		}
		if _, err := srv.PutSaleItem(ctx, it); err != nil {
			return fmt.Errorf("loading the demo sale: %w", err)
		}
		slog.Info("dev: demo sale item loaded", "sku", it.SKU, "stock", it.Stock)
	}
	return nil
}

// prepareLedger connects to PostgreSQL, applies the migrations and makes the
// partitions around today.
func prepareLedger(ctx context.Context, url string, aheadDays int) (*pgxpool.Pool, error) {
	pool, err := ledger.Open(ctx, url, 32)
	if err != nil {
		return nil, err
	}
	n, err := ledger.Migrate(ctx, pool)
	if err == nil {
		slog.Info("ledger: schema up to date", "migrations_applied_now", n)
		_, err = ledger.EnsurePartitionsAround(ctx, pool, time.Now(), aheadDays)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

type runningEdge struct {
	srv   *edge.Server
	admin *edge.Admin
}

// startEdge waits until ingest has every accepted order in the ledger, rebuilds
// the sale table from it, then serves the edge and the admin plane.
// With handoverFrom (the admin URL of the edge serving on the same address)
// it takes over from that edge: see edge.HandoverDrain.
func startEdge(ctx context.Context, cfg edge.Config, pool, reads *pgxpool.Pool, adm *kgo.Client, group, adminAddr, handoverFrom string) (_ *runningEdge, err error) {
	cfg.IngestGroup = group // reconciliation waits for it
	srv, err := edge.New(cfg, pool)
	if err != nil {
		return nil, err
	}
	if reads != nil {
		srv.SetReadPool(reads)
	}
	started := false // this edge served: the drained one's stock counts are stale
	if handoverFrom != "" {
		slog.Info("edge: handover: draining the edge at " + handoverFrom)
		if err := edge.HandoverDrain(ctx, handoverFrom, edge.AdminToken()); err != nil {
			srv.Close()
			return nil, err
		}
		defer func() {
			if err == nil || started {
				return
			}
			// This edge never served: the drained one takes orders again.
			if rerr := edge.HandoverResume(context.Background(), handoverFrom, edge.AdminToken()); rerr != nil {
				slog.Error("edge: handover failed and the old edge could not resume; it refuses orders until restarted", "err", rerr)
			}
		}()
	}
	err = ingest.WaitCaughtUp(ctx, adm, group, 2*time.Minute)
	if err == nil {
		err = srv.LoadSaleItems(ctx)
	}
	if err == nil {
		err = srv.Start()
		started = err == nil
	}
	if err != nil {
		srv.Close()
		return nil, err
	}
	a, err := edge.StartAdmin(adminAddr, srv)
	if err != nil {
		stopWithin("edge", 30*time.Second, srv.Stop)
		return nil, err
	}
	slog.Info("edge: serving", "addr", cfg.Addr, "admin", a.Addr())
	if handoverFrom != "" {
		if err := edge.HandoverShutdown(ctx, handoverFrom, edge.AdminToken(), *handoverGrace); err != nil {
			slog.Warn("edge: handover: the old edge did not take the shutdown; stop it yourself (it takes no orders)", "err", err)
		} else {
			slog.Info("edge: handover: serving; the old edge shuts down", "grace", *handoverGrace)
		}
	}
	return &runningEdge{srv: srv, admin: a}, nil
}

func (e *runningEdge) stop() {
	stopWithin("admin plane", 5*time.Second, e.admin.Stop)
	stopWithin("edge", 30*time.Second, e.srv.Stop)
}
