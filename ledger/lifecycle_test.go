package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/testenv"
)

// putSale puts a sale item whose generation started a second ago, so every
// order made from now on belongs to it.
func putSale(t *testing.T, pool *pgxpool.Pool, sku string, stock int64, perUser int32) {
	t.Helper()
	if _, err := ledger.PutSaleItem(context.Background(), pool, ledger.SaleItem{
		SKU: sku, Stock: stock, PriceCents: 100, PerUserLimit: perUser, SaleStartedAt: time.Now().Add(-time.Second),
	}); err != nil {
		t.Fatal(err)
	}
}

// insert writes orders of (user, sku, qty) at 100 cents a unit.
func insert(t *testing.T, pool *pgxpool.Pool, gen *orderid.Generator, n int, mk func(i int) (user, sku string, qty int32)) []order.Order {
	t.Helper()
	os := make([]order.Order, n)
	for i := range os {
		id := gen.Next()
		user, sku, qty := mk(i)
		os[i] = order.Order{ID: id, UserID: user, SKU: sku, Qty: qty, PriceCents: 100, CreatedAt: orderid.Time(id)}
	}
	if _, err := ledger.InsertOrders(context.Background(), pool, os); err != nil {
		t.Fatal(err)
	}
	return os
}

func one(user, sku string) func(int) (string, string, int32) {
	return func(int) (string, string, int32) { return user, sku, 1 }
}

// outboxRow is a row of the outbox with its value decoded.
type outboxRow struct {
	ID      int64
	Topic   string
	Key     string
	EventID int64
	Value   []byte
	Fields  map[string]any
}

func (r outboxRow) str(f string) string { s, _ := r.Fields[f].(string); return s }
func (r outboxRow) num(f string) int64  { n, _ := r.Fields[f].(float64); return int64(n) }

func readOutbox(t *testing.T, pool *pgxpool.Pool) []outboxRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT id, topic, key, event_id, value FROM outbox ORDER BY id`)
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
		if err := json.Unmarshal(r.Value, &r.Fields); err != nil {
			t.Fatalf("outbox row %d (%s) is not JSON: %v: %s", r.ID, r.Topic, err, r.Value)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func releasesOf(rows []outboxRow) []outboxRow {
	var out []outboxRow
	for _, r := range rows {
		if r.Topic == broker.TopicSaleEvents {
			out = append(out, r)
		}
	}
	return out
}

func mustGet(t *testing.T, pool *pgxpool.Pool, id int64) ledger.Record {
	t.Helper()
	r, err := ledger.GetOrder(context.Background(), pool, id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func events(t *testing.T, pool *pgxpool.Pool, id int64) []ledger.Event {
	t.Helper()
	es, err := ledger.OrderEvents(context.Background(), pool, id)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func saleItem(t *testing.T, pool *pgxpool.Pool, sku string) ledger.SaleItemState {
	t.Helper()
	items, err := ledger.LoadSaleItems(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if it.SKU == sku {
			return it
		}
	}
	t.Fatalf("no sale item %s", sku)
	return ledger.SaleItemState{}
}

func pay(id int64, eventID string, cents int64) ledger.PaymentEvent {
	return ledger.PaymentEvent{Provider: "test", EventID: eventID, OrderID: id, Kind: ledger.PaymentSucceeded, AmountCents: cents, PaymentID: "pay-" + eventID}
}

func refund(id int64, eventID string, cents int64) ledger.PaymentEvent {
	return ledger.PaymentEvent{Provider: "test", EventID: eventID, OrderID: id, Kind: ledger.PaymentRefunded, AmountCents: cents}
}

// The whole life of an order: paid, fulfilled, refunded in two parts; each
// step one event in the history, one version and its records in the outbox.
func TestLifecycleHappyPath(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "S", 10, 0)
	o := insert(t, pool, orderid.MustNew(0, 0), 1, func(int) (string, string, int32) { return "u1", "S", 2 })[0]

	r, applied, err := ledger.ApplyPayment(ctx, pool, pay(o.ID, "e1", 200))
	if err != nil || !applied || r.Status != ledger.StatusPaid || r.PaidCents != 200 || r.PaymentID != "pay-e1" || r.Version != 1 || r.RefundDue {
		t.Fatalf("payment: %+v, %v, %v", r, applied, err)
	}
	if r, err = ledger.Fulfill(ctx, pool, o.ID); err != nil || r.Status != ledger.StatusFulfilled || r.Version != 2 {
		t.Fatalf("fulfil: %+v, %v", r, err)
	}
	if r, _, err = ledger.ApplyPayment(ctx, pool, refund(o.ID, "e2", 50)); err != nil || r.Status != ledger.StatusRefunded || r.RefundedCents != 50 {
		t.Fatalf("partial refund: %+v, %v", r, err)
	}
	if r, _, err = ledger.ApplyPayment(ctx, pool, refund(o.ID, "e3", 150)); err != nil || r.Status != ledger.StatusRefunded || r.RefundedCents != 200 || r.Version != 4 {
		t.Fatalf("rest refunded: %+v, %v", r, err)
	}
	if got := mustGet(t, pool, o.ID); got.Status != r.Status || got.Version != r.Version || got.RefundedCents != 200 || got.PaidCents != 200 {
		t.Fatalf("GetOrder = %+v, want %+v", got, r)
	}

	want := []struct{ from, to, reason string }{
		{"pending_payment", "paid", "paid"}, {"paid", "fulfilled", "fulfilled"},
		{"fulfilled", "refunded", "refunded"}, {"refunded", "refunded", "refunded"},
	}
	es := events(t, pool, o.ID)
	if len(es) != len(want) {
		t.Fatalf("history %+v, want %d events", es, len(want))
	}
	for i, w := range want {
		if e := es[i]; e.From != w.from || e.To != w.to || e.Reason != w.reason || e.Version != int32(i+1) || (i > 0 && e.EventID <= es[i-1].EventID) {
			t.Errorf("event %d = %+v, want %s -> %s (%s), version %d", i, e, w.from, w.to, w.reason, i+1)
		}
	}
	var topics []string
	for _, row := range readOutbox(t, pool) {
		topics = append(topics, row.Topic)
		if row.Key != "u1" || row.str("order_id") != strconv.FormatInt(o.ID, 10) || row.str("event_id") != strconv.FormatInt(row.EventID, 10) {
			t.Errorf("outbox row %+v", row)
		}
	}
	if got := strings.Join(topics, " "); got != "order.updated order.updated order.completed order.updated order.updated" {
		t.Fatalf("outbox topics: %s", got)
	}
	if it := saleItem(t, pool, "S"); it.TakenUnits != 2 || it.ReleaseSeq != 0 {
		t.Fatalf("a refunded order keeps its units: %+v", it)
	}
}

func wantIllegal(t *testing.T, err error, from, to string, msg ...string) {
	t.Helper()
	var ite *ledger.IllegalTransitionError
	if !errors.As(err, &ite) || ite.From != from || ite.To != to {
		t.Fatalf("err = %v, want an illegal %s -> %s", err, from, to)
	}
	for _, m := range msg {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("%q does not say %q", err, m)
		}
	}
}

// Every transition the state machine forbids is refused with a clear error
// and changes nothing.
func TestIllegalTransitions(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "S", 10, 0)
	gen := orderid.MustNew(0, 1)
	os := insert(t, pool, gen, 3, one("u1", "S"))
	a, b, c := os[0].ID, os[1].ID, os[2].ID

	_, err := ledger.Fulfill(ctx, pool, a)
	wantIllegal(t, err, "pending_payment", "fulfilled", "is pending_payment", "paid, cancelled, expired")
	_, _, err = ledger.ApplyPayment(ctx, pool, refund(a, "r0", 100))
	wantIllegal(t, err, "pending_payment", "refunded")
	if _, err := ledger.Cancel(ctx, pool, a, "u2"); err != ledger.ErrNotFound {
		t.Fatalf("cancel by another user: %v, want ErrNotFound", err)
	}
	if _, err := ledger.Cancel(ctx, pool, a, ""); err != ledger.ErrNotFound {
		t.Fatalf("cancel by no user: %v, want ErrNotFound", err)
	}
	if _, err := ledger.Cancel(ctx, pool, gen.Next(), "u1"); err != ledger.ErrNotFound {
		t.Fatalf("cancel of an unknown order: %v, want ErrNotFound", err)
	}
	if _, _, err := ledger.ApplyPayment(ctx, pool, pay(gen.Next(), "x", 100)); err != ledger.ErrNotFound {
		t.Fatalf("payment of an unknown order: %v, want ErrNotFound", err)
	}
	if _, err := ledger.Fulfill(ctx, pool, -5); err != ledger.ErrNotFound {
		t.Fatalf("fulfil of a bad id: %v, want ErrNotFound", err)
	}
	if r := mustGet(t, pool, a); r.Status != "pending_payment" || r.Version != 0 || len(events(t, pool, a)) != 0 {
		t.Fatalf("refused changes changed order a: %+v", r)
	}

	if _, err := ledger.Cancel(ctx, pool, a, "u1"); err != nil {
		t.Fatal(err)
	}
	_, err = ledger.Cancel(ctx, pool, a, "u1")
	wantIllegal(t, err, "cancelled", "cancelled", "is cancelled", "nothing else (final)")
	_, err = ledger.Fulfill(ctx, pool, a)
	wantIllegal(t, err, "cancelled", "fulfilled")

	if _, _, err := ledger.ApplyPayment(ctx, pool, pay(b, "p1", 100)); err != nil {
		t.Fatal(err)
	}
	_, err = ledger.Cancel(ctx, pool, b, "u1")
	wantIllegal(t, err, "paid", "cancelled", "fulfilled, refunded")
	if _, _, err := ledger.ApplyPayment(ctx, pool, refund(b, "r1", 101)); !errors.Is(err, ledger.ErrInvalidPayment) {
		t.Fatalf("refund above the payment: %v, want ErrInvalidPayment", err)
	}
	for _, ev := range []ledger.PaymentEvent{
		{Provider: "test", EventID: "z", OrderID: c, Kind: "succeeded", AmountCents: 0},
		{Provider: "test", EventID: "z", OrderID: c, Kind: "chargeback", AmountCents: 10},
		{Provider: "", EventID: "z", OrderID: c, Kind: "succeeded", AmountCents: 10},
		{Provider: "test", EventID: "", OrderID: c, Kind: "succeeded", AmountCents: 10},
	} {
		if _, _, err := ledger.ApplyPayment(ctx, pool, ev); !errors.Is(err, ledger.ErrInvalidPayment) {
			t.Errorf("ApplyPayment(%+v) = %v, want ErrInvalidPayment", ev, err)
		}
	}
	// Refused payment events are not recorded: the provider's retry applies.
	var pe int
	pool.QueryRow(ctx, "SELECT count(*) FROM payment_events").Scan(&pe)
	if pe != 1 {
		t.Fatalf("payment_events holds %d events, want the 1 applied", pe)
	}
	if r := mustGet(t, pool, b); r.Status != "paid" || r.Version != 1 || r.RefundedCents != 0 {
		t.Fatalf("order b after refused changes: %+v", r)
	}
	if r := mustGet(t, pool, c); r.Version != 0 {
		t.Fatalf("order c after refused payments: %+v", r)
	}
}

// A replayed webhook event applies once, replayed one after another or all
// at once.
func TestPaymentReplayAppliesOnce(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "S", 10, 0)
	os := insert(t, pool, orderid.MustNew(0, 2), 2, one("u1", "S"))

	for i := 0; i < 3; i++ {
		r, applied, err := ledger.ApplyPayment(ctx, pool, pay(os[0].ID, "evt-1", 100))
		if err != nil || applied != (i == 0) || r.Status != "paid" || r.PaidCents != 100 || r.Version != 1 {
			t.Fatalf("delivery %d: %+v, applied %v, %v", i, r, applied, err)
		}
	}
	var wg sync.WaitGroup
	var applied atomic.Int32
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, ok, err := ledger.ApplyPayment(ctx, pool, pay(os[1].ID, "evt-2", 100))
			if err != nil {
				t.Error(err)
			}
			if ok {
				applied.Add(1)
			}
		}()
	}
	wg.Wait()
	if applied.Load() != 1 {
		t.Fatalf("16 concurrent deliveries of one event applied %d times", applied.Load())
	}
	for _, o := range os {
		if r := mustGet(t, pool, o.ID); r.PaidCents != 100 || r.RefundDue || len(events(t, pool, o.ID)) != 1 {
			t.Fatalf("order %d: %+v, %d events", o.ID, r, len(events(t, pool, o.ID)))
		}
	}
	// The same event id from another provider is another event; another
	// event of the payment that paid the order changes nothing.
	if _, applied, err := ledger.ApplyPayment(ctx, pool, ledger.PaymentEvent{Provider: "other", EventID: "evt-1", OrderID: os[0].ID,
		Kind: ledger.PaymentSucceeded, AmountCents: 100, PaymentID: "pay-evt-1"}); err != nil || applied {
		t.Fatalf("a second event of the same payment: applied %v, %v", applied, err)
	}
	if r := mustGet(t, pool, os[0].ID); r.PaidCents != 100 || r.RefundDue {
		t.Fatalf("after a second event of the same payment: %+v", r)
	}
}

// A payment after expiry is not lost: the order is flagged for refund, its
// units are not taken back from the sale, and the refund clears the flag.
func TestPaymentAfterExpiry(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "S", 10, 0)
	o := insert(t, pool, orderid.MustNew(0, 3), 1, func(int) (string, string, int32) { return "u1", "S", 3 })[0]
	if it := saleItem(t, pool, "S"); it.TakenUnits != 3 {
		t.Fatalf("before expiry: %+v", it)
	}
	if n, err := ledger.ExpireDue(ctx, pool, time.Hour, 10); err != nil || n != 0 {
		t.Fatalf("a fresh order expired: %d, %v", n, err)
	}
	if n, err := ledger.ExpireBefore(ctx, pool, time.Now().Add(time.Minute), 10); err != nil || n != 1 {
		t.Fatalf("ExpireBefore = %d, %v; want 1", n, err)
	}
	r, applied, err := ledger.ApplyPayment(ctx, pool, pay(o.ID, "late", 300))
	if err != nil || !applied || r.Status != "expired" || !r.RefundDue || r.PaidCents != 300 || r.PaymentID != "" {
		t.Fatalf("late payment: %+v, %v, %v", r, applied, err)
	}
	it := saleItem(t, pool, "S")
	if it.TakenUnits != 0 || it.ReleaseSeq != 1 {
		t.Fatalf("after the late payment: %+v; want nothing taken, one release", it)
	}
	rels := releasesOf(readOutbox(t, pool))
	if len(rels) != 1 || rels[0].str("reason") != "expired" || rels[0].num("qty") != 3 || rels[0].num("release_seq") != 1 {
		t.Fatalf("releases %+v", rels)
	}
	es := events(t, pool, o.ID)
	if len(es) != 2 || es[1].Reason != ledger.ReasonLatePayment || es[1].From != "expired" || es[1].To != "expired" || es[1].AmountCents != 300 {
		t.Fatalf("history %+v", es)
	}
	if r, _, err = ledger.ApplyPayment(ctx, pool, refund(o.ID, "late-refund", 300)); err != nil || r.Status != "expired" || r.RefundDue || r.RefundedCents != 300 {
		t.Fatalf("refund of the late payment: %+v, %v", r, err)
	}
	// Nothing is due any more: another refund has nothing to refund.
	_, _, err = ledger.ApplyPayment(ctx, pool, refund(o.ID, "again", 1))
	wantIllegal(t, err, "expired", "refunded")
}

// Money that buys nothing is flagged: an underpayment (the order stays
// pending) and a second payment of a paid order.
func TestPaymentsThatBuyNothing(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "S", 10, 0)
	os := insert(t, pool, orderid.MustNew(0, 4), 2, func(int) (string, string, int32) { return "u1", "S", 2 })
	r, _, err := ledger.ApplyPayment(ctx, pool, pay(os[0].ID, "under", 150))
	if err != nil || r.Status != "pending_payment" || !r.RefundDue || r.PaidCents != 150 {
		t.Fatalf("underpayment: %+v, %v", r, err)
	}
	if r, _, err = ledger.ApplyPayment(ctx, pool, pay(os[0].ID, "full", 200)); err != nil || r.Status != "paid" || !r.RefundDue || r.PaidCents != 350 {
		t.Fatalf("then a full payment: %+v, %v", r, err)
	}
	if r, _, err = ledger.ApplyPayment(ctx, pool, pay(os[1].ID, "one", 200)); err != nil || r.Status != "paid" || r.RefundDue {
		t.Fatalf("payment: %+v, %v", r, err)
	}
	if r, _, err = ledger.ApplyPayment(ctx, pool, pay(os[1].ID, "two", 200)); err != nil || r.Status != "paid" || !r.RefundDue || r.PaidCents != 400 || r.PaymentID != "pay-one" {
		t.Fatalf("second payment: %+v, %v", r, err)
	}
}

// Only orders of the sale's generation give units back to it.
func TestReleaseOnlyIntoItsGeneration(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	gen := orderid.MustNew(0, 5)
	old := insert(t, pool, gen, 1, one("u1", "S"))[0]
	orphan := insert(t, pool, gen, 1, one("u1", "NOT-ON-SALE"))[0]
	time.Sleep(2 * time.Millisecond)
	if _, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "S", Stock: 5, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	current := insert(t, pool, gen, 1, one("u1", "S"))[0]
	for _, o := range []order.Order{old, orphan, current} {
		if _, err := ledger.Cancel(ctx, pool, o.ID, "u1"); err != nil {
			t.Fatal(err)
		}
	}
	rels := releasesOf(readOutbox(t, pool))
	if len(rels) != 1 || rels[0].str("order_id") != strconv.FormatInt(current.ID, 10) || rels[0].num("release_seq") != 1 {
		t.Fatalf("releases %+v, want only the current generation's order", rels)
	}
	if it := saleItem(t, pool, "S"); it.ReleaseSeq != 1 || it.TakenUnits != 0 || it.Orders != 1 {
		t.Fatalf("sale item %+v", it)
	}
}

// The ingest backstop's cancellation of a duplicate is a transition like
// any other: history, records, and its units released once.
func TestDuplicateOrderReleasesItsUnits(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "S", 10, 0)
	gen := orderid.MustNew(0, 6)
	mk := func() order.Order {
		id := gen.Next()
		return order.Order{ID: id, UserID: "u1", SKU: "S", Qty: 2, PriceCents: 100, IdemKey: "k", CreatedAt: orderid.Time(id)}
	}
	first, dup := mk(), mk()
	for i, batch := range [][]order.Order{{first}, {dup}, {first, dup}, {dup}} {
		if _, err := ledger.InsertOrders(ctx, pool, batch); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	if r := mustGet(t, pool, dup.ID); r.Status != "cancelled" || r.Version != 1 {
		t.Fatalf("duplicate: %+v", r)
	}
	es := events(t, pool, dup.ID)
	if len(es) != 1 || es[0].Reason != ledger.ReasonDuplicate || es[0].Actor != ledger.ActorIngest {
		t.Fatalf("history of the duplicate: %+v", es)
	}
	rows := readOutbox(t, pool)
	rels := releasesOf(rows)
	if len(rels) != 1 || rels[0].str("reason") != "duplicate" || rels[0].num("qty") != 2 || rels[0].Key != "S" || rels[0].str("user_id") != "u1" {
		t.Fatalf("releases %+v", rels)
	}
	var topics []string
	for _, r := range rows {
		topics = append(topics, r.Topic)
	}
	if got := strings.Join(topics, " "); got != "order.updated order.cancelled flash-sale.events" {
		t.Fatalf("outbox topics %s", got)
	}
	if it := saleItem(t, pool, "S"); it.TakenUnits != 2 || it.ReleaseSeq != 1 {
		t.Fatalf("sale item %+v", it)
	}
}

// Pay, cancel and expire race on the same orders from many goroutines:
// exactly one leaves pending_payment, with exactly one event, and the units
// are released at most once (exactly once when cancel or expiry won).
func TestConcurrentPayCancelExpire(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "A", 1000, 0)
	putSale(t, pool, "B", 1000, 0)
	const orders = 40
	os := insert(t, pool, orderid.MustNew(0, 7), orders, func(i int) (string, string, int32) {
		return fmt.Sprint("u", i%7), []string{"A", "B"}[i%2], int32(1 + i%3)
	})
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewSource(seed))
	t.Logf("seed %d", seed)

	start := make(chan struct{})
	var wg sync.WaitGroup
	var cancelled, applied sync.Map // order id -> count of wins
	var unexpected atomic.Int32
	add := func(m *sync.Map, id int64) {
		v, _ := m.LoadOrStore(id, new(atomic.Int32))
		v.(*atomic.Int32).Add(1)
	}
	var expired atomic.Int64
	var jobs []func()
	for _, o := range os {
		o := o
		for k := 0; k < 2; k++ {
			jobs = append(jobs, func() {
				_, err := ledger.Cancel(ctx, pool, o.ID, o.UserID)
				var ite *ledger.IllegalTransitionError
				switch {
				case err == nil:
					add(&cancelled, o.ID)
				case !errors.As(err, &ite):
					unexpected.Add(1)
					t.Errorf("cancel %d: %v", o.ID, err)
				}
			})
			ev := fmt.Sprintf("%d-%d", o.ID, k)
			jobs = append(jobs, func() {
				_, ok, err := ledger.ApplyPayment(ctx, pool, pay(o.ID, ev, int64(o.Qty)*100))
				if err != nil {
					unexpected.Add(1)
					t.Errorf("pay %d: %v", o.ID, err)
				}
				if ok {
					add(&applied, o.ID)
				}
			})
		}
	}
	for k := 0; k < 6; k++ {
		batch := 1 + rng.Intn(7)
		jobs = append(jobs, func() {
			n, err := ledger.ExpireBefore(ctx, pool, time.Now().Add(time.Hour), batch)
			if err != nil {
				unexpected.Add(1)
				t.Errorf("expire: %v", err)
			}
			expired.Add(int64(n))
		})
	}
	rng.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	for _, j := range jobs {
		wg.Add(1)
		go func() { defer wg.Done(); <-start; j() }()
	}
	close(start)
	wg.Wait()
	if unexpected.Load() > 0 {
		t.FailNow()
	}

	rows := readOutbox(t, pool)
	rels := map[string]int{}
	for _, r := range releasesOf(rows) {
		rels[r.str("order_id")]++
	}
	cancelRecords := map[string]int{}
	for _, r := range rows {
		if r.Topic == broker.TopicOrderCancelled {
			cancelRecords[r.str("order_id")]++
		}
	}
	wins := map[string]int{}
	var expiredOrders int64
	paidUnits := map[string]int64{}
	for _, o := range os {
		r := mustGet(t, pool, o.ID)
		es := events(t, pool, o.ID)
		var leaving []ledger.Event
		for _, e := range es {
			if e.From == "pending_payment" {
				leaving = append(leaving, e)
			}
		}
		id := strconv.FormatInt(o.ID, 10)
		if len(leaving) != 1 || leaving[0].To != r.Status {
			t.Fatalf("order %d is %s with %d events leaving pending_payment: %+v", o.ID, r.Status, len(leaving), es)
		}
		wins[r.Status]++
		nCancel, nPay := 0, 0
		if v, ok := cancelled.Load(o.ID); ok {
			nCancel = int(v.(*atomic.Int32).Load())
		}
		if v, ok := applied.Load(o.ID); ok {
			nPay = int(v.(*atomic.Int32).Load())
		}
		if nPay != 2 || r.PaidCents != 2*int64(o.Qty)*100 || !r.RefundDue {
			t.Errorf("order %d (%s): %d payments applied, paid %d, refund due %v; want both payments counted and one flagged", o.ID, r.Status, nPay, r.PaidCents, r.RefundDue)
		}
		switch r.Status {
		case "cancelled", "expired":
			if rels[id] != 1 || cancelRecords[id] != 1 {
				t.Errorf("order %d is %s: %d releases, %d order.cancelled records; want 1 each", o.ID, r.Status, rels[id], cancelRecords[id])
			}
			if r.Status == "cancelled" && nCancel != 1 || r.Status == "expired" && nCancel != 0 {
				t.Errorf("order %d is %s after %d successful cancels", o.ID, r.Status, nCancel)
			}
			if r.Status == "expired" {
				expiredOrders++
			}
		case "paid":
			paidUnits[o.SKU] += int64(o.Qty)
			if rels[id] != 0 || cancelRecords[id] != 0 || nCancel != 0 {
				t.Errorf("paid order %d: %d releases, %d cancel records, %d cancels", o.ID, rels[id], cancelRecords[id], nCancel)
			}
		default:
			t.Errorf("order %d ended %s", o.ID, r.Status)
		}
	}
	if expired.Load() != expiredOrders {
		t.Errorf("expirers reported %d expiries, the ledger holds %d", expired.Load(), expiredOrders)
	}
	checkReleaseSeqs(t, pool, rows)
	for _, sku := range []string{"A", "B"} {
		if it := saleItem(t, pool, sku); it.TakenUnits != paidUnits[sku] {
			t.Errorf("%s: %d units taken, want the paid orders' %d", sku, it.TakenUnits, paidUnits[sku])
		}
	}
	t.Logf("outcomes: %v", wins)
}

// checkReleaseSeqs: every SKU's releases are numbered 1..release_seq without
// gaps or repeats, in outbox id order.
func checkReleaseSeqs(t *testing.T, pool *pgxpool.Pool, rows []outboxRow) {
	t.Helper()
	last := map[string]int64{}
	for _, r := range releasesOf(rows) {
		sku := r.str("sku")
		if seq := r.num("release_seq"); seq != last[sku]+1 || r.Key != sku {
			t.Fatalf("release %s after release_seq %d of %s (key %q)", r.Value, last[sku], sku, r.Key)
		}
		last[sku]++
	}
	items, err := ledger.LoadSaleItems(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if it.ReleaseSeq != last[it.SKU] {
			t.Fatalf("%s: release_seq %d, %d releases in the outbox", it.SKU, it.ReleaseSeq, last[it.SKU])
		}
	}
}

// Several expirers at once expire each order once, in batches, across SKUs
// (locked in name order: no deadlock).
func TestConcurrentExpirers(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	skus := []string{"A", "B", "C"}
	for _, s := range skus {
		putSale(t, pool, s, 1000, 0)
	}
	const n = 300
	insert(t, pool, orderid.MustNew(0, 8), n, func(i int) (string, string, int32) {
		return fmt.Sprint("u", i), skus[(i*7)%3], 1
	})
	var wg sync.WaitGroup
	var total atomic.Int64
	for k := 0; k < 4; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := ledger.ExpireBefore(ctx, pool, time.Now().Add(time.Hour), 3+k*4)
			if err != nil {
				t.Error(err)
			}
			total.Add(int64(got))
		}()
	}
	wg.Wait()
	if total.Load() != n {
		t.Fatalf("4 expirers expired %d orders, want %d", total.Load(), n)
	}
	var evs, distinct int
	pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT order_id) FROM order_events WHERE to_status = 'expired'`).Scan(&evs, &distinct)
	if evs != n || distinct != n {
		t.Fatalf("%d expiry events for %d orders, want %d", evs, distinct, n)
	}
	rows := readOutbox(t, pool)
	if len(releasesOf(rows)) != n {
		t.Fatalf("%d releases, want %d", len(releasesOf(rows)), n)
	}
	checkReleaseSeqs(t, pool, rows)
	if again, err := ledger.ExpireBefore(ctx, pool, time.Now().Add(time.Hour), 10); err != nil || again != 0 {
		t.Fatalf("a second pass expired %d (%v)", again, err)
	}
}

// An edge that loads the sale (units taken, purchases, release_seq) while
// orders are cancelled and expired, then applies the releases numbered
// above the loaded release_seq, ends with exactly the ledger's final counts:
// every release counted once, in the stock and in the purchases.
func TestSaleSnapshotAndReleaseSeq(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "S", 100_000, 1000)
	putSale(t, pool, "T", 100_000, 0)
	const n = 400
	os := insert(t, pool, orderid.MustNew(0, 9), n, func(i int) (string, string, int32) {
		return fmt.Sprint("u", i%13), []string{"S", "T"}[i%2], int32(1 + i%4)
	})

	type snap struct {
		items     map[string]ledger.SaleItemState
		purchases map[[2]string]int64 // nil: not loaded
	}
	load := func(withPurchases bool) snap {
		s := snap{items: map[string]ledger.SaleItemState{}}
		if withPurchases {
			s.purchases = map[[2]string]int64{}
		}
		var items []ledger.SaleItemState
		var err error
		if withPurchases {
			items, err = ledger.LoadSaleSnapshot(ctx, pool, func(user, sku string, units int64) error {
				s.purchases[[2]string{user, sku}] = units
				return nil
			})
		} else {
			items, err = ledger.LoadSaleItems(ctx, pool)
		}
		if err != nil {
			t.Error(err)
		}
		for _, it := range items {
			s.items[it.SKU] = it
		}
		return s
	}
	var snaps []snap
	var mu sync.Mutex
	done := make(chan struct{})
	var wg sync.WaitGroup
	for k := 0; k < 2; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				s := load(i%2 == 0)
				mu.Lock()
				snaps = append(snaps, s)
				mu.Unlock()
				select {
				case <-done:
					return
				default:
				}
			}
		}()
	}
	var cw sync.WaitGroup
	for w := 0; w < 4; w++ {
		cw.Add(1)
		go func() {
			defer cw.Done()
			for i := w; i < n; i += 4 {
				if i%3 == 0 {
					continue // stays pending
				}
				if _, err := ledger.Cancel(ctx, pool, os[i].ID, os[i].UserID); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	cw.Wait()
	if _, err := ledger.ExpireBefore(ctx, pool, time.Now().Add(time.Hour), 17); err != nil {
		t.Fatal(err)
	}
	close(done)
	wg.Wait()
	final := load(true)
	if final.items["S"].TakenUnits != 0 || final.items["T"].TakenUnits != 0 || len(final.purchases) != 0 {
		t.Fatalf("everything was released, yet: %+v", final)
	}
	rels := releasesOf(readOutbox(t, pool))
	if len(rels) != n {
		t.Fatalf("%d releases, want %d", len(rels), n)
	}
	checked := 0
	for _, s := range snaps {
		if len(s.items) != 2 {
			continue
		}
		taken := map[string]int64{"S": s.items["S"].TakenUnits, "T": s.items["T"].TakenUnits}
		purchases := s.purchases
		for _, r := range rels {
			sku := r.str("sku")
			if r.num("release_seq") <= s.items[sku].ReleaseSeq {
				continue
			}
			taken[sku] -= r.num("qty")
			if sku == "S" && purchases != nil { // only S has a per-user limit
				purchases[[2]string{r.str("user_id"), sku}] -= r.num("qty")
			}
		}
		for sku, v := range taken {
			if v != 0 {
				t.Fatalf("snapshot %+v: applying the releases above its release_seq leaves %d units of %s taken, want 0", s.items[sku], v, sku)
			}
		}
		for k, v := range purchases {
			if v != 0 {
				t.Fatalf("snapshot: %v holds %d units after the releases, want 0", k, v)
			}
		}
		checked++
	}
	if checked < 5 {
		t.Fatalf("only %d snapshots taken", checked)
	}
	t.Logf("%d snapshots checked", checked)
}

// A database whose orders partitions predate order_events gets them from
// the migration; a day made without one (by an older version) gets it when
// an order of that day changes.
func TestLifecycleMigrationOnExistingDays(t *testing.T) {
	url := testenv.DatabaseURL(t)
	ctx := context.Background()
	pool, err := ledger.Open(ctx, url, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ms, _ := ledger.Migrations()
	if _, err := pool.Exec(ctx, `CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Version >= 4 {
			break
		}
		if _, err := pool.Exec(ctx, m.SQL); err != nil {
			t.Fatal(err)
		}
		pool.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name)
	}
	now := time.Now().UTC()
	for _, d := range []time.Time{now, now.AddDate(0, 0, -1)} {
		if _, err := pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s PARTITION OF orders FOR VALUES FROM ('%s') TO ('%s')`,
			ledger.PartitionName(d), d.Format("2006-01-02"), d.AddDate(0, 0, 1).Format("2006-01-02"))); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := ledger.Migrate(ctx, pool); err != nil || n != len(ms)-3 {
		t.Fatalf("Migrate = %d, %v", n, err)
	}
	var parts []string
	rows, _ := pool.Query(ctx, `SELECT c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'order_events'::regclass ORDER BY 1`)
	for rows.Next() {
		var s string
		rows.Scan(&s)
		parts = append(parts, s)
	}
	rows.Close()
	if len(parts) != 2 || !strings.HasPrefix(parts[1], ledger.EventsPartitionName(now)+" FOR VALUES FROM ('"+now.Format("2006-01-02")) {
		t.Fatalf("order_events partitions after the migration: %q", parts)
	}
	// A day made by an older version: orders only.
	tomorrow := now.AddDate(0, 0, 1)
	if _, err := pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s PARTITION OF orders FOR VALUES FROM ('%s') TO ('%s')`,
		ledger.PartitionName(tomorrow), tomorrow.Format("2006-01-02"), tomorrow.AddDate(0, 0, 1).Format("2006-01-02"))); err != nil {
		t.Fatal(err)
	}
	id := orderid.MustNew(0, 10).Next()
	created := time.Date(tomorrow.Year(), tomorrow.Month(), tomorrow.Day(), 12, 0, 0, 0, time.UTC)
	// An id of tomorrow: shift the time bits (41 bits of ms since 2025-01-01 above 22 bits).
	id = (created.UnixMilli()-orderid.Epoch.UnixMilli())<<22 | id&(1<<22-1)
	if !orderid.Time(id).Equal(created) {
		t.Fatalf("BUG in the test: id %d is of %v", id, orderid.Time(id))
	}
	if _, err := pool.Exec(ctx, `INSERT INTO orders (order_id, user_id, sku, qty, price_cents, created_at) VALUES ($1, 'u', 'S', 1, 1, $2)`, id, created); err != nil {
		t.Fatal(err)
	}
	if r, err := ledger.Cancel(ctx, pool, id, "u"); err != nil || r.Status != "cancelled" || len(events(t, pool, id)) != 1 {
		t.Fatalf("cancel on a day without an order_events partition: %+v, %v", r, err)
	}
}
