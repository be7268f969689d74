package edge

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flashgate/flashgate/ledger"
)

// saleItem is one SKU on sale, shared by every event loop. All fields are
// atomics: the admin plane replaces values under live traffic.
//
// Stock is held as two counters, stock (units of the whole sale) and taken
// (units handed to admitted orders, minus units given back); remaining is
// stock - taken. take never lets taken pass stock, so no interleaving can
// oversell, and lowering stock below taken only makes remaining zero.
type saleItem struct {
	sku          string
	stock        atomic.Int64
	taken        atomic.Int64
	accepted     atomic.Int64 // orders answered 202
	priceCents   atomic.Int64
	perUserLimit atomic.Int32
	startsAtNs   atomic.Int64 // 0 = no start bound
	endsAtNs     atomic.Int64 // 0 = open-ended
}

// take takes qty units if that many remain.
func (it *saleItem) take(qty int64) bool {
	for {
		taken := it.taken.Load()
		if taken+qty > it.stock.Load() {
			return false
		}
		if it.taken.CompareAndSwap(taken, taken+qty) {
			return true
		}
	}
}

// giveBack returns units whose order definitely failed.
func (it *saleItem) giveBack(qty int64) {
	if it.taken.Add(-qty) < 0 {
		panic(fmt.Sprintf("BUG: SKU %s gave back more units than it took", it.sku))
	}
}

func (it *saleItem) remaining() int64 { return max(0, it.stock.Load()-it.taken.Load()) }

// active reports whether the sale window contains now.
func (it *saleItem) active(nowNs int64) bool {
	s, e := it.startsAtNs.Load(), it.endsAtNs.Load()
	return (s == 0 || nowNs >= s) && (e == 0 || nowNs < e)
}

func (it *saleItem) set(s ledger.SaleItem) {
	it.priceCents.Store(s.PriceCents)
	it.perUserLimit.Store(s.PerUserLimit)
	it.startsAtNs.Store(unixNano(s.StartsAt))
	it.endsAtNs.Store(unixNano(s.EndsAt))
	it.stock.Store(s.Stock)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// saleTable maps SKUs to items. Readers load an immutable map without locks
// or allocations; writers (the admin plane) copy it under a mutex. Items are
// never removed, so a reader's pointer stays valid.
type saleTable struct {
	m   atomic.Pointer[map[string]*saleItem]
	mu  sync.Mutex
	max int
}

func newSaleTable(maxSKUs int) *saleTable {
	t := &saleTable{max: maxSKUs}
	m := make(map[string]*saleItem)
	t.m.Store(&m)
	return t
}

// lookup returns the item for sku, or nil. It does not allocate.
func (t *saleTable) lookup(sku []byte) *saleItem { return (*t.m.Load())[string(sku)] }

// put creates or updates the item for s. takenUnits, when >= 0, sets the units
// already taken (rebuilding stock from the ledger at start).
func (t *saleTable) put(s ledger.SaleItem, takenUnits int64) (*saleItem, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.m.Load()
	if it, ok := old[s.SKU]; ok {
		if takenUnits >= 0 {
			it.taken.Store(takenUnits)
		}
		it.set(s)
		return it, nil
	}
	if err := t.roomFor(s.SKU); err != nil {
		return nil, err
	}
	it := &saleItem{sku: s.SKU}
	it.set(s)
	it.taken.Store(max(0, takenUnits))
	m := make(map[string]*saleItem, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[s.SKU] = it
	t.m.Store(&m)
	return it, nil
}

// roomFor reports whether sku has, or can get, an entry.
func (t *saleTable) roomFor(sku string) error {
	m := *t.m.Load()
	if _, ok := m[sku]; ok || len(m) < t.max {
		return nil
	}
	return fmt.Errorf("the sale table is full (%d SKUs); possible fix: raise -edge.maxSKUs", t.max)
}

func (t *saleTable) all() map[string]*saleItem { return *t.m.Load() }
