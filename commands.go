package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/edge"
	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
)

// requireBackends returns the brokers and database URL production commands
// need, or an error saying which flag to set.
func requireBackends(needKafka bool) ([]string, string, error) {
	brokers := broker.Seeds(*kafkaBrokers)
	switch {
	case needKafka && len(brokers) == 0:
		return nil, "", fmt.Errorf("--kafka-brokers is required (a comma list of host:port); for a one-machine stack use `flashgate dev`")
	case *databaseURL == "":
		return nil, "", fmt.Errorf("--database-url is required (postgres://user@host:port/db); for a one-machine stack use `flashgate dev`")
	}
	return brokers, *databaseURL, nil
}

// kafkaAdmin connects to the brokers with the --kafka-tls* and --kafka-sasl-*
// settings, which it returns as client options for the other clients, and
// makes the topics that are missing.
func kafkaAdmin(ctx context.Context, brokers []string) (*kgo.Client, []kgo.Opt, error) {
	opts, err := kafkaSecurity.Opts()
	if err != nil {
		return nil, nil, err
	}
	adm, err := broker.NewAdmin(brokers, opts...)
	if err != nil {
		return nil, nil, err
	}
	if err := broker.EnsureTopics(ctx, adm, int32(*partitions), -1); err != nil {
		adm.Close()
		return nil, nil, kafkaSecurity.Explain(err)
	}
	return adm, opts, nil
}

func runEdge(ctx context.Context) error {
	brokers, url, err := requireBackends(true)
	if err != nil {
		return err
	}
	adm, opts, err := kafkaAdmin(ctx, brokers)
	if err != nil {
		return err
	}
	defer adm.Close()
	pool, err := ledger.Open(ctx, url, 32)
	if err != nil {
		return err
	}
	defer pool.Close()
	var reads *pgxpool.Pool
	if *readURL != "" {
		if reads, err = ledger.Open(ctx, *readURL, 32); err != nil {
			return fmt.Errorf("--database-read-url: %w", err)
		}
		defer reads.Close()
	}
	cfg := edgeConfigFromFlags()
	cfg.Brokers, cfg.KafkaOpts = brokers, opts
	e, err := startEdge(ctx, cfg, pool, reads, adm, ingest.FlagConfig().Group, *adminAddr, *handoverFrom)
	if err != nil {
		return err
	}
	ctx, shutdown := context.WithCancel(ctx)
	defer shutdown()
	e.admin.OnShutdown(shutdown) // the next edge's handover ends this one
	<-ctx.Done()
	e.stop()
	return nil
}

func runIngest(ctx context.Context) error {
	brokers, url, err := requireBackends(true)
	if err != nil {
		return err
	}
	adm, opts, err := kafkaAdmin(ctx, brokers)
	if err != nil {
		return err
	}
	adm.Close()
	cfg := ingest.FlagConfig()
	cfg.Brokers, cfg.KafkaOpts = brokers, opts
	pool, err := prepareLedger(ctx, url, cfg.PartitionsAheadDays)
	if err != nil {
		return err
	}
	defer pool.Close()
	svc, err := ingest.Start(cfg, pool)
	if err != nil {
		return err
	}
	slog.Info("ingest: running", "workers", cfg.Workers, "group", cfg.Group)
	if *ingestAdmin != "" {
		srv, err := edge.StartOpsServer(*ingestAdmin)
		if err != nil {
			svc.Stop()
			return fmt.Errorf("-ingest.adminAddr: %w", err)
		}
		defer srv.Shutdown()
	}
	<-ctx.Done()
	svc.Stop()
	return nil
}

func runMigrate(ctx context.Context) error {
	return withLedger(ctx, func(pool *pgxpool.Pool) error {
		n, err := ledger.Migrate(ctx, pool)
		if err == nil {
			fmt.Printf("migrations applied: %d\n", n)
		}
		return err
	})
}

func runPartitions(ctx context.Context) error {
	cfg := ingest.FlagConfig()
	return withLedger(ctx, func(pool *pgxpool.Pool) error {
		if *hashParts >= 0 {
			if err := ledger.SetUserHashPartitions(ctx, pool, *hashParts); err != nil {
				return fmt.Errorf("-ledger.userHashPartitions: %w", err)
			}
			fmt.Printf("daily partitions made from now on: %d hash tables by user_id each\n", *hashParts)
		}
		n, err := ledger.EnsurePartitionsAround(ctx, pool, time.Now(), cfg.PartitionsAheadDays)
		if err != nil {
			return err
		}
		fmt.Printf("partitions made: %d (covering yesterday to %d days ahead)\n", n, cfg.PartitionsAheadDays)
		if cfg.RetentionDays > 0 {
			detached, err := ledger.DetachPartitionsBefore(ctx, pool, time.Now().AddDate(0, 0, -cfg.RetentionDays))
			fmt.Printf("partitions detached (older than %d days; archive, then drop them): %d %v\n", cfg.RetentionDays, len(detached), detached)
			return err
		}
		return nil
	})
}

func runExpire(ctx context.Context) error {
	return withLedger(ctx, func(pool *pgxpool.Pool) error {
		if *expireOnce {
			n, err := expireOrders(ctx, pool, *payWindow)
			fmt.Printf("orders expired: %d (unpaid after %v)\n", n, *payWindow)
			return err
		}
		runExpirer(ctx, pool, *payWindow, *expireEvery)
		return nil
	})
}

// expireOrders expires every order unpaid after window, in batches.
func expireOrders(ctx context.Context, pool *pgxpool.Pool, window time.Duration) (int, error) {
	total := 0
	for {
		n, err := ledger.ExpireDue(ctx, pool, window, 1000)
		total += n
		if err != nil || n < 1000 {
			return total, err
		}
	}
}

// runExpirer expires orders unpaid after window every interval until ctx
// ends, and once an hour forgets payment events older than
// -ledger.paymentEventsRetention. Several may run: they skip each other's
// locked rows.
func runExpirer(ctx context.Context, pool *pgxpool.Pool, window, every time.Duration) {
	slog.Info("ledger: expirer running", "payment_window", window, "every", every)
	t := time.NewTicker(every)
	defer t.Stop()
	var pruned time.Time
	for {
		if time.Since(pruned) > time.Hour {
			if n, err := ledger.PrunePaymentEvents(ctx, pool, time.Now().Add(-*payKeep)); err != nil && ctx.Err() == nil {
				slog.Warn("ledger: forgetting old payment events failed; will retry", "err", err)
			} else if n > 0 {
				slog.Info("ledger: old payment events forgotten", "events", n, "older_than", *payKeep)
			}
			pruned = time.Now()
		}
		if n, err := expireOrders(ctx, pool, window); err != nil && ctx.Err() == nil {
			slog.Warn("ledger: expiring orders failed; will retry", "err", err)
		} else if n > 0 {
			slog.Info("ledger: orders expired, their stock released", "orders", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// withLedger runs fn with a small pool on --database-url.
func withLedger(ctx context.Context, fn func(*pgxpool.Pool) error) error {
	_, url, err := requireBackends(false)
	if err != nil {
		return err
	}
	pool, err := ledger.Open(ctx, url, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	return fn(pool)
}
