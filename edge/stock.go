package edge

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flashgate/flashgate/ledger"
)

// cacheLine is the unit of false sharing on the machines we run on.
const cacheLine = 64

// maxStripes is the most stripes an item has: one per event loop, and an
// order id has room for 16 loops.
const maxStripes = 16

// stripe holds a share of a SKU's remaining units, alone on its cache line so
// that event loops selling the same SKU do not bounce one line between cores.
type stripe struct {
	units atomic.Int64
	_     [cacheLine - 8]byte
}

// saleItem is one SKU on sale, shared by every event loop.
//
// Its remaining units are striped: one stripe per event loop, each decremented
// with CAS and never below zero. A loop takes from its own stripe; when that
// is short it gathers from the others, so a SKU is refused as sold out only
// when all stripes together are short. The sum of the stripes never exceeds
// what was loaded minus what was sold: no interleaving can oversell.
type saleItem struct {
	sku     string
	stripes []stripe
	// borrowers counts takers holding units gathered from several stripes:
	// while one does, others may see empty stripes that are not really empty.
	borrowers atomic.Int32

	mu    sync.Mutex   // serialises stock changes (admin plane, load)
	stock atomic.Int64 // units of the whole sale, as last set

	accepted   atomic.Int64 // orders answered 202
	releaseSeq atomic.Int64 // the last stock release (flash-sale.events) counted
	paused     atomic.Bool  // its stock is being reloaded from the ledger: orders get 503
	// With stock leases (leases.go): stock is the units leased in and not
	// given back; leaseEpoch counts the leases lost, so units of an order
	// taken under a lost lease are not given back to the next one.
	leaseEpoch atomic.Int64
	// acked packs the lease epoch (high 24 bits) with the units of this
	// edge's orders taken under it that Kafka acknowledged (low 40 bits):
	// stock less those is what may still be sold or come back (openUnits).
	acked atomic.Uint64
	// returned packs the same way the units of orders taken under the
	// lease epoch that failed (putBack): with leases they reach the stripes
	// only through the lease manager (foldReturned), so that a lease lost
	// meanwhile takes them along atomically.
	returned     atomic.Uint64
	poolEmpty    atomic.Bool // the ledger had no more units at the last grant
	refilled     atomic.Bool // the ledger's pool may have units again (a release, more stock, a new sale)
	wanted       atomic.Bool // an order was refused for want of a grant: ask again
	termsStock   atomic.Int64
	termsSale    atomic.Int64 // the sale generation (SaleStartedAt, ns)
	parked       parkedList   // orders waiting for the next grant (parked.go)
	lease        leaseStats   // the lease manager's own (one goroutine)
	priceCents   atomic.Int64
	perUserLimit atomic.Int32
	startsAtNs   atomic.Int64 // 0 = no start bound
	endsAtNs     atomic.Int64 // 0 = open-ended
}

func newSaleItem(sku string, stripes int) *saleItem {
	if stripes < 1 || stripes > maxStripes {
		panic(fmt.Sprintf("BUG: %d stock stripes, want 1-%d", stripes, maxStripes))
	}
	return &saleItem{sku: sku, stripes: make([]stripe, stripes)}
}

// takeUpTo takes at most want units from st and returns how many it took.
func (st *stripe) takeUpTo(want int64) int64 {
	for {
		u := st.units.Load()
		got := min(u, want)
		if got <= 0 {
			return 0
		}
		if st.units.CompareAndSwap(u, u-got) {
			return got
		}
	}
}

// take takes qty units for an order admitted on event loop shard.
func (it *saleItem) take(shard int, qty int64) bool {
	own := &it.stripes[shard%len(it.stripes)]
	for { // fast path: the loop's own stripe has them all
		u := own.units.Load()
		if u < qty {
			break
		}
		if own.units.CompareAndSwap(u, u-qty) {
			return true
		}
	}
	it.borrowers.Add(1)
	defer it.borrowers.Add(-1)
	var gathered [maxStripes]int64
	for attempt := 0; ; attempt++ {
		got := int64(0)
		for i := 0; i < len(it.stripes) && got < qty; i++ {
			idx := (shard + i) % len(it.stripes)
			n := it.stripes[idx].takeUpTo(qty - got)
			gathered[idx] += n
			got += n
		}
		if got == qty {
			return true
		}
		// Short: put back exactly what was taken, where it came from.
		for idx, n := range gathered[:len(it.stripes)] {
			if n > 0 {
				it.stripes[idx].units.Add(n)
				gathered[idx] = 0
			}
		}
		// The shortage is real unless another taker held units in transit
		// while we looked; then look again (a few times: two large orders
		// can each hold part of what the other needs).
		if it.borrowers.Load() == 1 || attempt == 8 {
			return false
		}
		runtime.Gosched()
	}
}

// giveBack returns units whose order definitely failed to the stripe of the
// loop that took them.
func (it *saleItem) giveBack(shard int, qty int64) {
	if qty <= 0 {
		panic(fmt.Sprintf("BUG: SKU %s: giving back %d units", it.sku, qty))
	}
	it.stripes[shard%len(it.stripes)].units.Add(qty)
}

// remaining is the sum of the stripes (a moment's view under traffic).
func (it *saleItem) remaining() int64 {
	var sum int64
	for i := range it.stripes {
		sum += it.stripes[i].units.Load()
	}
	return sum
}

// takenUnits is the units sold (or held by orders in flight).
func (it *saleItem) takenUnits() int64 { return max(0, it.stock.Load()-it.remaining()) }

// setStock changes the sale's stock to stock units. The difference to the
// previous stock is added to the stripes, or removed from them as far as
// units remain (lowering the stock below what was sold leaves none). With
// takenUnits >= 0 (rebuilding from the ledger) the stripes are reset to
// stock - takenUnits instead. Safe under traffic.
func (it *saleItem) setStock(stock, takenUnits int64) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if takenUnits >= 0 {
		for i := range it.stripes {
			it.stripes[i].units.Store(0)
		}
		it.spread(max(0, stock-takenUnits))
	} else if delta := stock - it.stock.Load(); delta > 0 {
		it.spread(delta)
	} else {
		for i := 0; i < len(it.stripes) && delta < 0; i++ {
			delta += it.stripes[i].takeUpTo(-delta)
		}
	}
	it.stock.Store(stock)
}

// spread adds units evenly across the stripes.
func (it *saleItem) spread(units int64) {
	n := int64(len(it.stripes))
	for i := range it.stripes {
		share := units / n
		if int64(i) < units%n {
			share++
		}
		it.stripes[i].units.Add(share)
	}
}

// active reports whether the sale window contains now.
func (it *saleItem) active(nowNs int64) bool {
	s, e := it.startsAtNs.Load(), it.endsAtNs.Load()
	return (s == 0 || nowNs >= s) && (e == 0 || nowNs < e)
}

func (it *saleItem) set(s ledger.SaleItem, takenUnits int64) {
	it.setTerms(s)
	it.setStock(s.Stock, takenUnits)
}

// setTerms sets everything of the item but its stock.
func (it *saleItem) setTerms(s ledger.SaleItem) {
	// More stock or a new sale may refill the ledger's pool (leases).
	if old := it.termsStock.Swap(s.Stock); s.Stock > old {
		it.poolEmpty.Store(false)
		it.refilled.Store(true)
	}
	if old := it.termsSale.Swap(unixNano(s.SaleStartedAt)); old != unixNano(s.SaleStartedAt) {
		it.poolEmpty.Store(false)
		it.refilled.Store(true)
	}
	it.priceCents.Store(s.PriceCents)
	it.perUserLimit.Store(s.PerUserLimit)
	it.startsAtNs.Store(unixNano(s.StartsAt))
	it.endsAtNs.Store(unixNano(s.EndsAt))
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
	m       atomic.Pointer[map[string]*saleItem]
	mu      sync.Mutex
	max     int
	stripes int
	leased  bool // stock comes from leases only: put sets the terms
}

func newSaleTable(maxSKUs, stripes int) *saleTable {
	t := &saleTable{max: maxSKUs, stripes: stripes}
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
		if t.leased {
			it.setTerms(s)
		} else {
			it.set(s, takenUnits)
		}
		return it, nil
	}
	if err := t.roomFor(s.SKU); err != nil {
		return nil, err
	}
	it := newSaleItem(s.SKU, t.stripes)
	if t.leased {
		it.setTerms(s)
	} else {
		it.set(s, max(0, takenUnits))
	}
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

// ackedBits is how many low bits of saleItem.acked and .returned count
// units; the bits above hold a lease epoch.
const (
	ackedBits  = 40
	unitsMask  = 1<<ackedBits - 1
	epochMask  = 1<<(64-ackedBits) - 1
	epochShift = ackedBits
)

// putBack gives back the qty units of an order taken on shard under lease
// epoch that failed. Without leases they go straight back to the stripes;
// with leases they wait in it.returned for the lease manager, and are
// dropped if the lease was lost since (the ledger reclaims them).
func (it *saleItem) putBack(shard int, qty, epoch int64, leased bool) {
	if !leased {
		it.giveBack(shard, qty)
		return
	}
	addUnder(&it.returned, epoch, qty)
}

// epochWord is a word of lease epoch e holding no units.
func epochWord(e int64) uint64 { return (uint64(e) & epochMask) << epochShift }

// addUnder adds qty units to w if it holds lease epoch's units; a word of
// another epoch is left alone (atomically: a new epoch may start meanwhile).
func addUnder(w *atomic.Uint64, epoch, qty int64) {
	for {
		old := w.Load()
		if old&^unitsMask != epochWord(epoch) {
			return
		}
		if w.CompareAndSwap(old, old+uint64(qty)) {
			return
		}
	}
}

// foldReturned moves the units given back under the current lease into the
// stripes. Call with it.mu held.
func (it *saleItem) foldReturned() {
	for {
		w := it.returned.Load()
		n := int64(w & unitsMask)
		if n == 0 {
			return
		}
		if it.returned.CompareAndSwap(w, w&^unitsMask) {
			it.spread(n)
			return
		}
	}
}

// countAcked counts qty units of an order taken under lease epoch that
// Kafka acknowledged; an order of an earlier epoch does not count.
func (it *saleItem) countAcked(epoch, qty int64) { addUnder(&it.acked, epoch, qty) }

// newLeaseEpoch starts a lease epoch: the units of orders taken before it
// are the ledger's to account for. It returns the units given back under
// the old one and not yet in the stripes. Call with it.mu held, once the
// stripes are drained.
func (it *saleItem) newLeaseEpoch() int64 {
	e := it.leaseEpoch.Add(1)
	it.acked.Store(epochWord(e))
	return int64(it.returned.Swap(epochWord(e)) & unitsMask)
}

// openUnits is an upper bound of the leased units whose fate is open: in
// the stripes, in orders waiting for Kafka or of unknown outcome. It is the
// units leased in and not given back, less those of acknowledged orders:
// acked is read first and only grows, and stock only changes on the lease
// manager's goroutine, which calls this.
func (it *saleItem) openUnits() int64 {
	acked := int64(it.acked.Load() & unitsMask)
	return max(0, it.stock.Load()-acked)
}
