package replay

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/klauspost/compress/zstd"

	"github.com/flashgate/flashgate/bench/openloop"
	"github.com/flashgate/flashgate/bench/trace"
)

// Outcomes of a request, in report order. A 202 is "accepted" the first
// time an order id is seen and "replayed" when a retry got an id already
// given; problem responses are named by their problem type.
const (
	outAccepted = iota
	outReplayed
	outOK
	outSoldOut
	outPurchaseLimit
	outSaleNotActive
	outRateLimited
	outUnavailable
	outInFlight
	outMismatch
	outUnknownSKU
	outNotFound
	outNotInLedger
	outInvalidTransition
	outInvalidRequest
	outUnauthorized
	outOther2xx
	outOther4xx
	outOther5xx
	outError
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	"accepted", "replayed", "ok", "sold-out", "purchase-limit", "sale-not-active", "rate-limited",
	"unavailable", "idempotency-in-flight", "idempotency-mismatch", "unknown-sku", "not-found",
	"not-in-ledger-yet", "invalid-transition", "invalid-request", "unauthorized",
	"other-2xx", "other-4xx", "other-5xx", "error",
}

var (
	problemTypeField = []byte(`"type":"`)
	orderIDField     = []byte(`"order_id":"`)
)

// problemOutcome maps a problem+json body's type to an outcome; -1 if the
// body has no type this replay knows.
func problemOutcome(body []byte) int {
	i := bytes.Index(body, problemTypeField)
	if i < 0 {
		return -1
	}
	t := body[i+len(problemTypeField):]
	end := bytes.IndexByte(t, '"')
	if end < 0 {
		return -1
	}
	t = t[:end]
	if j := bytes.LastIndexByte(t, '/'); j >= 0 {
		t = t[j+1:]
	}
	for o := outSoldOut; o <= outUnauthorized; o++ {
		if string(t) == outcomeNames[o] {
			return o
		}
	}
	return -1
}

// orderIDOf returns the order_id of a 202 body, 0 if it has none.
func orderIDOf(body []byte) uint64 {
	i := bytes.Index(body, orderIDField)
	if i < 0 {
		return 0
	}
	var id uint64
	for _, c := range body[i+len(orderIDField):] {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + uint64(c-'0')
	}
	return id
}

// keyMap remembers the order id each (user, idempotency key) was given, so
// that polls and cancels can name the order, and a retry answered with
// another id than the first shows at once. Sharded: connections write it
// concurrently while the dispatcher reads it.
type keyMap struct {
	shards [64]struct {
		mu sync.Mutex
		m  map[string]uint64
	}
}

func newKeyMap() *keyMap {
	km := &keyMap{}
	for i := range km.shards {
		km.shards[i].m = make(map[string]uint64)
	}
	return km
}

func keyOf(dst, user, key []byte) []byte {
	return append(append(append(dst, user...), 0), key...)
}

func (km *keyMap) shard(k []byte) int {
	h := uint32(2166136261)
	for _, c := range k {
		h = (h ^ uint32(c)) * 16777619
	}
	return int(h % uint32(len(km.shards)))
}

func (km *keyMap) get(user, key []byte) (uint64, bool) {
	var buf [320]byte
	k := keyOf(buf[:0], user, key)
	s := &km.shards[km.shard(k)]
	s.mu.Lock()
	id, ok := s.m[string(k)]
	s.mu.Unlock()
	return id, ok
}

// put records id for (user, key) unless it has one; it returns the id it
// had (0: none).
func (km *keyMap) put(user, key []byte, id uint64) uint64 {
	var buf [320]byte
	k := keyOf(buf[:0], user, key)
	s := &km.shards[km.shard(k)]
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev, ok := s.m[string(k)]; ok {
		return prev
	}
	s.m[string(k)] = id
	return 0
}

// maxSeconds bounds the per-second timeline (an hour); later seconds count
// in the last one.
const maxSeconds = 3600

type second struct {
	due, sent, done atomic.Uint64
	outcomes        [numOutcomes]atomic.Uint64
}

// sample is one finished request's latency, buffered per connection.
type sample struct {
	sec     int32
	doneMs  int32 // when it finished, ms from the start
	outcome uint8
	us      int64
}

// connState is what one connection's OnResponse calls accumulate before
// handing it to the shared recorder.
type connState struct {
	lastDone time.Duration
	samples  []sample
	lines    []byte // results lines not yet written
	_        [64]byte
}

// recorder collects the outcomes of a replay: counts per second and
// outcome, latency histograms per second and per outcome, the key map, and
// the results file (one line per answered request, for verification).
type recorder struct {
	keys    *keyMap
	secs    []second
	conns   []connState
	retryID atomic.Uint64 // retries answered with an order id other than the first

	mu     sync.Mutex // guards the histograms and the results writer
	perSec []*hdrhistogram.Histogram
	byOut  [numOutcomes]*hdrhistogram.Histogram
	all    *hdrhistogram.Histogram
	// acceptedAt holds when each new order was accepted (ms from the
	// start): the sale's pace, apart from a tail of released units resold.
	acceptedAt *hdrhistogram.Histogram
	results    *bufio.Writer
	zw         *zstd.Encoder
	lastSec    int
}

const flushSamples = 512

func newRecorder(conns int, results io.Writer) (*recorder, error) {
	r := &recorder{
		keys:   newKeyMap(),
		secs:   make([]second, maxSeconds),
		conns:  make([]connState, conns),
		perSec: make([]*hdrhistogram.Histogram, maxSeconds),
		all:    hdrhistogram.New(1, int64(time.Hour/time.Microsecond), 3),
		// 1 ms to an hour, 3 digits: within 0.1% of the time.
		acceptedAt: hdrhistogram.New(1, int64(time.Hour/time.Millisecond), 3),
	}
	for i := range r.byOut {
		r.byOut[i] = hdrhistogram.New(1, int64(time.Hour/time.Microsecond), 3)
	}
	for i := range r.conns {
		r.conns[i].samples = make([]sample, 0, flushSamples)
	}
	if results != nil {
		zw, err := zstd.NewWriter(results, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		r.zw, r.results = zw, bufio.NewWriterSize(zw, 256<<10)
	}
	return r, nil
}

func secOf(d time.Duration) int {
	s := int(d / time.Second)
	if s < 0 {
		return 0
	}
	if s >= maxSeconds {
		return maxSeconds - 1
	}
	return s
}

// onResponse is the runner's Config.OnResponse.
func (r *recorder) onResponse(conn int, resp *openloop.Response) {
	a := parseAux(resp.Aux)
	out, id := r.classify(resp, &a)
	done := secOf(resp.Done)
	r.secs[secOf(resp.At)].due.Add(1)
	r.secs[secOf(resp.Wrote)].sent.Add(1)
	s := &r.secs[done]
	s.done.Add(1)
	s.outcomes[out].Add(1)

	c := &r.conns[conn]
	c.lastDone = max(c.lastDone, resp.Done)
	us := int64((resp.Done - resp.At + time.Microsecond - 1) / time.Microsecond)
	c.samples = append(c.samples, sample{sec: int32(done), doneMs: int32(resp.Done / time.Millisecond), outcome: uint8(out), us: max(us, 1)})
	if r.results != nil {
		c.lines = appendResult(c.lines, resp, &a, out, id)
	}
	if len(c.samples) == cap(c.samples) {
		r.flush(c)
	}
}

// classify names the outcome of resp and, for a 202, the order id.
func (r *recorder) classify(resp *openloop.Response, a *aux) (int, uint64) {
	st := resp.Status
	switch {
	case st == 0:
		return outError, 0
	case st == 202 && (a.kind == trace.KindOrder || a.kind == trace.KindRetry):
		id := orderIDOf(resp.Body)
		if len(a.key) == 0 || id == 0 {
			return outAccepted, id
		}
		switch prev := r.keys.put(a.user, a.key, id); {
		case prev == 0:
			return outAccepted, id
		case prev != id:
			r.retryID.Add(1)
			return outAccepted, id
		default:
			return outReplayed, id
		}
	case st >= 200 && st < 300:
		if a.kind == trace.KindPoll || a.kind == trace.KindCancel {
			return outOK, 0
		}
		return outOther2xx, 0
	}
	if o := problemOutcome(resp.Body); o >= 0 {
		return o, 0
	}
	if st >= 500 {
		return outOther5xx, 0
	}
	return outOther4xx, 0
}

// appendResult appends the results line of one request:
//
//	seq kind user sku qty key status outcome order_id at_us done_us
func appendResult(dst []byte, resp *openloop.Response, a *aux, out int, id uint64) []byte {
	dash := func(dst, b []byte) []byte {
		if len(b) == 0 {
			return append(dst, '-')
		}
		return append(dst, b...)
	}
	dst = strconv.AppendUint(dst, resp.Tag, 10)
	dst = append(dst, ' ')
	dst = append(dst, a.kind.String()...)
	dst = append(dst, ' ')
	dst = dash(dst, a.user)
	dst = append(dst, ' ')
	dst = dash(dst, a.sku)
	dst = append(dst, ' ')
	dst = dash(dst, a.qty)
	dst = append(dst, ' ')
	dst = dash(dst, a.key)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(resp.Status), 10)
	dst = append(dst, ' ')
	dst = append(dst, outcomeNames[out]...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, id, 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(resp.At/time.Microsecond), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(resp.Done/time.Microsecond), 10)
	return append(dst, '\n')
}

// flush moves a connection's samples into the histograms and its results
// lines into the results file.
func (r *recorder) flush(c *connState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range c.samples {
		h := r.perSec[s.sec]
		if h == nil {
			// Two significant digits per second (~25 KB each) is plenty
			// for a chart; the totals keep three.
			h = hdrhistogram.New(1, int64(time.Hour/time.Microsecond), 2)
			r.perSec[s.sec] = h
		}
		_ = h.RecordValue(s.us)
		_ = r.byOut[s.outcome].RecordValue(s.us)
		_ = r.all.RecordValue(s.us)
		if s.outcome == outAccepted {
			_ = r.acceptedAt.RecordValue(max(int64(s.doneMs), 1))
		}
		r.lastSec = max(r.lastSec, int(s.sec))
	}
	c.samples = c.samples[:0]
	if r.results != nil && len(c.lines) > 0 {
		_, _ = r.results.Write(c.lines)
		c.lines = c.lines[:0]
	}
}

// finish flushes every connection's buffers and closes the results stream.
// Call it after the run, when no more responses come.
func (r *recorder) finish() error {
	for i := range r.conns {
		r.flush(&r.conns[i])
	}
	if r.results == nil {
		return nil
	}
	if err := r.results.Flush(); err != nil {
		return err
	}
	return r.zw.Close()
}

// lastDone is when the last response came in (after finish).
func (r *recorder) lastDone() time.Duration {
	var d time.Duration
	for i := range r.conns {
		d = max(d, r.conns[i].lastDone)
	}
	return d
}

// outcomeCount is the total of outcome o so far.
func (r *recorder) outcomeCount(o int) uint64 {
	var n uint64
	for i := range r.secs {
		n += r.secs[i].outcomes[o].Load()
	}
	return n
}
