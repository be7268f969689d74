package ingest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func produce(t *testing.T, cl *kgo.Client, os []order.Order, poison ...string) {
	t.Helper()
	var recs []*kgo.Record
	for i := range os {
		recs = append(recs, &kgo.Record{Topic: broker.TopicOrderCreated, Key: []byte(os[i].UserID), Value: order.AppendJSON(nil, &os[i])})
	}
	for _, p := range poison {
		recs = append(recs, &kgo.Record{Topic: broker.TopicOrderCreated, Key: []byte("x"), Value: []byte(p)})
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func mkOrders(n int) []order.Order {
	gen := orderid.MustNew(1, 1)
	os := make([]order.Order, n)
	for i := range os {
		id := gen.Next()
		os[i] = order.Order{ID: id, UserID: fmt.Sprintf("user%d", i%37), SKU: "SKU-1", Qty: 1, PriceCents: 500, CreatedAt: orderid.Time(id)}
	}
	return os
}

func startIngest(t *testing.T, b *broker.Embedded, url string, workers int, tweaks ...func(*ingest.Config)) (*ingest.Service, *kgo.Client) {
	t.Helper()
	pool, err := ledger.Open(context.Background(), url, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	cfg := ingest.DefaultConfig()
	cfg.Brokers = []string{b.Addr()}
	cfg.Workers = workers
	cfg.BatchRows = 300
	for _, f := range tweaks {
		f(&cfg)
	}
	svc, err := ingest.Start(cfg, pool)
	if err != nil {
		t.Fatal(err)
	}
	adm, err := broker.NewAdmin([]string{b.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(adm.Close)
	return svc, adm
}

func countOrders(t *testing.T, url string) (rows, distinct int) {
	t.Helper()
	pool, err := ledger.Open(context.Background(), url, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	pool.QueryRow(context.Background(), "SELECT count(*), count(DISTINCT order_id) FROM orders").Scan(&rows, &distinct)
	return rows, distinct
}

// Every record ends up in the ledger exactly once; poison goes to the DLQ and
// does not block the partition.
func TestIngestExactlyOnceWithPoison(t *testing.T) {
	_, url := testenv.Ledger(t)
	b := testenv.Broker(t, 4)
	prod, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.DefaultProduceTopic(broker.TopicOrderCreated))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	os := mkOrders(2000)
	produce(t, prod, os[:1000], "not json", `{"v":1,"order_id":"1","user_id":"u","sku":"s","qty":0,"price_cents":1}`)

	svc, adm := startIngest(t, b, url, 2)
	produce(t, prod, os[1000:])
	if err := ingest.WaitCaughtUp(context.Background(), adm, ingest.DefaultConfig().Group, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	svc.Stop()
	if rows, distinct := countOrders(t, url); rows != len(os) || distinct != len(os) {
		t.Fatalf("ledger has %d rows (%d distinct), want %d", rows, distinct, len(os))
	}

	// The two poison records are in the DLQ with a reason.
	cons, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.ConsumeTopics(broker.TopicOrderDLQ), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var dlq []*kgo.Record
	for len(dlq) < 2 && ctx.Err() == nil {
		dlq = append(dlq, cons.PollFetches(ctx).Records()...)
	}
	if len(dlq) != 2 {
		t.Fatalf("DLQ has %d records, want 2", len(dlq))
	}
	for _, r := range dlq {
		if len(r.Headers) == 0 || r.Headers[0].Key != "dlq.reason" || len(r.Headers[0].Value) == 0 {
			t.Errorf("DLQ record %q without a reason header: %+v", r.Value, r.Headers)
		}
	}
}

// A crash between the database commit and the offset commit redelivers a
// batch whose rows are already in the ledger: no duplicate, no loss.
func TestRedeliveryAfterDBCommit(t *testing.T) {
	pool, url := testenv.Ledger(t)
	b := testenv.Broker(t, 2)
	prod, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.DefaultProduceTopic(broker.TopicOrderCreated))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	os := mkOrders(1500)
	produce(t, prod, os)
	// As if a worker had written every third order and died before committing offsets.
	var done []order.Order
	for i := 0; i < len(os); i += 3 {
		done = append(done, os[i])
	}
	if _, err := ledger.InsertOrders(context.Background(), pool, done); err != nil {
		t.Fatal(err)
	}
	svc, adm := startIngest(t, b, url, 1)
	defer svc.Stop()
	if err := ingest.WaitCaughtUp(context.Background(), adm, ingest.DefaultConfig().Group, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if rows, distinct := countOrders(t, url); rows != len(os) || distinct != len(os) {
		t.Fatalf("ledger has %d rows (%d distinct), want %d", rows, distinct, len(os))
	}
}

// A batch closes at its row cap, or its age after its first record: 50
// waiting records make batches of 20, 20 and 10; records produced a few ms
// apart within the age make one.
func TestBatchesCloseOnRowsAndAge(t *testing.T) {
	_, url := testenv.Ledger(t)
	b := testenv.Broker(t, 3)
	prod, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.DefaultProduceTopic(broker.TopicOrderCreated))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	os := mkOrders(55)
	produce(t, prod, os[:50])
	batches := metrics.GetOrCreateCounter(`flashgate_ingest_batches_total`)
	before := batches.Get()
	svc, adm := startIngest(t, b, url, 1, func(c *ingest.Config) { c.BatchRows, c.BatchAge = 20, 2*time.Second })
	defer svc.Stop()
	group := ingest.DefaultConfig().Group
	if err := ingest.WaitCaughtUp(context.Background(), adm, group, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := batches.Get() - before; got != 3 {
		t.Fatalf("50 waiting records with -ingest.batchRows 20 made %d batches, want 3", got)
	}
	start := time.Now()
	for _, o := range os[50:] {
		produce(t, prod, []order.Order{o})
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	if err := ingest.WaitCaughtUp(context.Background(), adm, group, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	switch got := batches.Get() - before - 3; {
	case took < time.Second && got != 1:
		t.Fatalf("5 records 10 ms apart with -ingest.batchAge 2s made %d batches, want 1", got)
	case got < 1 || got > 5:
		t.Fatalf("5 records made %d batches", got)
	case got != 1:
		t.Logf("the 5 records took %v to produce on this busy machine: %d batches", took, got)
	}
	if rows, distinct := countOrders(t, url); rows != len(os) || distinct != len(os) {
		t.Fatalf("ledger has %d rows (%d distinct), want %d", rows, distinct, len(os))
	}
}

// TestLagOfAGroupThatNeverCommitted: before any worker of the group ran, the
// lag is every record of the topic (0 on an empty one), not an error: an edge
// whose ingest runs in another process starts on it.
func TestLagOfAGroupThatNeverCommitted(t *testing.T) {
	b, err := broker.StartEmbedded("127.0.0.1:0", "", 2, false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	adm, err := broker.NewAdmin([]string{b.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if lag, err := ingest.Lag(ctx, adm, "never-ran"); err != nil || lag != 0 {
		t.Fatalf("empty topic: lag %d, %v; want 0", lag, err)
	}
	if err := ingest.WaitCaughtUp(ctx, adm, "never-ran", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	produce(t, adm, mkOrders(5))
	if lag, err := ingest.Lag(ctx, adm, "never-ran"); err != nil || lag != 5 {
		t.Fatalf("5 records: lag %d, %v; want 5", lag, err)
	}
}
