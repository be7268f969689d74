package edge

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flashgate/flashgate/ledger"
)

// Stock leases (-edge.leaseTTL > 0): several edges sell the same SKUs without
// a shared hot counter. Each edge leases blocks of a SKU's units from the
// ledger (ledger/leases.go) into its striped counters, which the event loops
// decrement as without leases; the lease manager below, one goroutine, keeps
// them topped up, renews the leases, gives back what the edge does not need,
// and reclaims the leases of edges that died.
//
//   - Blocks follow the sell rate: the manager asks for the units this edge
//     sells in -edge.leaseHorizon at its recent rate (at least
//     -edge.leaseMinBlock) whenever less than half of that is left, and the
//     ledger grants at most the pool divided among the edges holding leases,
//     so blocks shrink near the end of stock.
//   - An order that finds the edge with no units waits for the next grant
//     (parked.go, -edge.leaseWait), then 503 + Retry-After, unless the last
//     grant found the pool empty and no lease holding a unit: sold out means
//     every unit is in an order the ledger holds.
//   - Leases are renewed every TTL/3. Every 250 ms the edge reads which
//     SKUs another edge found the pool short of lately, and for two seconds
//     it keeps only what it sells in half a horizon (none if it sells none)
//     and gives the rest back.
//   - Once a grant found the pool short, the edge asks again only for
//     orders waiting (parked.go) or after a stock release.
//   - The event loops sell leased units only until TTL/4 before the ledger's
//     expiry of the last renewal (by this edge's clock, counted from before
//     the renewal was sent). An edge that cannot renew in time gives its
//     units up and ends its leases in the ledger as soon as it can reach it;
//     a lease found expired is given up. The units of an order taken under a
//     lost lease are not given back if the order fails: the ledger reclaims
//     them.
//   - A starting edge ends the leases a previous process with its node id
//     held: their units come back by reclaim, so it waits about a delivery
//     timeout before it can lease them again.
//   - Every edge reclaims leases expired for longer than its delivery timeout
//     (the last produce of a dead edge has landed by then) once ingest has
//     caught up: their unsold units go back to the pool.
//   - Grants and returns carry an operation number; one whose answer was lost
//     is asked again with the same number, so it applies once.
//   - A draining edge gives back what it holds and leases nothing; on Stop,
//     after every order in flight is answered, it returns the rest.
type leaser struct {
	s          *Server
	kick       chan struct{} // an event loop ran dry: top up now
	started    bool
	done       chan struct{} // closed when run returns
	validUntil atomic.Int64  // ns by this edge's clock: leased units may be sold until then
	op         atomic.Int64  // the last operation number
	needExpire bool          // units were given up: end the leases in the ledger
	lastRenew  time.Time
	lastClaim  time.Time
	lastTerms  time.Time
	lastStarve time.Time
	reclaiming atomic.Bool    // a reclaim runs (reclaim)
	wg         sync.WaitGroup // its goroutine: run waits for it
}

// leaseStats is the manager's view of one item (only it touches them).
type leaseStats struct {
	lastAccepted int64
	lastAt       time.Time
	rate         float64 // orders per second, smoothed
	waitUntil    time.Time
	othersStarve time.Time // until then another edge finds the pool short
	pending      *leaseOp  // a grant or return whose answer was lost
	exhausted    bool      // the last grant found the pool short: ask again only for waiting orders
	reported     int64     // the open units the ledger last heard of (ledger.Unsettled)
}

// leaseOp is a grant or return to ask again with the same number.
type leaseOp struct {
	op    int64
	grant bool
	units int64 // wanted (grant) or taken out of the stripes (return)
}

func newLeaser(s *Server) *leaser {
	l := &leaser{s: s, kick: make(chan struct{}, 1), done: make(chan struct{})}
	l.op.Store(time.Now().UnixNano())
	return l
}

// valid reports whether leased units may be sold at nowNs.
func (l *leaser) valid(nowNs int64) bool { return nowNs < l.validUntil.Load() }

// mayGetMore reports whether an order that found no units should wait or be
// told to retry (the pool had units at the last grant), and wakes the
// manager. It runs on an event loop: it never blocks.
func (l *leaser) mayGetMore(it *saleItem) bool {
	if it.poolEmpty.Load() {
		return false
	}
	l.wake()
	return true
}

// wake makes the manager take its next step now. It never blocks.
func (l *leaser) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

const (
	leaseTick         = 100 * time.Millisecond
	leaseReclaimEvery = 2 * time.Second
	// Between renewals, how often the edge asks which SKUs another edge
	// lacks units of (one read): the units it holds of them serve the
	// other's waiting orders sooner.
	leaseStarveEvery = 250 * time.Millisecond
)

func (l *leaser) run(ctx context.Context) {
	defer close(l.done)
	defer l.wg.Wait()
	// A previous process with this node id may have held units it no longer
	// has: end its leases before taking new ones.
	l.needExpire = true
	l.wg.Add(1)
	go l.watchParked(ctx)
	t := time.NewTicker(leaseTick)
	defer t.Stop()
	for {
		start := time.Now()
		l.step(ctx)
		leaseStep.UpdateDuration(start)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.kick:
		}
	}
}

func (l *leaser) step(ctx context.Context) {
	cfg := &l.s.cfg
	now := time.Now()
	if !l.valid(now.UnixNano()) {
		l.dropAll("the stock leases could not be renewed in time")
	}
	if l.needExpire {
		if err := l.call(ctx, func(ctx context.Context) error { return ledger.ExpireLeases(ctx, l.s.pool, cfg.NodeID) }); err != nil {
			slog.Warn("edge: ending this node's stock leases failed; retrying", "err", err)
			return // no renewal, no grant before it
		}
		l.needExpire = false
	}
	if now.Sub(l.lastRenew) >= cfg.LeaseTTL/3 {
		l.renew(ctx, now)
	} else if now.Sub(l.lastStarve) >= leaseStarveEvery {
		l.checkStarving(ctx, now)
	}
	if now.Sub(l.lastTerms) >= time.Second {
		l.lastTerms = now
		l.refreshTerms(ctx)
	}
	if now.Sub(l.lastClaim) >= leaseReclaimEvery {
		l.lastClaim = now
		l.reclaim(ctx)
	}
	l.topUpAll(ctx)
	l.reportSettled(ctx)
}

// reportSettled tells the ledger of the SKUs whose open units this edge last
// reported and that have none now (every unit sold and acknowledged): another
// edge waiting to answer sold out need not wait for the next renewal.
func (l *leaser) reportSettled(ctx context.Context) {
	var r []ledger.Unsettled
	for _, it := range l.s.items.all() {
		if it.lease.reported > 0 && it.lease.pending == nil && it.openUnits() == 0 {
			r = append(r, ledger.Unsettled{SKU: it.sku})
		}
	}
	if len(r) == 0 {
		return
	}
	if err := l.call(ctx, func(ctx context.Context) error { return ledger.ReportUnsettled(ctx, l.s.pool, l.s.cfg.NodeID, r) }); err != nil {
		slog.Warn("edge: reporting settled stock leases", "err", err)
		return
	}
	for _, u := range r {
		l.s.items.lookup([]byte(u.SKU)).lease.reported = 0
	}
}

// leaseWorkers is how many SKUs give units back at once: each return is a
// transaction of a few round trips, and a sale of a thousand SKUs ending at
// once must not wait for them one by one. Grants go in batches of up to
// leaseBatch SKUs, one transaction each (ledger.LeaseStocks).
const (
	leaseWorkers = 8
	leaseBatch   = 256
)

// topUpAll runs topUp for every item, leaseWorkers at a time (each item's
// lease state is touched by one of them only), then asks for the grants
// they decided in batches, and returns when all are done.
func (l *leaser) topUpAll(ctx context.Context) {
	items := l.s.items.all()
	work := make(chan *saleItem)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var asks []*saleItem // each with its grant in lease.pending
	for range min(leaseWorkers, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				if l.topUp(ctx, it, time.Now()) {
					mu.Lock()
					asks = append(asks, it)
					mu.Unlock()
				}
			}
		}()
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
	for len(asks) > 0 {
		n := min(len(asks), leaseBatch)
		l.grant(ctx, asks[:n])
		asks = asks[n:]
	}
}

// call runs a ledger call under a deadline of TTL/4.
func (l *leaser) call(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, l.s.cfg.LeaseTTL/4)
	defer cancel()
	return f(ctx)
}

// refreshTerms learns the sale items put (or changed) through other edges.
func (l *leaser) refreshTerms(ctx context.Context) {
	var items []ledger.SaleItem
	err := l.call(ctx, func(ctx context.Context) (err error) {
		items, err = ledger.SaleItemTerms(ctx, l.s.pool)
		return err
	})
	if err != nil {
		slog.Warn("edge: reading the sale items' terms", "err", err)
		return
	}
	for _, it := range items {
		if _, err := l.s.items.put(it, -1); err != nil {
			slog.Warn("edge: a sale item put through another edge does not fit", "sku", it.SKU, "err", err)
		}
	}
}

// renew extends this edge's leases; those the ledger says expired are given up.
func (l *leaser) renew(ctx context.Context, sent time.Time) {
	cfg := &l.s.cfg
	var r ledger.Renewal
	reports := l.reports()
	err := l.call(ctx, func(ctx context.Context) (err error) {
		r, err = ledger.RenewLeases(ctx, l.s.pool, cfg.NodeID, cfg.LeaseTTL, reports)
		return err
	})
	if err != nil {
		slog.Warn("edge: renewing the stock leases failed; retrying", "err", err)
		return
	}
	for _, u := range reports {
		l.s.items.lookup([]byte(u.SKU)).lease.reported = u.Units
	}
	l.lastRenew = sent
	for _, sku := range r.Lost {
		if it := l.s.items.lookup([]byte(sku)); it != nil {
			l.drop(it, "the lease expired before it was renewed")
		}
	}
	l.validUntil.Store(sent.Add(cfg.LeaseTTL - cfg.LeaseTTL/4).UnixNano())
	l.starving(r.Starving, sent)
}

// checkStarving learns which SKUs other edges lack units of, between renewals.
func (l *leaser) checkStarving(ctx context.Context, now time.Time) {
	l.lastStarve = now
	var skus []string
	err := l.call(ctx, func(ctx context.Context) (err error) {
		skus, err = ledger.StarvingSKUs(ctx, l.s.pool, l.s.cfg.NodeID)
		return err
	})
	if err != nil {
		slog.Warn("edge: reading which SKUs other edges lack", "err", err)
		return
	}
	l.starving(skus, now)
}

// starving marks skus as lacked by another edge: for two seconds topUp gives
// back what this edge does not need now.
func (l *leaser) starving(skus []string, now time.Time) {
	for _, sku := range skus {
		if it := l.s.items.lookup([]byte(sku)); it != nil {
			it.lease.othersStarve = now.Add(2 * time.Second)
		}
	}
}

// reports are this edge's open units of every SKU it leased (the renewal
// records them; see ledger/leases.go). A grant or return runs on this
// goroutine only, so none changes a SKU's stock meanwhile.
func (l *leaser) reports() []ledger.Unsettled {
	var r []ledger.Unsettled
	for _, it := range l.s.items.all() {
		if it.stock.Load() > 0 || it.lease.pending != nil {
			open := it.openUnits()
			if p := it.lease.pending; p != nil && p.grant {
				open += p.units // it may have committed: those may be this edge's to sell
			}
			r = append(r, ledger.Unsettled{SKU: it.sku, Units: open})
		}
	}
	return r
}

// drop gives up the units the edge holds of it: they are no longer its to
// sell (the ledger reclaims them).
func (l *leaser) drop(it *saleItem, why string) {
	it.mu.Lock()
	defer it.mu.Unlock()
	l.dropLocked(it, why)
}

// dropLocked is drop with it.mu held.
func (l *leaser) dropLocked(it *saleItem, why string) {
	// Drained before the new epoch starts: an order that reads the new
	// epoch can only take units of the new lease. Failed orders' units do
	// not come back to the stripes meanwhile (putBack).
	n := it.drainAll()
	n += it.newLeaseEpoch()
	if p := it.lease.pending; p != nil && !p.grant {
		n += p.units // a return whose answer was lost: reclaimed too, if it did not apply
	}
	it.lease.pending = nil
	it.stock.Store(0)
	if n > 0 {
		leaseLostTotal.Add(int(n))
		slog.Warn("edge: stock lease lost; its units are reclaimed by the ledger", "sku", it.sku, "units", n, "why", why)
	}
}

func (l *leaser) dropAll(why string) {
	for _, it := range l.s.items.all() {
		if it.remaining() > 0 || it.lease.pending != nil {
			l.drop(it, why)
			l.needExpire = true
		}
	}
}

// drainAll takes every unit out of the stripes, also those an order in
// flight gathers from several stripes and puts back when short, and
// returns how many. Call with it.mu held.
func (it *saleItem) drainAll() int64 {
	var n int64
	for {
		for i := range it.stripes {
			n += it.stripes[i].takeUpTo(1 << 62)
		}
		if it.borrowers.Load() == 0 {
			return n
		}
		runtime.Gosched()
	}
}

// topUp decides whether it needs more units (then it reports true, with the
// grant to ask for in it.lease.pending) or gives back the excess.
func (l *leaser) topUp(ctx context.Context, it *saleItem, now time.Time) (ask bool) {
	cfg := &l.s.cfg
	st := &it.lease
	if !st.lastAt.IsZero() {
		if dt := now.Sub(st.lastAt).Seconds(); dt > 0 {
			inst := float64(it.accepted.Load()-st.lastAccepted) / dt
			st.rate = 0.7*st.rate + 0.3*inst
		}
	}
	st.lastAccepted, st.lastAt = it.accepted.Load(), now
	if it.returned.Load()&unitsMask != 0 { // failed orders' units: sellable again
		it.mu.Lock()
		it.foldReturned()
		it.mu.Unlock()
	}
	if p := st.pending; p != nil {
		if p.grant {
			return true // asked before, its answer lost: again, with the same number
		}
		l.giveBack(ctx, it, 0, p)
		return false
	}
	rem := it.remaining()
	if l.s.draining.Load() { // leaving: what this edge holds is for the others
		if rem > 0 {
			l.giveBack(ctx, it, rem, nil)
		}
		return
	}
	if it.paused.Load() || (it.endsAtNs.Load() != 0 && now.UnixNano() >= it.endsAtNs.Load()) || !l.valid(now.UnixNano()) {
		return
	}
	sells := int64(st.rate*cfg.LeaseHorizon.Seconds() + 0.5) // what this edge sells in a horizon
	need := max(cfg.LeaseMinBlock, sells) + it.parked.units.Load()
	// Another edge wants units the pool lacks: keep only what this edge
	// sells in half a horizon (nothing, if it sells none).
	if keep := sells / 2; now.Before(st.othersStarve) && rem > keep {
		l.giveBack(ctx, it, rem-keep, nil)
		return
	}
	switch {
	// Once the pool ran short, asking again without orders waiting would
	// only poll: a thousand sold-out SKUs asked for every few hundred
	// milliseconds kept the ledger busy. It asks for orders parked or
	// refused for want of a grant (no room to park, -edge.leaseWait 0),
	// and once when the pool may have been refilled: a stock release (a
	// cancelled or expired order), more stock, a new sale.
	case rem < need/2+1 && now.After(st.waitUntil) && (!st.exhausted || it.parked.head.Load() != nil || it.wanted.Swap(false) || it.refilled.Swap(false)):
		st.pending = &leaseOp{op: l.op.Add(1), grant: true, units: need - rem}
		return true
	case rem > 2*need && it.poolEmpty.Load():
		l.giveBack(ctx, it, rem-need, nil)
	}
	return false
}

// grant asks the ledger, in one transaction, for the grants pending on
// items, and applies the answers. A grant whose answer is lost stays
// pending: it is asked again with the same number (it may have committed).
func (l *leaser) grant(ctx context.Context, items []*saleItem) {
	cfg := &l.s.cfg
	reqs := make([]ledger.LeaseRequest, len(items))
	for i, it := range items {
		p := it.lease.pending
		reqs[i] = ledger.LeaseRequest{SKU: it.sku, Want: p.units, Op: p.op, Unsettled: it.openUnits()}
		it.lease.reported = max(it.lease.reported, reqs[i].Unsettled+p.units) // what the ledger may have heard
	}
	var gs []ledger.Grant
	err := l.call(ctx, func(ctx context.Context) (err error) {
		gs, err = ledger.LeaseStocks(ctx, l.s.pool, cfg.NodeID, cfg.LeaseTTL, reqs)
		return err
	})
	if err != nil {
		slog.Warn("edge: leasing stock failed; asking again", "skus", len(items), "err", err)
		return
	}
	leaseBatchesTotal.Inc()
	now := time.Now()
	for i, it := range items {
		l.granted(it, gs[i], now)
	}
}

// granted applies the ledger's answer g to the grant pending on it.
func (l *leaser) granted(it *saleItem, g ledger.Grant, now time.Time) {
	cfg := &l.s.cfg
	p := it.lease.pending
	it.lease.pending = nil
	if g.Lost {
		it.lease.waitUntil = now.Add(time.Second) // until the ledger reclaims it
		l.drop(it, "the lease expired before it was renewed")
		return
	}
	short := g.Units < p.units && g.Pool <= 0
	it.lease.exhausted = short
	// Sold out only when no unit is open anywhere: no edge may still sell
	// one (another edge is told to give back what it does not need, by the
	// renewal's starving list), and no order Kafka has not acknowledged may
	// fail and give one back. Until then this edge asks again soon, and
	// its orders wait (parked.go).
	it.poolEmpty.Store(short && g.Open == 0)
	switch {
	case it.poolEmpty.Load():
		it.lease.waitUntil = now.Add(cfg.LeaseHorizon / 4) // the pool refills only by cancellations and expiries now
	case short:
		it.lease.waitUntil = now.Add(200 * time.Millisecond)
	}
	if g.Units > 0 {
		it.mu.Lock()
		it.spread(g.Units)
		it.stock.Add(g.Units)
		it.mu.Unlock()
		leaseGrantsTotal.Inc()
		leaseUnitsTotal.Add(int(g.Units))
	}
	if it.parked.head.Load() != nil && (g.Units > 0 || it.poolEmpty.Load()) {
		l.serveParked(it, time.Now()) // units for them, or sold out
	}
}

// giveBack returns up to n units the edge holds of it to the pool, or asks
// again about p, a return whose answer was lost (its units are out of the
// stripes already, and stay out: they may be in the pool).
func (l *leaser) giveBack(ctx context.Context, it *saleItem, n int64, p *leaseOp) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if p == nil {
		var took int64
		for i := range it.stripes {
			took += it.stripes[i].takeUpTo(n - took)
		}
		if took == 0 {
			return
		}
		p = &leaseOp{op: l.op.Add(1), units: took}
	}
	err := l.call(ctx, func(ctx context.Context) error {
		return ledger.ReturnStock(ctx, l.s.pool, it.sku, l.s.cfg.NodeID, p.units, p.op, it.openUnits())
	})
	switch {
	case err == nil:
		it.lease.pending = nil
		it.stock.Add(-p.units)
		leaseReturnedTotal.Add(int(p.units))
	case errors.Is(err, ledger.ErrLeaseLost):
		it.lease.pending = p // its units are lost with the rest
		l.dropLocked(it, "the lease expired before the units were returned")
	default:
		it.lease.pending = p // never back into the stripes: it may have committed
		slog.Warn("edge: returning leased stock failed; asking again", "sku", it.sku, "units", p.units, "err", err)
	}
}

// returnAll gives every unit the edge holds back to the pool (at Stop, once
// no order can take one).
func (l *leaser) returnAll(ctx context.Context) {
	for _, it := range l.s.items.all() {
		it.mu.Lock()
		it.foldReturned()
		it.mu.Unlock()
		if p := it.lease.pending; p != nil && !p.grant {
			l.giveBack(ctx, it, 0, p)
		}
		if rem := it.remaining(); rem > 0 && it.lease.pending == nil {
			l.giveBack(ctx, it, rem, nil)
		}
	}
}

// reclaim puts the units of leases expired longer than a delivery timeout
// ago back into the pool, once ingest has written every order produced
// until now. Waiting for ingest can take seconds under load: when there is
// something to reclaim, it runs on its own goroutine (one at a time), so
// grants and parked orders do not wait for it.
func (l *leaser) reclaim(ctx context.Context) {
	if !l.reclaiming.CompareAndSwap(false, true) {
		return
	}
	cfg := &l.s.cfg
	var skus []string
	err := l.call(ctx, func(ctx context.Context) (err error) {
		skus, err = ledger.ExpiredLeaseSKUs(ctx, l.s.pool, cfg.DeliveryTimeout)
		return err
	})
	if err != nil || len(skus) == 0 {
		if err != nil {
			slog.Warn("edge: looking for expired stock leases", "err", err)
		}
		l.reclaiming.Store(false)
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer l.reclaiming.Store(false)
		ctx, cancel := context.WithTimeout(ctx, cfg.LeaseTTL/2)
		defer cancel()
		if err := l.s.waitIngest(ctx); err != nil {
			slog.Debug("edge: not reclaiming expired leases yet", "err", err)
			return
		}
		got, err := ledger.ReclaimExpiredLeases(ctx, l.s.pool, cfg.DeliveryTimeout)
		for _, r := range got {
			leaseReclaimedTotal.Add(int(r.Units))
			slog.Info("edge: reclaimed the units of an expired stock lease", "sku", r.SKU, "node", r.Node, "units", r.Units)
		}
		if err != nil {
			slog.Warn("edge: reclaiming expired stock leases", "err", err)
		}
	}()
}
