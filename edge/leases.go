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
//   - Leases are renewed every second (at most TTL/3); the renewal also says
//     which SKUs another edge found the pool short of lately, and for two
//     seconds this edge keeps only what it sells in half a horizon (none
//     if it sells none) and gives the rest back.
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
	leaseRenewEvery   = time.Second
	leaseReclaimEvery = 2 * time.Second
)

func (l *leaser) run(ctx context.Context) {
	defer close(l.done)
	defer l.wg.Wait()
	// A previous process with this node id may have held units it no longer
	// has: end its leases before taking new ones.
	l.needExpire = true
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
	for _, it := range l.s.items.all() { // first: their waits are bounded whatever the ledger does
		if it.parked.head.Load() != nil {
			l.serveParked(it, now)
		}
	}
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
	if now.Sub(l.lastRenew) >= min(cfg.LeaseTTL/3, leaseRenewEvery) {
		l.renew(ctx, now)
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
}

// leaseWorkers is how many SKUs are topped up at once: each grant or return
// is a transaction of a few round trips, and a sale of a thousand SKUs
// starting at once must not wait for them one by one.
const leaseWorkers = 8

// topUpAll runs topUp for every item, leaseWorkers at a time (each item's
// lease state is touched by one of them only), and returns when all are done.
func (l *leaser) topUpAll(ctx context.Context) {
	items := l.s.items.all()
	work := make(chan *saleItem)
	var wg sync.WaitGroup
	for range min(leaseWorkers, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				l.topUp(ctx, it, time.Now())
			}
		}()
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
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
	err := l.call(ctx, func(ctx context.Context) (err error) {
		r, err = ledger.RenewLeases(ctx, l.s.pool, cfg.NodeID, cfg.LeaseTTL, l.reports())
		return err
	})
	if err != nil {
		slog.Warn("edge: renewing the stock leases failed; retrying", "err", err)
		return
	}
	l.lastRenew = sent
	for _, sku := range r.Lost {
		if it := l.s.items.lookup([]byte(sku)); it != nil {
			l.drop(it, "the lease expired before it was renewed")
		}
	}
	l.validUntil.Store(sent.Add(cfg.LeaseTTL - cfg.LeaseTTL/4).UnixNano())
	for _, sku := range r.Starving {
		if it := l.s.items.lookup([]byte(sku)); it != nil {
			it.lease.othersStarve = sent.Add(2 * time.Second) // topUp gives back what this edge does not need now
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
			r = append(r, ledger.Unsettled{SKU: it.sku, Units: it.openUnits()})
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
	it.newLeaseEpoch()
	n := it.drainAll()
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

// topUp leases more units of it when it runs low, or gives back the excess.
func (l *leaser) topUp(ctx context.Context, it *saleItem, now time.Time) {
	cfg := &l.s.cfg
	st := &it.lease
	if !st.lastAt.IsZero() {
		if dt := now.Sub(st.lastAt).Seconds(); dt > 0 {
			inst := float64(it.accepted.Load()-st.lastAccepted) / dt
			st.rate = 0.7*st.rate + 0.3*inst
		}
	}
	st.lastAccepted, st.lastAt = it.accepted.Load(), now
	if p := st.pending; p != nil {
		if p.grant {
			l.grant(ctx, it, p, now)
		} else {
			l.giveBack(ctx, it, 0, p)
		}
		return
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
	case rem < need/2+1 && now.After(st.waitUntil):
		l.grant(ctx, it, &leaseOp{op: l.op.Add(1), grant: true, units: need - rem}, now)
	case rem > 2*need && it.poolEmpty.Load():
		l.giveBack(ctx, it, rem-need, nil)
	}
}

// grant asks the ledger for p.units more units of it (again, if p was asked
// before and its answer was lost).
func (l *leaser) grant(ctx context.Context, it *saleItem, p *leaseOp, now time.Time) {
	cfg := &l.s.cfg
	var g ledger.Grant
	err := l.call(ctx, func(ctx context.Context) (err error) {
		g, err = ledger.LeaseStock(ctx, l.s.pool, it.sku, cfg.NodeID, p.units, cfg.LeaseTTL, p.op, it.openUnits())
		return err
	})
	switch {
	case errors.Is(err, ledger.ErrLeaseLost):
		it.lease.waitUntil = now.Add(time.Second) // until the ledger reclaims it
		l.drop(it, "the lease expired before it was renewed")
		return
	case err != nil:
		// It may have committed: ask again with the same number.
		it.lease.pending = p
		slog.Warn("edge: leasing stock failed; asking again", "sku", it.sku, "err", err)
		return
	}
	it.lease.pending = nil
	short := g.Units < p.units && g.Pool <= 0
	// Sold out only when no lease holds a unit either: not another edge
	// (it is told to give back, by the renewal's starving list), nor an
	// order of this one still waiting for Kafka or the ledger (it may fail
	// and give its unit back). Until then this edge asks again soon and
	// answers 503 + Retry-After meanwhile.
	it.poolEmpty.Store(short && g.Open == 0)
	switch {
	case it.poolEmpty.Load():
		it.lease.waitUntil = now.Add(cfg.LeaseHorizon / 4) // the pool refills only by cancellations and expiries now
	case short:
		it.lease.waitUntil = now.Add(200 * time.Millisecond)
	}
	if g.Units == 0 {
		if it.poolEmpty.Load() && it.parked.head.Load() != nil {
			l.serveParked(it, time.Now()) // sold out: they are told now
		}
		return
	}
	it.mu.Lock()
	it.spread(g.Units)
	it.stock.Add(g.Units)
	it.mu.Unlock()
	leaseGrantsTotal.Inc()
	leaseUnitsTotal.Add(int(g.Units))
	if it.parked.head.Load() != nil {
		l.serveParked(it, time.Now())
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
	skus, err := ledger.ExpiredLeaseSKUs(ctx, l.s.pool, cfg.DeliveryTimeout)
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
