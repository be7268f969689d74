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
	st := startSplitStack(t, dir)
	faults := []string{"kill -9 edge", "kill -9 ingest", "PostgreSQL down", "broker down"}
	rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })
	records := 50000 // ~25 s at speed 1: longer than the faults
	if tortureLong() {
		faults = append(faults, faults...)
		records = 200000
	}
	tracePath := filepath.Join(dir, "sale.trace.zst")
	writeTestTrace(t, tracePath, seed, records, 600)

	done := replayInBackground(tracePath, dir, st.edgeAddr, st.adminURL, 15*time.Second)

	var res replayResult
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
			st.edge.kill9()
			time.Sleep(down)
			st.edge.start()
		case "kill -9 ingest":
			st.ing.kill9()
			time.Sleep(down)
			st.ing.start()
		case "PostgreSQL down":
			stop := st.pg.Stop
			if rng.IntN(2) == 0 {
				stop = st.pg.Kill
			}
			stop()
			time.Sleep(down)
			if err := st.pg.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			if st.pg.URL() != st.dbURL {
				t.Fatalf("PostgreSQL came back on another port (%s): the processes cannot follow", st.pg.URL())
			}
		case "broker down":
			st.kf.Close()
			time.Sleep(down)
			st.kf = st.startBroker()
		}
	}
	if !finished {
		res = <-done
	}
	if res.err != nil {
		t.Fatalf("replay: %v", res.err)
	}
	checkAfterFaults(t, res.out, st.dbURL, st.kafkaAddr, st.adminURL, seed, st.edge, st.ing)

	// Back to normal by itself: a new sale item sells.
	sku := res.out.Config.Prefix() + "after-the-faults"
	if code, v := doJSON(t, "PUT", st.adminURL+"/admin/v1/skus/"+sku, "", `{"stock":5,"price_cents":100,"per_user_limit":0}`); code != 200 {
		t.Fatalf("PUT %s: %d %v", sku, code, v)
	}
	if code, v := doJSON(t, "POST", "http://"+st.edgeAddr+"/v1/orders", "after", fmt.Sprintf(`{"sku":%q,"qty":1}`, sku)); code != 202 || !strings.HasPrefix(fmt.Sprint(v["status"]), "accepted") {
		t.Fatalf("an order after the faults: %d %v; want 202", code, v)
	}
}

// splitStack is flashgate as production runs it, on this machine:
// PostgreSQL and the embedded broker in the test process, `flashgate
// ingest` and `flashgate edge` in processes of their own.
type splitStack struct {
	pg                 *pgcluster.Cluster
	dbURL              string
	kf                 *broker.Embedded
	kafkaAddr          string
	startBroker        func() *broker.Embedded // again on the same address and log
	ing, edge          *child
	edgeAddr, adminURL string
	backends           []string // the edge's and ingest's flags for them
}

func startSplitStack(t *testing.T, dir string, edgeArgs ...string) *splitStack {
	t.Helper()
	ctx := context.Background()
	st := &splitStack{}
	pgLog, err := os.Create(filepath.Join(dir, "pg.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pgLog.Close() })
	st.pg, err = pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "pg"), NoFsync: true, Log: pgLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.pg.Stop() })
	st.dbURL = st.pg.URL()
	pool, err := prepareLedger(ctx, st.dbURL, 1)
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()

	st.kafkaAddr = freeAddr(t)
	kafkaDir := filepath.Join(dir, "kafka")
	st.startBroker = func() *broker.Embedded {
		for i := 0; ; i++ {
			kf, err := broker.StartEmbedded(st.kafkaAddr, kafkaDir, 2, true)
			if err == nil {
				return kf
			}
			if i == 50 {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	st.kf = st.startBroker()
	t.Cleanup(func() { st.kf.Close() })

	st.backends = []string{"-kafka-brokers", st.kafkaAddr, "-database-url", st.dbURL}
	st.ing = newChild(t, filepath.Join(dir, "ingest.log"), nil, append([]string{"ingest"}, st.backends...)...)
	st.edgeAddr = freeAddr(t)
	st.edge, st.adminURL = st.newEdge(t, dir, "edge", edgeArgs...)
	st.ing.start()
	st.edge.start()
	return st
}

// splitStackSale is a split stack in a fresh directory and a small flash
// sale to replay against it (~8 s at speed 1), with the seed of both.
func splitStackSale(t *testing.T) (seed uint64, dir string, st *splitStack, tracePath string) {
	t.Helper()
	seed = tortureSeed(t)
	dir = testenv.TempDir(t)
	st = startSplitStack(t, dir)
	tracePath = filepath.Join(dir, "sale.trace.zst")
	writeTestTrace(t, tracePath, seed, 16000, 600)
	return seed, dir, st, tracePath
}

// newEdge is a `flashgate edge` on the stack's edge address with an admin
// plane of its own; it is ready once its admin plane answers.
func (st *splitStack) newEdge(t *testing.T, dir, name string, extra ...string) (*child, string) {
	return st.newEdgeAt(t, dir, name, st.edgeAddr, extra...)
}

// newEdgeAt is newEdge on another address.
func (st *splitStack) newEdgeAt(t *testing.T, dir, name, addr string, extra ...string) (*child, string) {
	adminAddr := freeAddr(t)
	adminURL := "http://" + adminAddr
	ready := func() bool {
		resp, err := http.Get(adminURL + "/admin/v1/status")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	args := append([]string{"edge", "-edge-addr", addr, "-admin-addr", adminAddr}, st.backends...)
	return newChild(t, filepath.Join(dir, name+".log"), ready, append(args, extra...)...), adminURL
}

// TestRollingRestart replaces the running edge with a new process on the
// same address while a flash sale is replayed against it (edge.HandoverDrain:
// the old one drains, the new one loads the stock and serves beside it on
// SO_REUSEPORT, the old one answers with Connection: close for a grace
// period and exits). No request may fail: the only refusals are the old
// process's 503s while it drains; and nothing is lost or sold twice.
func TestRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the rolling restart in -short mode")
	}
	seed, dir, st, tracePath := splitStackSale(t)
	done := replayInBackground(tracePath, dir, st.edgeAddr, st.adminURL, 15*time.Second)
	time.Sleep(2 * time.Second)
	old := st.edge
	next, nextAdmin := st.newEdge(t, dir, "edge-next", "-edge.handoverFrom", st.adminURL, "-edge.handoverGrace", "1s")
	next.start()
	select {
	case err := <-old.exited:
		old.cmd = nil
		if err != nil {
			t.Errorf("the old edge exited with %v; its log:\n%s", err, old.tail())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the old edge still runs 30 s after the handover; its log:\n%s", old.tail())
	}
	res := <-done
	if res.err != nil {
		t.Fatalf("replay: %v", res.err)
	}
	out := res.out
	tot := out.Run.Totals
	if n := tot.Outcomes[outcomeIndex(t, out.Run, "error")]; n > 0 {
		t.Errorf("%d requests failed without an answer during the handover", n)
	}
	if n := tot.Outcomes[outcomeIndex(t, out.Run, "unavailable")]; n == 0 {
		t.Log("no 503 during the handover (the drain was quicker than any order)")
	}
	checkAfterFaults(t, out, st.dbURL, st.kafkaAddr, nextAdmin, seed, old, next, st.ing)
}

// TestIngestFleet runs two `flashgate ingest` processes in one consumer
// group under a replayed sale and kills one of them with SIGKILL midway:
// the other takes its partitions (after -ingest.sessionTimeout) and every
// order still lands exactly once.
func TestIngestFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the ingest fleet in -short mode")
	}
	seed, dir, st, tracePath := splitStackSale(t)
	second := newChild(t, filepath.Join(dir, "ingest-2.log"), nil, append([]string{"ingest"}, st.backends...)...)
	second.start()
	done := replayInBackground(tracePath, dir, st.edgeAddr, st.adminURL, 15*time.Second)
	// The first process holds the partitions: it was alone in the group, and
	// the sticky assignment leaves them with it when the second joins.
	time.Sleep(3 * time.Second)
	st.ing.kill9()
	res := <-done
	if res.err != nil {
		t.Fatalf("replay: %v", res.err)
	}
	checkAfterFaults(t, res.out, st.dbURL, st.kafkaAddr, st.adminURL, seed, st.edge, second)
}
