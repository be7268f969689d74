package edge

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Parked orders (stock leases only). An order that finds this edge out of a
// SKU's leased units while the ledger's pool may still have some is not
// refused at once: it waits, parked like an order waiting for Kafka's ack,
// for the lease manager's next grant (-edge.leaseWait, 1 s by default). The
// manager serves the parked orders of a SKU after each of its grants and at
// every step: each takes its units and goes to Kafka, or is answered 409
// sold out once the ledger's pool is empty and no lease holds a unit, or 503
// lease-wait when its wait is over. Without this, an edge that ran dry
// answered 503 until a grant came back, and a client's retry a second later
// often found it dry again (the README's three-edge example: 57-61% of the
// requests were such 503s).
//
// A parked order holds what an order waiting for Kafka holds, except units:
// its slot (the response leaves in pipeline order), its Idempotency-Key
// (a retry meanwhile gets 409), its order id. Its per-user purchase count is
// taken only with its units. Parked orders count against
// -edge.maxBufferedRecords with the orders waiting for Kafka, so the wait is
// bounded in number as in time, and a drain waits for them too.
//
// Orders of a batch (POST /v1/orders:batch) are not parked: a line that
// finds the edge dry is answered 503 lease-wait.

// parkedList is a SKU's parked orders: a lock-free stack the event loops
// push onto and the lease manager takes whole (so no ABA), newest first.
type parkedList struct {
	head  atomic.Pointer[slot]
	units atomic.Int64 // the units they want: added to the next grant's ask
}

func (p *parkedList) push(sl *slot) {
	p.units.Add(sl.qty)
	for {
		old := p.head.Load()
		sl.parkNext = old
		if p.head.CompareAndSwap(old, sl) {
			return
		}
	}
}

// takeAll empties the list and returns its orders oldest first.
func (p *parkedList) takeAll() *slot {
	var oldest *slot
	for sl := p.head.Swap(nil); sl != nil; {
		next := sl.parkNext
		sl.parkNext = oldest
		oldest, sl = sl, next
	}
	return oldest
}

// mayPark reports whether an order may wait for a grant: parking is on and
// the orders parked or waiting for Kafka leave room under
// -edge.maxBufferedRecords.
func (s *Server) mayPark() bool {
	return s.leases != nil && s.cfg.LeaseWait > 0 &&
		s.produces.Load()+s.parked.Load() < int64(s.cfg.MaxBufferedRecords)
}

// park hands the order in sl, admitted without units, to the lease manager.
// It runs on the event loop; it never blocks.
func (s *Server) park(sl *slot, nowNs int64) {
	sl.parkedAt = nowNs
	s.parked.Add(1)
	ordersParkedTotal.Inc()
	sl.item.parked.push(sl)
	s.leases.wake()
}

// parkedTick is how often parked orders are looked at apart from grants:
// their waits end on time whatever the ledger and the lease manager do.
const parkedTick = 50 * time.Millisecond

// watchParked serves the parked orders every parkedTick until ctx ends.
func (l *leaser) watchParked(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(parkedTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, it := range l.s.items.all() {
				if it.parked.head.Load() != nil {
					l.serveParked(it, now)
				}
			}
		}
	}
}

// serveParked serves it's parked orders (see the top of this file): those
// whose units can be taken now go to Kafka; the others are answered when
// there is nothing more to wait for, or kept. The lease manager calls it
// after a grant and watchParked on its tick, maybe at once: each takes the
// orders it finds (takeAll), so every order is served by one of them.
func (l *leaser) serveParked(it *saleItem, now time.Time) {
	var keep []*slot
	for sl := it.parked.takeAll(); sl != nil; {
		next := sl.parkNext
		sl.parkNext = nil
		it.parked.units.Add(-sl.qty)
		if !l.unpark(it, sl, now.UnixNano()) {
			keep = append(keep, sl)
		}
		sl = next
	}
	for _, sl := range keep { // oldest first: the next takeAll serves them first among themselves
		it.parked.push(sl)
	}
}

// unpark takes the units of the parked order in sl and produces it, or
// answers it; it reports false when the order should wait on.
func (l *leaser) unpark(it *saleItem, sl *slot, nowNs int64) bool {
	s := l.s
	switch {
	case s.draining.Load():
		sl.close = true // as every order refused while draining: clients retry on another edge
		s.answerParked(sl, nowNs, 503, probUnavailable, "the edge is shutting down", 1, drainRefusedTotal)
		return true
	case !it.active(nowNs):
		s.answerParked(sl, nowNs, 409, probSaleNotActive, "the sale of this sku closed while the order waited for stock", 0, ordersInactiveTotal)
		return true
	}
	epoch := it.leaseEpoch.Load()
	if !it.paused.Load() && l.valid(nowNs) && it.take(sl.shard, sl.qty) {
		if limit := int64(it.perUserLimit.Load()); limit > 0 {
			var d decision // no key in it: answerParked frees the key, once
			if r := s.reservePurchase(&d, sl.user, sl.sku, sl.qty, limit); r.status != 0 {
				it.putBack(sl.shard, sl.qty, epoch, true)
				s.answerParked(sl, nowNs, r.status, r.problem, r.detail, r.retryAfter, r.counter)
				return true
			}
			sl.purchase = d.purchase
		}
		sl.epoch = epoch
		parkedWait.Update(float64(nowNs-sl.parkedAt) / 1e9)
		s.produce(&sl.rec, sl.promise) // counted in produces before parked drops: a drain sees no gap
		s.parked.Add(-1)
		return true
	}
	switch {
	case it.poolEmpty.Load():
		s.answerParked(sl, nowNs, 409, probSoldOut, "no stock left for this sku", 0, ordersSoldOutTotal)
	case nowNs-sl.parkedAt >= int64(s.cfg.LeaseWait):
		s.answerParked(sl, nowNs, 503, probUnavailable, "this edge is leasing more stock of this sku from the ledger; retry after Retry-After seconds", 1, leaseWaitTotal)
	default:
		return false
	}
	return true
}

// answerParked refuses the parked order in sl: its key is free for a retry.
func (s *Server) answerParked(sl *slot, nowNs int64, status int, problem, detail string, retryAfter int, c *metrics.Counter) {
	parkedWait.Update(float64(nowNs-sl.parkedAt) / 1e9)
	s.abandonIdem(sl.idemK)
	c.Inc()
	sl.setProblem(status, problem, detail, retryAfter)
	s.parked.Add(-1)
	sl.complete()
}
