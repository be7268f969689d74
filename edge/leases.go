package edge

import (
	"context"
	"errors"
	"log/slog"
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
//   - An edge that holds more than twice its need while the pool is empty
//     gives the excess back, for the edges that are selling.
//   - An edge with no units whose last grant found the pool not empty answers
//     503 + Retry-After (more stock is on its way), not sold out; sold out
//     means this edge and the pool are both empty.
//   - Leases are renewed every second (at most TTL/3); the renewal also says
//     which SKUs another edge found the pool short of lately, and an edge
//     holding more than twice its need of one gives the excess back.
//   - An edge that could not renew stops
//     selling its leased units TTL/4 before the ledger's expiry (by its own
//     clock, counted from before the renewal was sent); a lease found expired
//     is given up (its units leave the counters). The units of an order taken
//     under a lost lease are not given back if the order fails: the ledger
//     reclaims them.
//   - Every edge reclaims leases expired for longer than its delivery timeout
//     (the last produce of a dead edge has landed by then) once ingest has
//     caught up: their unsold units go back to the pool.
//   - On Stop, after every order in flight is answered, the edge returns what
//     it holds.
type leaser struct {
	s          *Server
	kick       chan struct{} // an event loop ran dry: top up now
	started    bool
	done       chan struct{} // closed when run returns
	validUntil int64         // ns by this edge's clock; the manager's own
	lastRenew  time.Time
	lastClaim  time.Time
	lastTerms  time.Time
}

// leaseStats is the manager's view of one item (only it touches them).
type leaseStats struct {
	lastAccepted int64
	lastAt       time.Time
	rate         float64 // orders per second, smoothed
	waitUntil    time.Time
}

func newLeaser(s *Server) *leaser {
	return &leaser{s: s, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// mayGetMore reports whether an order refused for want of units should be
// told to retry (the pool had units at the last grant), and wakes the manager.
// It runs on an event loop: it never blocks.
func (l *leaser) mayGetMore(it *saleItem) bool {
	if it.poolEmpty.Load() {
		return false
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return true
}

const leaseTick = 100 * time.Millisecond

func (l *leaser) run(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(leaseTick)
	defer t.Stop()
	for {
		l.step(ctx)
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
	if now.Sub(l.lastRenew) >= min(cfg.LeaseTTL/3, time.Second) {
		l.renew(ctx, now)
	}
	if now.UnixNano() >= l.validUntil {
		l.dropAll("the ledger could not be reached to renew the stock leases")
	}
	if now.Sub(l.lastTerms) >= time.Second {
		l.lastTerms = now
		l.refreshTerms(ctx)
	}
	if now.Sub(l.lastClaim) >= cfg.LeaseTTL/2 {
		l.lastClaim = now
		l.reclaim(ctx)
	}
	for _, it := range l.s.items.all() {
		l.topUp(ctx, it, now)
	}
}

// refreshTerms learns the sale items put (or changed) through other edges.
func (l *leaser) refreshTerms(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	items, err := ledger.SaleItemTerms(ctx, l.s.pool)
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
	ctx, cancel := context.WithTimeout(ctx, cfg.LeaseTTL/4)
	defer cancel()
	r, err := ledger.RenewLeases(ctx, l.s.pool, cfg.NodeID, cfg.LeaseTTL)
	if err != nil {
		slog.Warn("edge: renewing the stock leases failed; retrying", "err", err)
		return
	}
	l.lastRenew = sent
	l.validUntil = sent.Add(cfg.LeaseTTL - cfg.LeaseTTL/4).UnixNano()
	for _, sku := range r.Lost {
		if it := l.s.items.lookup([]byte(sku)); it != nil {
			l.drop(it, "the lease expired before it was renewed")
		}
	}
	for _, sku := range r.Starving {
		if it := l.s.items.lookup([]byte(sku)); it != nil {
			it.poolEmpty.Store(true) // another edge wants units: topUp gives the excess back
		}
	}
}

// drop gives up the units the edge holds of it: they are no longer its to
// sell (the ledger reclaims them).
func (l *leaser) drop(it *saleItem, why string) {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.leaseEpoch.Add(1)
	n := it.drain()
	it.stock.Add(-n)
	if n > 0 {
		leaseLostTotal.Add(int(n))
		slog.Warn("edge: stock lease lost; its units are reclaimed by the ledger", "sku", it.sku, "units", n, "why", why)
	}
}

func (l *leaser) dropAll(why string) {
	for _, it := range l.s.items.all() {
		if it.remaining() > 0 {
			l.drop(it, why)
		}
	}
}

// drain takes every unit out of the stripes and returns how many. Call with
// it.mu held.
func (it *saleItem) drain() int64 {
	var n int64
	for i := range it.stripes {
		n += it.stripes[i].takeUpTo(1 << 62)
	}
	return n
}

// topUp leases more units of it when it runs low, or gives back the excess
// while the pool is empty.
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
	if it.paused.Load() || (it.endsAtNs.Load() != 0 && now.UnixNano() >= it.endsAtNs.Load()) {
		return
	}
	need := max(cfg.LeaseMinBlock, int64(st.rate*cfg.LeaseHorizon.Seconds()+0.5))
	rem := it.remaining()
	switch {
	case rem < need/2+1 && now.After(st.waitUntil) && now.UnixNano() < l.validUntil:
		l.grant(ctx, it, need-rem, now)
	case rem > 2*need && it.poolEmpty.Load():
		l.giveBack(ctx, it, rem-need)
	}
}

func (l *leaser) grant(ctx context.Context, it *saleItem, want int64, now time.Time) {
	cfg := &l.s.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.LeaseTTL/4)
	defer cancel()
	g, err := ledger.LeaseStock(ctx, l.s.pool, it.sku, cfg.NodeID, want, cfg.LeaseTTL)
	switch {
	case errors.Is(err, ledger.ErrLeaseLost):
		it.lease.waitUntil = now.Add(time.Second) // until the ledger reclaims it
		l.drop(it, "the lease expired before it was renewed")
		return
	case err != nil:
		it.lease.waitUntil = now.Add(200 * time.Millisecond)
		slog.Warn("edge: leasing stock failed; retrying", "sku", it.sku, "err", err)
		return
	}
	it.poolEmpty.Store(g.Units < want && g.Pool <= 0)
	if it.poolEmpty.Load() {
		it.lease.waitUntil = now.Add(cfg.LeaseHorizon / 4) // the pool refills only by returns and cancellations
	}
	if g.Units == 0 {
		return
	}
	it.mu.Lock()
	it.spread(g.Units)
	it.stock.Add(g.Units)
	it.mu.Unlock()
	leaseGrantsTotal.Inc()
	leaseUnitsTotal.Add(int(g.Units))
}

// giveBack returns up to n units the edge holds of it to the pool.
func (l *leaser) giveBack(ctx context.Context, it *saleItem, n int64) {
	it.mu.Lock()
	defer it.mu.Unlock()
	var took int64
	for i := range it.stripes {
		took += it.stripes[i].takeUpTo(n - took)
	}
	if took == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, l.s.cfg.LeaseTTL/4)
	defer cancel()
	switch err := ledger.ReturnStock(ctx, l.s.pool, it.sku, l.s.cfg.NodeID, took); {
	case err == nil:
		it.stock.Add(-took)
		leaseReturnedTotal.Add(int(took))
	case errors.Is(err, ledger.ErrLeaseLost):
		it.leaseEpoch.Add(1)
		it.stock.Add(-took - it.drain())
	default:
		it.spread(took) // still ours
		slog.Warn("edge: returning leased stock failed", "sku", it.sku, "units", took, "err", err)
	}
}

// returnAll gives every unit the edge holds back to the pool (at Stop, once
// no order can take one).
func (l *leaser) returnAll(ctx context.Context) {
	for _, it := range l.s.items.all() {
		if rem := it.remaining(); rem > 0 {
			l.giveBack(ctx, it, rem)
		}
	}
}

// reclaim puts the units of leases that expired longer than a delivery
// timeout ago back into the pool, once ingest has written every order
// produced until now.
func (l *leaser) reclaim(ctx context.Context) {
	cfg := &l.s.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.LeaseTTL/2)
	defer cancel()
	before := time.Now().Add(-cfg.DeliveryTimeout) // by the ledger's clock, within the skew the TTL/4 margin covers
	if err := l.s.waitIngest(ctx); err != nil {
		slog.Debug("edge: not reclaiming expired leases yet", "err", err)
		return
	}
	got, err := ledger.ReclaimExpiredLeases(ctx, l.s.pool, before)
	for _, r := range got {
		leaseReclaimedTotal.Add(int(r.Units))
		slog.Info("edge: reclaimed the units of an expired stock lease", "sku", r.SKU, "node", r.Node, "units", r.Units)
	}
	if err != nil {
		slog.Warn("edge: reclaiming expired stock leases", "err", err)
	}
}
