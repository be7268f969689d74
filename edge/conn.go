package edge

import (
	"net/netip"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Slot states.
const (
	slotFree int32 = iota
	slotPending
	slotReady
)

// slot holds one request's response until it may leave: responses leave in
// request order even when their completions (Kafka acks, ledger reads) come
// back out of order on other goroutines.
//
// Ownership: while a slot is pending, its buffers belong to whoever completes
// it (the produce promise or the read goroutine); it hands them back to the
// event loop by storing slotReady and waking the connection.
type slot struct {
	cs    *connState
	state atomic.Int32
	resp  []byte // the whole response once ready
	close bool   // close the connection after this response

	// The order in flight (reused across requests: no allocation per order).
	handoff
	key, val []byte // the record's key (the user id) and value
	bodyOff  int    // where the 202 body starts in resp (stored for idempotent replays)
	promise  func(*kgo.Record, error)
	stream   *sseStream // an event stream holding this slot (GET /v1/orders/{id}/events)

	parkNext *slot // the next order parked for the same SKU (parked.go)
	parkedAt int64 // ns: when the order was parked
}

// connState is a connection's state; only its event loop touches it, except
// slots as described above and closed.
type connState struct {
	srv   *Server
	c     gnet.Conn
	shard *shard
	peer  netip.Addr

	deadline     int64 // tick at which it expires unless touched again
	wheelAt      int64 // tick it is filed under in the timer wheel
	partialSince int64 // tick of the first byte of an incomplete request; 0 = none

	// slots is a ring of MaxPipeline slots, each made the first time the
	// pipeline is that deep (then kept: no allocation per request). The
	// ring restarts at 0 whenever it is empty, so a connection that never
	// pipelines holds one slot (416 B), not MaxPipeline of them (26 KiB);
	// see TestHostileLoadKeepsServing.
	slots []*slot
	head  int
	n     int // slots in use, from head

	out      []byte // responses ready to be written this round
	closing  bool   // a Connection: close response is queued: read no more
	closeNow bool   // it was written: close after this write
	closed   atomic.Bool
	req      request
	scratch  []byte
	admit    admitScratch
	user     []byte // the verified user id (--auth jwt)
	hdr      []byte // extra response header lines
}

func newConnState(srv *Server, c gnet.Conn, shard *shard, peer netip.Addr) *connState {
	return &connState{srv: srv, c: c, shard: shard, peer: peer, slots: make([]*slot, srv.cfg.MaxPipeline)}
}

// push takes the next slot in request order. The caller checks room.
func (cs *connState) push() *slot {
	if cs.n == len(cs.slots) {
		panic("BUG: pipeline slots exhausted")
	}
	i := (cs.head + cs.n) % len(cs.slots)
	s := cs.slots[i]
	if s == nil {
		s = &slot{cs: cs}
		s.promise = s.onProduced
		cs.slots[i] = s
	}
	cs.n++
	cs.srv.queued.Add(1)
	return s
}

// respond queues a response that is ready now.
func (cs *connState) respond(status int, h *respHeader, body []byte) {
	responsesTotal[status].Inc()
	if h.close {
		cs.closing = true
	}
	if cs.n == 0 { // nothing ahead of it: straight to the output
		cs.out = appendResponse(cs.out, status, h, body)
		cs.closeNow = cs.closeNow || h.close
		return
	}
	s := cs.push()
	s.resp = appendResponse(s.resp[:0], status, h, body)
	s.close = h.close
	s.state.Store(slotReady)
}

// problem queues a problem+json response.
func (cs *connState) problem(status int, name, detail string, h respHeader) {
	h.contentType = "application/problem+json"
	cs.scratch = appendProblem(cs.scratch[:0], status, name, detail)
	cs.respond(status, &h, cs.scratch)
}

// flushReady moves the ready responses at the head of the queue to out.
func (cs *connState) flushReady() {
	for cs.n > 0 {
		s := cs.slots[cs.head]
		if s.state.Load() != slotReady {
			return
		}
		if s.stream != nil { // an event stream stays at the head until it ends
			var done bool
			if cs.out, done = s.stream.flush(cs.out); !done {
				return
			}
			cs.srv.events.remove(s.stream)
			s.stream, s.close, s.resp = nil, true, s.resp[:0]
		}
		cs.out = append(cs.out, s.resp...)
		closeAfter := s.close
		s.state.Store(slotFree)
		cs.head = (cs.head + 1) % len(cs.slots)
		cs.n--
		if cs.n == 0 {
			cs.head = 0 // reuse the slots made already
		}
		cs.srv.queued.Add(-1)
		if closeAfter {
			cs.closeNow = true
			return
		}
	}
}

// setProblem makes a problem+json response the slot's answer (its body
// built in sl.val, which the order no longer needs) and counts it.
func (sl *slot) setProblem(status int, name, detail string, retryAfter int) {
	responsesTotal[status].Inc()
	h := respHeader{contentType: "application/problem+json", retryAfter: retryAfter, close: sl.close}
	sl.val = appendProblem(sl.val[:0], status, name, detail)
	sl.resp = appendResponse(sl.resp[:0], status, &h, sl.val)
}

// complete hands a pending slot back to the event loop.
func (s *slot) complete() {
	s.state.Store(slotReady)
	if !s.cs.closed.Load() {
		_ = s.cs.c.Wake(nil) // OnTraffic flushes it; an error means the connection is gone
	}
}
