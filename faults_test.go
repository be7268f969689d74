package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/bench/replay"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/pgcluster"
	"github.com/flashgate/flashgate/lib/testenv"
)

// tortureLong is FLASHGATE_TORTURE=long (make torture): outages of 10 s
// instead of a few hundred milliseconds to a few seconds, and every fault
// twice.
func tortureLong() bool { return os.Getenv("FLASHGATE_TORTURE") == "long" }

// TestFaultSchedule runs the parts as production does — `flashgate edge`
// and `flashgate ingest` in processes of their own, PostgreSQL and the
// broker beside them — and, while a flash sale is replayed against the
// edge, takes them down one after another in a seeded random order: kill -9
// of the edge, kill -9 of ingest, PostgreSQL killed or stopped, the broker
// gone; each for a seeded random time, then back in place. Nothing may be
// lost or sold twice (checkAfterFaults), and the edge must sell again by
// itself once everything is back.
func TestFaultSchedule(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the fault schedule in -short mode")
	}
	seed := tortureSeed(t)
	rng := rand.New(rand.NewPCG(seed, 10))
	outage := func() time.Duration {
		if tortureLong() {
			return 10 * time.Second
		}
		return time.Duration(300+rng.IntN(2200)) * time.Millisecond
	}
	dir := testenv.TempDir(t)
	ctx := context.Background()

	pgLog, err := os.Create(filepath.Join(dir, "pg.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer pgLog.Close()
	pg, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "pg"), NoFsync: true, Log: pgLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	dbURL := pg.URL()
	pool, err := prepareLedger(ctx, dbURL, 1)
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()

	kafkaAddr, kafkaDir := freeAddr(t), filepath.Join(dir, "kafka")
	startBroker := func() *broker.Embedded {
		for i := 0; ; i++ {
			kf, err := broker.StartEmbedded(kafkaAddr, kafkaDir, 2, true)
			if err == nil {
				return kf
			}
			if i == 50 {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	kf := startBroker()
	t.Cleanup(func() { kf.Close() })

	backends := []string{"-kafka-brokers", kafkaAddr, "-database-url", dbURL}
	ing := newChild(t, filepath.Join(dir, "ingest.log"), nil, append([]string{"ingest"}, backends...)...)
	edgeAddr, adminAddr := freeAddr(t), freeAddr(t)
	adminURL := "http://" + adminAddr
	edgeReady := func() bool {
		resp, err := http.Get(adminURL + "/admin/v1/status")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	ed := newChild(t, filepath.Join(dir, "edge.log"), edgeReady,
		append([]string{"edge", "-edge-addr", edgeAddr, "-admin-addr", adminAddr}, backends...)...)
	ing.start()
	ed.start()

	faults := []string{"kill -9 edge", "kill -9 ingest", "PostgreSQL down", "broker down"}
	rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })
	records := 50000 // ~25 s at speed 1: longer than the faults
	if tortureLong() {
		faults = append(faults, faults...)
		records = 200000
	}
	tracePath := filepath.Join(dir, "sale.trace.zst")
	writeTestTrace(t, tracePath, seed, records, 600)

	type result struct {
		out *replay.Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := replay.Run(ctx, replay.Config{
			Trace: tracePath, EdgeAddr: edgeAddr, AdminURL: adminURL,
			Conns: 32, OutDir: filepath.Join(dir, "out"), Timeout: 15 * time.Second, Drain: 15 * time.Second,
		})
		done <- result{out, err}
	}()

	var res result
	finished := false
	for _, f := range faults {
		wait, down := time.Duration(300+rng.IntN(1200))*time.Millisecond, outage()
		select {
		case res = <-done:
			finished = true
		case <-time.After(wait):
		}
		if finished {
			t.Logf("the replay ended before %q", f)
			break
		}
		t.Logf("%s for %v", f, down)
		switch f {
		case "kill -9 edge":
			ed.kill9()
			time.Sleep(down)
			ed.start()
		case "kill -9 ingest":
			ing.kill9()
			time.Sleep(down)
			ing.start()
		case "PostgreSQL down":
			stop := pg.Stop
			if rng.IntN(2) == 0 {
				stop = pg.Kill
			}
			stop()
			time.Sleep(down)
			if err := pg.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			if pg.URL() != dbURL {
				t.Fatalf("PostgreSQL came back on another port (%s): the processes cannot follow", pg.URL())
			}
		case "broker down":
			kf.Close()
			time.Sleep(down)
			kf = startBroker()
		}
	}
	if !finished {
		res = <-done
	}
	if res.err != nil {
		t.Fatalf("replay: %v", res.err)
	}
	checkAfterFaults(t, res.out, dbURL, kafkaAddr, adminURL, seed, ed, ing)

	// Back to normal by itself: a new sale item sells.
	sku := res.out.Config.Prefix() + "after-the-faults"
	if code, v := doJSON(t, "PUT", adminURL+"/admin/v1/skus/"+sku, "", `{"stock":5,"price_cents":100,"per_user_limit":0}`); code != 200 {
		t.Fatalf("PUT %s: %d %v", sku, code, v)
	}
	if code, v := doJSON(t, "POST", "http://"+edgeAddr+"/v1/orders", "after", fmt.Sprintf(`{"sku":%q,"qty":1}`, sku)); code != 202 || !strings.HasPrefix(fmt.Sprint(v["status"]), "accepted") {
		t.Fatalf("an order after the faults: %d %v; want 202", code, v)
	}
}
