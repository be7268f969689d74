package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/flashgate/flashgate/bench/trace"
)

// tracegenDefaults are the generator's defaults: the 1M-order flash sale.
var tracegenDefaults = trace.DefaultGenConfig()

var (
	tgOut      = flag.String("tracegen.out", "", "tracegen: the trace file to write (required); ending in .zst compresses it with zstd (recommended: ~10x smaller), any other name writes plain text. Written to a temporary file in the same directory and renamed at the end")
	tgSeed     = flag.Uint64("tracegen.seed", tracegenDefaults.Seed, "tracegen: random seed; the same seed and flags write the same trace, byte for byte")
	tgOrders   = flag.Int64("tracegen.orders", tracegenDefaults.Orders, "tracegen: order requests (kind order, the bots' included); retries, polls and cancels come on top (+54% records with the defaults)")
	tgDuration = flag.Duration("tracegen.duration", tracegenDefaults.Duration, "tracegen: the window the orders arrive in (follow-ups trail it by up to -tracegen.cancelDelayMax); with -tracegen.csv, the length the file's time span is compressed to (0: the file's own timing)")
	tgUsers    = flag.Int("tracegen.users", tracegenDefaults.Users, "tracegen: buyers u1..uN (the last -tracegen.bots × -tracegen.botAccounts of them are the bots' accounts); memory: ~5 bytes each")
	tgDevices  = flag.Int("tracegen.devices", tracegenDefaults.MaxDevices, "tracegen: each user has 1..N devices, each with its own IP (10.x.y.z; IPv6 past 16.7M devices)")
	tgSKUs     = flag.Int("tracegen.skus", tracegenDefaults.SKUs, "tracegen: sale items sku-0001.. (sku-0001 the most popular)")
	tgZipf     = flag.Float64("tracegen.zipf", tracegenDefaults.Zipf, "tracegen: SKU popularity exponent: rank r is ordered in proportion to 1/r^zipf (0: uniform; higher: hotter top SKUs)")
	tgStock    = flag.Int64("tracegen.stock", tracegenDefaults.TotalStock, "tracegen: total units on sale, split over the SKUs (at least 1 each; see -tracegen.stockSkew)")
	tgSkew     = flag.Float64("tracegen.stockSkew", tracegenDefaults.StockSkew, "tracegen: how the stock is split: 1 in proportion to popularity (every SKU sells out at some point), 0 evenly (hot SKUs sell out at once, the tail never), or in between")
	tgLimit    = flag.Int64("tracegen.limit", tracegenDefaults.PerUserLimit, "tracegen: per-user purchase limit of every SKU, in units (0: none); also with -tracegen.csv, where it defaults to 0")
	tgPrice    = flag.Int64("tracegen.price", tracegenDefaults.PriceCents, "tracegen: price of every SKU, in cents; also with -tracegen.csv")
	tgMaxQty   = flag.Int64("tracegen.maxQty", tracegenDefaults.MaxQty, "tracegen: most units in one order (at most -tracegen.limit); bots always order this many")
	tgMultiQty = flag.Float64("tracegen.multiQty", tracegenDefaults.MultiQtyShare, "tracegen: share of the human orders for 2..-tracegen.maxQty units instead of 1")

	tgHerd        = flag.Float64("tracegen.herd", tracegenDefaults.HerdShare, "tracegen: share of the orders in the thundering herd at the sale's start (0..1)")
	tgHerdDecay   = flag.Duration("tracegen.herdDecay", tracegenDefaults.HerdDecay, "tracegen: the herd's rate decays as exp(-t/herdDecay): 63% of it within herdDecay, 95% within 3x")
	tgBursts      = flag.Int("tracegen.bursts", tracegenDefaults.Bursts, "tracegen: bursts of orders at times fixed by the seed (0: none)")
	tgBurstShare  = flag.Float64("tracegen.burstShare", tracegenDefaults.BurstShare, "tracegen: share of the orders in the bursts, split evenly among them")
	tgBurstLength = flag.Duration("tracegen.burstLength", tracegenDefaults.BurstLength, "tracegen: length of each burst")

	tgBots        = flag.Int("tracegen.bots", tracegenDefaults.Bots, "tracegen: bot IPs (10.255.x.y) flooding the sale's first -tracegen.botWindow, to exercise per-IP rate limits (0: none)")
	tgBotShare    = flag.Float64("tracegen.botShare", tracegenDefaults.BotShare, "tracegen: share of the orders sent by the bots")
	tgBotAccounts = flag.Int("tracegen.botAccounts", tracegenDefaults.BotAccounts, "tracegen: user accounts each bot orders for (taken from the end of u1..uN)")
	tgBotWindow   = flag.Duration("tracegen.botWindow", tracegenDefaults.BotWindow, "tracegen: the bots send their orders evenly over this much of the sale's start")

	tgKeyless     = flag.Float64("tracegen.keyless", tracegenDefaults.KeylessShare, "tracegen: share of the human orders without an Idempotency-Key (never retried, polled or cancelled)")
	tgRetries     = flag.Float64("tracegen.retries", tracegenDefaults.RetryShare, "tracegen: share of the keyed human orders retried (same key and body) 1..-tracegen.maxRetries times")
	tgMaxRetries  = flag.Int("tracegen.maxRetries", tracegenDefaults.MaxRetries, "tracegen: most retries of one order (1..255)")
	tgRetryMin    = flag.Duration("tracegen.retryDelayMin", tracegenDefaults.RetryDelayMin, "tracegen: shortest time from an attempt to its retry (a double click)")
	tgRetryMax    = flag.Duration("tracegen.retryDelayMax", tracegenDefaults.RetryDelayMax, "tracegen: longest time from an attempt to its retry (a client timeout)")
	tgPolls       = flag.Float64("tracegen.polls", tracegenDefaults.PollShare, "tracegen: share of the keyed human orders whose status is polled 1..-tracegen.maxPolls times")
	tgMaxPolls    = flag.Int("tracegen.maxPolls", tracegenDefaults.MaxPolls, "tracegen: most polls of one order (1..255)")
	tgPollMin     = flag.Duration("tracegen.pollDelayMin", tracegenDefaults.PollDelayMin, "tracegen: shortest time from an order (or poll) to the next poll")
	tgPollMax     = flag.Duration("tracegen.pollDelayMax", tracegenDefaults.PollDelayMax, "tracegen: longest time from an order (or poll) to the next poll")
	tgCancels     = flag.Float64("tracegen.cancels", tracegenDefaults.CancelShare, "tracegen: share of the keyed human orders cancelled by their buyer")
	tgCancelMin   = flag.Duration("tracegen.cancelDelayMin", tracegenDefaults.CancelDelayMin, "tracegen: shortest time from an order to its cancel")
	tgCancelMax   = flag.Duration("tracegen.cancelDelayMax", tracegenDefaults.CancelDelayMax, "tracegen: longest time from an order to its cancel")
	tgMaxPending  = flag.Int("tracegen.maxPending", tracegenDefaults.MaxPending, "tracegen: most follow-ups (retries, polls, cancels) waiting to be written, 32 bytes each: bounds memory; past it follow-ups are left out and counted (raise it, or -tracegen.duration, if the summary reports any)")
	tgCSV         = flag.String("tracegen.csv", "", "tracegen: import this CSV of real orders (columns time, customer, item, quantity; header row optional) instead of generating; see bench/trace/README.md")
	tgCSVFactor   = flag.Float64("tracegen.csvStockFactor", trace.DefaultImportConfig().StockFactor, "tracegen -tracegen.csv: each SKU's stock is this many times the units ordered of it in the file (below 1: it sells out)")
	tgCSVStock    = flag.Int64("tracegen.csvStock", 0, "tracegen -tracegen.csv: every SKU gets this stock instead of -tracegen.csvStockFactor (0: use the factor)")
	tgCSVKeepIDs  = flag.Bool("tracegen.csvKeepIDs", false, "tracegen -tracegen.csv: keep customer ids that are valid user ids as they are (default: hash every customer id, so the trace holds no real ids)")
	tgCSVNoSpread = flag.Bool("tracegen.csvNoSpread", false, "tracegen -tracegen.csv: keep the rows of one whole second at the same instant (default: spread them evenly across their second)")
)

// tracegenCSVFlags are the flags that apply to an import; the rest only to
// the generator.
var tracegenCSVFlags = map[string]bool{
	"tracegen.out": true, "tracegen.csv": true, "tracegen.duration": true, "tracegen.limit": true, "tracegen.price": true,
	"tracegen.csvStockFactor": true, "tracegen.csvStock": true, "tracegen.csvKeepIDs": true, "tracegen.csvNoSpread": true,
}

func tracegenConfig() trace.GenConfig {
	return trace.GenConfig{
		Seed: *tgSeed, Orders: *tgOrders, Duration: *tgDuration,
		Users: *tgUsers, MaxDevices: *tgDevices,
		SKUs: *tgSKUs, Zipf: *tgZipf, TotalStock: *tgStock, StockSkew: *tgSkew,
		PerUserLimit: *tgLimit, PriceCents: *tgPrice, MaxQty: *tgMaxQty, MultiQtyShare: *tgMultiQty,
		HerdShare: *tgHerd, HerdDecay: *tgHerdDecay,
		Bursts: *tgBursts, BurstShare: *tgBurstShare, BurstLength: *tgBurstLength,
		Bots: *tgBots, BotShare: *tgBotShare, BotAccounts: *tgBotAccounts, BotWindow: *tgBotWindow,
		KeylessShare: *tgKeyless,
		RetryShare:   *tgRetries, MaxRetries: *tgMaxRetries, RetryDelayMin: *tgRetryMin, RetryDelayMax: *tgRetryMax,
		PollShare: *tgPolls, MaxPolls: *tgMaxPolls, PollDelayMin: *tgPollMin, PollDelayMax: *tgPollMax,
		CancelShare: *tgCancels, CancelDelayMin: *tgCancelMin, CancelDelayMax: *tgCancelMax,
		MaxPending: *tgMaxPending,
	}
}

// runTracegen is `flashgate tracegen`: it writes a synthetic flash sale (or
// imports a CSV of real orders) as a trace for `flashgate replay`.
func runTracegen(ctx context.Context) error {
	if *tgOut == "" {
		return errors.New("tracegen: -tracegen.out is required: the trace file to write, e.g. -tracegen.out var/sale-1m.trace.zst")
	}
	set := map[string]bool{} // flags given on the command line
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var src traceSource
	if *tgCSV != "" {
		var misplaced []string
		for name := range set {
			if strings.HasPrefix(name, "tracegen.") && !tracegenCSVFlags[name] {
				misplaced = append(misplaced, "-"+name)
			}
		}
		slices.Sort(misplaced)
		if len(misplaced) > 0 {
			return fmt.Errorf("tracegen: %s only shape a generated trace; an import (-tracegen.csv) takes its traffic from the file: drop them", strings.Join(misplaced, ", "))
		}
		f, err := os.Open(*tgCSV)
		if err != nil {
			return fmt.Errorf("tracegen: -tracegen.csv: %w", err)
		}
		defer f.Close()
		cfg := trace.DefaultImportConfig()
		cfg.StockFactor, cfg.StockPerSKU = *tgCSVFactor, *tgCSVStock
		cfg.KeepCustomerIDs, cfg.Spread = *tgCSVKeepIDs, !*tgCSVNoSpread
		// The generator's defaults of these are not the import's: real
		// orders may be for more units than the generator's limit.
		if set["tracegen.duration"] {
			cfg.Duration = *tgDuration
		}
		if set["tracegen.limit"] {
			cfg.PerUserLimit = *tgLimit
		}
		if set["tracegen.price"] {
			cfg.PriceCents = *tgPrice
		}
		im, err := trace.NewImport(f, cfg) // the first pass over the file
		if err != nil {
			return fmt.Errorf("%s: %w", *tgCSV, err)
		}
		src = im
	} else {
		g, err := trace.NewGenerator(tracegenConfig())
		if err != nil {
			return err
		}
		src = g
	}

	start := time.Now()
	dir := filepath.Dir(*tgOut)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("tracegen: -tracegen.out: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(*tgOut)+".tmp-*")
	if err != nil {
		return fmt.Errorf("tracegen: -tracegen.out: %w", err)
	}
	done := false
	defer func() {
		if !done { // a failed or interrupted run leaves no half trace behind
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var opts []trace.WriterOption
	if !strings.HasSuffix(*tgOut, ".zst") {
		opts = append(opts, trace.Plain())
	}
	cw := &countingWriter{w: tmp}
	h := src.Header()
	w, err := trace.NewWriter(cw, h, opts...)
	if err != nil {
		return err
	}
	st, err := src.Run(ctx, w)
	if err != nil {
		if ctx.Err() != nil {
			// Not context.Canceled: main would exit 0, and a script would
			// go on to replay a trace that is not there.
			return fmt.Errorf("tracegen: interrupted; %s was not written", *tgOut)
		}
		if *tgCSV != "" {
			return fmt.Errorf("%s: %w", *tgCSV, err)
		}
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), *tgOut); err != nil {
		return err
	}
	done = true
	printTracegenSummary(os.Stdout, *tgOut, &st, &h, cw.n, time.Since(start))
	return nil
}

// traceSource is a trace.Generator or a trace.Import.
type traceSource interface {
	Header() trace.Header
	Run(context.Context, *trace.Writer) (trace.Stats, error)
}

func printTracegenSummary(out io.Writer, path string, st *trace.Stats, h *trace.Header, bytes int64, took time.Duration) {
	fmt.Fprintf(out, "tracegen: wrote %s in %v\n", path, took.Round(time.Millisecond))
	fmt.Fprintf(out, "  records     %d (order %d, retry %d, poll %d, cancel %d)\n", st.Total(),
		st.Records[trace.KindOrder], st.Records[trace.KindRetry], st.Records[trace.KindPoll], st.Records[trace.KindCancel])
	fmt.Fprintf(out, "  users       %d\n", st.Users)
	fmt.Fprintf(out, "  skus        %d, total stock %d units\n", len(h.Items), h.TotalStock())
	fmt.Fprintf(out, "  duration    %v (offset of the last record)\n", st.Last.Round(time.Millisecond))
	fmt.Fprintf(out, "  size        %.1f MB (%.1f bytes per record)\n", float64(bytes)/1e6, float64(bytes)/float64(max(1, st.Total())))
	if st.Dropped > 0 {
		fmt.Fprintf(out, "  dropped     %d follow-ups (retries, polls, cancels) past -tracegen.maxPending waiting; raise it or -tracegen.duration\n", st.Dropped)
	}
}

// countingWriter counts the bytes written to the file.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
