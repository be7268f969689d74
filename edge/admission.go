package edge

import (
	"github.com/VictoriaMetrics/metrics"
)

// decision is what admission decided about one order.
type decision struct {
	// status is 0 when the order is admitted (stock taken, to be produced);
	// 202 with replayID for an idempotent retry; else a refusal.
	status     int
	problem    string
	detail     string
	retryAfter int
	closeConn  bool             // the refusal also closes the connection
	counter    *metrics.Counter // counts this outcome

	id       int64
	item     *saleItem
	epoch    int64 // the item's lease epoch when its units were taken (leases.go)
	purchase *purchaseSlot
	idemK    []byte // points into the admitScratch
	idemHash uint64
	replayID int64
	replay   []byte // the stored 202 body, in the admitScratch
	probe    bool   // the order is the breaker's half-open probe
	// park: admitted without units, for the edge was out of leased units
	// while the ledger may have more: it waits for a grant (parked.go).
	park bool
}

// admitScratch holds buffers admission reuses; one per connection.
type admitScratch struct {
	idemK, idemVal []byte
}

func refuse(status int, problem, detail string, retryAfter int, c *metrics.Counter) decision {
	return decision{status: status, problem: problem, detail: detail, retryAfter: retryAfter, counter: c}
}

// admit decides an order of qty units of sku for user, placed on event loop
// shard at nowNs, with an optional Idempotency-Key. When it admits, the
// units are taken (stock and, for limited SKUs, the user's purchase count)
// and the key is claimed; compensate undoes exactly that. It does not
// allocate.
func (s *Server) admit(shard int, sc *admitScratch, user, sku []byte, qty int64, idemKey []byte, nowNs int64) decision {
	it := s.items.lookup(sku)
	switch {
	case it == nil:
		return refuse(404, probUnknownSKU, "no sale for this sku", 0, ordersUnknownSKUTotal)
	case !it.active(nowNs):
		return refuse(409, probSaleNotActive, "the sale of this sku is not open now", 0, ordersInactiveTotal)
	case it.paused.Load():
		return refuse(503, probUnavailable, "this sku's stock is being reconciled with the ledger; retry in a moment", 1, reconcilePausedTotal)
	case s.draining.Load():
		d := refuse(503, probUnavailable, "the edge is shutting down", 1, drainRefusedTotal)
		d.closeConn = true
		return d
	case s.leases != nil && !s.leases.valid(nowNs):
		return refuse(503, probUnavailable, "this edge cannot renew its stock leases with the ledger now; retry after Retry-After seconds", 1, leaseWaitTotal)
	}
	d := decision{id: s.gens[shard].Next(), item: it}
	if len(idemKey) > 0 {
		sc.idemK = appendIdemKey(sc.idemK[:0], user, idemKey)
		d.idemHash = s.idem.orderHash(sku, qty)
		out, firstID, v := s.idem.begin(sc.idemK, d.idemHash, d.id, sc.idemVal)
		sc.idemVal = v
		switch out {
		case idemReplay:
			idemReplaysTotal.Inc()
			return decision{status: 202, replayID: firstID, replay: v}
		case idemMismatch:
			return refuse(422, probIdemMismatch, "this Idempotency-Key was used for a different order", 0, idemMismatchTotal)
		case idemBusy:
			return refuse(409, probIdemInFlight, "the first request with this Idempotency-Key has no final answer yet; retry later", 1, idemBusyTotal)
		}
		d.idemK = sc.idemK
	}
	// Shedding comes before any unit is taken (taking and giving back could
	// show a false sold-out meanwhile), and after the key, so that a retry of
	// a finished order is answered from the cache even while Kafka is down.
	if !s.cfg.UnsafeNoKafka {
		if s.produces.Load() >= int64(s.cfg.MaxBufferedRecords) {
			s.abandonIdem(d.idemK)
			return refuse(503, probUnavailable, "too many orders are waiting for Kafka; retry after Retry-After seconds", 1, shedBufferTotal)
		}
		ok, probe, retryAfter := s.breaker.allow(nowNs)
		if !ok {
			s.abandonIdem(d.idemK)
			return refuse(503, probUnavailable, "Kafka is failing, orders are shed until it recovers; retry after Retry-After seconds", retryAfter, shedBreakerTotal)
		}
		d.probe = probe
	}
	// The user's purchase counter is reserved before the stock is taken, so
	// that a refusal never gives units back (which could show a false sold
	// out meanwhile). But a (user, SKU) counter, once claimed, stays for the
	// process's life, and after a sell-out most requests are for SKUs
	// without stock: those take the counter only if the stock, which then
	// almost always refuses them, lets them through (a moment's stale view
	// of the stripes); so the table holds the buyers, not everyone who tried.
	limit := int64(it.perUserLimit.Load())
	late := limit > 0 && it.remaining() < qty
	if limit > 0 && !late {
		if r := s.reservePurchase(&d, user, sku, qty, limit); r.status != 0 {
			return r
		}
	}
	d.epoch = it.leaseEpoch.Load()
	if !it.take(shard, qty) {
		if d.purchase != nil {
			d.purchase.release(qty)
			d.purchase = nil
		}
		if s.leases != nil && s.leases.mayGetMore(it) {
			if !d.probe && s.mayPark() {
				d.park = true // the caller parks it, or refuses it (noPark)
				return d
			}
			s.breaker.cancelProbe(d.probe)
			s.abandonIdem(d.idemK)
			it.wanted.Store(true)
			return refuseLeaseWait()
		}
		s.breaker.cancelProbe(d.probe)
		s.abandonIdem(d.idemK)
		return refuse(409, probSoldOut, "no stock left for this sku", 0, ordersSoldOutTotal)
	}
	if late {
		if r := s.reservePurchase(&d, user, sku, qty, limit); r.status != 0 {
			it.putBack(shard, qty, d.epoch, s.leases != nil)
			return r
		}
	}
	return d
}

func refuseLeaseWait() decision {
	return refuse(503, probUnavailable, "this edge is leasing more stock of this sku from the ledger; retry after Retry-After seconds", 1, leaseWaitTotal)
}

// noPark turns a decision to park into the refusal a caller that cannot
// park answers: 503 lease-wait.
func (s *Server) noPark(d decision) decision {
	if !d.park {
		return d
	}
	s.abandonIdem(d.idemK)
	d.item.wanted.Store(true)
	return refuseLeaseWait()
}

// reservePurchase counts qty units of sku for user in d.purchase; on a
// refusal it undoes the rest of d and returns the refusal (status 0: none).
func (s *Server) reservePurchase(d *decision, user, sku []byte, qty, limit int64) decision {
	var out purchaseOutcome
	switch d.purchase, out = s.purchases.reserve(user, sku, qty, limit); out {
	case purchaseOverLimit:
		s.breaker.cancelProbe(d.probe)
		s.abandonIdem(d.idemK)
		return refuse(409, probPurchaseLimit, "this order would take you past the per-user limit of this sku", 0, ordersLimitTotal)
	case purchaseTableFull:
		s.breaker.cancelProbe(d.probe)
		s.abandonIdem(d.idemK)
		return refuse(503, probUnavailable, "purchase limits cannot be counted for more buyers now; see -edge.purchaseSlots", 1, purchaseFullTotal)
	}
	return decision{}
}

// compensate undoes an admission whose order definitely failed: the units go
// back to the stock and the user's count, and the key is free for a retry.
func (s *Server) compensate(shard int, item *saleItem, epoch int64, purchase *purchaseSlot, idemK []byte, qty int64) {
	item.putBack(shard, qty, epoch, s.leases != nil) // with a lost lease: the ledger reclaims them
	if purchase != nil {
		purchase.release(qty)
	}
	s.abandonIdem(idemK)
}

// abandonIdem forgets an idempotency claim (nil: none) whose order was
// refused or definitely failed: a retry is a new attempt.
func (s *Server) abandonIdem(k []byte) {
	if len(k) > 0 {
		s.idem.abandon(k)
	}
}
