package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/order"
)

// Batches: POST /v1/orders/batch takes NDJSON, one order a line, and
// answers 200 with one NDJSON result line per input line, in input order.
//
// Each line goes through exactly what POST /v1/orders does, in the same
// order: rate limits, parsing, idempotency, shedding, purchase limit, stock,
// produce, and its result is what that order would have been answered. Per
// request, once: the method, the identity (one user places every line; 401
// refuses the whole batch), an unknown X-API-Key (401), the line count
// (-edge.maxBatchOrders; 413) and the body size (-edge.maxBodyBytes; 413 by
// the parser). Per line: the rate limits, so a batch of N orders spends N
// tokens of the user's, the IP's (or API key's) and the global budget, as N
// single orders would; a batch cannot multiply a user's order rate. Lines
// past a limit get their own 429 result line.
//
// The response leaves when every line has its final answer: an admitted
// line's after the broker acked its record (202), or refused it (the units
// are given back: 503), or its outcome is unknown (503: the units stay taken
// and the order is reconciled like a single one).
//
// Admission runs on the event loop (it needs the shard's stripes and id
// generator), a few microseconds a line; nothing waits there. A batch
// allocates its own records (it is not the single-order hot path), bounded
// by -edge.maxBatchOrders lines and -edge.maxBatchesInFlight batches.
var pathOrdersBatch = []byte("/v1/orders/batch")

var (
	batchesTotal         = metrics.NewCounter(`flashgate_edge_batches_total`)
	batchesRejectedTotal = metrics.NewCounter(`flashgate_edge_batches_rejected_total`)
	batchLinesTotal      = metrics.NewCounter(`flashgate_edge_batch_lines_total`)
)

// batch is one POST /v1/orders/batch on its way to its response.
type batch struct {
	s       *Server
	sl      *slot
	shard   int
	user    []byte // a copy: the request's bytes are gone after the dispatch
	startNs int64
	// pending counts the lines produced and not yet answered by the broker,
	// plus one while the event loop is still dispatching lines; whoever
	// takes it to zero answers the batch.
	pending atomic.Int32
	lines   []batchLine
}

// batchLine is one line's order and, once decided, its result. A produced
// line's fields belong to its produce promise until it answers.
type batchLine struct {
	b *batch

	// The result: status 0 until decided.
	status     int
	problem    string
	detail     string
	retryAfter int

	handoff // the order produced
}

func (ln *batchLine) refuse(status int, problem, detail string, retryAfter int) {
	ln.status, ln.problem, ln.detail, ln.retryAfter = status, problem, detail, retryAfter
}

// postBatch answers POST /v1/orders/batch.
func (s *Server) postBatch(cs *connState, r *request, closeAfter bool) {
	if string(r.method) != "POST" {
		cs.problem(405, probMethod, "use POST /v1/orders/batch", respHeader{close: closeAfter})
		return
	}
	user := s.identify(cs, r, closeAfter)
	if user == nil {
		return
	}
	if len(r.apiKey) > 0 {
		if _, ok := s.limits.apiKeys[string(r.apiKey)]; !ok {
			authFailuresTotal.Inc()
			cs.problem(401, probUnauthorized, errUnknownAPIKey.detail, respHeader{close: closeAfter})
			return
		}
	}
	if len(r.idemKey) > 0 {
		batchesRejectedTotal.Inc()
		cs.problem(400, probInvalidRequest, "a batch takes no Idempotency-Key header: give each line its own \"idempotency_key\"", respHeader{close: closeAfter})
		return
	}
	body := bytes.TrimSuffix(r.body, []byte("\n"))
	n := 0
	if len(body) > 0 {
		n = bytes.Count(body, []byte("\n")) + 1
	}
	switch limit := s.cfg.MaxBatchOrders; {
	case n == 0:
		batchesRejectedTotal.Inc()
		cs.problem(400, probInvalidRequest, "the body holds no order: send one JSON object {\"sku\": \"...\", \"qty\": N} per line", respHeader{close: closeAfter})
		return
	case n > limit:
		batchesRejectedTotal.Inc()
		cs.problem(413, probInvalidRequest, fmt.Sprintf("the batch has %d lines, at most %d are taken; split it, or see -edge.maxBatchOrders", n, limit), respHeader{close: closeAfter})
		return
	}
	if s.batchesInFlight.Add(1) > int64(s.cfg.MaxBatchesInFlight) {
		s.batchesInFlight.Add(-1)
		batchesRejectedTotal.Inc()
		cs.problem(503, probUnavailable, "too many batches are being answered; retry after Retry-After seconds (see -edge.maxBatchesInFlight)", respHeader{close: closeAfter, retryAfter: 1})
		return
	}
	batchesTotal.Inc()
	batchLinesTotal.Add(n)

	nowNs := time.Now().UnixNano()
	ip := s.clientIP(cs, r)
	b := &batch{s: s, shard: cs.shard.idx, user: append([]byte(nil), user...), startNs: nowNs, lines: make([]batchLine, n)}
	b.pending.Store(1)
	b.sl = cs.push()
	b.sl.state.Store(slotPending)
	b.sl.close = closeAfter
	ipText := ip.AppendTo(nil)
	for i := range b.lines {
		line, rest, _ := bytes.Cut(body, []byte("\n"))
		body = rest
		ln := &b.lines[i]
		ln.b = b
		if s.admitLine(cs, r, b, ln, bytes.TrimSuffix(line, []byte("\r")), ip.As16(), ipText, nowNs) {
			b.sl.close = true // draining: the lines after it are refused the same way
		}
	}
	if b.sl.close {
		cs.closing = true
	}
	b.lineDone(true)
}

// admitLine decides one line as POST /v1/orders would, and produces its
// order when admitted. It reports whether the connection must close after
// the response.
func (s *Server) admitLine(cs *connState, r *request, b *batch, ln *batchLine, line []byte, ip [16]byte, ipText []byte, nowNs int64) (closeConn bool) {
	if lim, ok := s.limits.check(b.shard, b.user, ip, r.apiKey, nowNs); !ok {
		if lim.total == nil {
			panic("BUG: unknown API key past the batch's check")
		}
		lim.total.Inc()
		ln.refuse(429, probRateLimited, lim.detail, lim.d.RetryAfterSeconds())
		return false
	}
	if len(line) == 0 {
		ordersInvalidTotal.Inc()
		ln.refuse(400, probInvalidRequest, "empty line: send one JSON object {\"sku\": \"...\", \"qty\": N} per line", 0)
		return false
	}
	sku, qty, key, detail := parseBatchLine(line)
	if detail != "" {
		ordersInvalidTotal.Inc()
		ln.refuse(400, probInvalidRequest, detail, 0)
		return false
	}
	d := s.noPark(s.admit(b.shard, &cs.admit, b.user, sku, qty, key, nowNs))
	switch {
	case d.status == 202: // an idempotent retry of an accepted order
		ln.status, ln.orderID = 202, d.replayID
		return false
	case d.status != 0:
		d.counter.Inc()
		ln.refuse(d.status, d.problem, d.detail, d.retryAfter)
		return d.closeConn
	}
	ln.orderID, ln.shard, ln.item, ln.epoch, ln.purchase, ln.qty, ln.probe = d.id, b.shard, d.item, d.epoch, d.purchase, qty, d.probe
	ln.idemHash, ln.startNs, ln.user = d.idemHash, b.startNs, b.user
	if len(d.idemK) > 0 {
		ln.idemK = append([]byte(nil), d.idemK...) // d.idemK is the connection's scratch
	}
	ln.sku = append([]byte(nil), sku...)
	val := order.AppendRecord(nil, d.id, b.user, sku, int32(qty), d.item.priceCents.Load(), key, ipText)
	ln.rec = kgo.Record{Key: b.user, Value: val}
	if s.cfg.UnsafeNoKafka { // benchmarks of the path up to the hand-off
		s.accept(&ln.handoff, time.Now().UnixNano(), ln.acceptedBody(), nil)
		ln.status = 202
		return false
	}
	b.pending.Add(1)
	s.produce(&ln.rec, ln.onProduced)
	return false
}

// onProduced is a line's produce promise (what slot.onProduced is for a
// single order). It runs on a franz-go goroutine, or inline on the event
// loop when the producer's buffer is full.
func (ln *batchLine) onProduced(_ *kgo.Record, err error) {
	b := ln.b
	b.s.answered()
	defer b.lineDone(false)
	defer b.s.produces.Add(-1)
	switch accepted, definite := b.s.settle(&ln.handoff, err, ln.acceptedBody(), nil); {
	case accepted:
		ln.status = 202
	case definite:
		ln.refuse(503, probUnavailable, "the order could not be handed to Kafka; retry this line with the same idempotency_key", 1)
	default:
		ln.refuse(503, probUnavailable, "the order's hand-off to Kafka has no answer; it is reconciled later: retry this line with the same idempotency_key to learn its outcome", 1)
	}
}

// acceptedBody is the single order's 202 body, kept under the line's key
// (when it has one): a retry through POST /v1/orders with the same key
// replays it.
func (ln *batchLine) acceptedBody() []byte {
	if len(ln.idemK) == 0 {
		return nil
	}
	return appendAccepted(nil, ln.orderID, ln.sku, ln.qty, ln.user)
}

// lineDone counts a line answered (or, onLoop, the end of the dispatch);
// the last one answers the batch.
func (b *batch) lineDone(onLoop bool) {
	if b.pending.Add(-1) != 0 {
		return
	}
	sl := b.sl
	body := make([]byte, 0, 96*len(b.lines))
	for i := range b.lines {
		body = b.lines[i].appendResult(body, i+1)
	}
	responsesTotal[200].Inc()
	sl.resp = appendResponse(sl.resp[:0], 200, &respHeader{contentType: "application/x-ndjson", close: sl.close}, body)
	b.s.batchesInFlight.Add(-1)
	if onLoop {
		sl.state.Store(slotReady) // flushed at the end of this OnTraffic
		return
	}
	sl.complete()
}

// appendResult appends the line's result, numbered n, and a newline.
func (ln *batchLine) appendResult(dst []byte, n int) []byte {
	if ln.status == 0 {
		panic("BUG: a batch answered with a line undecided")
	}
	dst = append(dst, `{"line":`...)
	dst = strconv.AppendInt(dst, int64(n), 10)
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(ln.status), 10)
	if ln.status == 202 {
		dst = append(dst, `,"order_id":"`...)
		dst = strconv.AppendInt(dst, ln.orderID, 10)
		return append(dst, "\"}\n"...)
	}
	dst = append(dst, `,"problem":`...)
	dst = order.AppendJSONString(dst, ln.problem)
	dst = append(dst, `,"detail":`...)
	dst = order.AppendJSONString(dst, ln.detail)
	if ln.retryAfter > 0 {
		dst = append(dst, `,"retry_after":`...)
		dst = strconv.AppendInt(dst, int64(ln.retryAfter), 10)
	}
	return append(dst, "}\n"...)
}

// parseBatchLine parses a batch line: POST /v1/orders's body (see
// parseOrderBody) with an optional "idempotency_key" (1-255 visible ASCII
// bytes, no escapes). The slices point into line.
func parseBatchLine(line []byte) (sku []byte, qty int64, key []byte, detail string) {
	p := jsonScanner{b: line}
	if !p.consume('{') {
		return nil, 0, nil, "a line must be a JSON object {\"sku\": \"...\", \"qty\": N, \"idempotency_key\": \"...\" (optional)}"
	}
	var haveSKU, haveQty, haveKey bool
	for first := true; ; first = false {
		if p.consume('}') {
			break
		}
		if !first && !p.consume(',') {
			return nil, 0, nil, "expected ',' or '}' after a field"
		}
		name, ok := p.plainString()
		if !ok || !p.consume(':') {
			return nil, 0, nil, "malformed field name"
		}
		switch string(name) {
		case "sku":
			if haveSKU {
				return nil, 0, nil, "duplicate field sku"
			}
			haveSKU = true
			if sku, ok = p.plainString(); !ok || !order.ValidSKU(sku) {
				return nil, 0, nil, "sku must be a string of 1-64 bytes of [A-Za-z0-9_.-]"
			}
		case "qty":
			if haveQty {
				return nil, 0, nil, "duplicate field qty"
			}
			haveQty = true
			if qty, ok = p.integer(); !ok || qty < 1 || qty > order.MaxQty {
				return nil, 0, nil, "qty must be an integer from 1 to 1000000"
			}
		case "idempotency_key":
			if haveKey {
				return nil, 0, nil, "duplicate field idempotency_key"
			}
			haveKey = true
			if key, ok = p.plainString(); !ok || !order.ValidIdemKey(key) {
				return nil, 0, nil, "idempotency_key must be a string of 1-255 visible ASCII bytes, without escapes"
			}
		default:
			return nil, 0, nil, "unknown field; only sku, qty and idempotency_key are allowed"
		}
	}
	p.skipSpace()
	if p.i != len(p.b) {
		return nil, 0, nil, "unexpected data after the JSON object"
	}
	if !haveSKU || !haveQty {
		return nil, 0, nil, "sku and qty are required"
	}
	return sku, qty, key, ""
}

// Bulk cancel (admin plane).

// bulkCancel answers POST /admin/v1/orders/cancel: the body is a JSON array
// of order ids (decimal strings, as the API gives them, or integers), at
// most ledger.MaxBulkCancel, each listed once. Every pending order among
// them is cancelled, whoever placed it, and its units come back to the sale
// through the stock release the ledger publishes (applied once by every
// edge). The answer is 200 with one result per id, in input order:
//
//	{"order_id":"…","status":200,"order":{…}}                         cancelled
//	{"order_id":"…","status":409,"problem":"invalid-transition",…}    not pending: left as it is
//	{"order_id":"…","status":409,"problem":"not-in-ledger-yet",…}     accepted, ingest has not written it yet
//	{"order_id":"…","status":404,"problem":"not-found",…}
func (a *Admin) bulkCancel(ctx *fasthttp.RequestCtx) {
	if !ctx.IsPost() {
		adminProblem(ctx, 405, probMethod, "use POST /admin/v1/orders/cancel with a JSON array of order ids")
		return
	}
	var raw []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(ctx.PostBody()))
	if err := dec.Decode(&raw); err != nil || dec.More() {
		adminProblem(ctx, 400, probInvalidRequest, `body must be a JSON array of order ids: ["<order_id>", ...]`)
		return
	}
	switch {
	case len(raw) == 0:
		adminProblem(ctx, 400, probInvalidRequest, "the list of order ids is empty")
		return
	case len(raw) > ledger.MaxBulkCancel:
		adminProblem(ctx, 413, probInvalidRequest, fmt.Sprintf("%d order ids, at most %d per request: split the list", len(raw), ledger.MaxBulkCancel))
		return
	}
	ids := make([]int64, len(raw))
	for i, v := range raw {
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		id, ok := parseOrderID(v)
		if !ok {
			adminProblem(ctx, 400, probInvalidRequest, fmt.Sprintf("element %d (%.40s) is not an order id", i, raw[i]))
			return
		}
		ids[i] = id
	}
	s := a.srv
	if s.pool == nil {
		adminProblem(ctx, 503, probUnavailable, "this edge has no ledger")
		return
	}
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := ledger.CancelByAdmin(c, s.pool, ids)
	switch {
	case errors.Is(err, ledger.ErrBulkInput):
		adminProblem(ctx, 400, probInvalidRequest, err.Error())
		return
	case err != nil:
		slog.Warn("edge: bulk cancel failed; nothing was cancelled", "orders", len(ids), "err", err)
		adminProblem(ctx, 503, probUnavailable, "the ledger cannot be written now; nothing was cancelled")
		return
	}
	cancelled := 0
	var tmp [128]byte
	var items []byte
	for i := range res {
		r := &res[i]
		if i > 0 {
			items = append(items, ',')
		}
		items = append(items, `{"order_id":"`...)
		items = strconv.AppendInt(items, r.OrderID, 10)
		items = append(items, `","status":`...)
		var illegal *ledger.IllegalTransitionError
		status, problem, detail := 200, "", ""
		switch {
		case r.Err == nil:
			cancelled++
		case errors.As(r.Err, &illegal):
			status, problem, detail = 409, probInvalidTransition, r.Err.Error()
		case errors.Is(r.Err, ledger.ErrNotFound):
			status, problem, detail = 404, probNotFound, "no such order"
			if _, _, _, ok := s.recent.get(r.OrderID, tmp[:0]); ok {
				status, problem, detail = 409, probNotYet, "the order is accepted but not in the ledger yet; retry in a moment"
			}
		default:
			panic(errors.Join(errors.New("BUG: unexpected bulk cancel result"), r.Err))
		}
		items = strconv.AppendInt(items, int64(status), 10)
		if status == 200 {
			items = append(items, `,"order":`...)
			items = appendOrder(items, &r.Record)
		} else {
			items = append(items, `,"problem":`...)
			items = order.AppendJSONString(items, problem)
			items = append(items, `,"detail":`...)
			items = order.AppendJSONString(items, detail)
		}
		items = append(items, '}')
	}
	if cancelled > 0 {
		slog.Info("edge: orders cancelled by an admin", "cancelled", cancelled, "listed", len(ids))
	}
	body := append([]byte(`{"cancelled":`), strconv.Itoa(cancelled)...)
	body = append(body, `,"results":[`...)
	body = append(append(body, items...), "]}\n"...)
	ctx.SetStatusCode(200)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}
