package ingest_test

// Tests that try to break invariant 2 of DESIGN.md: every order in
// order.created ends up in `orders` exactly once, whatever crashes in
// between. Faults are injected from outside the service (Stop as the crash,
// kfake controls and faults on OffsetCommit, a private PostgreSQL cluster
// stopped and killed under the running service); ingest has no test hook.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/pgcluster"
	"github.com/flashgate/flashgate/lib/testenv"
)

// faultGroup is the group every service of these tests joins.
var faultGroup = ingest.DefaultConfig().Group

// faultSeeds returns the seeds to run: FLASHGATE_SEED alone when set (to
// replay a failure), else a fixed seed and a fresh one. A seed replays the
// schedule (chunk sizes, crash points, delays), not the goroutine
// interleaving, which the race detector and repetition cover.
func faultSeeds(t *testing.T) []uint64 {
	t.Helper()
	if s := os.Getenv("FLASHGATE_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("FLASHGATE_SEED=%q: %v", s, err)
		}
		return []uint64{seed}
	}
	return []uint64{1, uint64(time.Now().UnixNano())}
}

// orderSource makes orders with ids unique across the whole test (one
// generator), spread over users so that records land on every partition.
type orderSource struct {
	gen *orderid.Generator
	mu  sync.Mutex
	all []int64 // ids of the orders acknowledged by the broker
}

func newOrderSource() *orderSource { return &orderSource{gen: orderid.MustNew(2, 1)} }

func (s *orderSource) make(rng *rand.Rand, n int) []order.Order {
	os := make([]order.Order, n)
	for i := range os {
		id := s.gen.Next()
		os[i] = order.Order{ID: id, UserID: fmt.Sprintf("u%d", rng.IntN(500)), SKU: "SKU-F", Qty: 1 + int32(rng.IntN(3)),
			PriceCents: 990, CreatedAt: orderid.Time(id)}
	}
	return os
}

// produce sends os with acks=all and records them as produced once acked.
func (s *orderSource) produce(ctx context.Context, cl *kgo.Client, os []order.Order) error {
	recs := make([]*kgo.Record, len(os))
	for i := range os {
		recs[i] = &kgo.Record{Topic: broker.TopicOrderCreated, Key: []byte(os[i].UserID), Value: order.AppendJSON(nil, &os[i])}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range os {
		s.all = append(s.all, os[i].ID)
	}
	return nil
}

func (s *orderSource) produced() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.all)
}

// produceContinuously produces chunks of 1..maxChunk orders every few ms
// until the returned stop is called, which waits until it has stopped.
func (s *orderSource) produceContinuously(t *testing.T, cl *kgo.Client, rng *rand.Rand, maxChunk int) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := s.produce(ctx, cl, s.make(rng, 1+rng.IntN(maxChunk)))
			cancel()
			if err != nil {
				t.Errorf("producing: %v", err)
				return
			}
			time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() { close(quit) })
		<-done
	}
	t.Cleanup(stop) // before the client closes, if the test ends early
	return stop
}

func newProducer(t *testing.T, b *broker.Embedded) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.RequiredAcks(kgo.AllISRAcks()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// runningIngest is one ingest "process": its own pool and service.
type runningIngest struct {
	svc  *ingest.Service
	pool *pgxpool.Pool
	once sync.Once
}

func startFaultIngest(t *testing.T, b *broker.Embedded, url string, workers, batchRows int, tweaks ...func(*ingest.Config)) *runningIngest {
	t.Helper()
	pool, err := ledger.Open(context.Background(), url, 8)
	if err != nil {
		t.Fatal(err)
	}
	cfg := ingest.DefaultConfig()
	cfg.Brokers = []string{b.Addr()}
	cfg.Group = faultGroup
	cfg.Workers = workers
	cfg.BatchRows = batchRows
	for _, f := range tweaks {
		f(&cfg)
	}
	svc, err := ingest.Start(cfg, pool)
	if err != nil {
		pool.Close()
		t.Fatal(err)
	}
	r := &runningIngest{svc: svc, pool: pool}
	t.Cleanup(r.stop)
	return r
}

// stop is the crash: the workers' context is cancelled wherever they are
// (polling, in the COPY, waiting for the offset commit) and the batch in
// hand is abandoned; then the pool goes.
func (r *runningIngest) stop() {
	r.once.Do(func() {
		r.svc.Stop()
		r.pool.Close()
	})
}

func waitCaughtUp(t *testing.T, b *broker.Embedded) {
	t.Helper()
	adm, err := broker.NewAdmin([]string{b.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := ingest.WaitCaughtUp(context.Background(), adm, faultGroup, 45*time.Second); err != nil {
		t.Fatal(err)
	}
}

// checkExactlyOnce fails unless `orders` holds exactly the produced ids, each
// once.
func checkExactlyOnce(t *testing.T, url string, produced []int64) {
	t.Helper()
	ctx := context.Background()
	pool, err := ledger.Open(ctx, url, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var rows, distinct int
	if err := pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT order_id) FROM orders").Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	got := map[int64]int{}
	dbRows, err := pool.Query(ctx, "SELECT order_id FROM orders")
	if err != nil {
		t.Fatal(err)
	}
	for dbRows.Next() {
		var id int64
		if err := dbRows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		got[id]++
	}
	if err := dbRows.Err(); err != nil {
		t.Fatal(err)
	}
	var missing, dup []int64
	want := make(map[int64]bool, len(produced))
	for _, id := range produced {
		if want[id] {
			t.Fatalf("BUG in the test: order %d produced twice", id)
		}
		want[id] = true
		switch got[id] {
		case 0:
			missing = append(missing, id)
		case 1:
		default:
			dup = append(dup, id)
		}
	}
	var extra []int64
	for id := range got {
		if !want[id] {
			extra = append(extra, id)
		}
	}
	if rows != len(produced) || distinct != len(produced) || len(missing)+len(dup)+len(extra) > 0 {
		t.Fatalf("orders holds %d rows (%d distinct), produced %d: %d missing %v, %d duplicated %v, %d never produced %v",
			rows, distinct, len(produced), len(missing), head(missing), len(dup), head(dup), len(extra), head(extra))
	}
}

func head(ids []int64) []int64 { return ids[:min(len(ids), 5)] }

var errCrash = errors.New("test: crash before the offset commit reached the broker")

// commitGate breaks OffsetCommit requests on the broker: once armed, it lets
// `pass` commits through, then closes the connection of every commit (the
// client's retries included) until disarmed. Since ingest commits offsets
// only after its database transaction committed, the first refused commit
// marks the window this test is about: rows in the ledger, offsets not.
type commitGate struct {
	mu      sync.Mutex
	armed   bool
	pass    int
	failing bool
	hit     chan struct{} // closed at the first refused commit
	refused atomic.Int64
}

func installCommitGate(c *kfake.Cluster) *commitGate {
	g := &commitGate{}
	c.ControlKey(int16(kmsg.OffsetCommit), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.armed && !g.failing {
			if g.pass > 0 {
				g.pass--
				return nil, nil, false
			}
			g.failing = true
			close(g.hit)
		}
		if g.failing {
			g.refused.Add(1)
			return nil, errCrash, true // the broker closes the connection
		}
		return nil, nil, false
	})
	return g
}

func (g *commitGate) arm(pass int) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed, g.pass, g.failing, g.hit = true, pass, false, make(chan struct{})
	return g.hit
}

func (g *commitGate) disarm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed, g.failing = false, false
}

// Seeded rounds of: produce a chunk, start an ingest service, crash it at a
// random point, with a bias to the window between the database commit and
// the offset commit; then one clean service catches up. Every produced order
// is in `orders` exactly once, and the staging (dedupe) path ran, which
// proves batches already in the ledger were redelivered.
func TestCrashBetweenDBCommitAndOffsetCommit(t *testing.T) {
	for _, seed := range faultSeeds(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Logf("replay: FLASHGATE_SEED=%d go test -race -count=1 -run 'TestCrashBetweenDBCommitAndOffsetCommit' ./ingest/", seed)
			crashRounds(t, seed)
		})
	}
}

func crashRounds(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	_, url := testenv.Ledger(t)
	b := testenv.Broker(t, 4)
	gate := installCommitGate(b.Cluster())
	prod := newProducer(t, b)
	src := newOrderSource()
	staged := metrics.GetOrCreateCounter(`flashgate_ingest_staging_fallbacks_total`)
	commitErrs := metrics.GetOrCreateCounter(`flashgate_ingest_offset_commit_errors_total`)
	stagedBefore, commitErrsBefore := staged.Get(), commitErrs.Get()
	ctx := context.Background()

	const rounds = 8
	var windowCrashes int
	for round := 0; round < rounds; round++ {
		if err := src.produce(ctx, prod, src.make(rng, 400+rng.IntN(600))); err != nil {
			t.Fatal(err)
		}
		workers, batchRows := 1+rng.IntN(2), []int{20, 50, 100}[rng.IntN(3)]
		// The first round always crashes in the window, so that any seed
		// exercises the redelivery of a batch already in the ledger.
		mode := rng.IntN(3)
		if round == 0 {
			mode = 0
		}
		r := startFaultIngest(t, b, url, workers, batchRows)
		switch mode {
		case 0: // between the DB commit and the offset commit
			pass := rng.IntN(4) // a chunk of 400+ rows makes at least 4 batches of at most 100
			hit := gate.arm(pass)
			select {
			case <-hit:
				windowCrashes++
				// Let the client retry the refused commit a little, or not.
				time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
				t.Logf("round %d: crash after the DB commit, before the offset commit (after %d commits; workers %d, batchRows %d)", round, pass, workers, batchRows)
			case <-time.After(20 * time.Second):
				t.Logf("round %d: no commit refused within 20s (the chunk went in %d commits or fewer)", round, pass)
			}
			r.stop()
			gate.disarm()
		case 1: // anywhere: polling, mid-COPY, committing
			d := time.Duration(rng.IntN(400)) * time.Millisecond
			time.Sleep(d)
			r.stop()
			t.Logf("round %d: crash %v after start (workers %d, batchRows %d)", round, d, workers, batchRows)
		case 2: // the broker refuses a few commits and the service runs on, then crashes
			n := 1 + rng.IntN(3)
			h := b.Cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Group: faultGroup, Err: kerr.UnknownServerError, Count: n})
			d := time.Duration(100+rng.IntN(500)) * time.Millisecond
			time.Sleep(d)
			r.stop()
			h.Remove()
			t.Logf("round %d: %d of %d commits refused, crash %v after start (workers %d, batchRows %d)", round, h.Hits(), n, d, workers, batchRows)
		}
	}

	r := startFaultIngest(t, b, url, 2, 100)
	waitCaughtUp(t, b)
	r.stop()
	checkExactlyOnce(t, url, src.produced())
	stagedN := staged.Get() - stagedBefore
	t.Logf("%d orders, %d crashes in the window, %d commits refused by the gate, %d offset commit errors, %d staging fallbacks",
		len(src.produced()), windowCrashes, gate.refused.Load(), commitErrs.Get()-commitErrsBefore, stagedN)
	if windowCrashes == 0 {
		t.Fatal("no crash happened between a DB commit and its offset commit; the test proved nothing")
	}
	if stagedN == 0 {
		t.Fatal("flashgate_ingest_staging_fallbacks_total did not move: no batch already in the ledger was redelivered")
	}
}

// A second service joins the group while the first consumes a topic being
// produced to, then leaves (Stop) with batches in flight, a few times over:
// partitions move both ways mid-stream; no order is lost or doubled.
func TestRebalanceMidStream(t *testing.T) {
	seeds := faultSeeds(t) // FLASHGATE_SEED, else a fresh one
	seed := seeds[len(seeds)-1]
	t.Logf("replay: FLASHGATE_SEED=%d go test -race -count=1 -run 'TestRebalanceMidStream' ./ingest/", seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	_, url := testenv.Ledger(t)
	b := testenv.Broker(t, 6)
	prod := newProducer(t, b)
	src := newOrderSource()
	staged := metrics.GetOrCreateCounter(`flashgate_ingest_staging_fallbacks_total`)
	stagedBefore := staged.Get()

	stopProducing := src.produceContinuously(t, prod, rand.New(rand.NewPCG(rng.Uint64(), 1)), 40)
	first := startFaultIngest(t, b, url, 1, 50)
	for cycle := 0; cycle < 3; cycle++ {
		time.Sleep(time.Duration(200+rng.IntN(300)) * time.Millisecond)
		workers := 1 + rng.IntN(2)
		second := startFaultIngest(t, b, url, workers, 50)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		// Cooperative rebalancing settles in two steps (revoke, then
		// assign): wait until every member holds partitions.
		g, err := b.Cluster().WaitGroupInfo(ctx, faultGroup, func(g *kfake.GroupInfo) bool {
			if g == nil || g.State != "Stable" || len(g.Members) != 1+workers {
				return false
			}
			for i := range g.Members {
				if g.Members[i].NumAssigned() == 0 {
					return false
				}
			}
			return true
		})
		cancel()
		if err != nil {
			t.Fatalf("cycle %d: the group did not settle with %d members each holding partitions: %v; last seen: %+v", cycle, 1+workers, err, g)
		}
		// Leave while batches are in flight: records keep coming.
		time.Sleep(time.Duration(100+rng.IntN(400)) * time.Millisecond)
		second.stop()
		t.Logf("cycle %d: a service of %d workers joined and left (%d orders so far)", cycle, workers, len(src.produced()))
	}
	time.Sleep(200 * time.Millisecond)
	stopProducing()
	waitCaughtUp(t, b)
	first.stop()
	checkExactlyOnce(t, url, src.produced())
	t.Logf("%d orders, %d staging fallbacks", len(src.produced()), staged.Get()-stagedBefore)
}

// PostgreSQL goes away under a running ingest while orders keep coming, once
// by a clean stop, once by a crash (SIGKILL); the service is not restarted.
// It recovers by itself and catches up; nothing lost or doubled. The cluster
// is private to this test: the shared one serves the other tests.
func TestPostgresRestartMidStream(t *testing.T) {
	seeds := faultSeeds(t) // FLASHGATE_SEED, else a fresh one
	seed := seeds[len(seeds)-1]
	t.Logf("replay: FLASHGATE_SEED=%d go test -race -count=1 -run 'TestPostgresRestartMidStream' ./ingest/", seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(testenv.TempDir(t), "pg"), NoFsync: true, Database: "flashgate"})
	if err != nil {
		t.Fatalf("integration tests need a private PostgreSQL cluster: %v", err)
	}
	t.Cleanup(func() { c.Stop() })
	url := c.URL()
	pool, err := ledger.Open(ctx, url, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ledger.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	pool.Close()

	b := testenv.Broker(t, 4)
	prod := newProducer(t, b)
	src := newOrderSource()
	dbErrs := metrics.GetOrCreateCounter(`flashgate_ingest_db_errors_total`)
	dbErrsBefore := dbErrs.Get()

	stopProducing := src.produceContinuously(t, prod, rand.New(rand.NewPCG(rng.Uint64(), 1)), 30)
	// RetryMax 1s: the test does not wait out the 5 s default backoff.
	r := startFaultIngest(t, b, url, 2, 100, func(c *ingest.Config) { c.RetryMax = time.Second })

	outage := func(how string, down func() error) {
		time.Sleep(500 * time.Millisecond)
		port := c.Port()
		if err := down(); err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		time.Sleep(1500 * time.Millisecond) // orders keep coming meanwhile
		if err := c.Restart(ctx); err != nil {
			t.Fatalf("restart after %s: %v", how, err)
		}
		if c.Port() != port {
			t.Fatalf("PostgreSQL came back on port %d instead of %d (someone took it meanwhile): the service's URL is stale; not an ingest fault, run again", c.Port(), port)
		}
		t.Logf("PostgreSQL %s and back (%d orders so far, %d database errors seen by ingest)", how, len(src.produced()), dbErrs.Get()-dbErrsBefore)
	}
	outage("stopped", c.Stop)
	outage("killed", c.Kill)
	time.Sleep(300 * time.Millisecond)
	stopProducing()
	waitCaughtUp(t, b)
	r.stop()
	checkExactlyOnce(t, url, src.produced())
	if dbErrs.Get() == dbErrsBefore {
		t.Fatal("flashgate_ingest_db_errors_total did not move: the outages did not reach ingest; the test proved nothing")
	}
}

// When the offset commit of the last batch before a quiet spell fails, the
// worker retries it while the partitions are quiet: the group's lag reaches
// zero (WaitCaughtUp, which edges call before rebuilding stock, returns), as
// it did not before (found by this test).
func TestOffsetCommitFailureOnLastBatch(t *testing.T) {
	_, url := testenv.Ledger(t)
	b := testenv.Broker(t, 1)
	prod := newProducer(t, b)
	src := newOrderSource()
	h := b.Cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Group: faultGroup, Err: kerr.UnknownServerError, Count: 1})
	r := startFaultIngest(t, b, url, 1, 1000)
	defer r.stop()
	if err := src.produce(context.Background(), prod, src.make(rand.New(rand.NewPCG(1, 1)), 100)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// The service keeps running and nothing more is produced: well past
	// RetryMax and any backoff, the lag must be zero.
	adm, err := broker.NewAdmin([]string{b.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := ingest.WaitCaughtUp(context.Background(), adm, faultGroup, 15*time.Second); err != nil {
		checkExactlyOnce(t, url, src.produced()) // the rows are there: only the offsets lag
		t.Fatal(err)
	}
}
