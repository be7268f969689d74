package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/testenv"
)

func TestBreakerStates(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BreakerFailures, cfg.BreakerCooldown, cfg.BreakerStall = 3, 2*time.Second, time.Second
	b := newBreaker(&cfg)
	const s = int64(time.Second)
	now := 100 * s
	mustAllow := func(want, wantProbe bool) {
		t.Helper()
		ok, probe, retry := b.allow(now)
		if ok != want || probe != wantProbe {
			t.Fatalf("at %v (%s): allow = %v probe %v retry %d, want %v probe %v", time.Duration(now), b.state(now), ok, probe, retry, want, wantProbe)
		}
		if !ok && retry < 1 {
			t.Fatalf("refused with Retry-After %d", retry)
		}
	}
	mustAllow(true, false)
	b.done(now, false, false)
	b.done(now, false, false)
	b.done(now, true, false) // a success resets the count
	for range 10 {           // one refused batch: many records fail at once
		b.done(now, false, false)
	}
	mustAllow(true, false)
	now += int64(breakerMinFailSpan)
	b.done(now, false, false) // a failure in a row after the minimum span
	if b.state(now) != "open" {
		t.Fatalf("after failures in a row over %v: %s", breakerMinFailSpan, b.state(now))
	}
	mustAllow(false, false)
	if _, _, retry := b.allow(now + s/2); retry != 2 {
		t.Fatalf("Retry-After 1.5 s before the probe: %d, want 2", retry)
	}
	now += 2 * s // half-open: one probe at a time
	mustAllow(true, true)
	mustAllow(false, false)
	b.cancelProbe(true) // the probe was refused by admission after all
	mustAllow(true, true)
	b.done(now, false, true) // the probe failed: open again
	mustAllow(false, false)
	now += 2 * s
	mustAllow(true, true)
	b.done(now, true, true) // the probe succeeded: closed
	if b.state(now) != "closed" {
		t.Fatalf("after a successful probe: %s", b.state(now))
	}
	mustAllow(true, false)

	// A stall: produces wait and none completes for the stall time.
	b.check(now, 0)
	b.check(now+5*s, 0) // idle is not a stall
	mustAllow(true, false)
	now += 5 * s
	b.check(now+s/2, 4)
	mustAllow(true, false)
	b.check(now+s, 4)
	if b.state(now+s) != "open" {
		t.Fatalf("after a second without completions: %s", b.state(now+s))
	}
}

// countProduces counts the produce requests the broker receives and, while
// fail is set, refuses them with a non-retriable error.
func countProduces(c *kfake.Cluster, fail *atomic.Bool) *atomic.Int64 {
	var n atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		n.Add(1)
		if !fail.Load() {
			return nil, nil, false
		}
		return produceError(req.(*kmsg.ProduceRequest), kerr.InvalidRecord), nil, true
	})
	return &n
}

// produceError answers every partition of req with err.
func produceError(req *kmsg.ProduceRequest, err *kerr.Error) *kmsg.ProduceResponse {
	resp := req.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range req.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, err.Code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// While the broker keeps failing, the breaker opens and orders are refused
// without reaching Kafka and without taking stock; a probe closes it once
// the broker is back.
func TestBreakerShedsWhileKafkaFails(t *testing.T) {
	kf := testenv.Broker(t, 3)
	var failing atomic.Bool
	failing.Store(true)
	produces := countProduces(kf.Cluster(), &failing)
	s := startTestEdge(t, kf, "BRK-1", 10, func(c *Config) {
		// A cooldown no slow machine outlasts; the test ends it by hand.
		c.BreakerFailures, c.BreakerCooldown = 3, time.Minute
	})
	for i := 0; i < 3; i++ {
		if code, _, body := postOrder(t, s.cfg.Addr, fmt.Sprint("b", i), "BRK-1"); code != 503 {
			t.Fatalf("order %d with the broker failing: %d %s", i, code, body)
		}
		if i < 2 {
			time.Sleep(breakerMinFailSpan / 2)
		}
	}
	if st := s.breaker.state(time.Now().UnixNano()); st != "open" {
		t.Fatalf("breaker %s after 3 failures in a row over %v", st, breakerMinFailSpan)
	}
	before := produces.Load()
	for i := 0; i < 20; i++ {
		code, h, body := postOrder(t, s.cfg.Addr, fmt.Sprint("shed", i), "BRK-1")
		if code != 503 || h.Get("Retry-After") == "" || !strings.Contains(body, "Kafka is failing") {
			t.Fatalf("order while the breaker is open: %d %v %s", code, h, body)
		}
	}
	if got := produces.Load(); got != before {
		t.Fatalf("%d produce requests reached the broker while the breaker was open", got-before)
	}
	if st, _ := s.SKU("BRK-1"); st.Remaining != 10 {
		t.Fatalf("stock after failures and shedding: %+v, want all 10 units", st)
	}

	failing.Store(false)
	s.breaker.openUntil.Store(time.Now().UnixNano()) // the cooldown is over: the next order probes
	deadline := time.Now().Add(10 * time.Second)
	accepted := 0
	for accepted < 5 && time.Now().Before(deadline) {
		code, _, body := postOrder(t, s.cfg.Addr, fmt.Sprint("back", accepted), "BRK-1")
		switch code {
		case 202:
			accepted++
		case 503: // open until the cooldown ends
			time.Sleep(50 * time.Millisecond)
		default:
			t.Fatalf("order after the broker came back: %d %s", code, body)
		}
	}
	if accepted < 5 || s.breaker.state(time.Now().UnixNano()) != "closed" {
		t.Fatalf("after the broker came back: %d accepted, breaker %s", accepted, s.breaker.state(time.Now().UnixNano()))
	}
	if n := countRecords(t, kf); n != 5 {
		t.Fatalf("order.created holds %d records, want the 5 accepted", n)
	}
	if st, _ := s.SKU("BRK-1"); st.Remaining != 5 {
		t.Fatalf("stock: %+v, want 5 left", st)
	}
}

// holdProduces makes the broker sit on produce requests while hold is set;
// when it is cleared each held request is appended normally, or refused
// (nothing written) if drop was set when it arrived.
func holdProduces(c *kfake.Cluster, hold, drop *atomic.Bool, held *atomic.Int64) {
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !hold.Load() {
			return nil, nil, false
		}
		held.Add(1)
		dropIt := drop.Load()
		c.SleepControl(func() {
			for hold.Load() {
				time.Sleep(5 * time.Millisecond)
			}
		})
		if dropIt {
			return produceError(req.(*kmsg.ProduceRequest), kerr.NotEnoughReplicas), nil, true
		}
		return nil, nil, false
	})
}

// A broker that stops answering: orders in flight are answered 503 by their
// delivery timeout, and within the stall time new orders are shed at once.
func TestStalledBrokerIsShed(t *testing.T) {
	kf := testenv.Broker(t, 1)
	var hold, drop atomic.Bool
	var held atomic.Int64
	hold.Store(true)
	drop.Store(true)
	holdProduces(kf.Cluster(), &hold, &drop, &held)
	t.Cleanup(func() { hold.Store(false) })
	s := startTestEdge(t, kf, "STALL-1", 10, func(c *Config) {
		c.DeliveryTimeout, c.BreakerStall, c.BreakerCooldown = 8*time.Second, 200*time.Millisecond, time.Minute
	})
	first := make(chan int, 1)
	go func() {
		code, _, _ := postOrder(t, s.cfg.Addr, "stalled", "STALL-1")
		first <- code
	}()
	for s.breaker.state(time.Now().UnixNano()) == "closed" {
		time.Sleep(10 * time.Millisecond)
	}
	code, _, body := postOrder(t, s.cfg.Addr, "later", "STALL-1")
	select {
	case c := <-first:
		t.Fatalf("the order in the stalled produce was answered (%d) before the shed one", c)
	default:
	}
	if code != 503 || !strings.Contains(body, "Kafka is failing") {
		t.Fatalf("order while the broker stalls: %d %s", code, body)
	}
	if c := <-first; c != 503 {
		t.Fatalf("order in the stalled produce: %d, want 503 by its delivery timeout", c)
	}
	if held.Load() == 0 {
		t.Fatal("the broker never held a produce: the test proved nothing")
	}
	// Its outcome is unknown: the unit stays taken until reconciliation.
	if st, _ := s.SKU("STALL-1"); st.Remaining != 9 || s.unknown.len() != 1 {
		t.Fatalf("after the timeout: %+v, %d unknown; want 9 left and 1 unknown", st, s.unknown.len())
	}
}

// Orders whose produce timed out are reconciled against the ledger: one
// whose record landed after all stands (its key replays it), one that never
// reached Kafka gives its unit and its key back.
func TestUnknownOutcomesReconciled(t *testing.T) {
	kf := testenv.Broker(t, 1)
	pool, url := testenv.Ledger(t)
	var hold, drop atomic.Bool
	var held atomic.Int64
	holdProduces(kf.Cluster(), &hold, &drop, &held)
	t.Cleanup(func() { hold.Store(false) })

	icfg := startIngest(t, kf, url)

	cfg := DefaultConfig()
	cfg.Addr, cfg.Brokers = freeAddr(t), []string{kf.Addr()}
	cfg.DeliveryTimeout, cfg.ReconcileAfter = time.Second, 8*time.Second // the steps before the hold is lifted must finish inside ReconcileAfter, on a busy machine too
	cfg.BreakerFailures, cfg.BreakerStall = 100, time.Hour               // this test is about reconciliation
	s, err := New(cfg, pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.items.put(ledger.SaleItem{SKU: "REC-1", Stock: 2, PriceCents: 100}, -1); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	body := `{"sku":"REC-1","qty":1}`
	remaining := func() int64 { st, _ := s.SKU("REC-1"); return st.Remaining }
	waitReconciled := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for s.unknown.len() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d orders still unknown", s.unknown.len())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// 1. The record lands after the client was answered 503.
	hold.Store(true)
	if code, _, b := post(t, s.cfg.Addr, "lander", "k-land", body); code != 503 {
		t.Fatalf("order with the broker holding it: %d %s", code, b)
	}
	if code, _, b := post(t, s.cfg.Addr, "lander", "k-land", body); code != 409 || !strings.Contains(b, "idempotency-in-flight") {
		t.Fatalf("retry while the outcome is unknown: %d %s, want 409 idempotency-in-flight", code, b)
	}
	hold.Store(false) // the held request is appended now
	waitReconciled()
	if got := remaining(); got != 1 {
		t.Fatalf("after the landed order was reconciled: %d left, want 1", got)
	}
	code, _, landed := post(t, s.cfg.Addr, "lander", "k-land", body)
	if code != 202 {
		t.Fatalf("retry after reconciliation: %d %s, want the landed order's 202", code, landed)
	}

	// 2. The record never reaches Kafka.
	drop.Store(true)
	hold.Store(true)
	if code, _, b := post(t, s.cfg.Addr, "loser", "k-lost", body); code != 503 {
		t.Fatalf("order with the broker holding it: %d %s", code, b)
	}
	if got := remaining(); got != 0 {
		t.Fatalf("unit of the unknown order: %d left, want 0 until reconciled", got)
	}
	hold.Store(false) // the held request is refused: nothing written
	drop.Store(false)
	waitReconciled()
	if got := remaining(); got != 1 {
		t.Fatalf("after the lost order was reconciled: %d left, want its unit back", got)
	}
	code, _, retried := post(t, s.cfg.Addr, "loser", "k-lost", body)
	if code != 202 || orderIDOf(t, retried) == orderIDOf(t, landed) {
		t.Fatalf("retry of the lost order: %d %s, want a new 202", code, retried)
	}

	// The ledger: the landed order and the retried one, once each.
	ctx := context.Background()
	if err := ingest.WaitCaughtUp(ctx, s.prod, icfg.Group, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM orders WHERE sku = 'REC-1'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 || countRecords(t, kf) != 2 {
		t.Fatalf("ledger holds %d orders, Kafka %d records; want 2 and 2", n, countRecords(t, kf))
	}
	if held.Load() < 2 {
		t.Fatalf("the broker held %d produces, want 2: the test proved nothing", held.Load())
	}
}

func orderIDOf(t *testing.T, body string) string {
	t.Helper()
	var v struct {
		OrderID string `json:"order_id"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil || v.OrderID == "" {
		t.Fatalf("no order_id in %q (%v)", body, err)
	}
	return v.OrderID
}

// testSeeds returns the seeds of a randomized test: fixed ones and a fresh
// one, or only FLASHGATE_SEED when it is set (to replay a failure).
func testSeeds(t *testing.T) []uint64 {
	if env := os.Getenv("FLASHGATE_SEED"); env != "" {
		seed, err := strconv.ParseUint(env, 10, 64)
		if err != nil {
			t.Fatalf("FLASHGATE_SEED=%q: %v", env, err)
		}
		return []uint64{seed}
	}
	return []uint64{1, uint64(time.Now().UnixNano())}
}

// Concurrent orders while the broker misbehaves at random (seeded): refused
// produces, retriable errors, slow acks, dropped connections, produces held
// past the delivery timeout. Afterwards: every 202 order is in Kafka; every
// record in Kafka is a 202 order or one of unknown outcome (none of an order
// whose stock was given back); the stock is exactly what the 202 and the
// unknown orders took; no request waited past its deadline.
func TestHandoffUnderFaults(t *testing.T) {
	for _, seed := range testSeeds(t) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { handoffUnderFaults(t, seed) })
	}
}

func handoffUnderFaults(t *testing.T, seed uint64) {
	kf := testenv.Broker(t, 3)
	c := kf.Cluster()
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 7))
	var faults [6]atomic.Int64 // pass, refuse, retriable, slow, drop connection, hold
	var stopped atomic.Bool
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		mu.Lock()
		p, d := rng.IntN(100), time.Duration(rng.IntN(300))*time.Millisecond
		mu.Unlock()
		if stopped.Load() {
			return nil, nil, false
		}
		preq := req.(*kmsg.ProduceRequest)
		switch {
		case p < 55:
			faults[0].Add(1)
			return nil, nil, false
		case p < 65:
			faults[1].Add(1)
			return produceError(preq, kerr.InvalidRecord), nil, true
		case p < 75:
			faults[2].Add(1)
			return produceError(preq, kerr.NotEnoughReplicas), nil, true
		case p < 88:
			faults[3].Add(1)
			c.SleepControl(func() { time.Sleep(d) })
			return nil, nil, false
		case p < 94:
			faults[4].Add(1)
			return nil, fmt.Errorf("injected: connection dropped"), true
		default:
			faults[5].Add(1)
			c.SleepControl(func() { time.Sleep(1500*time.Millisecond + d) })
			return nil, nil, false
		}
	})
	const stock = 100_000
	s := startTestEdge(t, kf, "FLT-1", stock, func(c *Config) {
		c.DeliveryTimeout, c.BreakerCooldown = time.Second, 100*time.Millisecond
		c.RatePerIP = RateLimit{}
	})
	deadline := s.cfg.DeliveryTimeout + 30*time.Second // the produce's bound, plus slack for a loaded machine (a hang is what this catches)
	client := &http.Client{Timeout: deadline}

	const clients, perClient = 16, 40
	var wg sync.WaitGroup
	var amu sync.Mutex
	accepted := map[string]int64{} // order id -> qty
	var codes [600]atomic.Int64
	for g := 0; g < clients; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < perClient; i++ {
				qty := int64(1 + (g+i)%3)
				req, _ := http.NewRequest("POST", "http://"+s.cfg.Addr+"/v1/orders", strings.NewReader(fmt.Sprintf(`{"sku":"FLT-1","qty":%d}`, qty)))
				req.Header.Set("X-User-ID", fmt.Sprintf("f%d-%d", g, i))
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("request failed or waited past %v: %v", deadline, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				codes[resp.StatusCode].Add(1)
				switch resp.StatusCode {
				case 202:
					amu.Lock()
					accepted[orderIDOf(t, string(b))] = qty
					amu.Unlock()
				case 503:
					time.Sleep(20 * time.Millisecond) // a client backing off
				default:
					t.Errorf("unexpected answer %d %s", resp.StatusCode, b)
				}
			}
		}(g)
	}
	wg.Wait()
	for s.produces.Load() > 0 {
		time.Sleep(10 * time.Millisecond)
	}
	stopped.Store(true)
	t.Logf("seed %d: 202: %d, 503: %d; produce requests passed %d, refused %d, retriable %d, slow %d, dropped %d, held %d; unknown %d",
		seed, codes[202].Load(), codes[503].Load(), faults[0].Load(), faults[1].Load(), faults[2].Load(), faults[3].Load(), faults[4].Load(), faults[5].Load(), s.unknown.len())
	if codes[202].Load() == 0 || codes[503].Load() == 0 {
		t.Fatalf("seed %d: the faults did not bite (or nothing passed): %d accepted, %d refused", seed, codes[202].Load(), codes[503].Load())
	}

	unknown := map[string]int64{}
	for _, o := range s.unknown.takeSettled(time.Now().UnixNano()) {
		unknown[fmt.Sprint(o.id)] = o.qty
	}
	inKafka := map[string]bool{}
	for _, v := range consumeValues(t, kf) {
		inKafka[orderIDOf(t, v)] = true
	}
	var taken int64
	for id, qty := range accepted {
		taken += qty
		if !inKafka[id] {
			t.Errorf("seed %d: order %s was answered 202 but is not in order.created", seed, id)
		}
	}
	for id := range inKafka {
		if _, ok := accepted[id]; !ok {
			if _, ok := unknown[id]; !ok {
				t.Errorf("seed %d: order %s is in order.created but was neither accepted nor of unknown outcome: its stock was given back", seed, id)
			}
		}
	}
	for _, qty := range unknown {
		taken += qty
	}
	if st, _ := s.SKU("FLT-1"); st.Remaining != stock-taken {
		t.Fatalf("seed %d: %d units left, want %d - %d taken by accepted and unknown orders", seed, st.Remaining, stock, taken)
	}
}

// consumeValues returns the values of every record in order.created.
func consumeValues(t *testing.T, kf *broker.Embedded) []string {
	t.Helper()
	var out []string
	for _, r := range readOrderCreated(t, []string{kf.Addr()}) {
		out = append(out, string(r.Value))
	}
	return out
}

// Orders that wait for Kafka from the edge's first moments are not taken
// for a stuck producer: unstick measures from the start, not from the
// epoch (it aborted them at the first tick once: every edge restarted
// under load lost its first orders to 503s and reconciliation).
func TestOrdersRightAfterStartAreNotAborted(t *testing.T) {
	kf := testenv.Broker(t, 1)
	var hold, drop atomic.Bool
	var held atomic.Int64
	hold.Store(true)
	holdProduces(kf.Cluster(), &hold, &drop, &held)
	t.Cleanup(func() { hold.Store(false) })
	aborts := producerAbortsTotal.Get()
	s := startTestEdge(t, kf, "FRESH", 10)
	got := make(chan int, 1)
	go func() {
		code, _, _ := postOrder(t, s.cfg.Addr, "fresh", "FRESH")
		got <- code
	}()
	for held.Load() == 0 { // the order waits for the broker across the first ticks
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	hold.Store(false)
	if code := <-got; code != 202 {
		t.Fatalf("the order held by the broker from the edge's start: %d, want 202", code)
	}
	if n := producerAbortsTotal.Get() - aborts; n != 0 {
		t.Fatalf("the edge aborted its producer's records %d times: it took orders waiting since its start for a stuck producer", n)
	}
}

// TestQuietOrderIsNotHeldForTheLinger: an order that finds no other waiting
// for Kafka goes out at once, whatever -edge.produceLinger. The linger here
// is far beyond the client's patience, so an order held for it fails.
func TestQuietOrderIsNotHeldForTheLinger(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "QUIET", 1000, func(c *Config) {
		c.ProduceLinger, c.DeliveryTimeout, c.ReconcileAfter = 50*time.Second, time.Minute, time.Minute
	})
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range 5 { // one at a time: each is alone
		req, _ := http.NewRequest("POST", "http://"+s.cfg.Addr+"/v1/orders", strings.NewReader(`{"sku":"QUIET","qty":1}`))
		req.Header.Set("X-User-ID", fmt.Sprintf("quiet%d", i))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("quiet order %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 202 {
			t.Fatalf("quiet order %d: %d %s", i, resp.StatusCode, b)
		}
	}
}
