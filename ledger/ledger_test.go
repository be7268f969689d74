package ledger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestMigrateOnce(t *testing.T) {
	pool, _ := testenv.Ledger(t) // applies them
	n, err := ledger.Migrate(context.Background(), pool)
	if err != nil || n != 0 {
		t.Fatalf("second Migrate = %d, %v; want 0 applied", n, err)
	}
	ms, _ := ledger.Migrations()
	var count int
	pool.QueryRow(context.Background(), "SELECT count(*) FROM schema_migrations").Scan(&count)
	if count != len(ms) {
		t.Fatalf("schema_migrations has %d rows, want %d", count, len(ms))
	}
}

func TestConcurrentMigrate(t *testing.T) {
	url := testenv.DatabaseURL(t)
	ctx := context.Background()
	errs := make(chan error, 4)
	total := make(chan int, 4)
	for i := 0; i < 4; i++ {
		go func() {
			pool, err := ledger.Open(ctx, url, 2)
			if err != nil {
				errs <- err
				return
			}
			defer pool.Close()
			n, err := ledger.Migrate(ctx, pool)
			total <- n
			errs <- err
		}()
	}
	sum := 0
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 4; i++ {
		sum += <-total
	}
	ms, _ := ledger.Migrations()
	if sum != len(ms) {
		t.Fatalf("4 concurrent migrators applied %d migrations in all, want %d", sum, len(ms))
	}
}

func mkOrders(n int, gen *orderid.Generator) []order.Order {
	os := make([]order.Order, n)
	for i := range os {
		id := gen.Next()
		os[i] = order.Order{ID: id, UserID: "u1", SKU: "SKU-1", Qty: 1, PriceCents: 100, CreatedAt: orderid.Time(id)}
	}
	return os
}

func TestInsertOrdersExactlyOnce(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	gen := orderid.MustNew(0, 0)
	batch := mkOrders(100, gen)

	// No partition yet: InsertOrders makes it.
	res, err := ledger.InsertOrders(ctx, pool, batch[:50])
	if err != nil || res.Inserted != 50 || res.Staged {
		t.Fatalf("first insert = %+v, %v", res, err)
	}
	// A redelivery overlapping the first batch goes through staging and adds only the new rows.
	res, err = ledger.InsertOrders(ctx, pool, batch)
	if err != nil || res.Inserted != 50 || !res.Staged {
		t.Fatalf("overlapping insert = %+v, %v; want 50 new via staging", res, err)
	}
	res, err = ledger.InsertOrders(ctx, pool, batch)
	if err != nil || res.Inserted != 0 {
		t.Fatalf("full redelivery = %+v, %v; want 0 new", res, err)
	}
	var rows, distinct int
	pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT order_id) FROM orders").Scan(&rows, &distinct)
	if rows != 100 || distinct != 100 {
		t.Fatalf("orders has %d rows (%d distinct), want 100", rows, distinct)
	}
	got, err := ledger.GetOrder(ctx, pool, batch[7].ID)
	if err != nil || got.ID != batch[7].ID || got.Status != "pending_payment" || !got.CreatedAt.Equal(batch[7].CreatedAt) {
		t.Fatalf("GetOrder = %+v, %v", got, err)
	}
	if _, err := ledger.GetOrder(ctx, pool, gen.Next()); err != ledger.ErrNotFound {
		t.Fatalf("GetOrder(unknown) = %v, want ErrNotFound", err)
	}
}

func TestPartitionsAndNoDefault(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	now := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
	n, err := ledger.EnsurePartitionsAround(ctx, pool, now, 3)
	if err != nil || n != 10 {
		t.Fatalf("EnsurePartitionsAround = %d, %v; want 5 of orders and 5 of order_events", n, err)
	}
	if n, _ = ledger.EnsurePartitionsAround(ctx, pool, now, 3); n != 0 {
		t.Fatalf("second EnsurePartitionsAround made %d", n)
	}
	var parts int
	var hasDefault bool
	pool.QueryRow(ctx, `SELECT count(*), bool_or(pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT')
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'orders'::regclass`).Scan(&parts, &hasDefault)
	if parts != 5 || hasDefault {
		t.Fatalf("orders has %d partitions (default: %v), want 5 and none", parts, hasDefault)
	}
}

func TestSaleItemsAndTakenUnits(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	it, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "SKU-1", Stock: 10, PriceCents: 100, PerUserLimit: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Orders made after the sale started count against its stock.
	time.Sleep(5 * time.Millisecond)
	if _, err := ledger.InsertOrders(ctx, pool, mkOrders(3, orderid.MustNew(0, 1))); err != nil {
		t.Fatal(err)
	}
	// Replacing the item keeps its generation.
	it2, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "SKU-1", Stock: 20, PriceCents: 100})
	if err != nil || !it2.SaleStartedAt.Equal(it.SaleStartedAt) {
		t.Fatalf("replace: %+v, %v", it2, err)
	}
	items, err := ledger.LoadSaleItems(ctx, pool)
	if err != nil || len(items) != 1 || items[0].Stock != 20 || items[0].TakenUnits != 3 || items[0].Orders != 3 {
		t.Fatalf("LoadSaleItems = %+v, %v; want stock 20, taken 3", items, err)
	}
}

// One Idempotency-Key never makes two live orders: a later order under a key
// already recorded for another order is cancelled; redeliveries are not
// duplicates.
func TestIdempotencyBackstop(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	gen := orderid.MustNew(0, 3)
	mk := func(user, key string) order.Order {
		id := gen.Next()
		return order.Order{ID: id, UserID: user, SKU: "S", Qty: 1, PriceCents: 1, IdemKey: key, CreatedAt: orderid.Time(id)}
	}
	first, again, other, plain := mk("u1", "k1"), mk("u1", "k1"), mk("u2", "k1"), mk("u1", "")
	res, err := ledger.InsertOrders(ctx, pool, []order.Order{first, other, plain})
	if err != nil || res.Duplicates != 0 {
		t.Fatalf("first batch: %+v, %v", res, err)
	}
	res, err = ledger.InsertOrders(ctx, pool, []order.Order{again})
	if err != nil || res.Duplicates != 1 {
		t.Fatalf("a second order under u1/k1: %+v, %v; want 1 duplicate", res, err)
	}
	// Redelivering everything changes nothing more.
	res, err = ledger.InsertOrders(ctx, pool, []order.Order{first, other, plain, again})
	if err != nil || res.Duplicates != 0 || res.Inserted != 0 {
		t.Fatalf("redelivery: %+v, %v", res, err)
	}
	// Two orders under one key in one batch: one stays.
	a, b := mk("u3", "k9"), mk("u3", "k9")
	if res, err = ledger.InsertOrders(ctx, pool, []order.Order{a, b}); err != nil || res.Duplicates != 1 {
		t.Fatalf("same key twice in a batch: %+v, %v", res, err)
	}
	for _, c := range []struct {
		o    order.Order
		want string
	}{{first, "pending_payment"}, {other, "pending_payment"}, {plain, "pending_payment"}, {again, "cancelled"}, {a, "pending_payment"}, {b, "cancelled"}} {
		r, err := ledger.GetOrder(ctx, pool, c.o.ID)
		if err != nil || r.Status != c.want {
			t.Errorf("order %d (%s/%s): %q, %v; want %q", c.o.ID, c.o.UserID, c.o.IdemKey, r.Status, err, c.want)
		}
	}
}

// Retention detaches old daily partitions, but never one that may hold
// orders of a sale still on (edges rebuild its stock from them).
func TestDetachPartitionsBefore(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	now := time.Now().UTC()
	day := func(d int) time.Time { return now.AddDate(0, 0, d) }
	if _, err := ledger.EnsurePartitions(ctx, pool, day(-10), day(1)); err != nil {
		t.Fatal(err)
	}
	for i, d := range []int{-9, -2} {
		if _, err := pool.Exec(ctx, `INSERT INTO orders (order_id, user_id, sku, qty, price_cents, created_at) VALUES ($1, 'u', 'OLD', 1, 1, $2)`, i+1, day(d)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "LONG", Stock: 1, SaleStartedAt: day(-5)}); err != nil {
		t.Fatal(err)
	}
	count := func(table string) (n int) {
		t.Helper()
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	partitions := func() int { return count("pg_inherits WHERE inhparent = 'orders'::regclass") }
	if got := partitions(); got != 12 {
		t.Fatalf("%d partitions, want 12", got)
	}

	// Retention of 3 days, but the sale started 5 days ago: only the days
	// before the sale's start go.
	detached, err := ledger.DetachPartitionsBefore(ctx, pool, day(-3))
	if err != nil {
		t.Fatal(err)
	}
	if len(detached) != 10 || detached[0] != ledger.PartitionName(day(-10)) || detached[4] != ledger.PartitionName(day(-6)) ||
		detached[5] != ledger.EventsPartitionName(day(-10)) || detached[9] != ledger.EventsPartitionName(day(-6)) {
		t.Fatalf("detached %v, want the 5 days from -10 to -6 of orders, then of order_events", detached)
	}
	if got := count("orders"); got != 1 {
		t.Fatalf("orders holds %d rows after the detach, want the one of 2 days ago", got)
	}
	if got := count(ledger.PartitionName(day(-9))); got != 1 {
		t.Fatalf("the detached partition of 9 days ago holds %d rows, want its 1", got)
	}

	// The sale is gone: the retention applies in full, once.
	if _, err := pool.Exec(ctx, "DELETE FROM sale_items"); err != nil {
		t.Fatal(err)
	}
	if detached, err = ledger.DetachPartitionsBefore(ctx, pool, day(-3)); err != nil || len(detached) != 4 {
		t.Fatalf("second pass detached %v (%v), want the 2 days -5 and -4 of both tables", detached, err)
	}
	if detached, err = ledger.DetachPartitionsBefore(ctx, pool, day(-3)); err != nil || len(detached) != 0 {
		t.Fatalf("third pass detached %v (%v), want nothing", detached, err)
	}
	if got := partitions(); got != 5 || count("orders") != 1 {
		t.Fatalf("%d partitions and %d orders left, want 5 and 1", got, count("orders"))
	}
	if got := count("pg_inherits WHERE inhparent = 'order_events'::regclass"); got != 5 {
		t.Fatalf("order_events has %d partitions left, want 5", got)
	}
}

// With user-hash sub-partitions, a day's orders spread over its hash tables,
// a redelivered batch is deduplicated, reads find orders, and the day can
// still be detached by retention.
func TestUserHashPartitions(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	if err := ledger.SetUserHashPartitions(ctx, pool, 4); err != nil {
		t.Fatal(err)
	}
	if err := ledger.SetUserHashPartitions(ctx, pool, ledger.MaxUserHashPartitions+1); err == nil {
		t.Fatal("65 hash partitions accepted")
	}
	now := time.Now().UTC()
	if _, err := ledger.EnsurePartitions(ctx, pool, now.AddDate(0, 0, -10), now); err != nil {
		t.Fatal(err)
	}
	gen := orderid.MustNew(0, 0)
	os := mkOrders(400, gen)
	for i := range os {
		os[i].UserID = fmt.Sprint("user-", i)
	}
	for pass := 0; pass < 2; pass++ { // the second pass is a redelivery
		if res, err := ledger.InsertOrders(ctx, pool, os); err != nil || res.Staged != (pass == 1) {
			t.Fatalf("pass %d: %+v, %v", pass, res, err)
		}
	}
	day := ledger.PartitionName(now)
	for r := 0; r < 4; r++ {
		var n int
		if err := pool.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s_h%d", day, r)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n < 50 {
			t.Errorf("hash partition %d of %s holds %d of 400 orders", r, day, n)
		}
	}
	var rows, distinct int
	if err := pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT order_id) FROM orders").Scan(&rows, &distinct); err != nil || rows != 400 || distinct != 400 {
		t.Fatalf("orders: %d rows, %d distinct (%v); want 400", rows, distinct, err)
	}
	if got, err := ledger.GetOrder(ctx, pool, os[123].ID); err != nil || got.UserID != "user-123" {
		t.Fatalf("GetOrder: %+v, %v", got, err)
	}
	if detached, err := ledger.DetachPartitionsBefore(ctx, pool, now.AddDate(0, 0, -9)); err != nil || len(detached) != 2 {
		t.Fatalf("detaching the hash-partitioned day 10 days ago: %v, %v", detached, err)
	}
}

// An order dated the very millisecond its sale started counts against it:
// order ids carry milliseconds, so the sale's start is rounded down to one.
func TestSaleStartCountsOrdersOfItsMillisecond(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	it, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "MS-1", Stock: 10, PriceCents: 1, PerUserLimit: 5})
	if err != nil {
		t.Fatal(err)
	}
	if !it.SaleStartedAt.Equal(it.SaleStartedAt.Truncate(time.Millisecond)) {
		t.Fatalf("sale started at %v, not on a millisecond", it.SaleStartedAt)
	}
	if _, err := ledger.EnsurePartitionsAround(ctx, pool, it.SaleStartedAt, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO orders (order_id, user_id, sku, qty, price_cents, created_at) VALUES (1, 'u', 'MS-1', 2, 1, $1)`, it.SaleStartedAt); err != nil {
		t.Fatal(err)
	}
	items, err := ledger.LoadSaleItems(ctx, pool)
	if err != nil || len(items) != 1 || items[0].TakenUnits != 2 {
		t.Fatalf("LoadSaleItems = %+v, %v; want 2 units taken", items, err)
	}
	var units int64
	if err := ledger.LoadPurchases(ctx, pool, func(user, sku string, n int64) error { units += n; return nil }); err != nil || units != 2 {
		t.Fatalf("LoadPurchases: %d units, %v; want 2", units, err)
	}
}
