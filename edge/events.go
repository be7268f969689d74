package edge

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
)

// Order events as Server-Sent Events: GET /v1/orders/{id}/events answers the
// order's history so far, then every change as it happens, read from
// order.updated (what the ledger's outbox relay publishes). Each event is
//
//	id: <event id>
//	event: order
//	data: <the order.updated record, see docs/records.md>
//
// A stream is the last response of its connection (nothing after it is
// read). It stays in its pipeline slot, which flushes what the feed appended
// each time the connection is woken; a comment line every 15 s keeps proxies
// from closing it. Streams are bounded in number (-edge.maxEventStreams) and
// in what they may hold unsent (a client that stops reading is closed).

const (
	sseHeartbeat   = 15 * time.Second
	sseMaxBuffered = 64 << 10
	sseHistory     = 1000 // events sent on connect, at most
)

var sseHeader = []byte("HTTP/1.1 200 OK\r\nServer: flashgate\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\r\n")

// sseStream is one open stream. The feed appends to buf under mu and wakes
// the connection; the event loop moves buf to the socket (flushReady).
type sseStream struct {
	orderID int64
	sl      *slot
	mu      sync.Mutex
	buf     []byte
	ready   bool  // header and history are in buf: the feed may append
	last    int64 // highest event id in buf so far
	pending []sseEvent
	done    bool // the stream ends: flush and close the connection
}

type sseEvent struct {
	id    int64
	frame []byte
}

// eventHub routes order events to the streams watching each order.
type eventHub struct {
	mu      sync.Mutex
	streams map[int64][]*sseStream
	n       int
	max     int
}

func newEventHub(max int) *eventHub {
	return &eventHub{streams: map[int64][]*sseStream{}, max: max}
}

// add registers st, or returns false when the hub is full.
func (h *eventHub) add(st *sseStream) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n >= h.max {
		return false
	}
	h.streams[st.orderID] = append(h.streams[st.orderID], st)
	h.n++
	eventStreams.Set(float64(h.n))
	return true
}

func (h *eventHub) remove(st *sseStream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	list := h.streams[st.orderID]
	for i, x := range list {
		if x == st {
			list = append(list[:i], list[i+1:]...)
			h.n--
			break
		}
	}
	if len(list) == 0 {
		delete(h.streams, st.orderID)
	} else {
		h.streams[st.orderID] = list
	}
	eventStreams.Set(float64(h.n))
}

// each calls fn on the streams of order id (every stream when id is 0).
func (h *eventHub) each(id int64, fn func(*sseStream)) {
	h.mu.Lock()
	var list []*sseStream
	if id == 0 {
		for _, l := range h.streams {
			list = append(list, l...)
		}
	} else {
		list = append(list, h.streams[id]...)
	}
	h.mu.Unlock()
	for _, st := range list {
		fn(st)
	}
}

// appendSSE appends one event frame.
func appendSSE(dst []byte, id int64, data []byte) []byte {
	dst = append(dst, "id: "...)
	dst = strconv.AppendInt(dst, id, 10)
	dst = append(dst, "\nevent: order\ndata: "...)
	dst = append(dst, data...)
	return append(dst, "\n\n"...)
}

// push hands st an event from the feed.
func (st *sseStream) push(id int64, frame []byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.done:
		return
	case !st.ready:
		st.pending = append(st.pending, sseEvent{id, frame})
		if len(st.pending) > sseHistory {
			st.pending = st.pending[1:] // the history read will have them
		}
		return
	case id <= st.last:
		return // sent with the history already
	}
	st.last = id
	st.write(frame)
}

// write appends to buf and wakes the connection; a client that lets too
// much pile up is cut off. Called with mu held.
func (st *sseStream) write(b []byte) {
	if len(st.buf)+len(b) > sseMaxBuffered {
		slowReaderCloseTotal.Inc()
		st.done = true
	} else {
		st.buf = append(st.buf, b...)
	}
	st.sl.state.Store(slotReady)
	if !st.sl.cs.closed.Load() {
		_ = st.sl.cs.c.Wake(nil)
	}
}

// end finishes the stream: the connection closes after what is buffered.
func (st *sseStream) end() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.done {
		st.done = true
		st.sl.state.Store(slotReady)
		if !st.sl.cs.closed.Load() {
			_ = st.sl.cs.c.Wake(nil)
		}
	}
}

// flush moves what the stream holds to out. It reports whether the stream
// is over (then its slot is freed and the connection closed).
func (st *sseStream) flush(out []byte) ([]byte, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	out = append(out, st.buf...)
	st.buf = st.buf[:0]
	return out, st.done
}

// orderEvents answers GET /v1/orders/{id}/events.
func (s *Server) orderEvents(cs *connState, r *request, id int64, closeAfter bool) {
	user := s.identify(cs, r, closeAfter)
	if user == nil || !s.rateLimit(cs, user, s.clientIP(cs, r), r.apiKey, time.Now().UnixNano(), closeAfter) {
		return
	}
	sl := cs.push()
	sl.state.Store(slotPending)
	sl.close = true
	cs.closing = true // the stream is the connection's last response
	st := &sseStream{orderID: id, sl: sl}
	if !s.events.add(st) {
		sl.close = true
		sl.setProblem(503, probUnavailable, "too many event streams open; see -edge.maxEventStreams", 1)
		sl.state.Store(slotReady)
		return
	}
	sl.stream = st // set on the loop: only the loop reads it
	owner := string(user)
	go func() {
		// Subscribed first, then the history: nothing falls between them.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rec, err := ledger.GetOrder(ctx, s.reads, id)
		var history []ledger.Event
		if err == nil && rec.UserID == owner {
			history, err = ledger.OrderEvents(ctx, s.reads, id)
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		if err != nil || rec.UserID != owner {
			s.events.remove(st)
			status, h := 404, respHeader{contentType: "application/problem+json", close: true}
			body := appendProblem(nil, 404, probNotFound, "no such order")
			if err != nil && !errors.Is(err, ledger.ErrNotFound) {
				slog.Warn("edge: order events read failed", "order_id", id, "err", err)
				status, h.retryAfter = 503, 1
				body = appendProblem(nil, 503, probUnavailable, "the ledger cannot be read now")
			}
			responsesTotal[status].Inc()
			st.buf = appendResponse(st.buf, status, &h, body)
			st.done = true
			st.write(nil)
			return
		}
		responsesTotal[200].Inc()
		st.buf = append(st.buf, sseHeader...)
		for i := range history {
			ev := &history[i]
			st.buf = appendSSE(st.buf, ev.EventID, appendHistoryEvent(nil, ev))
			st.last = max(st.last, ev.EventID)
		}
		st.ready = true
		for _, ev := range st.pending {
			if ev.id > st.last {
				st.last = ev.id
				st.buf = append(st.buf, ev.frame...)
			}
		}
		st.pending = nil
		st.write(nil)
	}()
}

// appendHistoryEvent appends a past event of the order's history: the
// transition fields of an order.updated record (see docs/records.md).
func appendHistoryEvent(dst []byte, ev *ledger.Event) []byte {
	dst = append(dst, `{"event_id":"`...)
	dst = strconv.AppendInt(dst, ev.EventID, 10)
	dst = append(dst, `","order_id":"`...)
	dst = strconv.AppendInt(dst, ev.OrderID, 10)
	dst = append(dst, `","from":`...)
	dst = order.AppendJSONString(dst, ev.From)
	dst = append(dst, `,"status":`...)
	dst = order.AppendJSONString(dst, ev.To)
	dst = append(dst, `,"reason":`...)
	dst = order.AppendJSONString(dst, ev.Reason)
	dst = append(dst, `,"actor":`...)
	dst = order.AppendJSONString(dst, ev.Actor)
	dst = append(dst, `,"version":`...)
	dst = strconv.AppendInt(dst, int64(ev.Version), 10)
	dst = append(dst, `,"amount_cents":`...)
	dst = strconv.AppendInt(dst, ev.AmountCents, 10)
	dst = append(dst, `,"at":"`...)
	dst = order.AppendTime(dst, ev.At)
	return append(dst, `"}`...)
}

// runEventFeed reads order.updated from its end and hands each event to the
// streams of its order; every sseHeartbeat it sends every stream a comment.
func (s *Server) runEventFeed(ctx context.Context) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(s.cfg.Brokers...),
		kgo.ConsumeTopics(broker.TopicOrderUpdated),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()),
	}, s.cfg.KafkaOpts...)...)
	if err != nil {
		slog.Error("edge: no consumer of order events; event streams only send the history", "err", err)
		return
	}
	defer cl.Close()
	go func() {
		t := time.NewTicker(sseHeartbeat)
		defer t.Stop()
		beat := []byte(":\n\n")
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.events.each(0, func(st *sseStream) {
					st.mu.Lock()
					if st.ready && !st.done {
						st.write(beat)
					}
					st.mu.Unlock()
				})
			}
		}
	}()
	for ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			var ev struct {
				EventID string `json:"event_id"`
				OrderID string `json:"order_id"`
			}
			if json.Unmarshal(r.Value, &ev) != nil {
				return
			}
			id, err1 := strconv.ParseInt(ev.EventID, 10, 64)
			oid, err2 := strconv.ParseInt(ev.OrderID, 10, 64)
			if err1 != nil || err2 != nil {
				return
			}
			frame := appendSSE(nil, id, r.Value)
			s.events.each(oid, func(st *sseStream) { st.push(id, frame) })
		})
	}
}
