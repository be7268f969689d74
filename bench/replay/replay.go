// Package replay sends a flash-sale trace (package bench/trace) to an edge,
// open loop, at the trace's timing times a speed factor or at a fixed rate,
// and records what every request got: counts per second and outcome,
// latency from each request's intended send time into HdrHistograms, the
// stock left on the hottest SKUs, and a results file. After the run it can
// wait for ingest to drain and verify the invariants of DESIGN.md against
// PostgreSQL (see Verify), and it fills a report.Run for the text and HTML
// reports.
//
// Each replay puts the trace's sale items on sale under a fresh run id: SKU
// "sku-0001" of the trace is "<run>-sku-0001" on the edge, and idempotency
// keys get the same prefix. Replays of the same trace against the same stack
// therefore never see each other's stock, purchase limits or keys, and the
// verification looks at this run's orders only.
package replay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/bench/openloop"
	"github.com/flashgate/flashgate/bench/report"
	"github.com/flashgate/flashgate/bench/trace"
)

// Config of a replay. Zero values mean the defaults noted.
type Config struct {
	Trace    string // path of the trace file
	Target   string // name of what is replayed against, for the report ("flashgate")
	EdgeAddr string // host:port of the edge, or several comma-separated (each user's requests go to one)
	// AdminURL is the admin plane (http://host:port): the sale items are put
	// there before the first request, and the hot SKUs' stock is polled from
	// it. Empty: neither (the items must be on sale already, under RunID).
	AdminURL   string
	AdminToken string // bearer token of the admin plane, if it needs one
	// Settle is a wait after the items are put, before the first request:
	// edges that lease their stock (-edge.leaseTTL) learn of items put
	// through another edge within a second, then lease their first blocks.
	Settle time.Duration

	Speed float64 // trace time / replay time: 2 sends twice as fast. Default 1.
	Rate  float64 // > 0: ignore the trace's timing, send this many requests per second
	Limit uint64  // replay only the first Limit records (0: all)

	Conns    int           // keep-alive connections (default 256)
	Pipeline int           // most requests written at once per connection (default 1)
	Timeout  time.Duration // per response (default 10s)
	Drain    time.Duration // wait for outstanding responses after the last is due (default 10s)

	RunID   string // prefix of SKUs and keys (default: 8 random hex digits)
	HotSKUs int    // SKUs whose stock the report follows (default 5)
	OutDir  string // results.zst goes here ("" : no results file, no verification)

	Progress io.Writer // a line per second (nil: none)
}

func (c *Config) setDefaults() error {
	if c.Speed == 0 {
		c.Speed = 1
	}
	if c.Conns == 0 {
		c.Conns = 256
	}
	if c.Pipeline == 0 {
		c.Pipeline = 1
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Drain == 0 {
		c.Drain = 10 * time.Second
	}
	if c.HotSKUs == 0 {
		c.HotSKUs = 5
	}
	if c.Target == "" {
		c.Target = "flashgate"
	}
	if c.RunID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.RunID = "r" + hex.EncodeToString(b[:])
	}
	switch {
	case c.Trace == "":
		return errors.New("no trace; possible fix: -replay.trace var/sale.trace.zst (make one with flashgate tracegen)")
	case c.EdgeAddr == "":
		return errors.New("no edge address; possible fix: -replay.env var/dev.env or -replay.edge 127.0.0.1:8080")
	case !(c.Speed > 0) || c.Rate < 0:
		return fmt.Errorf("speed %v and rate %v: the speed must be positive and the rate not negative", c.Speed, c.Rate)
	case len(c.RunID) > 24:
		return fmt.Errorf("run id %q is longer than 24 bytes (it prefixes SKUs, which are at most 64)", c.RunID)
	}
	for _, ch := range c.RunID {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '-') {
			return fmt.Errorf("run id %q: use letters, digits, _ and - only", c.RunID)
		}
	}
	return nil
}

// Prefix is what the run puts before the trace's SKUs and keys.
func (c *Config) Prefix() string { return c.RunID + "-" }

// Outcome of a replay, for Verify and the report.
type Outcome struct {
	Config  Config
	Header  trace.Header
	Started time.Time // wall clock of the run's offset 0
	Ended   time.Time // when the last response came in (or the run was cut)
	Run     *report.Run
	Result  *openloop.Result
	Results string // path of the results file ("" without OutDir)
	// RetryIDs counts retries answered 202 with an order id other than the
	// one the first request with the same key got (an idempotency failure
	// seen live; Verify checks it again from the results).
	RetryIDs uint64
	Skipped  uint64 // polls and cancels of orders that got no id, not sent
}

// Run replays cfg.Trace. It returns when the trace ended (or ctx was
// cancelled) and the responses are in.
func Run(ctx context.Context, cfg Config) (*Outcome, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	scan, err := scanTrace(cfg.Trace, cfg.Limit)
	if err != nil {
		return nil, err
	}
	tr, err := trace.Open(cfg.Trace)
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	out := &Outcome{Config: cfg, Header: *tr.Header()}

	var admin *adminClient
	if cfg.AdminURL != "" {
		admin = newAdminClient(cfg.AdminURL, cfg.AdminToken)
		if err := admin.putItems(ctx, cfg.Prefix(), tr.Header().Items); err != nil {
			return nil, err
		}
		select {
		case <-time.After(cfg.Settle):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	var results io.WriteCloser
	if cfg.OutDir != "" {
		if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
			return nil, err
		}
		out.Results = filepath.Join(cfg.OutDir, "results.zst")
		f, err := os.Create(out.Results)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		results = f
	}
	rec, err := newRecorder(cfg.Conns, results)
	if err != nil {
		return nil, err
	}
	src := &source{tr: tr, speed: cfg.Speed, host: hostOf(cfg.EdgeAddr), prefix: cfg.Prefix(), keys: rec.keys, limit: cfg.Limit}
	if cfg.Rate > 0 {
		src.nsPer = 1e9 / cfg.Rate
	}
	runner, err := openloop.New(openloop.Config{
		Addr: cfg.EdgeAddr, Conns: cfg.Conns, Pipeline: cfg.Pipeline,
		Timeout: cfg.Timeout, Drain: cfg.Drain, OnResponse: rec.onResponse,
	}, src)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}

	hot := scan.hottest(cfg.HotSKUs, tr.Header().Items)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	if admin != nil && len(hot) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			admin.pollStock(runner, cfg.Prefix(), hot, stop)
		}()
	}
	if cfg.Progress != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			progress(cfg.Progress, runner, rec, scan.records, stop)
		}()
	}
	res, err := runner.Run(ctx)
	out.Ended = time.Now()
	close(stop)
	wg.Wait()
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	if err := rec.finish(); err != nil {
		return nil, fmt.Errorf("replay: writing the results: %w", err)
	}
	if src.err != nil {
		return nil, fmt.Errorf("replay: the trace ended early: %w", src.err)
	}
	out.Started, out.Result = runner.Started(), res
	out.RetryIDs, out.Skipped = rec.retryID.Load(), src.skipped
	out.Run = buildRun(out, rec, scan, hot, admin)
	return out, nil
}

func hostOf(addr string) string { first, _, _ := strings.Cut(addr, ","); return first }

// progress prints a line per second until stop closes.
func progress(w io.Writer, runner *openloop.Runner, rec *recorder, total uint64, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		p := runner.Progress()
		pct := 0.0
		if total > 0 {
			pct = 100 * float64(p.Sent) / float64(total)
		}
		fmt.Fprintf(w, "%6.1fs sent %d (%.0f%%)  %.0f/s  accepted %d  sold-out %d  rate-limited %d  5xx+errors %d  p99 %v  queued %d\n",
			p.Elapsed.Seconds(), p.Sent, pct, p.Rate,
			rec.outcomeCount(outAccepted), rec.outcomeCount(outSoldOut), rec.outcomeCount(outRateLimited),
			rec.outcomeCount(outUnavailable)+rec.outcomeCount(outOther5xx)+rec.outcomeCount(outError),
			p.P99.Round(10*time.Microsecond), p.Queued)
	}
}

// traceScan is what a first pass over the trace learns: the request count
// (for the progress line) and each SKU's order requests (to pick the hot
// ones).
type traceScan struct {
	records uint64
	bySKU   map[string]uint64
}

func scanTrace(path string, limit uint64) (*traceScan, error) {
	tr, err := trace.Open(path)
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	s := &traceScan{bySKU: make(map[string]uint64, len(tr.Header().Items))}
	var rec trace.Record
	for limit == 0 || s.records < limit {
		if err := tr.Next(&rec); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
		s.records++
		if rec.Kind == trace.KindOrder {
			s.bySKU[string(rec.SKU)]++
		}
	}
	return s, nil
}

// hottest returns the n SKUs with the most order requests.
func (s *traceScan) hottest(n int, items []trace.Item) []report.SKUSeries {
	var hot []report.SKUSeries
	for _, it := range items {
		if c := s.bySKU[it.SKU]; c > 0 {
			hot = append(hot, report.SKUSeries{SKU: it.SKU, Stock: it.Stock, Requests: c})
		}
	}
	slices.SortFunc(hot, func(a, b report.SKUSeries) int {
		if a.Requests != b.Requests {
			if a.Requests > b.Requests {
				return -1
			}
			return 1
		}
		return compareStrings(a.SKU, b.SKU)
	})
	if len(hot) > n {
		hot = hot[:n]
	}
	return hot
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// adminClient talks to the admin plane: sale setup and stock polling.
type adminClient struct {
	base  string
	token string
	c     *fasthttp.Client

	mu     sync.Mutex
	remain map[string][]int64 // per SKU, per second; -1: not polled
}

func newAdminClient(base, token string) *adminClient {
	return &adminClient{base: base, token: token, c: &fasthttp.Client{MaxConnsPerHost: 16}, remain: map[string][]int64{}}
}

func (a *adminClient) do(method, path string, body []byte, into any) error {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(a.base + path)
	req.Header.SetMethod(method)
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	if body != nil {
		req.Header.SetContentType("application/json")
		req.SetBody(body)
	}
	if err := a.c.DoTimeout(req, resp, 30*time.Second); err != nil {
		return fmt.Errorf("%s %s%s: %w; possible fix: check -replay.admin (the admin plane's URL)", method, a.base, path, err)
	}
	if sc := resp.StatusCode(); sc < 200 || sc > 299 {
		return fmt.Errorf("%s %s%s: %d %s", method, a.base, path, sc, resp.Body())
	}
	if into != nil {
		return json.Unmarshal(resp.Body(), into)
	}
	return nil
}

// putItems puts the trace's sale items on sale, under prefix, 8 at a time.
func (a *adminClient) putItems(ctx context.Context, prefix string, items []trace.Item) error {
	work := make(chan trace.Item)
	errc := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				body, _ := json.Marshal(map[string]int64{"stock": it.Stock, "price_cents": it.PriceCents, "per_user_limit": it.PerUserLimit})
				if err := a.do("PUT", "/admin/v1/skus/"+prefix+it.SKU, body, nil); err != nil {
					errc <- fmt.Errorf("replay: putting the sale items on sale: %w", err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for _, it := range items {
		select {
		case work <- it:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	return err
}

// pollStock records the hot SKUs' remaining stock once a second.
func (a *adminClient) pollStock(runner *openloop.Runner, prefix string, hot []report.SKUSeries, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	poll := func() {
		t0 := runner.Started()
		if t0.IsZero() {
			return
		}
		sec := int(time.Since(t0) / time.Second)
		for _, h := range hot {
			var st struct {
				Remaining int64 `json:"remaining"`
			}
			if err := a.do("GET", "/admin/v1/skus/"+prefix+h.SKU, nil, &st); err != nil {
				continue
			}
			a.mu.Lock()
			r := a.remain[h.SKU]
			for len(r) <= sec {
				r = append(r, -1)
			}
			r[sec] = st.Remaining
			a.remain[h.SKU] = r
			a.mu.Unlock()
		}
	}
	for {
		select {
		case <-stop:
			poll() // the stock at the end
			return
		case <-t.C:
			poll()
		}
	}
}
