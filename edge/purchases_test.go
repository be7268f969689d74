package edge

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/ledger"
)

// Loops racing for the same users never let one buy past the limit, and
// every user gets exactly the limit when enough is tried.
func TestPurchaseLimitExactUnderRace(t *testing.T) {
	tab := newPurchaseTable(1 << 12)
	const users, loops, limit = 200, 8, 3
	var bought [users]atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < loops; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := 0; u < users; u++ {
				user := fmt.Appendf(nil, "user-%d", u)
				for try := 0; try < 4; try++ {
					if slot, out := tab.reserve(user, []byte("SKU"), 1, limit); out == purchaseOK {
						if try == 0 && u%5 == 0 { // a definite produce failure
							slot.release(1)
							continue
						}
						bought[u].Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	for u := 0; u < users; u++ {
		if got := bought[u].Load(); got != limit {
			t.Fatalf("user-%d bought %d, limit %d", u, got, limit)
		}
		if got := tab.units(fmt.Appendf(nil, "user-%d", u), []byte("SKU")); got != limit {
			t.Fatalf("user-%d counted %d, limit %d", u, got, limit)
		}
	}
	if n := tab.used.Load(); n != users {
		t.Fatalf("%d slots used for %d pairs", n, users)
	}
}

// Pairs are told apart exactly, including ones that concatenate the same.
func TestPurchasePairsDistinct(t *testing.T) {
	tab := newPurchaseTable(64)
	if _, out := tab.reserve([]byte("ab"), []byte("c"), 2, 2); out != purchaseOK {
		t.Fatal("first pair")
	}
	if _, out := tab.reserve([]byte("a"), []byte("bc"), 2, 2); out != purchaseOK {
		t.Fatal("(a, bc) shares a counter with (ab, c)")
	}
	if _, out := tab.reserve([]byte("ab"), []byte("c"), 1, 2); out != purchaseOverLimit {
		t.Fatal("(ab, c) over its limit accepted")
	}
	if _, out := tab.reserve([]byte("x"), []byte("y"), 3, 2); out != purchaseOverLimit {
		t.Fatal("one order above the limit accepted")
	}
}

// A full table refuses new pairs and keeps counting the ones it has.
func TestPurchaseTableFullRefuses(t *testing.T) {
	tab := newPurchaseTable(8)
	n := 0
	for ; n < 100; n++ {
		if _, out := tab.reserve(fmt.Appendf(nil, "u%d", n), []byte("S"), 1, 5); out == purchaseTableFull {
			break
		}
	}
	if n != 8 {
		t.Fatalf("table of 8 slots took %d pairs before refusing", n)
	}
	if _, out := tab.reserve([]byte("u0"), []byte("S"), 1, 5); out != purchaseOK {
		t.Fatal("a known pair refused in a full table")
	}
	if allocs := testing.AllocsPerRun(100, func() { tab.reserve([]byte("u1"), []byte("S"), 0, 5) }); allocs != 0 {
		t.Fatalf("reserve allocates %v", allocs)
	}
}

// After a sell-out, the requests for the SKU claim no purchase counters: a
// flood of new buyers of a sold-out SKU cannot fill the table.
func TestSoldOutClaimsNoPurchaseCounters(t *testing.T) {
	s := testAdmission(2)
	if _, err := s.items.put(ledger.SaleItem{SKU: "HOT", Stock: 3, PerUserLimit: 1}, -1); err != nil {
		t.Fatal(err)
	}
	var sc admitScratch
	now := time.Now().UnixNano()
	accepted := 0
	for i := range 10000 {
		d := s.admit(i%2, &sc, []byte(fmt.Sprintf("u%d", i)), []byte("HOT"), 1, nil, now)
		switch {
		case d.status == 0:
			accepted++
		case d.problem != probSoldOut:
			t.Fatalf("order %d: %d %s, want sold-out", i, d.status, d.problem)
		}
	}
	if accepted != 3 {
		t.Fatalf("accepted %d, want 3", accepted)
	}
	if used := s.purchases.used.Load(); used != 3 {
		t.Fatalf("%d purchase counters claimed by 3 buyers and 9997 sold-out requests, want 3", used)
	}
}
