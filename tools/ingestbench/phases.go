package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ingest"
)

// env is what every phase runs against.
type env struct {
	pool    *pgxpool.Pool
	url     string
	pgDir   string // data directory: postmaster.pid for CPU accounting
	brokers []string
	adm     *kgo.Client
	csvPath string
	n       int64 // orders pre-produced
}

// The ingest package's own counters (same names, so the same counters).
var (
	ingestRows    = metrics.GetOrCreateCounter(`flashgate_ingest_rows_total`)
	ingestBatches = metrics.GetOrCreateCounter(`flashgate_ingest_batches_total`)
	ingestStaged  = metrics.GetOrCreateCounter(`flashgate_ingest_staging_fallbacks_total`)
)

// result is one timed run.
type result struct {
	rows    int64
	elapsed time.Duration // start to caught up (ingest) / psql start to exit (copy)
	// By the ingest rows counter, sampled every millisecond: when the first
	// batch was in the database, and when the last was. Zero for copy.
	firstRow, lastRow time.Duration
	batches, staged   uint64
	// inBatches is the time the worker spent in its batches (decode, COPY,
	// commit: flashgate_ingest_batch_duration_seconds); the rest of elapsed
	// is start-up, waiting for fetches and committing offsets.
	inBatches time.Duration
	cpu       cpuSnap
}

func (r result) rate() float64 { return float64(r.rows) / r.elapsed.Seconds() }

// steadyRate is the rate from the first committed batch to the last: the
// service without its start-up (client, group join, first fetch).
func (r result) steadyRate() float64 {
	if r.lastRow <= r.firstRow {
		return 0
	}
	return float64(r.rows) / (r.lastRow - r.firstRow).Seconds()
}

// runIngest starts the ingest service with the defaults under a consumer
// group new to the topic (so it reads order.created from the start) and
// times it from ingest.Start until ingest.WaitCaughtUp returns.
func runIngest(ctx context.Context, e *env, group, profile string) (result, error) {
	cfg := ingest.FlagConfig() // the defaults, unless -ingest.* flags are given
	cfg.Brokers = e.brokers
	cfg.Group = group

	rows0, batches0, staged0, inBatches0 := ingestRows.Get(), ingestBatches.Get(), ingestStaged.Get(), batchSeconds()
	var first, last atomic.Int64
	stopSampler := make(chan struct{})
	samplerDone := make(chan struct{})

	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return result{}, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return result{}, err
		}
		defer pprof.StopCPUProfile()
	}
	cpu0 := takeCPU(e.pgDir)
	start := time.Now()
	go func() { // the rows counter, every millisecond
		defer close(samplerDone)
		for {
			got := int64(ingestRows.Get() - rows0)
			if got > 0 && first.Load() == 0 {
				first.Store(int64(time.Since(start)))
			}
			if got >= e.n {
				last.Store(int64(time.Since(start)))
				return
			}
			select {
			case <-stopSampler:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	svc, err := ingest.Start(cfg, e.pool)
	if err != nil {
		close(stopSampler)
		return result{}, err
	}
	err = ingest.WaitCaughtUp(ctx, e.adm, group, 10*time.Minute)
	elapsed := time.Since(start)
	cpu := takeCPU(e.pgDir).sub(cpu0)
	svc.Stop()
	close(stopSampler)
	<-samplerDone
	if err != nil {
		return result{}, err
	}
	return result{
		rows: e.n, elapsed: elapsed,
		firstRow: time.Duration(first.Load()), lastRow: time.Duration(last.Load()),
		batches: ingestBatches.Get() - batches0, staged: ingestStaged.Get() - staged0,
		inBatches: batchSeconds() - inBatches0,
		cpu:       cpu,
	}, nil
}

// batchSeconds is the sum of ingest's batch durations so far.
func batchSeconds() time.Duration {
	var b bytes.Buffer
	metrics.WritePrometheus(&b, false)
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "flashgate_ingest_batch_duration_seconds_sum "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return time.Duration(f * float64(time.Second))
		}
	}
	return 0
}

// runCopy loads the CSV of the same rows with psql's \copy (COPY FROM
// STDIN, one transaction), timed from psql's start to its exit.
func runCopy(ctx context.Context, e *env) (result, error) {
	cmd := exec.CommandContext(ctx, *psqlPath, "-X", "-v", "ON_ERROR_STOP=1", "-d", e.url,
		"-c", fmt.Sprintf(`\copy orders(%s) FROM '%s' CSV`, copyColumns, e.csvPath))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cpu0 := takeCPU(e.pgDir)
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	end := takeCPU(e.pgDir)
	// The backend's CPU time reaches the postmaster's cutime once it has
	// exited and been reaped, a moment after psql's exit.
	time.Sleep(200 * time.Millisecond)
	end.pg = pgCPU(e.pgDir)
	cpu := end.sub(cpu0)
	if err != nil {
		return result{}, fmt.Errorf("psql \\copy: %v: %s", err, out.String())
	}
	if got := strings.TrimSpace(out.String()); got != fmt.Sprintf("COPY %d", e.n) {
		return result{}, fmt.Errorf("psql \\copy said %q, want COPY %d", got, e.n)
	}
	// psql is a child of this process: its CPU is not in RUSAGE_SELF.
	cpu.self += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return result{rows: e.n, elapsed: elapsed, cpu: cpu}, nil
}

// reset empties the ledger and checkpoints, so that each timed run starts
// from empty tables and pays for none of the previous run's dirty pages.
func reset(ctx context.Context, e *env) error {
	if _, err := e.pool.Exec(ctx, "TRUNCATE orders, idempotency_keys"); err != nil {
		return err
	}
	_, err := e.pool.Exec(ctx, "CHECKPOINT")
	return err
}

// checkpoint only (the staging run keeps the rows).
func checkpoint(ctx context.Context, e *env) error {
	_, err := e.pool.Exec(ctx, "CHECKPOINT")
	return err
}

// verify checks that orders holds exactly want rows, each order once.
func verify(ctx context.Context, e *env, want int64) error {
	var rows, distinct int64
	if err := e.pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT order_id) FROM orders").Scan(&rows, &distinct); err != nil {
		return err
	}
	if rows != want || distinct != want {
		return fmt.Errorf("orders holds %d rows (%d distinct), want %d", rows, distinct, want)
	}
	return nil
}
