package edge

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/flashgate/flashgate/ledger"
)

// Goroutines, each standing for an event loop, race on tiny stock with orders
// of 1-3 units, give some back (definite produce failures), while the admin
// plane raises the stock and replaces the item: afterwards the units sold are
// exactly the stock (no oversell, no false sold-out) and no stripe is negative.
func TestStripedStockNoOversellNoFalseSoldOut(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	const skus, loops, stock, raise = 5, 8, 97, 13
	tab := newSaleTable(16, loops)
	for i := 0; i < skus; i++ {
		if _, err := tab.put(ledger.SaleItem{SKU: fmt.Sprint("S", i), Stock: stock}, -1); err != nil {
			t.Fatal(err)
		}
	}
	var sold [skus]atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < loops; w++ {
		wg.Add(1)
		go func(shard int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(shard)))
			for s := 0; s < skus; s++ {
				it := tab.lookup(fmt.Appendf(nil, "S%d", s))
				for {
					qty := int64(1 + rng.IntN(3))
					if !it.take(shard, qty) {
						if qty == 1 {
							break // sold out as this loop sees it: every stripe was empty
						}
						continue
					}
					if rng.IntN(10) == 0 {
						it.giveBack(shard, qty)
						continue
					}
					sold[s].Add(qty)
				}
			}
		}(w)
	}
	// Raise one SKU's stock and replace another's price under traffic.
	wg.Add(1)
	go func() {
		defer wg.Done()
		tab.put(ledger.SaleItem{SKU: "S0", Stock: stock + raise}, -1)
		for i := 0; i < 50; i++ {
			tab.put(ledger.SaleItem{SKU: "S1", Stock: stock, PriceCents: int64(i)}, -1)
		}
	}()
	wg.Wait()
	for s := 0; s < skus; s++ {
		it := tab.lookup(fmt.Appendf(nil, "S%d", s))
		got, left := sold[s].Load(), it.remaining()
		switch {
		case s == 0:
			// The raise may land after every loop saw S0 sold out: then its
			// units are left, and nothing else.
			if got+left != stock+raise || left != 0 && left != raise {
				t.Errorf("SKU S0: sold %d, %d left, of %d+%d (seed %d)", got, left, stock, raise, seed)
			}
		case got != stock || left != 0:
			t.Errorf("SKU S%d: sold %d units of %d, %d left (seed %d)", s, got, stock, left, seed)
		}
		for i := range it.stripes {
			if u := it.stripes[i].units.Load(); u < 0 {
				t.Errorf("SKU S%d stripe %d holds %d units", s, i, u)
			}
		}
	}
}

// A dry stripe steals from the others: an order is refused as sold out only
// when all stripes together are short.
func TestDryStripeSteals(t *testing.T) {
	it := newSaleItem("X", 4)
	it.setStock(5, -1) // stripes 2, 1, 1, 1
	it.stripes[3].units.Store(0)
	it.stripes[0].units.Add(1) // 3, 1, 1, 0: shard 3 is dry
	if !it.take(3, 4) {
		t.Fatal("4 units refused on shard 3 while 5 remain elsewhere")
	}
	if it.take(3, 2) {
		t.Fatal("2 units taken with 1 left")
	}
	if r := it.remaining(); r != 1 {
		t.Fatalf("remaining %d after a refused take, want 1 (the take must put back what it gathered)", r)
	}
	if !it.take(2, 1) || it.remaining() != 0 {
		t.Fatal("the last unit")
	}
}

// Lowering the stock below what was sold leaves nothing to sell; raising it
// again adds only the difference.
func TestSetStockUnderSales(t *testing.T) {
	it := newSaleItem("X", 2)
	it.setStock(10, -1)
	for i := 0; i < 7; i++ {
		if !it.take(i, 1) {
			t.Fatal("take")
		}
	}
	it.setStock(5, -1)
	if it.remaining() != 0 || it.take(0, 1) {
		t.Fatalf("stock 5 with 7 sold: %d remain", it.remaining())
	}
	it.setStock(12, -1)
	if r := it.remaining(); r != 7 {
		t.Fatalf("stock raised 5 -> 12: %d remain, want 7", r)
	}
	it.setStock(20, 15) // rebuilt from the ledger: 15 taken
	if r := it.remaining(); r != 5 {
		t.Fatalf("rebuilt with 15 of 20 taken: %d remain, want 5", r)
	}
}

func TestSaleTableBounded(t *testing.T) {
	tab := newSaleTable(2, 2)
	tab.put(ledger.SaleItem{SKU: "a", Stock: 1}, -1)
	tab.put(ledger.SaleItem{SKU: "b", Stock: 1}, -1)
	if _, err := tab.put(ledger.SaleItem{SKU: "c", Stock: 1}, -1); err == nil {
		t.Fatal("third SKU accepted in a table of 2")
	}
	if _, err := tab.put(ledger.SaleItem{SKU: "a", Stock: 5}, -1); err != nil {
		t.Fatalf("replacing an item in a full table: %v", err)
	}
	if n := testing.AllocsPerRun(100, func() { tab.lookup([]byte("a")) }); n != 0 {
		t.Fatalf("lookup allocates %v", n)
	}
}

func TestStripePadding(t *testing.T) {
	it := newSaleItem("X", 2)
	if d := uintptrOf(&it.stripes[1]) - uintptrOf(&it.stripes[0]); d < cacheLine {
		t.Fatalf("stripes %d bytes apart, want a cache line (%d)", d, cacheLine)
	}
}

func uintptrOf(s *stripe) uintptr { return uintptr(unsafe.Pointer(s)) }

// With leases, a failed order's units come back to the stripes only through
// the lease manager, and only under the lease they were taken from: a lease
// lost meanwhile takes them along (the ledger reclaims them), and acks of
// its orders no longer count against the new lease's open units.
func TestFailedOrdersUnitsFollowTheirLease(t *testing.T) {
	it := newSaleItem("LEASED", 2)
	it.mu.Lock()
	it.spread(10)
	it.stock.Add(10)
	it.mu.Unlock()
	first := it.leaseEpoch.Load()
	if !it.take(0, 3) || !it.take(1, 2) {
		t.Fatal("take failed with 10 units")
	}
	it.countAcked(first, 2)
	if got := it.openUnits(); got != 8 {
		t.Fatalf("open units %d, want 10 leased - 2 acknowledged", got)
	}
	it.putBack(0, 3, first, true) // the 3-unit order failed
	if got := it.remaining(); got != 5 {
		t.Fatalf("remaining %d right after the failure, want 5: its units wait for the lease manager", got)
	}
	it.mu.Lock()
	it.foldReturned()
	it.mu.Unlock()
	if got := it.remaining(); got != 8 {
		t.Fatalf("remaining %d after the fold, want 8", got)
	}
	if !it.take(1, 4) {
		t.Fatal("take failed with 8 units")
	}
	// The lease is lost with an order of 4 in flight.
	it.mu.Lock()
	lost := it.drainAll() + it.newLeaseEpoch()
	it.stock.Store(0)
	it.mu.Unlock()
	if lost != 4 {
		t.Fatalf("the lost lease held %d units in the stripes, want 4", lost)
	}
	it.putBack(1, 4, first, true) // that order fails after the loss
	it.countAcked(first, 4)       // (or is acknowledged)
	it.mu.Lock()
	it.foldReturned()
	it.mu.Unlock()
	if got := it.remaining(); got != 0 {
		t.Fatalf("remaining %d: units of a lost lease came back into the stripes", got)
	}
	if got := it.openUnits(); got != 0 {
		t.Fatalf("open units %d under the new lease, want 0", got)
	}
	// Under the new lease, failures come back again.
	it.mu.Lock()
	it.spread(5)
	it.stock.Add(5)
	it.mu.Unlock()
	second := it.leaseEpoch.Load()
	if second == first || !it.take(0, 5) {
		t.Fatal("no new epoch, or take failed")
	}
	it.putBack(0, 5, second, true)
	it.mu.Lock()
	it.foldReturned()
	it.mu.Unlock()
	if got := it.remaining(); got != 5 {
		t.Fatalf("remaining %d under the new lease, want its 5 units back", got)
	}
}
