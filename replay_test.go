package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/flashgate/flashgate/bench/replay"
	"github.com/flashgate/flashgate/bench/report"
	"github.com/flashgate/flashgate/bench/trace"
	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/lib/testenv"
)

// writeTestTrace writes a small flash sale: scarce stock (up to maxStock
// units) on a few SKUs,
// per-user limits on half of them, retries with the same key, polls,
// cancels, and a bot hammering from one address.
func writeTestTrace(t *testing.T, path string, seed uint64, records, maxStock int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	var h trace.Header
	h.Meta = []trace.KV{{Key: "generator", Value: "replay_test"}, {Key: "seed", Value: fmt.Sprint(seed)}}
	for i := range 40 {
		lim := int64(0)
		if i%2 == 0 {
			lim = 2
		}
		h.Items = append(h.Items, trace.Item{SKU: fmt.Sprintf("sku-%02d", i), Stock: int64(rng.IntN(maxStock)), PerUserLimit: lim, PriceCents: 999})
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := trace.NewWriter(f, h)
	if err != nil {
		t.Fatal(err)
	}
	type placed struct {
		user, ip, sku, key string
		qty                int64
	}
	var orders []placed
	keyN := 0
	at := time.Duration(0)
	for range records {
		at += time.Duration(rng.ExpFloat64() * float64(500*time.Microsecond))
		rec := trace.Record{At: at.Truncate(time.Microsecond)}
		user := fmt.Sprintf("u%d", rng.IntN(300))
		ip := fmt.Sprintf("10.0.%d.%d", rng.IntN(3), rng.IntN(250)+1)
		switch p := rng.IntN(100); {
		case p < 15 && len(orders) > 0: // a retry of a recent order
			o := orders[max(0, len(orders)-1-rng.IntN(50))]
			rec.Kind, rec.User, rec.IP, rec.SKU, rec.Qty, rec.Key = trace.KindRetry, []byte(o.user), []byte(o.ip), []byte(o.sku), o.qty, []byte(o.key)
		case p < 25 && len(orders) > 0:
			o := orders[rng.IntN(len(orders))]
			rec.Kind, rec.User, rec.IP, rec.Key = trace.KindPoll, []byte(o.user), []byte(o.ip), []byte(o.key)
		case p < 28 && len(orders) > 0:
			o := orders[rng.IntN(len(orders))]
			rec.Kind, rec.User, rec.IP, rec.Key = trace.KindCancel, []byte(o.user), []byte(o.ip), []byte(o.key)
		default:
			if p >= 90 { // the bot: one address, many users
				ip = "192.0.2.66"
			}
			keyN++
			o := placed{user: user, ip: ip, sku: fmt.Sprintf("sku-%02d", int(rng.ExpFloat64()*6)%40), qty: int64(1 + rng.IntN(2)), key: fmt.Sprintf("k%d", keyN)}
			if rng.IntN(10) == 0 {
				o.key = "" // no Idempotency-Key
			} else {
				orders = append(orders, o)
			}
			rec.Kind, rec.User, rec.IP, rec.SKU, rec.Qty, rec.Key = trace.KindOrder, []byte(o.user), []byte(o.ip), []byte(o.sku), o.qty, []byte(o.key)
		}
		if err := w.Write(&rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func checkByName(run *report.Run, name string) report.Check {
	for _, c := range run.Checks {
		if c.Name == name {
			return c
		}
	}
	return report.Check{Name: name, Detail: "missing"}
}

// TestReplayVerifies replays a flash sale against flashgate dev and checks
// that verification passes, then breaks the ledger behind the edge's back
// and checks that verification sees each break.
func TestReplayVerifies(t *testing.T) {
	dir := testenv.TempDir(t)
	st := startDev(t, filepath.Join(dir, "dev"))
	tracePath := filepath.Join(dir, "sale.trace.zst")
	writeTestTrace(t, tracePath, 7, 6000, 60)

	ctx := context.Background()
	out, err := replay.Run(ctx, replay.Config{
		Trace: tracePath, EdgeAddr: strings.TrimPrefix(st.env.EdgeURL, "http://"), AdminURL: st.env.AdminURL,
		Conns: 32, OutDir: filepath.Join(dir, "out"), Speed: 2,
		Timeout: time.Minute, Drain: time.Minute, // a busy machine is slow, not wrong
	})
	if err != nil {
		t.Fatal(err)
	}
	vc := replay.VerifyConfig{DatabaseURL: st.env.DatabaseURL, KafkaBrokers: []string{st.env.KafkaBrokers},
		Group: ingest.DefaultConfig().Group, DrainTimeout: time.Minute}
	if err := replay.Verify(ctx, out, vc); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	if err := report.WriteText(&sb, out.Run); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + sb.String())
	if !replay.Passed(out.Run) {
		t.Fatalf("verification failed on an honest run:\n%s", sb.String())
	}
	tot := out.Run.Totals
	outcome := func(name string) uint64 { return tot.Outcomes[outcomeIndex(t, out.Run, name)] }
	// The trace must have exercised what it is for: sales, sell-outs,
	// replayed retries, limits and polls.
	for _, name := range []string{"accepted", "sold-out", "replayed", "purchase-limit", "ok"} {
		if outcome(name) == 0 {
			t.Errorf("no %q outcome in the replay; the test trace no longer exercises it", name)
		}
	}
	if e := outcome("error") + outcome("unavailable") + outcome("other-5xx"); e > 0 {
		t.Errorf("%d requests failed with 5xx or no answer", e)
	}
	if got := tot.Sent + tot.Skipped; got != tot.Requests {
		t.Errorf("sent %d + skipped %d != trace records %d", tot.Sent, tot.Skipped, tot.Requests)
	}

	// Break the ledger: a second copy of an accepted order (same id, another
	// created_at: the primary key allows it), an order nobody was told about that
	// oversells a SKU, and an accepted order deleted.
	conn, err := pgx.Connect(ctx, st.env.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	prefix := out.Config.Prefix()
	var victim, doubled int64
	if err := conn.QueryRow(ctx, `SELECT min(order_id), max(order_id) FROM orders WHERE sku LIKE $1 || '%' AND status = 'pending_payment'`, prefix).Scan(&victim, &doubled); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		sql string
		arg any
	}{
		{`INSERT INTO orders (order_id, user_id, sku, qty, price_cents, created_at)
			SELECT order_id, user_id, sku, qty, price_cents, created_at + interval '1 millisecond' FROM orders WHERE order_id = $1`, doubled},
		{`INSERT INTO orders (order_id, user_id, sku, qty, price_cents, created_at) VALUES (1, 'intruder', $1, 1000, 1, now())`, prefix + "sku-00"},
		{`DELETE FROM orders WHERE order_id = $1`, victim},
	} {
		if _, err := conn.Exec(ctx, q.sql, q.arg); err != nil {
			t.Fatal(err)
		}
	}
	if err := replay.Verify(ctx, out, vc); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"accepted-in-ledger-once", "no-oversell", "no-orders-without-202"} {
		if c := checkByName(out.Run, name); c.Pass {
			t.Errorf("check %s passed on a broken ledger: %s", name, c.Detail)
		}
	}
	if replay.Passed(out.Run) {
		t.Error("verification passed on a broken ledger")
	}
}

// outcomeIndex is the index of the outcome name in run.Outcomes.
func outcomeIndex(t *testing.T, run *report.Run, name string) int {
	t.Helper()
	for i, n := range run.Outcomes {
		if n == name {
			return i
		}
	}
	t.Fatalf("no outcome %q", name)
	return -1
}
