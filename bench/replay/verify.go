package replay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/bench/report"
	"github.com/flashgate/flashgate/ingest"
)

// VerifyConfig says where the replayed stack keeps its orders.
type VerifyConfig struct {
	DatabaseURL string // the ledger (or a peer's database with the same orders columns)
	// KafkaBrokers and Group: the ingest's consumer group, whose lag must
	// reach zero before the ledger is checked. Empty brokers: the target
	// writes its orders synchronously (a peer); nothing to wait for.
	KafkaBrokers []string
	KafkaOpts    []kgo.Opt
	Group        string
	DrainTimeout time.Duration // default 2 minutes
}

// Verify waits for ingest to drain, then checks the invariants of
// DESIGN.md for this run's orders against PostgreSQL, from the results file
// of the replay: every order id answered 202 is in the ledger exactly once,
// no SKU holds more units than its stock, no user more than the per-user
// limit, retries with one idempotency key got one order id, every sold-out
// answer came when the stock was really gone, and no order stands in the
// ledger that nobody was told about. It fills out.Run's Checks and Ingest.
// An error means the verification could not run; a failed invariant is a
// Check with Pass false.
func Verify(ctx context.Context, out *Outcome, vc VerifyConfig) error {
	if out.Results == "" {
		return errors.New("verify: the replay kept no results file; possible fix: give it an output directory")
	}
	if vc.DrainTimeout == 0 {
		vc.DrainTimeout = 2 * time.Minute
	}
	run := out.Run
	drained, drainErr := waitDrained(ctx, out, vc)
	conn, err := pgx.Connect(ctx, vc.DatabaseURL)
	if err != nil {
		return fmt.Errorf("verify: connecting to PostgreSQL: %w; possible fix: -replay.env or -database-url", err)
	}
	defer conn.Close(context.Background())
	v := &verifier{ctx: ctx, c: conn, out: out}
	if err := v.load(); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	drainCheck := report.Check{Name: "ingest-drained", Pass: drainErr == nil}
	if drainErr != nil {
		drainCheck.Detail = drainErr.Error()
	} else {
		drainCheck.Detail = fmt.Sprintf("every accepted order in PostgreSQL %.1f s after the replay started (%.1f s after its last response)",
			drained.Seconds(), (drained - run.Totals.Duration).Seconds())
	}
	run.Checks = append(run.Checks[:0], drainCheck)
	for _, check := range []func() (report.Check, error){
		v.acceptedLanded, v.noOversell, v.perUserLimits, v.idempotentRetries, v.noFalseSoldOut, v.noPhantoms,
	} {
		c, err := check()
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		run.Checks = append(run.Checks, c)
	}
	ing, err := v.ingest(drained)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	run.Ingest = ing
	return nil
}

// Passed reports whether every check of a verified run passed.
func Passed(run *report.Run) bool {
	if len(run.Checks) == 0 {
		return false
	}
	for _, c := range run.Checks {
		if !c.Pass {
			return false
		}
	}
	return true
}

// waitDrained waits until the ingest group has committed every record of
// order.created and returns that time as an offset from the replay's start.
func waitDrained(ctx context.Context, out *Outcome, vc VerifyConfig) (time.Duration, error) {
	if len(vc.KafkaBrokers) == 0 {
		return out.Ended.Sub(out.Started), nil
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(vc.KafkaBrokers...)}, vc.KafkaOpts...)...)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	deadline := time.Now().Add(vc.DrainTimeout)
	var lag int64 = -1
	var lagErr error
	for {
		l, err := ingest.Lag(ctx, cl, vc.Group)
		if err == nil && l == 0 {
			return time.Since(out.Started), nil
		}
		if err == nil {
			lag = l
		}
		lagErr = err
		if time.Now().After(deadline) {
			if lag < 0 {
				return 0, fmt.Errorf("could not read the lag of consumer group %s within %v: %v", vc.Group, vc.DrainTimeout, lagErr)
			}
			return 0, fmt.Errorf("ingest still %d orders behind %v after the replay; possible fix: check that ingest runs (group %s), or raise -replay.drainTimeout", lag, vc.DrainTimeout, vc.Group)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

type verifier struct {
	ctx context.Context
	c   *pgx.Conn
	out *Outcome
}

// load copies the results and the sale items into temporary tables, and
// this run's orders out of the ledger.
func (v *verifier) load() error {
	prefix := v.out.Config.Prefix()
	if _, err := v.c.Exec(v.ctx, `CREATE TEMP TABLE replay_results (
			seq bigint, kind text, user_id text, sku text, qty int, idem_key text,
			status int, outcome text, order_id bigint, at_us bigint, done_us bigint);
		CREATE TEMP TABLE replay_items (sku text PRIMARY KEY, stock bigint, per_user_limit bigint)`); err != nil {
		return err
	}
	items := v.out.Header.Items
	if _, err := v.c.CopyFrom(v.ctx, pgx.Identifier{"replay_items"}, []string{"sku", "stock", "per_user_limit"},
		pgx.CopyFromSlice(len(items), func(i int) ([]any, error) {
			return []any{prefix + items[i].SKU, items[i].Stock, items[i].PerUserLimit}, nil
		})); err != nil {
		return fmt.Errorf("loading the sale items: %w", err)
	}
	f, err := os.Open(v.out.Results)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer zr.Close()
	rows := &resultRows{br: bufio.NewReaderSize(zr, 256<<10), prefix: prefix}
	if _, err := v.c.CopyFrom(v.ctx, pgx.Identifier{"replay_results"},
		[]string{"seq", "kind", "user_id", "sku", "qty", "idem_key", "status", "outcome", "order_id", "at_us", "done_us"}, rows); err != nil {
		return fmt.Errorf("loading the results (line %d): %w", rows.line, err)
	}
	// This run's orders: its SKUs, placed after the run started (less a
	// minute of clock skew), which prunes older partitions.
	if _, err := v.c.Exec(v.ctx, `CREATE TEMP TABLE run_orders AS
			SELECT order_id, user_id, sku, qty, status, idempotency_key, updated_at
			FROM orders WHERE sku IN (SELECT sku FROM replay_items) AND created_at >= $1`, v.out.Started.Add(-time.Minute)); err != nil {
		return fmt.Errorf("reading this run's orders from the ledger: %w", err)
	}
	_, err = v.c.Exec(v.ctx, `CREATE INDEX ON run_orders (order_id);
		CREATE INDEX ON replay_results (order_id);
		ANALYZE run_orders; ANALYZE replay_results`)
	return err
}

// resultRows streams the results file into COPY.
type resultRows struct {
	br     *bufio.Reader
	prefix string
	line   int
	vals   []any
	err    error
}

func (r *resultRows) Next() bool {
	b, err := r.br.ReadSlice('\n')
	if err != nil {
		if !errors.Is(err, io.EOF) || len(b) > 0 {
			r.err = fmt.Errorf("results file: %w", err)
		}
		return false
	}
	r.line++
	f := bytes.Fields(b)
	if len(f) != 11 {
		r.err = fmt.Errorf("results line %d: %d fields, want 11", r.line, len(f))
		return false
	}
	nullable := func(b []byte, prefix string) any {
		if len(b) == 1 && b[0] == '-' {
			return nil
		}
		return prefix + string(b)
	}
	num := func(b []byte) int64 {
		n, e := strconv.ParseInt(string(b), 10, 64)
		if e != nil && r.err == nil {
			r.err = fmt.Errorf("results line %d: %q is not a number", r.line, b)
		}
		return n
	}
	r.vals = append(r.vals[:0], num(f[0]), string(f[1]), string(f[2]), nullable(f[3], r.prefix), nil,
		nullable(f[5], r.prefix), num(f[6]), string(f[7]), nil, num(f[9]), num(f[10]))
	if q := f[4]; !(len(q) == 1 && q[0] == '-') {
		r.vals[4] = num(q)
	}
	if id, e := strconv.ParseUint(string(f[8]), 10, 64); e == nil && id > 0 {
		r.vals[8] = int64(id)
	}
	return r.err == nil
}

func (r *resultRows) Values() ([]any, error) { return r.vals, nil }
func (r *resultRows) Err() error             { return r.err }

func (v *verifier) counts(sql string, dst ...*int64) error {
	args := make([]any, len(dst))
	for i := range dst {
		args[i] = dst[i]
	}
	return v.c.QueryRow(v.ctx, sql).Scan(args...)
}

// acceptedLanded: every order id answered 202 is in the ledger exactly
// once, with the user, SKU and quantity of the request.
func (v *verifier) acceptedLanded() (report.Check, error) {
	var ids, noID, missing, twice, differ int64
	err := v.counts(`WITH acc AS (SELECT DISTINCT order_id FROM replay_results WHERE status = 202 AND kind IN ('order', 'retry') AND order_id IS NOT NULL),
			counts AS (SELECT a.order_id, count(o.order_id) AS n FROM acc a LEFT JOIN run_orders o USING (order_id) GROUP BY a.order_id)
		SELECT (SELECT count(*) FROM acc),
			(SELECT count(*) FROM replay_results WHERE status = 202 AND kind IN ('order', 'retry') AND order_id IS NULL),
			(SELECT count(*) FROM counts WHERE n = 0),
			(SELECT count(*) FROM counts WHERE n > 1),
			(SELECT count(DISTINCT r.order_id) FROM replay_results r JOIN run_orders o USING (order_id)
				WHERE r.status = 202 AND (o.user_id <> r.user_id OR o.sku <> r.sku OR o.qty <> r.qty))`,
		&ids, &noID, &missing, &twice, &differ)
	return report.Check{
		Name: "accepted-in-ledger-once",
		Pass: err == nil && noID == 0 && missing == 0 && twice == 0 && differ == 0,
		Detail: fmt.Sprintf("%d order ids answered 202: %d in the ledger, %d missing, %d twice, %d with another user, SKU or qty; %d 202s without an order id",
			ids, ids-missing, missing, twice, differ, noID),
	}, err
}

// noOversell: no SKU's orders holding stock add up to more than its stock.
func (v *verifier) noOversell() (report.Check, error) {
	var skus, over, held, stock, worst int64
	err := v.counts(`WITH held AS (SELECT i.sku, i.stock, COALESCE(sum(o.qty) FILTER (WHERE o.status NOT IN ('cancelled', 'expired')), 0) AS held
			FROM replay_items i LEFT JOIN run_orders o USING (sku) GROUP BY i.sku, i.stock)
		SELECT count(*), count(*) FILTER (WHERE held > stock), COALESCE(sum(held), 0), COALESCE(sum(stock), 0),
			COALESCE(max(held - stock), 0) FROM held`, &skus, &over, &held, &stock, &worst)
	detail := fmt.Sprintf("%d SKUs, %d oversold; %d of %d units held by orders", skus, over, held, stock)
	if over > 0 {
		detail += fmt.Sprintf(" (worst: %d units over)", worst)
	}
	return report.Check{Name: "no-oversell", Pass: err == nil && over == 0, Detail: detail}, err
}

// perUserLimits: no user holds more units of a SKU than its per-user limit.
func (v *verifier) perUserLimits() (report.Check, error) {
	var limited, pairs, over int64
	err := v.counts(`WITH per AS (SELECT o.user_id, o.sku, sum(o.qty) AS units, i.per_user_limit AS lim
			FROM run_orders o JOIN replay_items i USING (sku)
			WHERE i.per_user_limit > 0 AND o.status NOT IN ('cancelled', 'expired') GROUP BY o.user_id, o.sku, i.per_user_limit)
		SELECT (SELECT count(*) FROM replay_items WHERE per_user_limit > 0), count(*), count(*) FILTER (WHERE units > lim) FROM per`,
		&limited, &pairs, &over)
	return report.Check{
		Name:   "per-user-limits",
		Pass:   err == nil && over == 0,
		Detail: fmt.Sprintf("%d SKUs with a limit; %d (user, SKU) pairs hold units, %d above the limit", limited, pairs, over),
	}, err
}

// idempotentRetries: every request with one (user, key) that was answered
// 202 got the same order id, and the ledger holds one order per key.
func (v *verifier) idempotentRetries() (report.Check, error) {
	var keys, retried, split, ledgerTwice int64
	err := v.counts(`WITH k AS (SELECT user_id, idem_key, count(*) AS n, count(DISTINCT order_id) AS ids
			FROM replay_results WHERE status = 202 AND kind IN ('order', 'retry') AND idem_key IS NOT NULL GROUP BY user_id, idem_key)
		SELECT count(*), count(*) FILTER (WHERE n > 1), count(*) FILTER (WHERE ids > 1),
			(SELECT count(*) FROM (SELECT 1 FROM run_orders WHERE idempotency_key IS NOT NULL AND status NOT IN ('cancelled', 'expired')
				GROUP BY user_id, idempotency_key HAVING count(*) > 1) t)
		FROM k`, &keys, &retried, &split, &ledgerTwice)
	return report.Check{
		Name: "idempotent-retries",
		Pass: err == nil && split == 0 && ledgerTwice == 0,
		Detail: fmt.Sprintf("%d keys answered 202, %d of them more than once: %d got two order ids; %d keys hold two orders in the ledger",
			keys, retried, split, ledgerTwice),
	}, err
}

// noFalseSoldOut: a sold-out answer for qty q is wrong if the stock minus
// every unit ever taken was still at least q: the stock left at the time of
// the answer was at least that. Taken are all of the SKU's orders, whatever
// their status now (a release gives units back, but they were gone when
// taken), and the orders that got no answer at all: those were in flight
// when the edge died or the connection broke, held their units then, and
// gave them back after (a restart rebuilds the stock from the ledger, which
// never got them) — which no later buyer may have taken.
func (v *verifier) noFalseSoldOut() (report.Check, error) {
	var answers, skus, wrong int64
	err := v.counts(`WITH taken AS (SELECT i.sku, i.stock, COALESCE(sum(o.qty), 0) AS taken
			FROM replay_items i LEFT JOIN run_orders o USING (sku) GROUP BY i.sku, i.stock),
		unanswered AS (SELECT sku, sum(qty) AS units FROM replay_results
			WHERE outcome = 'error' AND kind IN ('order', 'retry') GROUP BY sku)
		SELECT count(*), count(DISTINCT r.sku), count(*) FILTER (WHERE t.stock - t.taken - COALESCE(u.units, 0) >= r.qty)
		FROM replay_results r JOIN taken t USING (sku) LEFT JOIN unanswered u USING (sku) WHERE r.outcome = 'sold-out'`, &answers, &skus, &wrong)
	return report.Check{
		Name:   "no-false-sold-out",
		Pass:   err == nil && wrong == 0,
		Detail: fmt.Sprintf("%d sold-out answers on %d SKUs; %d while units that were never taken were left", answers, skus, wrong),
	}, err
}

// noPhantoms: every order of this run in the ledger was answered 202,
// except as many as requests ended without an answer (a timed-out client
// may have won: its order stands, as the edge promises).
func (v *verifier) noPhantoms() (report.Check, error) {
	var phantoms, unanswered int64
	err := v.counts(`SELECT
			(SELECT count(*) FROM run_orders o WHERE NOT EXISTS (SELECT 1 FROM replay_results r WHERE r.order_id = o.order_id AND r.status = 202)),
			(SELECT count(*) FROM replay_results WHERE status = 0 AND kind IN ('order', 'retry'))`, &phantoms, &unanswered)
	unanswered += int64(v.out.Result.Unanswered)
	return report.Check{
		Name: "no-orders-without-202",
		Pass: err == nil && phantoms <= unanswered,
		Detail: fmt.Sprintf("%d orders in the ledger that no response announced; %d order requests ended without an answer (their orders may stand)",
			phantoms, unanswered),
	}, err
}

// ingest reports how the accepted orders reached the ledger, per second of
// their row's write time since the replay's start.
func (v *verifier) ingest(drained time.Duration) (*report.Ingest, error) {
	ing := &report.Ingest{Drained: drained}
	err := v.c.QueryRow(v.ctx, `SELECT
			(SELECT count(DISTINCT order_id) FROM replay_results WHERE status = 202 AND order_id IS NOT NULL),
			(SELECT count(DISTINCT r.order_id) FROM replay_results r JOIN run_orders o USING (order_id) WHERE r.status = 202)`).
		Scan(&ing.Accepted, &ing.Landed)
	if err != nil {
		return nil, err
	}
	rows, err := v.c.Query(v.ctx, `SELECT floor(extract(epoch FROM updated_at - $1::timestamptz))::int AS s, count(*)
		FROM run_orders GROUP BY 1 ORDER BY 1`, v.out.Started)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var s int
		var n uint64
		if err := rows.Scan(&s, &n); err != nil {
			return nil, err
		}
		if s < 0 || s >= maxSeconds {
			continue
		}
		for len(ing.LandedPerSecond) <= s {
			ing.LandedPerSecond = append(ing.LandedPerSecond, 0)
		}
		ing.LandedPerSecond[s] += n
	}
	return ing, rows.Err()
}
