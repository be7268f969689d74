// Command ingestbench measures ingest (order.created -> the partitioned
// orders table) against its physical limit, `psql \copy` of the same rows
// into the same table, on a private PostgreSQL cluster and the embedded
// broker that it starts itself. bench/ingest.sh runs it:
//
//	go run ./tools/ingestbench -orders 1000000 -rounds 3
//
// The phases:
//
//  1. N orders are produced into order.created as the edge produces them
//     (keyed by user, zstd, acks=all, the broker's log synced per batch),
//     and the same rows are written to a CSV file.
//  2. For -rounds rounds, each from an empty, checkpointed table: the
//     ingest service (ingest.Start with the defaults, a new consumer group)
//     from its start until ingest.WaitCaughtUp returns, and psql \copy of
//     the CSV, alternating which goes first. The medians and their ratio.
//  3. The staging path: a new group takes the same records again with every
//     row already present, so each batch's COPY hits the primary key and
//     goes through the staging table and INSERT ... ON CONFLICT DO NOTHING;
//     then again with every other row deleted (half of each batch written).
//  4. Steady load: -steadyRate orders/s, open loop, and the time from each
//     sampled order's intended send time until its row is visible.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/pgcluster"
)

var (
	orders         = flag.Int("orders", 1_000_000, "orders pre-produced and loaded by each side (~170 bytes each as a record value)")
	rounds         = flag.Int("rounds", 3, "timed rounds of ingest and psql \\copy each (alternating which goes first); medians are reported")
	partitions     = flag.Int("partitions", 6, "partitions of order.created (flashgate's -kafka.partitions default)")
	kafkaSync      = flag.Bool("kafkaSync", true, "the embedded broker fsyncs every batch before its ack (flashgate dev's default, -kafka.syncWrites); false leaves its log in the page cache")
	fsync          = flag.Bool("fsync", true, "PostgreSQL fsync for both sides (on, as `flashgate dev` runs; off is pgcluster's NoFsync: fsync=off, full_page_writes=off)")
	hashParts      = flag.Int("userHashPartitions", 0, "sub-partition each day of orders by hash of user_id into this many tables (flashgate ledger partitions -ledger.userHashPartitions); 0: none, the default layout")
	users          = flag.Int("users", 100_000, "distinct user ids (record keys) the orders are drawn from")
	idemKeys       = flag.Float64("idemKeys", 0, "share of orders carrying an Idempotency-Key, in [0, 1]; ingest then also writes idempotency_keys, which psql \\copy does not")
	seed           = flag.Uint64("seed", 1, "seed of the generated orders")
	steadyRate     = flag.Float64("steadyRate", 20_000, "orders/s of the latency phase; 0 skips it")
	steadyDuration = flag.Duration("steadyDuration", 20*time.Second, "measured time of the latency phase")
	steadyWarmup   = flag.Duration("steadyWarmup", 2*time.Second, "time produced at the same rate before measuring")
	sampleEvery    = flag.Int("sampleEvery", 10, "time one order in this many in the latency phase")
	pollEvery      = flag.Duration("pollEvery", 5*time.Millisecond, "how often the latency poller looks the sampled orders up: the resolution of the visibility times")
	staging        = flag.Bool("staging", true, "run the staging (redelivery) path")
	psqlPath       = flag.String("psql", "psql", "psql client")
	cpuProfile     = flag.String("cpuprofile", "", "write this process's CPU profiles (ingest workers, embedded broker, producer) to <prefix>.ingest.pprof (first ingest round), <prefix>.staging.pprof and <prefix>.steady.pprof")
	keep           = flag.Bool("keep", false, "keep the work directory (cluster, broker log, CSV) and print its path")
)

func main() {
	flag.Parse()
	if flag.NArg() > 0 || *orders < 1 || *rounds < 1 || *partitions < 1 || *users < 1 || *idemKeys < 0 || *idemKeys > 1 || *sampleEvery < 1 || *steadyRate < 0 {
		flag.Usage()
		os.Exit(2)
	}
	if _, err := exec.LookPath(*psqlPath); err != nil {
		fatal(fmt.Errorf("no psql client (%v); possible fix: apt-get install postgresql-client, or -psql /path/to/psql", err))
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "ingestbench:", err)
	os.Exit(1)
}

func run(ctx context.Context) error {
	work, err := os.MkdirTemp("", "ingestbench-")
	if err != nil {
		return err
	}
	// The server may run as the postgres user, which must reach the cluster directory.
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	if *keep {
		fmt.Println("work directory:", work)
	} else {
		defer os.RemoveAll(work)
	}

	logf, err := os.Create(filepath.Join(work, "pg.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	pgDir := filepath.Join(work, "pg")
	pg, err := pgcluster.Start(ctx, pgcluster.Options{Dir: pgDir, NoFsync: !*fsync, Log: logf})
	if err != nil {
		return err
	}
	defer pg.Stop()
	kf, err := broker.StartEmbedded("127.0.0.1:0", filepath.Join(work, "kafka"), int32(*partitions), *kafkaSync)
	if err != nil {
		return err
	}
	defer kf.Close()
	adm, err := broker.NewAdmin([]string{kf.Addr()})
	if err != nil {
		return err
	}
	defer adm.Close()
	pool, err := ledger.Open(ctx, pg.URL(), 32)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := ledger.Migrate(ctx, pool); err != nil {
		return err
	}
	if *hashParts > 0 {
		if err := ledger.SetUserHashPartitions(ctx, pool, *hashParts); err != nil {
			return err
		}
	}
	if _, err := ledger.EnsurePartitionsAround(ctx, pool, time.Now(), 7); err != nil {
		return err
	}
	e := &env{pool: pool, url: pg.URL(), pgDir: pgDir, brokers: []string{kf.Addr()}, adm: adm,
		csvPath: filepath.Join(work, "orders.csv"), n: int64(*orders)}

	var pgVersion string
	_ = pool.QueryRow(ctx, "SHOW server_version").Scan(&pgVersion)
	layout := "daily partitions"
	if *hashParts > 0 {
		layout = fmt.Sprintf("daily partitions, each by hash of user_id into %d", *hashParts)
	}
	fsyncText := "on (fsync=on, full_page_writes=on; ingest commits with synchronous_commit=on, psql \\copy with the server default, on)"
	if !*fsync {
		fsyncText = "off (fsync=off, full_page_writes=off)"
	}
	fmt.Printf("ingestbench: %d orders, order.created with %d partitions (embedded broker, log on disk, synced per batch: %v), PostgreSQL %s (pgcluster's settings), fsync %s, Idempotency-Key on %.0f%% of orders, %s, %d CPUs\n",
		*orders, *partitions, *kafkaSync, pgVersion, fsyncText, *idemKeys*100, layout, numCPU())

	icfg := ingest.FlagConfig()
	fmt.Printf("ingest: %d worker(s), batches of up to %d rows / %d bytes / %v\n", icfg.Workers, icfg.BatchRows, icfg.BatchBytes, icfg.BatchAge)

	t0 := time.Now()
	valueBytes, err := preProduce(ctx, kf.Addr(), *orders, e.csvPath)
	if err != nil {
		return fmt.Errorf("pre-producing: %w", err)
	}
	csvInfo, _ := os.Stat(e.csvPath)
	fmt.Printf("pre-produced %d orders (%.0f bytes/record value, %.1f MB CSV) in %ss\n\n",
		*orders, float64(valueBytes)/float64(*orders), float64(csvInfo.Size())/1e6, secs(time.Since(t0)))

	printHeader()
	var ingRates, ingSteady, cpRates []float64
	var otherCPU, capacity time.Duration // other processes' CPU during the timed runs, of all CPUs' time
	var quietIng, quietCp []float64      // rates of the runs that other processes left alone
	for r := 1; r <= *rounds; r++ {
		order := []string{"ingest", "copy"}
		if r%2 == 0 {
			order = []string{"copy", "ingest"}
		}
		for _, path := range order {
			if err := reset(ctx, e); err != nil {
				return err
			}
			var res result
			var err error
			if path == "ingest" {
				prof := ""
				if *cpuProfile != "" && r == 1 {
					prof = *cpuProfile + ".ingest.pprof"
				}
				res, err = runIngest(ctx, e, fmt.Sprintf("ingestbench-round-%d", r), prof)
			} else {
				res, err = runCopy(ctx, e)
			}
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r, path, err)
			}
			if err := verify(ctx, e, e.n); err != nil {
				return fmt.Errorf("round %d, %s: %w", r, path, err)
			}
			printRow(fmt.Sprint(r), path, res)
			otherCPU += res.cpu.other()
			capacity += res.elapsed * time.Duration(numCPU())
			if quiet := res.cpu.other() < res.elapsed*time.Duration(numCPU())/20; quiet && path == "ingest" {
				quietIng = append(quietIng, res.rate())
			} else if quiet {
				quietCp = append(quietCp, res.rate())
			}
			if path == "ingest" {
				ingRates, ingSteady = append(ingRates, res.rate()), append(ingSteady, res.steadyRate())
			} else {
				cpRates = append(cpRates, res.rate())
			}
		}
	}
	ing, cp := median(ingRates), median(cpRates)
	var ratios []float64 // per round: the two runs were next to each other in time
	for i := range ingRates {
		ratios = append(ratios, ingRates[i]/cpRates[i])
	}
	fmt.Printf("\nmedian of %d rounds: ingest %.0f rows/s (from the first batch committed to the last: %.0f), psql \\copy %.0f rows/s: ingest/copy %.2fx (median of the rounds' own ratios: %.2fx)\n",
		*rounds, ing, median(ingSteady), cp, ing/cp, median(ratios))
	if share := otherCPU.Seconds() / capacity.Seconds(); share > 0.1 {
		fmt.Printf("note: other processes used %.0f%% of the machine's CPU during the timed runs: these figures are disturbed\n", 100*share)
		if len(quietIng) > 0 && len(quietCp) > 0 {
			qi, qc := median(quietIng), median(quietCp)
			fmt.Printf("      runs left alone (cpu other < 5%% of the machine): ingest %.0f rows/s (median of %d), psql \\copy %.0f rows/s (median of %d): %.2fx\n",
				qi, len(quietIng), qc, len(quietCp), qi/qc)
		}
	}

	if *staging {
		if err := runStaging(ctx, e, ing, cp); err != nil {
			return err
		}
	}

	if *steadyRate > 0 {
		if err := checkpoint(ctx, e); err != nil {
			return err
		}
		prof := ""
		if *cpuProfile != "" {
			prof = *cpuProfile + ".steady.pprof"
		}
		s, err := runSteady(ctx, e, prof)
		if err != nil {
			return fmt.Errorf("steady load: %w", err)
		}
		printSteady(s)
		// Every order produced is in the ledger once, next to the pre-produced ones.
		if err := verify(ctx, e, e.n+s.sent); err != nil {
			return fmt.Errorf("steady load: %w", err)
		}
		verdict := "PASS"
		if s.missing > 0 || s.produceErrs > 0 {
			verdict = "FAIL"
		}
		fmt.Printf("check: every order produced under steady load is in orders exactly once (%d), none unseen: %s\n", s.sent, verdict)
	}

	verdict := "PASS"
	if ing < 0.8*cp {
		verdict = "FAIL"
	}
	fmt.Printf("check: ingest >= 0.8x psql \\copy (medians, same rows, same table, same run): %.2fx %s\n", ing/cp, verdict)
	tableRow(fmt.Sprintf("ingest rows/s (%d orders)", *orders), fmt.Sprintf("%.0f", ing), "psql \\copy", fmt.Sprintf("%.0f", cp), fmt.Sprintf("%.2fx", ing/cp), ">= 0.8x", verdict)
	return nil
}

// runStaging times the redelivery path twice: with every row already in
// the table (each batch's COPY fails at once, the staging table takes the
// batch and INSERT ... ON CONFLICT DO NOTHING writes nothing), and with
// every other row deleted (the same, writing half of each batch).
func runStaging(ctx context.Context, e *env, ing, cp float64) error {
	fmt.Printf("\nstaging (redelivery) path, a new consumer group over the same records:\n")
	printHeader()
	for _, half := range []bool{false, true} {
		name, label := "ingestbench-staging-all", "all dup"
		if half {
			name, label = "ingestbench-staging-half", "half dup"
			if _, err := e.pool.Exec(ctx, "DELETE FROM orders WHERE order_id % 2 = 0"); err != nil {
				return err
			}
			if _, err := e.pool.Exec(ctx, "VACUUM orders"); err != nil {
				return err
			}
		}
		if err := checkpoint(ctx, e); err != nil {
			return err
		}
		prof := ""
		if *cpuProfile != "" && !half {
			prof = *cpuProfile + ".staging.pprof"
		}
		res, err := runIngest(ctx, e, name, prof)
		if err != nil {
			return fmt.Errorf("staging path (%s): %w", label, err)
		}
		if err := verify(ctx, e, e.n); err != nil {
			return fmt.Errorf("staging path (%s): %w", label, err)
		}
		printRow(label, "staging", res)
		what := "every row already present: nothing written"
		if half {
			what = "every other row deleted first: half of each batch written"
		}
		fmt.Printf("  %s; %d of %d batches through staging; %.0f rows/s = %.2fx the ingest median, %.2fx psql \\copy\n",
			what, res.staged, res.batches, res.rate(), res.rate()/ing, res.rate()/cp)
	}
	return nil
}

// The columns: rows/s over the whole run; for ingest, also from its first
// batch committed to its last ("steady"), the batches and the time spent in
// them (summed over the workers); CPU time of this process (plus psql's for copy), of the PostgreSQL
// cluster, of kernel threads and interrupts, and of other processes.
func printHeader() {
	fmt.Printf("%-8s %-11s %8s %9s %9s %7s %8s %8s %8s %8s %9s\n", "round", "path", "seconds", "rows/s", "steady/s", "batches", "in batch", "cpu self", "cpu pg", "cpu kern", "cpu other")
}

func printRow(round, path string, r result) {
	steady, batches, inBatch := "-", "-", "-"
	if path != "copy" {
		steady, batches, inBatch = fmt.Sprintf("%.0f", r.steadyRate()), fmt.Sprint(r.batches), secs(r.inBatches)+"s"
	}
	if path == "copy" {
		path = "psql \\copy"
	}
	fmt.Printf("%-8s %-11s %8s %9.0f %9s %7s %8s %7.1fs %7.1fs %7.1fs %8.1fs\n", round, path, secs(r.elapsed), r.rate(), steady, batches, inBatch,
		r.cpu.self.Seconds(), r.cpu.pg.Seconds(), r.cpu.kernel.Seconds(), r.cpu.other().Seconds())
}

func printSteady(s steadyResult) {
	ms := func(us int64) string { return fmt.Sprintf("%.1f", float64(us)/1000) }
	fmt.Printf("\nsteady load: %.0f orders/s target, %d produced in the %v window (%.0f/s), %d produce errors; cpu in the window: self %.1fs, pg %.1fs, kernel threads and interrupts %.1fs, other processes %.1fs (of %d CPUs x %v)\n",
		*steadyRate, s.measured, s.window, float64(s.measured)/s.window.Seconds(), s.produceErrs,
		s.cpu.self.Seconds(), s.cpu.pg.Seconds(), s.cpu.kernel.Seconds(), s.cpu.other().Seconds(), numCPU(), s.window)
	fmt.Printf("%-30s %8s %8s %8s %8s %8s %8s\n", "latency (ms, from intended send)", "count", "p50", "p90", "p99", "p99.9", "max")
	for _, h := range []struct {
		name string
		hist interface {
			TotalCount() int64
			ValueAtQuantile(float64) int64
			Max() int64
		}
	}{{"send delay (generator)", s.sendDelay}, {"produce -> broker ack", s.ack}, {"produce -> row visible", s.visible}, {"broker ack -> row visible", s.ackToVisible}} {
		fmt.Printf("%-30s %8d %8s %8s %8s %8s %8s\n", h.name, h.hist.TotalCount(), ms(h.hist.ValueAtQuantile(50)), ms(h.hist.ValueAtQuantile(90)),
			ms(h.hist.ValueAtQuantile(99)), ms(h.hist.ValueAtQuantile(99.9)), ms(h.hist.Max()))
	}
	avgPoll := time.Duration(0)
	if s.polls > 0 {
		avgPoll = s.pollTime / time.Duration(s.polls)
	}
	fmt.Printf("(row visible: one order in %d looked up by primary key every %v by a separate connection; %d polls, %.2f ms each on average; "+
		"a time is that of the first poll that saw the row, so it is late by up to one poll interval plus a query; %d sampled orders never seen within 30 s)\n",
		*sampleEvery, *pollEvery, s.polls, float64(avgPoll.Microseconds())/1000, s.missing)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// tableRow appends a row to the table `make bench` prints at the end
// ($BENCH_TABLE; see table_row in bench/lib.sh), when it is set.
func tableRow(fields ...string) {
	path := os.Getenv("BENCH_TABLE")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingestbench: BENCH_TABLE:", err)
		return
	}
	defer f.Close()
	fmt.Fprintln(f, strings.Join(fields, "|"))
}
