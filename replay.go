package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/flashgate/flashgate/bench/replay"
	"github.com/flashgate/flashgate/bench/report"
	"github.com/flashgate/flashgate/edge"
	"github.com/flashgate/flashgate/ingest"
)

var (
	replayTrace    = flag.String("replay.trace", "", "replay: the trace file to send (flashgate tracegen makes one)")
	replayEnv      = flag.String("replay.env", "", "replay: a dev.env (KEY=VALUE lines: EDGE_URL, ADMIN_URL, DATABASE_URL, KAFKA_BROKERS) naming the stack to replay against; default <-data-dir>/dev.env when it exists")
	replayEdge     = flag.String("replay.edge", "", "replay: the edge's host:port, or several comma-separated (each user's requests go to one of them, as behind a load balancer with user affinity); overrides EDGE_URL of -replay.env")
	replayAdmin    = flag.String("replay.admin", "", "replay: the admin plane's URL, where the trace's sale items are put on sale and the hot SKUs' stock is read (overrides ADMIN_URL); \"none\": the items are on sale already under -replay.runID")
	replaySpeed    = flag.Float64("replay.speed", 1, "replay: trace time / replay time; 2 sends the trace twice as fast")
	replayRate     = flag.Float64("replay.rate", 0, "replay: send this many requests per second, ignoring the trace's timing (0: the trace's timing × -replay.speed)")
	replayLimit    = flag.Uint64("replay.limit", 0, "replay: send only the first N records of the trace (0: all)")
	replaySettle   = flag.Duration("replay.settle", 0, "replay: wait this long after putting the sale items before the first request (several edges with -edge.leaseTTL: 2s lets every edge learn of them and lease its first blocks)")
	replayConns    = flag.Int("replay.conns", 256, "replay: keep-alive connections; a request due while all are busy waits and the wait counts as latency")
	replayPipeline = flag.Int("replay.pipeline", 1, "replay: most requests written at once per connection (those already due); 1 = no pipelining")
	replayTimeout  = flag.Duration("replay.timeout", 10*time.Second, "replay: per response; slower is an error (its order may still stand) and the connection is replaced")
	replayDrain    = flag.Duration("replay.drain", 10*time.Second, "replay: after the last request is due, wait this long for outstanding responses")
	replayRunID    = flag.String("replay.runID", "", "replay: prefix of the run's SKUs and idempotency keys (default: random), so runs never share stock or keys")
	replayHot      = flag.Int("replay.hotSKUs", 5, "replay: the report follows the stock of this many most-requested SKUs")
	replayOut      = flag.String("replay.out", "", "replay: directory for results.zst, run.json and report.html (default <-data-dir>/replay/<run id>)")
	replayVerify   = flag.Bool("replay.verify", false, "replay: after the replay, wait for ingest to drain and check the invariants against PostgreSQL; exit status 1 if one fails")
	replayDrainMax = flag.Duration("replay.drainTimeout", 2*time.Minute, "replay: -replay.verify waits at most this long for ingest to drain")
	replayTarget   = flag.String("replay.target", "flashgate", "replay: name of what is replayed against, for the report (e.g. textbook)")
	replayQuiet    = flag.Bool("replay.quiet", false, "replay: no progress line per second")
	replayCPUProf  = flag.String("replay.cpuprofile", "", "replay: write the replay's own CPU profile to this file (is the load generator the limit?)")
)

// runReplay is `flashgate replay`.
func runReplay(ctx context.Context) error {
	env, err := replayEnvironment()
	if err != nil {
		return err
	}
	cfg := replay.Config{
		Trace: *replayTrace, Target: *replayTarget, EdgeAddr: env.edge, AdminURL: env.admin, AdminToken: edge.AdminToken(),
		Speed: *replaySpeed, Rate: *replayRate, Limit: *replayLimit, Settle: *replaySettle, Conns: *replayConns, Pipeline: *replayPipeline,
		Timeout: *replayTimeout, Drain: *replayDrain, RunID: *replayRunID, HotSKUs: *replayHot,
	}
	if cfg.RunID == "" {
		cfg.RunID = "r" + time.Now().UTC().Format("0102150405")
	}
	cfg.OutDir = *replayOut
	if cfg.OutDir == "" {
		cfg.OutDir = filepath.Join(*dataDir, "replay", cfg.RunID)
	}
	if !*replayQuiet {
		cfg.Progress = os.Stderr
	}
	if *replayCPUProf != "" {
		f, err := os.Create(*replayCPUProf)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	fmt.Fprintf(os.Stderr, "replaying %s against %s (admin %s), run id %s\n", cfg.Trace, cfg.EdgeAddr, orNone(cfg.AdminURL), cfg.RunID)
	out, err := replay.Run(ctx, cfg)
	if err != nil {
		return err
	}
	var verr error
	if *replayVerify {
		vc := replay.VerifyConfig{DatabaseURL: env.database, Group: ingest.FlagConfig().Group, DrainTimeout: *replayDrainMax}
		if env.brokers != "" {
			vc.KafkaBrokers = strings.Split(env.brokers, ",")
			if vc.KafkaOpts, err = kafkaSecurity.Opts(); err != nil {
				return kafkaSecurity.Explain(err)
			}
		}
		if vc.DatabaseURL == "" {
			return errors.New("replay: -replay.verify needs the database: DATABASE_URL in -replay.env, or --database-url")
		}
		fmt.Fprintln(os.Stderr, "verifying: waiting for ingest to drain, then checking the ledger")
		if err := replay.Verify(ctx, out, vc); err != nil {
			return err
		}
		if !replay.Passed(out.Run) {
			verr = errors.New("replay: verification FAILED (see the checks above)")
		}
	}
	if err := writeReports(cfg.OutDir, out.Run); err != nil {
		return err
	}
	return verr
}

// writeReports prints the text report and writes run.json and report.html.
func writeReports(dir string, run *report.Run) error {
	w := bufio.NewWriter(os.Stdout)
	if err := report.WriteText(w, run); err != nil {
		return err
	}
	for _, f := range []struct {
		name  string
		write func(*os.File) error
	}{
		{"run.json", func(f *os.File) error { return report.WriteJSON(f, run) }},
		{"report.html", func(f *os.File) error { return report.WriteHTML(f, run) }},
	} {
		path := filepath.Join(dir, f.name)
		file, err := os.Create(path)
		if err != nil {
			return err
		}
		err = f.write(file)
		if cerr := file.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	fmt.Fprintf(w, "report: %s (results: %s)\n", filepath.Join(dir, "report.html"), filepath.Join(dir, "results.zst"))
	return w.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

type replayStack struct{ edge, admin, database, brokers string }

// replayEnvironment finds the stack: -replay.env (or <-data-dir>/dev.env),
// overridden by -replay.edge, -replay.admin, --database-url and
// --kafka-brokers.
func replayEnvironment() (replayStack, error) {
	var e replayStack
	path := *replayEnv
	if path == "" {
		if p := filepath.Join(*dataDir, "dev.env"); fileExists(p) {
			path = p
		}
	}
	if path != "" {
		kv, err := readEnvFile(path)
		if err != nil {
			return e, fmt.Errorf("replay: -replay.env: %w", err)
		}
		e = replayStack{edge: kv["EDGE_URL"], admin: kv["ADMIN_URL"], database: kv["DATABASE_URL"], brokers: kv["KAFKA_BROKERS"]}
	}
	if *replayEdge != "" {
		e.edge = *replayEdge
	}
	switch *replayAdmin {
	case "":
	case "none":
		e.admin = ""
	default:
		e.admin = *replayAdmin
	}
	if *databaseURL != "" {
		e.database = *databaseURL
	}
	if *kafkaBrokers != "" {
		e.brokers = *kafkaBrokers
	}
	e.edge = strings.TrimPrefix(e.edge, "http://")
	if strings.HasPrefix(e.edge, "https://") {
		return e, fmt.Errorf("replay: edge %q: replay speaks plain HTTP/1.1; put the edge's host:port", e.edge)
	}
	e.edge = strings.TrimSuffix(e.edge, "/")
	if e.admin != "" && !strings.Contains(e.admin, "://") {
		e.admin = "http://" + e.admin
	}
	e.admin = strings.TrimSuffix(e.admin, "/")
	return e, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kv := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: %q is not KEY=VALUE", path, i+1, line)
		}
		kv[k] = v
	}
	return kv, nil
}
