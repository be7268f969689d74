package edge

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/flashgate/flashgate/ledger"
)

// Goroutines race on tiny stock while the admin plane replaces the item: the
// units taken never pass the stock, and every unit is sold.
func TestStockNoOversellUnderRace(t *testing.T) {
	tab := newSaleTable(16)
	const skus, stock, workers = 4, 37, 8
	for i := 0; i < skus; i++ {
		if _, err := tab.put(ledger.SaleItem{SKU: fmt.Sprint("S", i), Stock: stock}, -1); err != nil {
			t.Fatal(err)
		}
	}
	var sold [skus]atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				s := (i + w) % skus
				it := tab.lookup([]byte(fmt.Sprint("S", s)))
				qty := int64(1 + i%3)
				if it.take(qty) {
					if i%7 == 0 { // a definite produce failure gives the units back
						it.giveBack(qty)
						continue
					}
					sold[s].Add(qty)
				}
				if it.taken.Load() > it.stock.Load() {
					t.Errorf("SKU S%d: taken %d > stock %d", s, it.taken.Load(), it.stock.Load())
				}
			}
		}(w)
	}
	// Live replacement with the same stock must not disturb the count.
	for i := 0; i < 100; i++ {
		tab.put(ledger.SaleItem{SKU: "S0", Stock: stock, PriceCents: int64(i)}, -1)
	}
	wg.Wait()
	for s := 0; s < skus; s++ {
		it := tab.lookup([]byte(fmt.Sprint("S", s)))
		if got := sold[s].Load(); got > stock || got != it.taken.Load() {
			t.Errorf("SKU S%d: sold %d, taken %d, stock %d", s, got, it.taken.Load(), stock)
		}
		// Whatever remains is less than the smallest order that was refused
		// only if it could not fit: with qty 1 orders always tried, all is sold.
		if it.remaining() != 0 {
			t.Errorf("SKU S%d: %d units left unsold (false sold-out)", s, it.remaining())
		}
	}
}

func TestSaleTableBounded(t *testing.T) {
	tab := newSaleTable(2)
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
