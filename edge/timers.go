package edge

import (
	"context"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// gnet has no deadlines, so each shard keeps its connections in a hashed
// timer wheel that only its event loop touches. The wheel is lazy: a request
// only stores its connection's new deadline (no list moves on the hot path);
// the loop's tick visits one bucket and either expires a connection or moves
// it to the bucket of its current deadline.

// tickInterval is the wheel's resolution: timeouts fire up to this late.
const tickInterval = 250 * time.Millisecond

// wheelBuckets covers wheelBuckets*tickInterval (64s) per turn; a deadline
// further away stays in its bucket for another turn.
const wheelBuckets = 256

// nowTick is the current tick number: one clock read (vDSO), once per
// OnTraffic, not per request.
func nowTick() int64 { return time.Now().UnixNano() / int64(tickInterval) }

func ticksOf(d time.Duration) int64 { return max(1, int64((d+tickInterval-1)/tickInterval)) }

type timerWheel struct {
	buckets [wheelBuckets][]wheelEntry
	done    int64 // last tick processed
}

// wheelEntry is a connection filed under tick at. A connection whose deadline
// moved earlier is filed again; the older entry no longer matches its wheelAt
// and is dropped when visited.
type wheelEntry struct {
	cs *connState
	at int64
}

// add files cs under its deadline. Loop only.
func (w *timerWheel) add(cs *connState) {
	cs.wheelAt = cs.deadline
	b := &w.buckets[cs.deadline%wheelBuckets]
	*b = append(*b, wheelEntry{cs, cs.deadline})
}

// reschedule is called after cs.deadline changed. Loop only.
func (w *timerWheel) reschedule(cs *connState) {
	if cs.deadline < cs.wheelAt {
		w.add(cs) // earlier than where it is filed: file it again
	}
	// Later: the entry it has moves it when visited.
}

// advance processes the ticks up to now, expiring connections whose deadline
// passed. Loop only.
func (w *timerWheel) advance(now int64, expire func(*connState) bool) {
	if w.done == 0 || now-w.done > wheelBuckets {
		w.done = now - wheelBuckets // first run, or a long stall: visit every bucket once
	}
	var moved []*connState
	for ; w.done < now; w.done++ {
		tick := w.done + 1
		idx := tick % wheelBuckets
		b := w.buckets[idx]
		keep := b[:0]
		for _, e := range b {
			cs := e.cs
			switch {
			case cs.closed.Load() || e.at != cs.wheelAt:
				// Gone, or filed again elsewhere: drop the entry.
			case e.at > tick:
				keep = append(keep, e) // a later turn of the wheel
			case cs.deadline > tick:
				moved = append(moved, cs) // pushed back since it was filed
			case !expire(cs):
				moved = append(moved, cs)
			}
		}
		clear(b[len(keep):])
		w.buckets[idx] = keep
		for _, cs := range moved {
			w.add(cs)
		}
		moved = moved[:0]
	}
}

// shard is the per-event-loop state.
type shard struct {
	srv   *Server
	idx   int
	loop  gnet.EventLoop
	wheel timerWheel
}

// Run implements gnet.Runnable: the tick, on the shard's loop.
func (sh *shard) Run(context.Context) error {
	sh.wheel.advance(nowTick(), sh.srv.expire)
	return nil
}

// runTicker ticks every shard's wheel on its own loop, until ctx ends.
func (s *Server) runTicker(ctx context.Context) {
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, sh := range *s.shards.Load() {
				_ = sh.loop.Execute(ctx, sh)
			}
		}
	}
}

// touch sets cs's deadline after traffic: the header-read timeout counts from
// the first byte of a request still incomplete (so a byte every few seconds
// does not keep it alive), the idle timeout from now otherwise.
func (s *Server) touch(cs *connState, partial bool) {
	now := nowTick()
	switch {
	case !partial:
		cs.partialSince = 0
		cs.deadline = now + s.idleTicks
	case cs.partialSince == 0:
		cs.partialSince = now
		cs.deadline = now + s.readTicks
	default:
		return
	}
	cs.shard.wheel.reschedule(cs)
}

// expire acts on a connection whose deadline passed, on its loop. It returns
// false when the connection lives on (its deadline was pushed back).
func (s *Server) expire(cs *connState) bool {
	if cs.n > 0 {
		// Responses are owed (bounded by -edge.deliveryTimeout): not idle.
		cs.deadline = nowTick() + s.idleTicks
		return false
	}
	if cs.partialSince != 0 {
		readTimeoutsTotal.Inc()
		cs.problem(408, probProtocol, protocolDetail(408), respHeader{close: true})
		_, _ = cs.c.Write(cs.out)
		cs.out = cs.out[:0]
	} else {
		idleClosesTotal.Inc()
	}
	_ = cs.c.Close()
	return true
}
