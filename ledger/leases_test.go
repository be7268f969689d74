package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/testenv"
)

// Nodes racing for a SKU's units are granted exactly its stock in total,
// never more; near the end the grants shrink to a share of the pool; units
// sold, returned and cancelled move between lease, order and pool so that
// stock = pool + taken + outstanding holds after every step.
func TestLeasesNeverGrantAUnitTwice(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	const stock = 500
	item, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "LEASE-1", Stock: stock, PriceCents: 100})
	if err != nil {
		t.Fatal(err)
	}
	var granted atomic.Int64
	var wg sync.WaitGroup
	for node := 0; node < 8; node++ {
		wg.Add(1)
		go func(node int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(node), 7))
			op := int64(0)
			for {
				op++
				g, err := ledger.LeaseStock(ctx, pool, "LEASE-1", node, 1+r.Int64N(40), time.Minute, op, 0)
				if err != nil {
					t.Error(err)
					return
				}
				granted.Add(g.Units)
				if g.Units == 0 {
					return
				}
			}
		}(node)
	}
	wg.Wait()
	if granted.Load() != stock {
		t.Fatalf("granted %d units of %d in total", granted.Load(), stock)
	}
	checkPool(t, pool, "LEASE-1", stock, 0)

	// A node holding units sells 3 (orders it made), one of them is
	// cancelled, and it gives 2 back: the pool gets the cancelled unit and
	// the 2.
	p, err := ledger.StockPool(ctx, pool, "LEASE-1")
	if err != nil {
		t.Fatal(err)
	}
	seller := -1
	for node, n := range p.Outstanding {
		if n >= 5 {
			seller = node
		}
	}
	if seller < 0 {
		t.Fatalf("no node holds 5 units: %v", p.Outstanding)
	}
	os := nodeOrders(seller, "LEASE-1", "u", 3)
	if item.SaleStartedAt.After(os[0].CreatedAt) {
		t.Fatalf("order dated %v before the sale's start %v", os[0].CreatedAt, item.SaleStartedAt)
	}
	if _, err := ledger.InsertOrders(ctx, pool, os); err != nil {
		t.Fatal(err)
	}
	checkPool(t, pool, "LEASE-1", stock, 0) // a landed order moves units from its lease to taken
	if _, err := ledger.Cancel(ctx, pool, os[0].ID, os[0].UserID); err != nil {
		t.Fatal(err)
	}
	checkPool(t, pool, "LEASE-1", stock, 1)
	if err := ledger.ReturnStock(ctx, pool, "LEASE-1", seller, 2, 1001, 0); err != nil {
		t.Fatal(err)
	}
	checkPool(t, pool, "LEASE-1", stock, 3)

	// Three live leases share a pool of 3: one unit each at most.
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-1", (seller+1)%8, 100, time.Minute, 1002, 0); err != nil || g.Units != 1 {
		t.Fatalf("grant from a pool of 3 among 8 live leases: %+v, %v; want its share, 1", g, err)
	}
}

// A lease that expires cannot be returned or renewed; once reclaimed its
// units are in the pool again, and its node may lease anew.
func TestExpiredLeaseIsReclaimed(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	if _, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "LEASE-2", Stock: 50, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-2", 5, 20, time.Second, 1, 0); err != nil || g.Units != 20 {
		t.Fatalf("first grant: %+v, %v", g, err)
	}
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-2", 6, 10, time.Hour, 1, 0); err != nil || g.Units != 10 {
		t.Fatalf("second node's grant: %+v, %v", g, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := ledger.RenewLeases(ctx, pool, 5, time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Lost) == 1 && r.Lost[0] == "LEASE-2" {
			break // the renewal came after the expiry
		}
		if time.Now().After(deadline) {
			t.Fatal("the lease never expired")
		}
		time.Sleep(1100 * time.Millisecond) // longer than the TTL: the next renewal is late
	}
	if err := ledger.ReturnStock(ctx, pool, "LEASE-2", 5, 1, 2, 0); !errors.Is(err, ledger.ErrLeaseLost) {
		t.Fatalf("return on an expired lease: %v, want ErrLeaseLost", err)
	}
	if _, err := ledger.LeaseStock(ctx, pool, "LEASE-2", 5, 1, time.Minute, 3, 0); !errors.Is(err, ledger.ErrLeaseLost) {
		t.Fatalf("grant to a node whose expired lease holds units: %v, want ErrLeaseLost until reclaimed", err)
	}
	got, err := ledger.ReclaimExpiredLeases(ctx, pool, 0)
	if err != nil || len(got) != 1 || got[0] != (ledger.Reclaimed{SKU: "LEASE-2", Node: 5, Units: 20}) {
		t.Fatalf("reclaimed %+v, %v; want node 5's 20 units (node 6's lease is live)", got, err)
	}
	checkPool(t, pool, "LEASE-2", 50, 40)
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-2", 5, 3, time.Minute, 4, 0); err != nil || g.Units != 3 {
		t.Fatalf("grant after the reclaim: %+v, %v", g, err)
	}
}

// checkPool asserts stock = pool + taken + outstanding and the pool's size.
func checkPool(t *testing.T, pool ledger.TxBeginner, sku string, stock, wantPool int64) {
	t.Helper()
	p, err := ledger.StockPool(context.Background(), pool, sku)
	if err != nil {
		t.Fatal(err)
	}
	var out int64
	for _, n := range p.Outstanding {
		out += n
	}
	if p.Pool+p.Taken+out != stock || p.Pool != wantPool {
		t.Fatalf("%s: pool %d + taken %d + outstanding %d (%v) = %d, want stock %d with pool %d",
			sku, p.Pool, p.Taken, out, p.Outstanding, p.Pool+p.Taken+out, stock, wantPool)
	}
}

// A grant or return asked again with the same operation number (its answer
// was lost) applies once; units a node sold before it leased are not counted
// against its lease; a node that ended its leases (ExpireLeases, as at start)
// gets nothing until they are reclaimed.
func TestLeaseOpsApplyOnceAndSoldBase(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	if _, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "LEASE-3", Stock: 100, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	// Node 9 sold 60 units before leases were on.
	os := nodeOrders(9, "LEASE-3", "pre", 60)
	if _, err := ledger.InsertOrders(ctx, pool, os); err != nil {
		t.Fatal(err)
	}
	checkPool(t, pool, "LEASE-3", 100, 40)
	for range 2 { // the second is a retry: the same answer, nothing more granted
		if g, err := ledger.LeaseStock(ctx, pool, "LEASE-3", 9, 20, time.Minute, 7, 0); err != nil || g.Units != 20 {
			t.Fatalf("grant: %+v, %v", g, err)
		}
	}
	checkPool(t, pool, "LEASE-3", 100, 20)
	for range 2 {
		if err := ledger.ReturnStock(ctx, pool, "LEASE-3", 9, 5, 8, 0); err != nil {
			t.Fatal(err)
		}
	}
	checkPool(t, pool, "LEASE-3", 100, 25)
	if err := ledger.ExpireLeases(ctx, pool, 9); err != nil {
		t.Fatal(err)
	}
	if _, err := ledger.LeaseStock(ctx, pool, "LEASE-3", 9, 1, time.Minute, 9, 0); !errors.Is(err, ledger.ErrLeaseLost) {
		t.Fatalf("grant after the node ended its leases: %v, want ErrLeaseLost until reclaimed", err)
	}
	if got, err := ledger.ReclaimExpiredLeases(ctx, pool, time.Hour); err != nil || len(got) != 0 {
		t.Fatalf("reclaim of leases expired for less than the grace: %+v, %v", got, err)
	}
	if got, err := ledger.ReclaimExpiredLeases(ctx, pool, 0); err != nil || len(got) != 1 || got[0].Units != 15 {
		t.Fatalf("reclaim: %+v, %v; want node 9's 15 units", got, err)
	}
	checkPool(t, pool, "LEASE-3", 100, 40)
}

// With the pool empty, a SKU is sold out once no lease holds a unit that
// may still be sold or come back: the edges' reports of their unsettled
// units decide, so orders Kafka acknowledged need not wait for ingest (there
// is none here: no order is in the ledger). A report never counts more than
// a lease's outstanding units, and a grant adds to it.
func TestSoldOutByTheEdgesReports(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	for _, sku := range []string{"LEASE-4", "LEASE-5"} {
		if _, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: sku, Stock: 30, PriceCents: 100}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(what string, g ledger.Grant, err error, units, pool, held, open int64) {
		t.Helper()
		if err != nil || g.Units != units || g.Pool != pool || g.Held != held || g.Open != open {
			t.Fatalf("%s: %+v, %v; want %d units, pool %d, held %d, open %d", what, g, err, units, pool, held, open)
		}
	}
	renew := func(node int, sku string, open int64) {
		t.Helper()
		if _, err := ledger.RenewLeases(ctx, pool, node, time.Minute, []ledger.Unsettled{{SKU: sku, Units: open}}); err != nil {
			t.Fatal(err)
		}
	}
	// LEASE-4: node 1 leases all 30 and sells them; Kafka acknowledges them all.
	g, err := ledger.LeaseStock(ctx, pool, "LEASE-4", 1, 30, time.Minute, 1, 0)
	want("node 1's grant", g, err, 30, 0, 30, 30)
	g, err = ledger.LeaseStock(ctx, pool, "LEASE-4", 2, 5, time.Minute, 1, 0)
	want("node 2 asks while node 1's units are open", g, err, 0, 0, 30, 30)
	renew(1, "LEASE-4", 0)
	g, err = ledger.LeaseStock(ctx, pool, "LEASE-4", 2, 5, time.Minute, 2, 0)
	want("node 2 asks once node 1 reported its orders acknowledged", g, err, 0, 0, 30, 0)

	// LEASE-5: node 1 leases 30 and sells 20 (acknowledged).
	g, err = ledger.LeaseStock(ctx, pool, "LEASE-5", 1, 30, time.Minute, 3, 0)
	want("node 1's grant", g, err, 30, 0, 30, 30)
	renew(1, "LEASE-5", 10)
	g, err = ledger.LeaseStock(ctx, pool, "LEASE-5", 2, 5, time.Minute, 3, 0)
	want("node 2 asks", g, err, 0, 0, 30, 10)
	// Node 1 returns 6 of its 10 (its report counts them).
	if err := ledger.ReturnStock(ctx, pool, "LEASE-5", 1, 6, 4, 10); err != nil {
		t.Fatal(err)
	}
	// Node 2 gets half the pool (two leases live) and reports 0 before it.
	g, err = ledger.LeaseStock(ctx, pool, "LEASE-5", 2, 5, time.Minute, 4, 0)
	want("node 2 asks after the return", g, err, 3, 3, 27, 4+3)
	// A report above a lease's outstanding units counts no more than them.
	renew(1, "LEASE-5", 1000)
	g, err = ledger.LeaseStock(ctx, pool, "LEASE-5", 2, 5, time.Minute, 5, 3)
	want("node 2 asks with node 1 reporting more than it holds", g, err, 2, 1, 29, 24+3+2)
}

// A grant that committed but whose answer was lost stays open in the
// ledger's eyes: the edge counts it in its reports until it hears the
// answer, and when it asks again with the same number the answer counts it
// in too. Another node never concludes sold out while those units may be
// sold (it did, before either was done).
func TestLostGrantAnswerKeepsItsUnitsOpen(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	if _, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "LEASE-6", Stock: 30, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-6", 1, 20, time.Minute, 1, 0); err != nil || g.Units != 20 {
		t.Fatalf("first grant: %+v, %v", g, err)
	}
	// Node 1 sold its 20 (acknowledged), asked for 10 more: committed, the
	// answer lost. Its renewal reports the 10 it may have got.
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-6", 1, 10, time.Minute, 2, 0); err != nil || g.Units != 10 {
		t.Fatalf("second grant: %+v, %v", g, err)
	}
	if _, err := ledger.RenewLeases(ctx, pool, 1, time.Minute, []ledger.Unsettled{{SKU: "LEASE-6", Units: 10}}); err != nil {
		t.Fatal(err)
	}
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-6", 2, 5, time.Minute, 1, 0); err != nil || g.Pool != 0 || g.Open != 10 {
		t.Fatalf("node 2 asks: %+v, %v; want the pool empty with node 1's 10 units open", g, err)
	}
	// Node 1 asks again with the same number, reporting none of them (it
	// does not know it has them): the answer counts them in.
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-6", 1, 10, time.Minute, 2, 0); err != nil || g.Units != 10 || g.Open != 10 {
		t.Fatalf("node 1's retry: %+v, %v; want the same 10 units, open", g, err)
	}
	if g, err := ledger.LeaseStock(ctx, pool, "LEASE-6", 2, 5, time.Minute, 2, 0); err != nil || g.Open != 10 {
		t.Fatalf("node 2 asks again: %+v, %v; want node 1's 10 units open", g, err)
	}
}

// A lease that expired with everything sold is reclaimed once (nothing to
// give back) and then no longer listed: edges do not wait for ingest every
// few seconds for nothing after any edge stopped.
func TestReclaimedLeaseIsListedOnce(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	if _, err := ledger.PutSaleItem(ctx, pool, ledger.SaleItem{SKU: "LEASE-7", Stock: 30, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := ledger.LeaseStock(ctx, pool, "LEASE-7", 3, 10, time.Minute, 1, 0); err != nil {
		t.Fatal(err)
	}
	os := nodeOrders(3, "LEASE-7", "u", 10)
	if _, err := ledger.InsertOrders(ctx, pool, os); err != nil {
		t.Fatal(err)
	}
	if err := ledger.ExpireLeases(ctx, pool, 3); err != nil {
		t.Fatal(err)
	}
	if skus, err := ledger.ExpiredLeaseSKUs(ctx, pool, 0); err != nil || len(skus) != 1 {
		t.Fatalf("expired leases: %v, %v; want LEASE-7", skus, err)
	}
	if got, err := ledger.ReclaimExpiredLeases(ctx, pool, 0); err != nil || len(got) != 0 {
		t.Fatalf("reclaimed %+v, %v; want nothing (all 10 units sold)", got, err)
	}
	if skus, err := ledger.ExpiredLeaseSKUs(ctx, pool, 0); err != nil || len(skus) != 0 {
		t.Fatalf("expired leases after the reclaim: %v, %v; want none", skus, err)
	}
	checkPool(t, pool, "LEASE-7", 30, 20)
}

// nodeOrders makes n one-unit orders of sku with ids of node (as its edge
// would), for users prefix0, prefix1, ...
func nodeOrders(node int, sku, prefix string, n int) []order.Order {
	gen := orderid.MustNew(node, 0)
	os := make([]order.Order, n)
	for i := range os {
		id := gen.Next()
		os[i] = order.Order{ID: id, UserID: fmt.Sprint(prefix, i), SKU: sku, Qty: 1, PriceCents: 100, CreatedAt: orderid.Time(id)}
	}
	return os
}
