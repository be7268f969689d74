package replay

import (
	"errors"
	"io"
	"strconv"
	"time"

	"github.com/flashgate/flashgate/bench/openloop"
	"github.com/flashgate/flashgate/bench/trace"
)

// source turns trace records into HTTP requests for the open-loop runner,
// at the trace's times divided by the speed (or at a fixed rate). It runs
// on the runner's dispatcher goroutine only.
type source struct {
	tr     *trace.Reader
	rec    trace.Record
	speed  float64 // > 0: At/speed
	nsPer  float64 // > 0: fixed rate, request i at i*nsPer
	host   string
	prefix string // run id prefix of SKUs and idempotency keys
	keys   *keyMap
	limit  uint64 // stop after this many records (0: all)

	seq     uint64 // records read
	sent    uint64 // requests made (records minus skipped)
	skipped uint64 // polls and cancels of orders that got no id
	err     error  // the trace's read error, if it ended early
	body    []byte
	path    []byte
}

func (s *source) Next(r *openloop.Request) bool {
	for {
		if s.limit > 0 && s.seq >= s.limit {
			return false
		}
		if err := s.tr.Next(&s.rec); err != nil {
			if !errors.Is(err, io.EOF) {
				s.err = err
			}
			return false
		}
		seq := s.seq
		s.seq++
		rec := &s.rec
		var at time.Duration
		if s.nsPer > 0 {
			at = time.Duration(float64(s.sent) * s.nsPer)
		} else {
			at = time.Duration(float64(rec.At) / s.speed)
		}
		raw, ok := s.build(r.Raw[:0], rec)
		if !ok {
			s.skipped++
			continue
		}
		s.sent++
		r.At, r.Raw, r.Tag = at, raw, seq
		r.Lane = userLane(rec.User)
		r.Aux = appendAux(r.Aux[:0], rec)
		return true
	}
}

// userLane keeps each user on one edge when the replay is spread over
// several (a load balancer with user affinity: per-user limits and
// Idempotency-Keys are counted per edge). FNV-1a of the user id.
func userLane(user []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range user {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

// build appends the request for rec; false when it cannot be made (a cancel
// of an order that got no id).
func (s *source) build(dst []byte, rec *trace.Record) ([]byte, bool) {
	switch rec.Kind {
	case trace.KindOrder, trace.KindRetry:
		s.body = append(s.body[:0], `{"sku":"`...)
		s.body = append(s.body, s.prefix...)
		s.body = append(s.body, rec.SKU...)
		s.body = append(s.body, `","qty":`...)
		s.body = strconv.AppendInt(s.body, rec.Qty, 10)
		s.body = append(s.body, '}')
		dst = s.head(dst, "POST", "/v1/orders", rec)
		dst = append(dst, "Content-Type: application/json\r\n"...)
		if len(rec.Key) > 0 {
			dst = append(dst, "Idempotency-Key: "...)
			dst = append(dst, s.prefix...)
			dst = append(dst, rec.Key...)
			dst = append(dst, "\r\n"...)
		}
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, int64(len(s.body)), 10)
		dst = append(dst, "\r\n\r\n"...)
		return append(dst, s.body...), true
	case trace.KindPoll, trace.KindCancel:
		// A buyer polls or cancels an order they were given; one that got
		// no id (refused, or not answered yet) has nothing to poll or cancel.
		id, ok := s.keys.get(rec.User, rec.Key)
		if !ok {
			return dst, false
		}
		if rec.Kind == trace.KindPoll {
			s.path = strconv.AppendUint(append(s.path[:0], "/v1/orders/"...), id, 10)
			return append(s.head(dst, "GET", string(s.path), rec), "\r\n"...), true
		}
		s.path = strconv.AppendUint(append(s.path[:0], "/v1/orders/"...), id, 10)
		s.path = append(s.path, "/cancel"...)
		return append(s.head(dst, "POST", string(s.path), rec), "Content-Length: 0\r\n\r\n"...), true
	}
	return dst, false
}

// head appends the request line and the headers every request carries.
func (s *source) head(dst []byte, method, path string, rec *trace.Record) []byte {
	dst = append(dst, method...)
	dst = append(dst, ' ')
	dst = append(dst, path...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, s.host...)
	dst = append(dst, "\r\nX-User-ID: "...)
	dst = append(dst, rec.User...)
	dst = append(dst, "\r\nX-Forwarded-For: "...)
	dst = append(dst, rec.IP...)
	return append(dst, "\r\n"...)
}

// The Aux of a request carries what the outcome needs to know about it:
// kind, then user, sku, qty and key, each ended by a zero byte.
func appendAux(dst []byte, rec *trace.Record) []byte {
	dst = append(dst, byte(rec.Kind))
	dst = append(append(dst, rec.User...), 0)
	dst = append(append(dst, rec.SKU...), 0)
	dst = append(strconv.AppendInt(dst, rec.Qty, 10), 0)
	return append(append(dst, rec.Key...), 0)
}

type aux struct {
	kind           trace.Kind
	user, sku, key []byte
	qty            []byte
}

func parseAux(b []byte) (a aux) {
	if len(b) == 0 {
		return a
	}
	a.kind = trace.Kind(b[0])
	b = b[1:]
	next := func() []byte {
		for i, c := range b {
			if c == 0 {
				f := b[:i]
				b = b[i+1:]
				return f
			}
		}
		f := b
		b = nil
		return f
	}
	a.user, a.sku, a.qty, a.key = next(), next(), next(), next()
	return a
}
