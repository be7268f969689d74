package ledger_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/testenv"
)

var lifecycleTopics = []string{broker.TopicOrderUpdated, broker.TopicOrderCancelled, broker.TopicOrderCompleted, broker.TopicSaleEvents}

// logOutbox copies every row inserted into the outbox to outbox_log, so a
// test knows what the relay had to publish even after it deleted the rows.
func logOutbox(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `
		CREATE TABLE outbox_log (LIKE outbox);
		CREATE FUNCTION outbox_log() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO outbox_log SELECT NEW.*; RETURN NULL; END $$;
		CREATE TRIGGER outbox_log AFTER INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_log()`); err != nil {
		t.Fatal(err)
	}
}

func loggedOutbox(t *testing.T, pool *pgxpool.Pool) []outboxRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT id, topic, key, event_id, value FROM outbox_log ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.ID, &r.Topic, &r.Key, &r.EventID, &r.Value); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// lifecycleTraffic makes every kind of event on n fresh orders of SKUs A and
// B: payments, fulfilments, refunds, cancellations, late payments, expiries.
func lifecycleTraffic(t *testing.T, pool *pgxpool.Pool, gen *orderid.Generator, n int) {
	t.Helper()
	ctx := context.Background()
	os := insert(t, pool, gen, n, func(i int) (string, string, int32) {
		return fmt.Sprint("u", i%5), []string{"A", "B"}[i%2], int32(1 + i%2)
	})
	for i, o := range os {
		ev := fmt.Sprint(o.ID)
		var err error
		switch i % 5 {
		case 0:
			_, _, err = ledger.ApplyPayment(ctx, pool, pay(o.ID, ev, int64(o.Qty)*100))
			if err == nil {
				_, err = ledger.Fulfill(ctx, pool, o.ID)
			}
		case 1:
			_, _, err = ledger.ApplyPayment(ctx, pool, pay(o.ID, ev, int64(o.Qty)*100))
			if err == nil {
				_, _, err = ledger.ApplyPayment(ctx, pool, refund(o.ID, ev+"r", 50))
			}
		case 2:
			_, err = ledger.Cancel(ctx, pool, o.ID, o.UserID)
			if err == nil {
				_, _, err = ledger.ApplyPayment(ctx, pool, pay(o.ID, ev, int64(o.Qty)*100))
			}
		case 3:
			_, err = ledger.Cancel(ctx, pool, o.ID, o.UserID)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ledger.ExpireBefore(ctx, pool, time.Now().Add(time.Hour), 4); err != nil {
		t.Fatal(err)
	}
}

// consume reads the lifecycle topics from the start until it has want
// records, and then for a little longer to catch any extra.
func consume(t *testing.T, addr string, want int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(lifecycleTopics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	deadline := time.Now().Add(15 * time.Second)
	settle := time.Time{}
	for {
		if len(recs) >= want && settle.IsZero() {
			settle = time.Now().Add(300 * time.Millisecond)
		}
		if !settle.IsZero() && time.Now().After(settle) || time.Now().After(deadline) {
			return recs
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) { recs = append(recs, r) })
	}
}

// checkPublished checks that every row of the outbox reached Kafka copies
// times, as written (topic, key, value, event id header), that per topic and
// key the records first appear in outbox order, and that an edge applying
// each release whose release_seq is above the last it applied applies every
// release exactly once.
func checkPublished(t *testing.T, rows []outboxRow, recs []*kgo.Record, copies int) {
	t.Helper()
	type tk struct{ topic, key string }
	byEvent := map[string]outboxRow{}
	wantOrder := map[tk][]int64{}
	for _, r := range rows {
		byEvent[r.Topic+"/"+strconv.FormatInt(r.EventID, 10)] = r
		wantOrder[tk{r.Topic, r.Key}] = append(wantOrder[tk{r.Topic, r.Key}], r.EventID)
	}
	seen := map[string]int{}
	gotOrder := map[tk][]int64{}
	last := map[string]int64{}
	applied := map[string]int{}
	for _, rec := range recs {
		var hdr string
		for _, h := range rec.Headers {
			if h.Key == ledger.EventIDHeader {
				hdr = string(h.Value)
			}
		}
		id := rec.Topic + "/" + hdr
		row, ok := byEvent[id]
		if !ok {
			t.Fatalf("record on %s with event id %q, key %s: not in the outbox", rec.Topic, hdr, rec.Key)
		}
		if string(rec.Key) != row.Key || !bytes.Equal(rec.Value, row.Value) {
			t.Fatalf("record %s: key %s value %s; the outbox had key %s value %s", id, rec.Key, rec.Value, row.Key, row.Value)
		}
		if seen[id] == 0 {
			gotOrder[tk{rec.Topic, row.Key}] = append(gotOrder[tk{rec.Topic, row.Key}], row.EventID)
		}
		seen[id]++
		if rec.Topic == broker.TopicSaleEvents {
			f := row
			if err := json.Unmarshal(row.Value, &f.Fields); err != nil {
				t.Fatal(err)
			}
			if seq := f.num("release_seq"); seq > last[row.Key] {
				last[row.Key] = seq
				applied[id]++
			}
		}
	}
	for id, r := range byEvent {
		if seen[id] != copies {
			t.Errorf("%s (outbox row %d) published %d times, want %d", id, r.ID, seen[id], copies)
		}
		if r.Topic == broker.TopicSaleEvents && applied[id] != 1 {
			t.Errorf("release %s applied %d times by the release_seq rule", r.Value, applied[id])
		}
	}
	for k, want := range wantOrder {
		if fmt.Sprint(gotOrder[k]) != fmt.Sprint(want) {
			t.Errorf("%s key %s: events in the order %v, written in the order %v", k.topic, k.key, gotOrder[k], want)
		}
	}
}

func producer(t *testing.T, addr string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func outboxLen(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM outbox").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Two relays run while changes keep coming: one publishes at a time, every
// record once, in order per order and per SKU, with its event id.
func TestRelayPublishesInOrder(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	b := testenv.Broker(t, 3)
	logOutbox(t, pool)
	putSale(t, pool, "A", 10_000, 0)
	putSale(t, pool, "B", 10_000, 0)
	gen := orderid.MustNew(0, 11)
	lifecycleTraffic(t, pool, gen, 40)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for k := 0; k < 2; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := ledger.DefaultRelayConfig()
			cfg.Batch = 7 // many rounds
			cfg.Poll = 5 * time.Millisecond
			if err := ledger.RunRelayConfig(ctx, pool, producer(t, b.Addr()), cfg); err != nil {
				t.Error(err)
			}
		}()
	}
	lifecycleTraffic(t, pool, gen, 40) // while they run
	for deadline := time.Now().Add(10 * time.Second); outboxLen(t, pool) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the relays left %d rows in the outbox", outboxLen(t, pool))
		}
	}
	// A relay runs: another cannot publish.
	if _, err := ledger.RelayOnce(context.Background(), pool, producer(t, b.Addr()), 10); !errors.Is(err, ledger.ErrRelayBusy) {
		t.Fatalf("RelayOnce while relays run: %v, want ErrRelayBusy", err)
	}
	cancel()
	wg.Wait()

	rows := loggedOutbox(t, pool)
	checkPublished(t, rows, consume(t, b.Addr(), len(rows)), 1)
	t.Logf("%d records published", len(rows))
}

// A relay that dies after its records were acked and before it deleted
// them publishes them again, with the same event ids and in the same order:
// at least once, and consumers' dedupe keeps each once.
func TestRelayCrashRepublishes(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	b := testenv.Broker(t, 3)
	putSale(t, pool, "A", 10_000, 0)
	putSale(t, pool, "B", 10_000, 0)
	lifecycleTraffic(t, pool, orderid.MustNew(0, 12), 30)
	rows := readOutbox(t, pool)
	ctx := context.Background()
	cl := producer(t, b.Addr())

	crash := errors.New("crash")
	restore := ledger.SetRelayBeforeDelete(func() error { return crash })
	if n, err := ledger.RelayOnce(ctx, pool, cl, 10_000); !errors.Is(err, crash) || n != 0 {
		t.Fatalf("crashing round: %d, %v", n, err)
	}
	restore()
	if got := outboxLen(t, pool); got != len(rows) {
		t.Fatalf("after the crash the outbox holds %d rows, want all %d", got, len(rows))
	}
	// The next relay publishes in rounds of 9.
	for {
		n, err := ledger.RelayOnce(ctx, pool, cl, 9)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if got := outboxLen(t, pool); got != 0 {
		t.Fatalf("%d rows left", got)
	}
	checkPublished(t, rows, consume(t, b.Addr(), 2*len(rows)), 2)
}
