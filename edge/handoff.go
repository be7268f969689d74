package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
)

// breaker sheds orders while Kafka keeps failing, so that they are refused
// with 503 at once, before any stock is taken, instead of each waiting for
// its delivery timeout.
//
//	closed     every order is produced
//	open       orders are refused until openUntil
//	half-open  after openUntil: one order at a time is produced as a probe;
//	           its success closes the breaker, its failure opens it again
//
// It opens after -edge.breakerFailures produce failures in a row spanning
// at least breakerMinFailSpan (the records of one refused batch fail
// together: that is one failure of the broker, not a broker that keeps
// failing), or when produces wait and none has completed for
// -edge.breakerStall (a broker that stopped answering fails nothing until
// the delivery timeout). Any success closes it. All methods are lock-free
// and safe from any goroutine.
const breakerMinFailSpan = 100 * time.Millisecond

type breaker struct {
	failures  int64 // in a row, to open
	cooldown  int64 // ns open before the next probe
	stall     int64 // ns without a completion, with produces waiting, to open
	inRow     atomic.Int64
	firstFail atomic.Int64 // ns of the first failure of the current row; 0 after a success
	openUntil atomic.Int64 // ns; 0 when closed
	probing   atomic.Bool  // a half-open probe is in flight
	// lastDone is when the last produce completed (or when produces last
	// started waiting on an idle producer); for stall detection.
	lastDone atomic.Int64
}

func newBreaker(cfg *Config) *breaker {
	b := &breaker{failures: int64(cfg.BreakerFailures), cooldown: int64(cfg.BreakerCooldown), stall: int64(cfg.BreakerStall)}
	b.lastDone.Store(time.Now().UnixNano())
	return b
}

// allow reports whether an order may be produced now, and whether it is the
// half-open probe; when not, retryAfter is the Retry-After in seconds.
func (b *breaker) allow(nowNs int64) (ok, probe bool, retryAfter int) {
	until := b.openUntil.Load()
	switch {
	case until == 0:
		return true, false, 0
	case nowNs < until:
		return false, false, int((until - nowNs + int64(time.Second) - 1) / int64(time.Second))
	case b.probing.CompareAndSwap(false, true):
		breakerProbesTotal.Inc()
		return true, true, 0
	default:
		return false, false, 1
	}
}

// cancelProbe frees the probe turn of an order that was refused after all.
func (b *breaker) cancelProbe(probe bool) {
	if probe {
		b.probing.Store(false)
	}
}

// done records a produce's outcome. Failures the edge caused itself (its
// buffer full) do not count.
func (b *breaker) done(nowNs int64, ok, probe bool) {
	b.lastDone.Store(nowNs)
	if probe {
		b.probing.Store(false)
	}
	if ok {
		b.inRow.Store(0)
		b.firstFail.Store(0)
		if b.openUntil.Swap(0) != 0 {
			slog.Info("edge: Kafka acks again; taking orders")
		}
		return
	}
	b.firstFail.CompareAndSwap(0, nowNs)
	n, span := b.inRow.Add(1), nowNs-b.firstFail.Load()
	if probe || n >= b.failures && span >= int64(breakerMinFailSpan) {
		b.open(nowNs, fmt.Sprintf("%d produce failures in a row over %v", n, time.Duration(span)))
	}
}

// check opens the breaker when produces wait and none completed for the
// stall time. pending is the number of produces waiting.
func (b *breaker) check(nowNs, pending int64) {
	last := b.lastDone.Load()
	if pending == 0 {
		b.lastDone.Store(nowNs) // idle: a stall counts from when produces start waiting
		return
	}
	if nowNs-last >= b.stall && b.openUntil.Load() == 0 {
		b.open(nowNs, fmt.Sprintf("no produce completed for %v with %d waiting", time.Duration(nowNs-last), pending))
	}
}

func (b *breaker) open(nowNs int64, why string) {
	if b.openUntil.Swap(nowNs+b.cooldown) == 0 {
		breakerOpensTotal.Inc()
		slog.Warn("edge: Kafka is failing; shedding orders with 503", "why", why, "probe_every", time.Duration(b.cooldown))
	}
}

// state is the breaker's state for status pages: closed, open or half-open.
func (b *breaker) state(nowNs int64) string {
	switch until := b.openUntil.Load(); {
	case until == 0:
		return "closed"
	case nowNs < until:
		return "open"
	default:
		return "half-open"
	}
}

// unknownOrder is an order whose produce outcome is unknown (a timeout, a
// connection lost mid-request): its record may or may not be in Kafka. Its
// stock stays taken until reconciliation finds out.
type unknownOrder struct {
	id       int64
	atNs     int64
	shard    int
	item     *saleItem
	epoch    int64
	purchase *purchaseSlot
	qty      int64
	user     string
	sku      string
	idemK    []byte
	idemHash uint64
}

// unknownOrders is the queue of orders awaiting reconciliation, bounded by
// -edge.maxUnknownOrders. It is used off the event loops only.
type unknownOrders struct {
	mu        sync.Mutex
	max       int
	pending   []unknownOrder
	resolving int // taken by takeSettled, not yet resolved or put back
}

// add queues an order; when the queue is full the order is only logged: its
// stock stays taken until the edge restarts and rebuilds stock from the
// ledger (never oversold, maybe undersold).
func (u *unknownOrders) add(o unknownOrder) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.pending)+u.resolving >= u.max {
		return false
	}
	u.pending = append(u.pending, o)
	unknownPending.Set(float64(len(u.pending) + u.resolving))
	return true
}

// takeSettled removes and returns the orders that failed before cutoff.
func (u *unknownOrders) takeSettled(cutoffNs int64) []unknownOrder {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out, keep []unknownOrder
	for _, o := range u.pending {
		if o.atNs <= cutoffNs {
			out = append(out, o)
		} else {
			keep = append(keep, o)
		}
	}
	u.pending = keep
	u.resolving += len(out)
	return out
}

// resolved ends the resolution of n orders taken by takeSettled.
func (u *unknownOrders) resolved(n int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.resolving -= n
	unknownPending.Set(float64(len(u.pending) + u.resolving))
}

// putBack returns orders whose resolution failed, to try again later.
// holds reports how many orders of unknown outcome of item await
// reconciliation.
func (u *unknownOrders) holds(item *saleItem) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, o := range u.pending {
		if o.item == item {
			n++
		}
	}
	return n + u.resolving // being resolved: item unknown, count them all
}

func (u *unknownOrders) putBack(os []unknownOrder) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pending = append(os, u.pending...)
	u.resolving -= len(os)
}

// len is the number of orders awaiting reconciliation, including those
// being resolved now.
func (u *unknownOrders) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.pending) + u.resolving
}

// handoff is an order handed to Kafka: what its produce outcome acts on. A
// single order's slot and a batch line embed one.
type handoff struct {
	rec      kgo.Record
	orderID  int64
	startNs  int64 // when the order was parsed
	shard    int
	item     *saleItem
	epoch    int64         // the item's lease epoch when the units were taken
	purchase *purchaseSlot // the buyer's counter, for SKUs with a per-user limit
	qty      int64
	probe    bool   // the breaker's half-open probe
	idemK    []byte // the idempotency cache key; empty without Idempotency-Key
	idemHash uint64
	user     []byte
	sku      []byte
}

// produce counts an order in s.produces and s.atBroker and hands its record
// to the producer; its promise must call s.answered first. The producer
// lingers (-edge.produceLinger) so that orders arriving together share a
// batch; but an order that is the only one waiting for Kafka has nothing
// coming to share it: it is sent at once. Without that a quiet edge's orders
// would each wait the linger and more, since a Go timer under a millisecond
// fires after ~1.1 ms in an idle process (tuning.md).
func (s *Server) produce(rec *kgo.Record, promise func(*kgo.Record, error)) {
	s.produces.Add(1)
	alone := s.atBroker.Add(1) == 1
	s.prod.TryProduce(context.Background(), rec, promise)
	if !alone || s.cfg.ProduceLinger == 0 {
		return
	}
	if leader, _, _ := s.prod.PartitionLeader(broker.TopicOrderCreated, 0); leader < 0 {
		// The producer does not know the topic's partitions yet (the
		// first orders): the record waits for them outside the
		// partitions a flush wakes, so flush until it left.
		go s.flushWhileLoading()
		return
	}
	// franz-go's only way to end a linger: a flush. With a context already
	// done it wakes the partitions' senders (which take every batch
	// buffered) and returns without waiting for the acks.
	_ = s.prod.Flush(sendNow)
}

// answered is the first thing a produce promise does: the broker's answer
// (or the producer's failure) is in.
func (s *Server) answered() { s.atBroker.Add(-1) }

// flushWhileLoading flushes for at most the linger: while a flush waits the
// producer lingers for no record.
func (s *Server) flushWhileLoading() {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ProduceLinger)
	defer cancel()
	_ = s.prod.Flush(ctx)
}

// sendNow is a context already done, for Flush calls that must not wait.
var sendNow = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// settle applies a produce outcome (err from the promise) to h and reports
// whether the order was accepted and, if not, whether it definitely failed.
// Accepted: the acceptance is recorded, body (the 202 body) kept for
// idempotent replays. Definitely failed: stock, purchase count and key are
// given back. Otherwise the outcome is unknown: the stock stays taken, the
// key answers 409 until reconciliation decides. scratch is a buffer the
// idempotency store may use.
func (s *Server) settle(h *handoff, err error, body, scratch []byte) (accepted, definite bool) {
	nowNs := time.Now().UnixNano()
	s.lastSettled.Store(nowNs)
	if err == nil {
		s.breaker.done(nowNs, true, h.probe)
		s.accept(h, nowNs, body, scratch)
		return true, false
	}
	if !errors.Is(err, kgo.ErrMaxBuffered) { // a full buffer is the edge's doing, not Kafka's
		s.breaker.done(nowNs, false, h.probe)
	} else {
		s.breaker.cancelProbe(h.probe)
	}
	if definiteFailure(err) {
		s.compensate(h.shard, h.item, h.epoch, h.purchase, h.idemK, h.qty)
		produceFailedTotal.Inc()
		return false, true
	}
	if len(h.idemK) > 0 {
		s.idem.unresolved(h.idemK, h.idemHash, h.orderID, scratch)
	}
	produceUnknownTotal.Inc()
	slog.Warn("edge: order outcome unknown; stock kept taken until reconciled", "order_id", h.orderID, "err", err)
	o := unknownOrder{
		id: h.orderID, atNs: nowNs, shard: h.shard, item: h.item, epoch: h.epoch, purchase: h.purchase, qty: h.qty,
		user: string(h.user), sku: string(h.sku), idemK: append([]byte(nil), h.idemK...), idemHash: h.idemHash,
	}
	if !s.unknown.add(o) {
		unknownUntrackedTotal.Inc()
		slog.Error("edge: too many orders awaiting reconciliation; this one keeps its stock taken until the edge restarts; see -edge.maxUnknownOrders", "order_id", o.id)
	}
	return false, false
}

// accept records an order the broker acknowledged (or, with
// -edge.unsafeNoKafka, admitted).
func (s *Server) accept(h *handoff, nowNs int64, body, scratch []byte) {
	orderDuration.Update(float64(nowNs-h.startNs) / 1e9)
	h.item.accepted.Add(1)
	if s.leases != nil {
		h.item.countAcked(h.epoch, h.qty)
	}
	ordersAcceptedTotal.Inc()
	s.recent.put(h.orderID, h.user, h.sku, h.qty)
	if len(h.idemK) > 0 {
		s.idem.finish(h.idemK, h.idemHash, h.orderID, body, scratch)
	}
}

// runHandoff watches the hand-off: it opens the breaker on a stall and
// reconciles unknown outcomes against the ledger once they have settled.
func (s *Server) runHandoff(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	nextReconcile := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.breaker.check(now.UnixNano(), s.produces.Load())
			s.unstick(now)
			if s.pool != nil && now.After(nextReconcile) {
				s.reconcile(ctx)
				nextReconcile = time.Now().Add(time.Second)
			}
		}
	}
}

// unstick is the last guard of the promise that every order is answered:
// when orders wait for the producer and none has been settled for twice the
// delivery timeout plus a second, the records the producer still holds have
// outlived every bound it was given (seen once in CI, with kfake dropping
// connections and holding produce requests: records stayed buffered with no
// request in flight). They are aborted: their orders get 503 and, their
// outcome being unknown, are reconciled against the ledger like a timeout.
func (s *Server) unstick(now time.Time) {
	limit := 2*s.cfg.DeliveryTimeout + time.Second
	if s.produces.Load() == 0 {
		s.lastSettled.Store(now.UnixNano()) // nothing waits: nothing is stuck
		return
	}
	if now.Sub(time.Unix(0, s.lastSettled.Load())) < limit || !s.aborting.CompareAndSwap(false, true) {
		return
	}
	n := s.prod.BufferedProduceRecords()
	slog.Error("edge: the Kafka producer has settled no order for too long; aborting the records it holds (their orders get 503 and are reconciled)",
		"waiting_orders", s.produces.Load(), "buffered_records", n, "for", limit)
	producerAbortsTotal.Inc()
	go func() {
		defer s.aborting.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DeliveryTimeout)
		defer cancel()
		if err := s.prod.AbortBufferedRecords(ctx); err != nil {
			slog.Error("edge: aborting the producer's records", "err", err)
		}
		s.lastSettled.Store(time.Now().UnixNano())
	}()
}

// reconcile resolves the unknown orders that failed at least
// -edge.reconcileAfter ago. By then the broker has appended their records
// or never will (it handles a produce request within its request timeout;
// the setting must exceed that). The end offsets of order.created are read,
// ingest is waited for until it has committed up to them, and then the
// ledger holds every order whose record is in Kafka: an order it holds
// landed (its key now replays the order), one it lacks never will, and its
// stock, purchase count and key are given back.
func (s *Server) reconcile(ctx context.Context) {
	batch := s.unknown.takeSettled(time.Now().Add(-s.cfg.ReconcileAfter).UnixNano())
	if len(batch) == 0 {
		return
	}
	if err := s.resolve(ctx, batch); err != nil {
		s.unknown.putBack(batch)
		slog.Warn("edge: reconciliation postponed", "orders", len(batch), "err", err)
		return
	}
	s.unknown.resolved(len(batch))
}

func (s *Server) resolve(ctx context.Context, batch []unknownOrder) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.waitIngest(ctx); err != nil {
		return err
	}
	ids := make([]int64, len(batch))
	for i, o := range batch {
		ids[i] = o.id
	}
	found, err := ledger.FindOrders(ctx, s.pool, ids)
	if err != nil {
		return err
	}
	var buf []byte
	for _, o := range batch {
		if found[o.id] {
			if len(o.idemK) > 0 {
				body := appendAccepted(buf[:0], o.id, []byte(o.sku), o.qty, []byte(o.user))
				s.idem.finish(o.idemK, o.idemHash, o.id, body, nil)
			}
			reconciledLandedTotal.Inc()
			slog.Info("edge: order of unknown outcome is in the ledger; it stands", "order_id", o.id)
			continue
		}
		s.compensate(o.shard, o.item, o.epoch, o.purchase, o.idemK, o.qty)
		reconciledReleasedTotal.Inc()
		slog.Info("edge: order of unknown outcome never reached Kafka; its stock is given back", "order_id", o.id, "sku", o.sku, "qty", o.qty)
	}
	return nil
}

// ingestBehind returns how many records of ends the ingest group has not
// committed yet.
// waitIngest returns once ingest has written every record order.created
// holds now (its end offsets, listed first) to the ledger, or ctx ends.
func (s *Server) waitIngest(ctx context.Context) error {
	adm := kadm.NewClient(s.prod)
	ends, err := adm.ListEndOffsets(ctx, broker.TopicOrderCreated)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("reading the end offsets of %s: %w", broker.TopicOrderCreated, err)
	}
	for {
		behind, err := s.ingestBehind(ctx, adm, ends)
		if err != nil {
			return err
		}
		if behind == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ingest group %q is %d records behind the offsets to check", s.cfg.IngestGroup, behind)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *Server) ingestBehind(ctx context.Context, adm *kadm.Client, ends kadm.ListedOffsets) (int64, error) {
	committed, err := adm.FetchOffsets(ctx, s.cfg.IngestGroup)
	if err != nil {
		return 0, fmt.Errorf("reading the offsets of ingest group %q: %w", s.cfg.IngestGroup, err)
	}
	var behind int64
	ends.Each(func(e kadm.ListedOffset) {
		at := int64(0)
		if c, ok := committed.Lookup(e.Topic, e.Partition); ok && c.At > 0 {
			at = c.At
		}
		if e.Offset > at {
			behind += e.Offset - at
		}
	})
	return behind, nil
}

// ReloadSKU sets sku's stock from the ledger: what `flashgate ledger
// reconcile -reconcile.repair` does when the edge holds units the ledger has
// no order for (a lost release, an order never written). The SKU is paused
// (orders get 503) while the edge waits for every produce in flight to be
// answered and for ingest to write everything in Kafka, then the ledger's
// count of the orders holding stock replaces the edge's. It refuses while
// orders of unknown outcome of the SKU await reconciliation (their units
// would come back twice).
func (s *Server) ReloadSKU(ctx context.Context, sku string) (SKUState, error) {
	it := s.items.lookup([]byte(sku))
	if it == nil {
		return SKUState{}, fmt.Errorf("the edge sells no sku %q", sku)
	}
	if s.leases != nil {
		return SKUState{}, fmt.Errorf("this edge leases its stock (-edge.leaseTTL): the ledger's pool and leases account for every unit; there is nothing to reload")
	}
	if n := s.unknown.holds(it); n > 0 {
		return SKUState{}, fmt.Errorf("%d orders of unknown outcome may hold units of %s; reload after they are reconciled (-edge.reconcileAfter)", n, sku)
	}
	if !it.paused.CompareAndSwap(false, true) {
		return SKUState{}, fmt.Errorf("sku %s is being reloaded already", sku)
	}
	defer it.paused.Store(false)
	ctx, cancel := context.WithTimeout(ctx, 2*s.cfg.DeliveryTimeout+30*time.Second)
	defer cancel()
	// An order admitted just before the pause is handed to the producer in
	// the same loop callback: once every loop has run the barrier, all of
	// this SKU's orders are counted in produces.
	for _, sh := range *s.shards.Load() {
		b := loopBarrier(make(chan struct{}))
		if err := sh.loop.Execute(ctx, b); err != nil {
			return SKUState{}, err
		}
		select {
		case <-b:
		case <-ctx.Done():
			return SKUState{}, ctx.Err()
		}
	}
	for s.produces.Load() > 0 {
		select {
		case <-ctx.Done():
			return SKUState{}, fmt.Errorf("produces still in flight: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	adm := kadm.NewClient(s.prod)
	ends, err := adm.ListEndOffsets(ctx, broker.TopicOrderCreated)
	if err == nil {
		err = ends.Error()
	}
	for err == nil {
		var behind int64
		if behind, err = s.ingestBehind(ctx, adm, ends); err == nil && behind == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = fmt.Errorf("ingest did not catch up: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil {
		return SKUState{}, err
	}
	items, err := ledger.LoadSaleItems(ctx, s.pool)
	if err != nil {
		return SKUState{}, err
	}
	for _, li := range items {
		if li.SKU == sku {
			it.setStock(li.Stock, li.TakenUnits)
			it.accepted.Store(li.Orders)
			it.releaseSeq.Store(li.ReleaseSeq)
			slog.Info("edge: stock reloaded from the ledger", "sku", sku, "stock", li.Stock, "taken_units", li.TakenUnits, "release_seq", li.ReleaseSeq)
			return skuState(it), nil
		}
	}
	return SKUState{}, fmt.Errorf("the ledger has no sale item %q", sku)
}

// loopBarrier is closed when an event loop runs it.
type loopBarrier chan struct{}

// Run implements gnet.Runnable.
func (b loopBarrier) Run(context.Context) error {
	close(b)
	return nil
}
