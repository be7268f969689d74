package edge

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/ratelimit"
)

var (
	pathOrders      = []byte("/v1/orders")
	pathOrdersSlash = []byte("/v1/orders/")
	pathPayments    = []byte("/v1/payments/")
	locationPrefix  = []byte("/v1/orders/")
	healthOK        = []byte(`{"status":"ok"}`)
	notReady        = []byte(`{"status":"not ready"}`)
)

// serve routes one parsed request. The request's slices are only valid for
// the duration of the call.
func (s *Server) serve(cs *connState, r *request) {
	closeAfter := !r.keepAlive || s.draining.Load()
	path := r.path
	switch {
	case bytes.Equal(path, pathOrders):
		switch string(r.method) {
		case "POST":
			s.postOrder(cs, r, closeAfter)
		case "GET":
			s.listOrders(cs, r, closeAfter)
		default:
			cs.problem(405, probMethod, "use POST /v1/orders to order, GET /v1/orders to list yours", respHeader{close: closeAfter})
		}
	case bytes.Equal(path, pathOrdersBatch): // before the order ids
		s.postBatch(cs, r, closeAfter)
	case bytes.HasPrefix(path, pathOrdersSlash):
		rest, action, _ := bytes.Cut(path[len(pathOrdersSlash):], []byte("/"))
		id, ok := parseOrderID(rest)
		switch {
		case !ok || (len(action) > 0 && string(action) != "cancel" && string(action) != "events"):
			cs.problem(404, probNotFound, "no such order", respHeader{close: closeAfter})
		case string(action) == "events" && string(r.method) != "GET":
			cs.problem(405, probMethod, "use GET /v1/orders/{id}/events", respHeader{close: closeAfter})
		case string(action) == "events":
			s.orderEvents(cs, r, id, closeAfter)
		case len(action) > 0 && string(r.method) != "POST":
			cs.problem(405, probMethod, "use POST /v1/orders/{id}/cancel", respHeader{close: closeAfter})
		case len(action) > 0:
			s.cancelOrder(cs, r, id, closeAfter)
		case string(r.method) != "GET":
			cs.problem(405, probMethod, "use GET", respHeader{close: closeAfter})
		default:
			s.getOrder(cs, r, id, closeAfter)
		}
	case bytes.HasPrefix(path, pathPayments):
		name, ok := bytes.CutSuffix(path[len(pathPayments):], []byte("/webhook"))
		switch {
		case !ok || len(name) == 0 || bytes.IndexByte(name, '/') >= 0:
			cs.problem(404, probNotFound, "no such endpoint", respHeader{close: closeAfter})
		case string(r.method) != "POST":
			cs.problem(405, probMethod, "use POST /v1/payments/{provider}/webhook", respHeader{close: closeAfter})
		default:
			s.webhook(cs, r, name, closeAfter)
		}
	case string(path) == "/healthz":
		cs.respond(200, &respHeader{close: closeAfter}, healthOK)
	case string(path) == "/readyz":
		if s.Ready() {
			cs.respond(200, &respHeader{close: closeAfter}, healthOK)
		} else {
			cs.respond(503, &respHeader{close: closeAfter, retryAfter: 1}, notReady)
		}
	default:
		cs.problem(404, probNotFound, "no such endpoint", respHeader{close: closeAfter})
	}
}

// parseOrderID parses a decimal order id (1-19 digits, no sign, no leading zero).
func parseOrderID(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 || b[0] == '0' {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	if n > 1<<63-1 {
		return 0, false
	}
	return int64(n), true
}

// identify returns the caller's user id, or nil after answering 401. With
// --auth jwt the id lives in cs.user until the next request.
func (s *Server) identify(cs *connState, r *request, closeAfter bool) []byte {
	if s.jwt != nil {
		user, err := s.jwt.user(r.auth, cs.user)
		if err != nil {
			authFailuresTotal.Inc()
			cs.problem(401, probUnauthorized, err.Error(), respHeader{close: closeAfter})
			return nil
		}
		cs.user = user
		return user
	}
	if !order.ValidUserID(r.userID) {
		cs.problem(401, probUnauthorized, "X-User-ID must be 1-64 bytes of [A-Za-z0-9_-]", respHeader{close: closeAfter})
		return nil
	}
	return r.userID
}

// rateLimit applies the rate limits to a request of user from ip; past one
// it answers 429 with Retry-After and the RateLimit headers, and returns false.
func (s *Server) rateLimit(cs *connState, user []byte, ip netip.Addr, apiKey []byte, nowNs int64, closeAfter bool) bool {
	lim, ok := s.limits.check(cs.shard.idx, user, ip.As16(), apiKey, nowNs)
	if ok {
		return true
	}
	if lim.total == nil { // an unknown API key
		authFailuresTotal.Inc()
		cs.problem(401, probUnauthorized, lim.detail, respHeader{close: closeAfter})
		return false
	}
	lim.total.Inc()
	cs.hdr = ratelimit.AppendHeaders(cs.hdr[:0], lim.name, lim.d, lim.limit.Burst, lim.limit.windowSec())
	cs.problem(429, probRateLimited, lim.detail, respHeader{close: closeAfter, retryAfter: lim.d.RetryAfterSeconds(), extra: cs.hdr})
	return false
}

// clientIP returns the client's address: the last X-Forwarded-For entry when
// the peer is a trusted proxy, else the peer itself.
func (s *Server) clientIP(cs *connState, r *request) netip.Addr {
	if len(r.xff) == 0 || !s.trusted(cs.peer) {
		return cs.peer
	}
	last := r.xff
	if i := bytes.LastIndexByte(last, ','); i >= 0 {
		last = last[i+1:]
	}
	last = bytes.Trim(last, " \t")
	var a netip.Addr
	if err := a.UnmarshalText(last); err != nil {
		return cs.peer
	}
	return a.Unmap()
}

func (s *Server) trusted(a netip.Addr) bool {
	for _, p := range s.cfg.TrustProxy {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// postOrder admits an order and hands it to Kafka; the 202 leaves when the
// broker acknowledged the record.
func (s *Server) postOrder(cs *connState, r *request, closeAfter bool) {
	user := s.identify(cs, r, closeAfter)
	if user == nil {
		return
	}
	ip, nowNs := s.clientIP(cs, r), time.Now().UnixNano()
	if !s.rateLimit(cs, user, ip, r.apiKey, nowNs, closeAfter) {
		return
	}
	sku, qty, detail := parseOrderBody(r.body)
	if detail != "" {
		ordersInvalidTotal.Inc()
		cs.problem(400, probInvalidRequest, detail, respHeader{close: closeAfter})
		return
	}
	if len(r.idemKey) > 0 && !order.ValidIdemKey(r.idemKey) {
		ordersInvalidTotal.Inc()
		cs.problem(400, probInvalidRequest, "Idempotency-Key must be 1-255 visible ASCII bytes", respHeader{close: closeAfter})
		return
	}
	d := s.admit(cs.shard.idx, &cs.admit, user, sku, qty, r.idemKey, nowNs)
	switch {
	case d.status == 202:
		cs.respond(202, &respHeader{location: locationPrefix, locationID: d.replayID, close: closeAfter}, d.replay)
		return
	case d.status != 0:
		d.counter.Inc()
		cs.problem(d.status, d.problem, d.detail, respHeader{close: closeAfter || d.closeConn, retryAfter: d.retryAfter})
		return
	}
	id, it := d.id, d.item

	sl := cs.push()
	sl.state.Store(slotPending)
	sl.close = closeAfter
	sl.orderID, sl.shard, sl.item, sl.epoch, sl.purchase, sl.qty, sl.startNs, sl.probe = id, cs.shard.idx, it, d.epoch, d.purchase, qty, nowNs, d.probe
	sl.idemK, sl.idemHash = append(sl.idemK[:0], d.idemK...), d.idemHash
	if closeAfter {
		cs.closing = true
	}
	sl.key = append(sl.key[:0], user...)
	sl.user = sl.key
	sl.sku = append(sl.sku[:0], sku...)
	if !s.cfg.UnsafeNoKafka { // no record without the hand-off
		cs.scratch = ip.AppendTo(cs.scratch[:0])
		sl.val = order.AppendRecord(sl.val[:0], id, user, sku, int32(qty), it.priceCents.Load(), r.idemKey, cs.scratch)
		sl.rec = kgo.Record{Key: sl.key, Value: sl.val}
	}

	// The 202 is built now, while the request bytes are valid; it leaves
	// only if the broker acks.
	body := appendAccepted(cs.scratch[:0], id, sku, qty, user)
	cs.scratch = body // keep the grown buffer: the next order appends without allocating
	sl.resp = appendResponse(sl.resp[:0], 202, &respHeader{location: locationPrefix, locationID: id, close: closeAfter}, body)
	sl.bodyOff = len(sl.resp) - len(body)

	if d.park { // no units yet: it waits for the next lease grant
		s.park(sl, nowNs)
		return
	}
	if s.cfg.UnsafeNoKafka { // benchmarks of the path up to the hand-off
		if cap(sl.val) < 512 { // the idempotency entry's buffer (no record grew it)
			sl.val = make([]byte, 0, 512)
		}
		s.accept(&sl.handoff, nowNs, sl.resp[sl.bodyOff:], sl.val[:0])
		responsesTotal[202].Inc()
		sl.state.Store(slotReady) // on the loop: flushed at the end of this OnTraffic
		return
	}
	s.produce(&sl.rec, sl.promise)
}

func appendAccepted(dst []byte, id int64, sku []byte, qty int64, user []byte) []byte {
	dst = append(dst, `{"order_id":"`...)
	dst = strconv.AppendInt(dst, id, 10)
	dst = append(dst, `","status":"accepted","sku":`...)
	dst = order.AppendJSONString(dst, sku)
	dst = append(dst, `,"qty":`...)
	dst = strconv.AppendInt(dst, qty, 10)
	dst = append(dst, `,"user_id":`...)
	dst = order.AppendJSONString(dst, user)
	return append(dst, '}')
}

// onProduced is the produce promise. It runs on a franz-go goroutine.
func (sl *slot) onProduced(_ *kgo.Record, err error) {
	s := sl.cs.srv
	s.answered()
	defer s.produces.Add(-1)
	if ok, _ := s.settle(&sl.handoff, err, sl.resp[sl.bodyOff:], sl.val[:0]); ok {
		responsesTotal[202].Inc()
		sl.complete()
		return
	}
	sl.setProblem(503, probUnavailable, "the order could not be handed to Kafka; retry with the same Idempotency-Key", 1)
	sl.complete()
}

// definiteFailure reports whether err means the record was certainly not
// written (so its stock may be given back).
func definiteFailure(err error) bool {
	if errors.Is(err, kgo.ErrMaxBuffered) {
		return true
	}
	var ke *kerr.Error
	return errors.As(err, &ke) && !ke.Retriable
}

// getOrder answers GET /v1/orders/{id} from the ledger, or from the
// recent-orders cache ("accepted") while the ledger does not have it yet.
func (s *Server) getOrder(cs *connState, r *request, id int64, closeAfter bool) {
	user := s.identify(cs, r, closeAfter)
	if user == nil || !s.rateLimit(cs, user, s.clientIP(cs, r), r.apiKey, time.Now().UnixNano(), closeAfter) {
		return
	}
	owner := string(user)
	s.ledgerCall(cs, closeAfter, func(ctx context.Context, buf []byte) (int, []byte) {
		rec, err := ledger.GetOrder(ctx, s.reads, id)
		switch {
		case err == nil && owner == rec.UserID:
			return 200, appendOrder(buf, &rec)
		case errors.Is(err, ledger.ErrNotFound):
			if body, ok := s.recentFor(id, owner, buf); ok {
				return 200, body // accepted, on its way to the ledger
			}
			return 404, appendProblem(buf, 404, probNotFound, "no such order")
		case err == nil: // another user's order is answered as if it did not exist
			return 404, appendProblem(buf, 404, probNotFound, "no such order")
		default:
			slog.Warn("edge: order read failed", "order_id", id, "err", err)
			return 503, appendProblem(buf, 503, probUnavailable, "the ledger cannot be read now")
		}
	})
}

// ledgerCall answers a request with ledger work done off the event loop, at
// most -edge.maxReadsInFlight at a time (past it 503 at once). call runs on
// its own goroutine under a 5 s deadline and returns the status and body,
// built in buf; the response leaves in pipeline order.
func (s *Server) ledgerCall(cs *connState, closeAfter bool, call func(ctx context.Context, buf []byte) (int, []byte)) {
	select {
	case s.readSem <- struct{}{}:
	default:
		readsRejectedTotal.Inc()
		cs.problem(503, probUnavailable, "too many ledger requests in flight; see -edge.maxReadsInFlight", respHeader{close: closeAfter, retryAfter: 1})
		return
	}
	sl := cs.push()
	sl.state.Store(slotPending)
	sl.close = closeAfter
	if closeAfter {
		cs.closing = true
	}
	go func() {
		defer func() { <-s.readSem }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		status, body := call(ctx, sl.val[:0])
		sl.val = body[:0]
		h := respHeader{close: sl.close}
		if status >= 400 {
			h.contentType = "application/problem+json"
		}
		if status == 503 {
			h.retryAfter = 1
		}
		responsesTotal[status].Inc()
		sl.resp = appendResponse(sl.resp[:0], status, &h, body)
		sl.complete()
	}()
}

// recentFor looks order id up in the recent-orders cache and, when owner
// placed it, returns its "accepted" body appended to buf.
func (s *Server) recentFor(id int64, owner string, buf []byte) ([]byte, bool) {
	var tmp [128]byte
	user, sku, qty, ok := s.recent.get(id, tmp[:0])
	if !ok || string(user) != owner {
		return nil, false
	}
	return appendAccepted(buf, id, sku, qty, user), true
}

func appendOrder(dst []byte, r *ledger.Record) []byte {
	dst = append(dst, `{"order_id":"`...)
	dst = strconv.AppendInt(dst, r.ID, 10)
	dst = append(dst, `","status":`...)
	dst = order.AppendJSONString(dst, r.Status)
	dst = append(dst, `,"sku":`...)
	dst = order.AppendJSONString(dst, r.SKU)
	dst = append(dst, `,"qty":`...)
	dst = strconv.AppendInt(dst, int64(r.Qty), 10)
	dst = append(dst, `,"user_id":`...)
	dst = order.AppendJSONString(dst, r.UserID)
	dst = append(dst, `,"price_cents":`...)
	dst = strconv.AppendInt(dst, r.PriceCents, 10)
	dst = append(dst, `,"created_at":"`...)
	dst = r.CreatedAt.UTC().AppendFormat(dst, order.TimeFormat)
	dst = append(dst, `","updated_at":"`...)
	dst = r.UpdatedAt.UTC().AppendFormat(dst, order.TimeFormat)
	return append(dst, `"}`...)
}
