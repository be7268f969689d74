package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/panjf2000/gnet/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/payment"
)

// Server is the edge: HTTP on gnet event loops, admission, Kafka hand-off.
type Server struct {
	gnet.BuiltinEventEngine
	cfg  Config
	lim  parseLimits
	pool *pgxpool.Pool
	// reads serves GET /v1/orders and /v1/orders/{id}: a read replica when
	// one is configured (SetReadPool), else pool.
	reads *pgxpool.Pool
	prod  *kgo.Client
	items *saleTable
	// leases is the stock lease manager (-edge.leaseTTL > 0), else nil.
	leases *leaser
	// purchases counts units per (user, SKU) for per-user limits.
	purchases *purchaseTable
	idem      *idemStore
	jwt       *jwtVerifier // --auth jwt
	limits    *limiters
	// recent answers GET for orders accepted but not yet in the ledger.
	recent *recentOrders
	gens   []*orderid.Generator // one per shard
	// breaker sheds orders while Kafka fails; unknown holds the orders whose
	// produce outcome is unknown, until reconciled.
	breaker *breaker
	unknown *unknownOrders
	// payments are the webhook providers by name.
	payments map[string]payment.Provider
	// events routes order events to the open event streams.
	events *eventHub
	// batchesInFlight counts the batches admitted and not answered yet.
	batchesInFlight atomic.Int64

	shardsMu sync.Mutex
	shards   atomic.Pointer[[]*shard] // index = shard number

	readTicks, idleTicks int64 // timeouts in wheel ticks
	maxInbound           int   // request bytes a connection may buffer
	connRefusal          []byte
	stopTicker           context.CancelFunc

	eng      gnet.Engine
	booted   chan struct{}
	runErr   chan error
	readSem  chan struct{}
	conns    atomic.Int64
	queued   atomic.Int64 // responses queued on connections, not yet written
	produces atomic.Int64 // records handed to Kafka whose clients do not have the answer yet
	// atBroker counts the records whose broker answer has not arrived: it
	// drops when a promise starts, produces only once the client was
	// answered, so a client's next order may find produces still at 1.
	atBroker atomic.Int64
	parked   atomic.Int64 // orders waiting for a lease grant (parked.go)
	draining atomic.Bool
	// lastSettled is when a produce outcome was last applied (settle), and
	// aborting is set while unstick aborts the producer's records.
	lastSettled atomic.Int64
	aborting    atomic.Bool
	stopGrace   atomic.Int64 // see SetStopGrace
	stopping    atomic.Bool  // Stop was called: no Resume
	stopOnce    sync.Once
	stopErr     error
}

// New builds an edge writing orders to cfg.Brokers and reading the ledger
// through pool. Call LoadSaleItems, then Start.
func New(cfg Config, pool *pgxpool.Pool) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		lim:       cfg.parseLimits(),
		pool:      pool,
		reads:     pool,
		items:     newSaleTable(cfg.MaxSKUs, cfg.loops()),
		purchases: newPurchaseTable(cfg.PurchaseSlots),
		idem:      newIdemStore(cfg.IdempotencyBytes),
		recent:    newRecentOrders(cfg.RecentOrders),
		breaker:   newBreaker(&cfg),
		unknown:   &unknownOrders{max: cfg.MaxUnknownOrders},
		events:    newEventHub(cfg.MaxEventStreams),
		booted:    make(chan struct{}),
		runErr:    make(chan error, 1),
		readSem:   make(chan struct{}, cfg.MaxReadsInFlight),
	}
	for i := 0; i < cfg.loops(); i++ {
		s.gens = append(s.gens, orderid.MustNew(cfg.NodeID, i))
	}
	s.payments = map[string]payment.Provider{}
	for _, p := range cfg.Payments {
		s.payments[p.Name()] = p
	}
	var err error
	if s.limits, err = newLimiters(&cfg); err != nil {
		return nil, err
	}
	if cfg.Auth == "jwt" {
		v, err := newJWTVerifier(cfg.JWT)
		if err != nil {
			return nil, err
		}
		s.jwt = v
	}
	if cfg.LeaseTTL > 0 {
		s.items.leased = true
		s.leases = newLeaser(s)
	}
	empty := []*shard{}
	s.shards.Store(&empty)
	s.readTicks, s.idleTicks = ticksOf(cfg.HeaderReadTimeout), ticksOf(cfg.IdleTimeout)
	// One whole request, plus what the pipeline holds unparsed.
	s.maxInbound = 2 * (cfg.MaxRequestLineBytes + cfg.MaxHeaderBytes + cfg.MaxBodyBytes)
	s.connRefusal = appendResponse(nil, 503, &respHeader{contentType: "application/problem+json", retryAfter: 1, close: true},
		appendProblem(nil, 503, probUnavailable, "too many connections; see -edge.maxConns"))
	prod, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.DefaultProduceTopic(broker.TopicOrderCreated),
		// A 202 means the record is on every in-sync replica.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		broker.Compression(cfg.ProduceCompressMin),
		kgo.ProducerLinger(cfg.ProduceLinger),
		kgo.MaxBufferedRecords(cfg.MaxBufferedRecords),
		kgo.MaxBufferedBytes(cfg.MaxBufferedBytes),
		kgo.ProducerBatchMaxBytes(int32(cfg.ProduceBatchBytes)),
		kgo.RecordDeliveryTimeout(cfg.DeliveryTimeout),
		// A record in a request the broker has not answered fails at its
		// delivery timeout too: the client is answered 503 in bounded time
		// and the order is reconciled (the edge never re-produces a record,
		// so the dedupe this gives up is not one it relies on; ingest
		// dedupes by order id).
		kgo.AllowIdempotentProduceCancellation(),
		// The delivery timeout is only checked before a request is written
		// and after its response: a broker that never answers is given up
		// on by these (the defaults, 10 s + 10 s, would keep clients 20 s).
		kgo.ProduceRequestTimeout(cfg.DeliveryTimeout / 2),
		kgo.RequestTimeoutOverhead(cfg.DeliveryTimeout / 2),
		// After a retriable error or a lost connection the producer waits
		// for fresh metadata, at most this often (default 5 s); measured:
		// with it, such records fail at the delivery timeout instead of 5 s.
		kgo.MetadataMinAge(cfg.DeliveryTimeout / 4),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), // keyed by user id
		kgo.WithHooks(batchMetrics{}),
	}, cfg.KafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("edge: kafka producer: %w", err)
	}
	s.prod = prod
	return s, nil
}

// SetReadPool serves the order queries (GET /v1/orders, /v1/orders/{id})
// from p, a read replica: it may lag the primary by its replication delay
// (an order just paid may read as pending_payment for that long). Call it
// before Start.
func (s *Server) SetReadPool(p *pgxpool.Pool) { s.reads = p }

// LoadSaleItems rebuilds the sale table from the ledger: each item's stock,
// less the units of the orders the ledger holds. Orders still in Kafka are not
// in the ledger yet: wait for ingest to catch up before calling this.
func (s *Server) LoadSaleItems(ctx context.Context) error {
	pairs := 0
	items, err := ledger.LoadSaleSnapshot(ctx, s.pool, func(user, sku string, units int64) error {
		pairs++
		if !s.purchases.set([]byte(user), []byte(sku), units) {
			return fmt.Errorf("the purchase table is full after %d (user, SKU) pairs; possible fix: raise -edge.purchaseSlots", pairs)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, it := range items {
		item, err := s.items.put(it.SaleItem, it.TakenUnits)
		if err != nil {
			return err
		}
		item.accepted.Store(it.Orders)
		item.releaseSeq.Store(it.ReleaseSeq) // releases above it are of orders TakenUnits counts
	}
	keys, err := s.loadIdempotencyKeys(ctx)
	if err != nil {
		return err
	}
	slog.Info("edge: sale items loaded from the ledger", "skus", len(items), "limited_purchases", pairs, "idempotency_keys", keys)
	return nil
}

// loadIdempotencyKeys puts the ledger's Idempotency-Keys of the current
// sales into the key cache as answered, with their 202s: a client that
// retries after the edge restarted (its cache is in memory) gets the order
// it retries, not a second order that the ledger would cancel as a
// duplicate. More keys than -edge.idempotencyBytes holds evict the oldest,
// as in service.
func (s *Server) loadIdempotencyKeys(ctx context.Context) (int, error) {
	n := 0
	var k, body []byte
	err := ledger.LoadIdempotencyKeys(ctx, s.pool, func(user, key, sku string, qty, orderID int64) error {
		n++
		k = appendIdemKey(k[:0], []byte(user), []byte(key))
		body = appendAccepted(body[:0], orderID, []byte(sku), qty, []byte(user))
		s.idem.finish(k, s.idem.orderHash([]byte(sku), qty), orderID, body, nil)
		return nil
	})
	return n, err
}

// Start serves HTTP on cfg.Addr and returns once the listener is up.
func (s *Server) Start() error {
	if s.cfg.UnsafeNoKafka {
		slog.Warn("edge: -edge.unsafeNoKafka is set: orders are answered 202 WITHOUT being recorded anywhere; for benchmarks only")
	}
	if s.leases != nil && (s.pool == nil || s.cfg.UnsafeNoKafka) {
		return errors.New("edge: stock leases (-edge.leaseTTL) need the ledger and Kafka")
	}
	loops := s.cfg.loops()
	reserveProcs(loops)
	go func() {
		s.runErr <- gnet.Run(s, "tcp://"+s.cfg.Addr,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(loops),
			gnet.WithReusePort(true),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithTCPKeepAlive(time.Minute),
			gnet.WithLogger(gnetLogger{}),
		)
	}()
	select {
	case <-s.booted:
		ctx, cancel := context.WithCancel(context.Background())
		s.stopTicker = cancel
		go s.runTicker(ctx)
		if !s.cfg.UnsafeNoKafka {
			if s.pool == nil {
				slog.Warn("edge: no ledger: orders of unknown produce outcome keep their stock taken (not reconciled)")
			}
			// Orders may come before runHandoff's first tick: nothing has
			// been waiting for longer than since now (from 0, unstick
			// aborted the first orders of an edge started under load).
			s.lastSettled.Store(time.Now().UnixNano())
			go s.runHandoff(ctx)
			if s.leases != nil {
				s.leases.started = true
				go s.leases.run(ctx)
			}
			go s.runReleases(ctx)
			if s.pool != nil {
				go s.runEventFeed(ctx)
			}
		}
		return nil
	case err := <-s.runErr:
		return fmt.Errorf("edge cannot serve on %s: %w; possible fix: --edge-addr with a free port", s.cfg.Addr, err)
	}
}

// Stop drains the edge: new connections and requests are refused (503), every
// order already handed to Kafka is waited for and answered, then the event
// loops stop and the producer is flushed and closed.
// Calling it again returns the first call's result.
func (s *Server) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() { s.stopErr = s.stop(ctx) })
	return s.stopErr
}

func (s *Server) stop(ctx context.Context) error {
	s.stopping.Store(true)
	err := s.Drain(ctx)
	if grace := time.Duration(s.stopGrace.Load()); grace > 0 && err == nil {
		// Keep answering (orders 503, everything with Connection: close) so
		// that clients leave for the edge that took over before the engine
		// stops and closes what is still open.
		select {
		case <-time.After(grace):
		case <-ctx.Done():
		}
	}
	for err == nil && s.queued.Load() > 0 {
		if ctx.Err() != nil {
			err = fmt.Errorf("edge: stopped with %d responses outstanding: %w", s.queued.Load(), ctx.Err())
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.stopTicker()
	if s.leases != nil && s.leases.started {
		<-s.leases.done
		if err == nil {
			s.leases.returnAll(ctx) // no order can take a unit now
		}
	}
	if n := s.unknown.len(); n > 0 {
		slog.Warn("edge: stopping with orders of unknown outcome not reconciled; the next start rebuilds their stock from the ledger", "orders", n)
	}
	if e := s.eng.Stop(ctx); e != nil && err == nil {
		err = e
	}
	<-s.runErr
	if e := s.prod.Flush(ctx); e != nil && err == nil {
		err = e
	}
	s.prod.Close()
	return err
}

// Drain stops taking orders: each new one is answered 503 + Retry-After
// with Connection: close (clients retry, on another edge), and it returns
// once every order already handed to Kafka has its answer. Other requests
// are still served, with Connection: close. Once it returned, everything
// this edge sold is in Kafka: another edge may load the stock from the ledger
// after ingest caught up (a handover). Stop ends the edge.
func (s *Server) Drain(ctx context.Context) error {
	s.draining.Store(true)
	s.events.each(0, (*sseStream).end)          // event streams end now: they would hold the drain
	for s.parked.Load()+s.produces.Load() > 0 { // the lease manager answers the parked ones now
		if ctx.Err() != nil {
			return fmt.Errorf("edge: draining with %d produces and %d orders waiting for stock outstanding: %w", s.produces.Load(), s.parked.Load(), ctx.Err())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// Resume takes orders again after a Drain, unless the edge is stopping:
// a handover that failed after draining this edge gives it back its work.
func (s *Server) Resume() bool {
	if s.stopping.Load() {
		return false
	}
	s.draining.Store(false)
	return true
}

// SetStopGrace makes Stop keep answering for d after the drain before it
// closes the connections, so that clients find the edge that took over
// (answered with Connection: close, they reconnect; closed while idle, a
// request they were sending would be lost).
func (s *Server) SetStopGrace(d time.Duration) { s.stopGrace.Store(int64(d)) }

// Close releases an edge that was never started.
func (s *Server) Close() { s.prod.Close() }

// Ready reports whether the edge takes orders.
func (s *Server) Ready() bool {
	select {
	case <-s.booted:
		return !s.draining.Load()
	default:
		return false
	}
}

// OnBoot implements gnet.EventHandler.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	close(s.booted)
	return gnet.None
}

// shardOf returns the shard of an event loop, registering it the first time
// (once per loop, not per request).
func (s *Server) shardOf(el gnet.EventLoop) *shard {
	for _, sh := range *s.shards.Load() {
		if sh.loop == el {
			return sh
		}
	}
	s.shardsMu.Lock()
	defer s.shardsMu.Unlock()
	cur := *s.shards.Load()
	for _, sh := range cur {
		if sh.loop == el {
			return sh
		}
	}
	if len(cur) >= len(s.gens) {
		panic("BUG: more event loops than configured")
	}
	sh := &shard{srv: s, idx: len(cur), loop: el}
	next := append(append([]*shard{}, cur...), sh)
	s.shards.Store(&next)
	return sh
}

// OnOpen implements gnet.EventHandler.
func (s *Server) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	// While draining, connections are still taken: their requests are
	// answered (orders 503) with Connection: close. Closing them unanswered
	// would fail requests that a handover can still route.
	if s.conns.Load() >= int64(s.cfg.MaxConns) {
		connsRejectedTotal.Inc()
		responsesTotal[503].Inc()
		return s.connRefusal, gnet.Close
	}
	connsOpenedTotal.Inc()
	connsOpen.Inc()
	s.conns.Add(1)
	var peer netip.Addr
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		peer = a.AddrPort().Addr().Unmap()
	}
	sh := s.shardOf(c.EventLoop())
	cs := newConnState(s, c, sh, peer)
	c.SetContext(cs)
	cs.deadline = nowTick() + s.idleTicks
	sh.wheel.add(cs)
	return nil, gnet.None
}

// OnClose implements gnet.EventHandler.
func (s *Server) OnClose(c gnet.Conn, _ error) gnet.Action {
	if cs, ok := c.Context().(*connState); ok { // refused connections have none
		s.conns.Add(-1)
		connsOpen.Dec()
		cs.closed.Store(true)
		for _, sl := range cs.slots {
			if sl != nil && sl.stream != nil {
				s.events.remove(sl.stream)
			}
		}
		s.queued.Add(-int64(cs.n)) // their completions find the connection closed
		cs.n = 0
		// The timer wheel may hold cs until its deadline: let its buffers go
		// now (a pipelining flood leaves up to -edge.maxOutputBytes in out).
		// Slots still waiting for Kafka are kept alive by their promises.
		cs.slots, cs.out, cs.scratch, cs.hdr = nil, nil, nil, nil
	}
	return gnet.None
}

// OnTraffic implements gnet.EventHandler: it writes the responses that became
// ready, then parses and serves the requests buffered, as many as the
// pipeline has room for.
func (s *Server) OnTraffic(c gnet.Conn) gnet.Action {
	cs := c.Context().(*connState)
	cs.flushReady()
	if !cs.closing && !cs.closeNow {
		buf, _ := c.Peek(-1)
		consumed := 0
		for cs.n < len(cs.slots) && !cs.closing && consumed < len(buf) {
			n, status := parseRequest(buf[consumed:], &cs.req, &s.lim)
			if status != 0 {
				cs.problem(status, probProtocol, protocolDetail(status), respHeader{close: true})
				consumed = len(buf)
				break
			}
			if n == 0 {
				break
			}
			s.serve(cs, &cs.req)
			consumed += n
		}
		_, _ = c.Discard(consumed)
		cs.flushReady() // what completed during the parse (refusals behind pending orders, inline completions)
		left := len(buf) - consumed
		s.touch(cs, left > 0)
		if left > s.maxInbound {
			// Only a full pipeline leaves more than a request unparsed: a
			// client that keeps sending without reading.
			inboundClosesTotal.Inc()
			return gnet.Close
		}
	}
	if len(cs.out) > 0 {
		_, _ = c.Write(cs.out)
		cs.out = cs.out[:0]
		if c.OutboundBuffered() > s.cfg.MaxOutputBytes {
			slowReaderCloseTotal.Inc()
			return gnet.Close
		}
	}
	if cs.closeNow {
		return gnet.Close
	}
	return gnet.None
}

// gnetLogger routes gnet's logging into slog; gnet's info lines are debug
// detail for us.
type gnetLogger struct{}

func (gnetLogger) Debugf(format string, args ...any) {
	slog.Debug("gnet: " + fmt.Sprintf(format, args...))
}
func (gnetLogger) Infof(format string, args ...any) {
	slog.Debug("gnet: " + fmt.Sprintf(format, args...))
}
func (gnetLogger) Warnf(format string, args ...any) {
	slog.Warn("gnet: " + fmt.Sprintf(format, args...))
}
func (gnetLogger) Errorf(format string, args ...any) {
	slog.Error("gnet: " + fmt.Sprintf(format, args...))
}
func (gnetLogger) Fatalf(format string, args ...any) {
	panic("gnet fatal: " + fmt.Sprintf(format, args...))
}
