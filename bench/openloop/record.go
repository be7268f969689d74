package openloop

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Outcome classes of a request. Latencies are kept per class and overall.
const (
	class2xx = iota
	class3xx // and 1xx that ended a response: rare, kept apart so 2xx stays clean
	class4xx
	class5xx
	classError // no status: connect, write, read, timeout or protocol failure
	numClasses
)

var classNames = [numClasses]string{"2xx", "3xx", "4xx", "5xx", "error"}

func classOf(status int) int {
	switch {
	case status >= 200 && status < 300:
		return class2xx
	case status >= 400 && status < 500:
		return class4xx
	case status >= 500:
		return class5xx
	default:
		return class3xx
	}
}

// Error kinds, counted apart so a summary says what failed.
const (
	errKindConnect = iota
	errKindWrite
	errKindRead
	errKindTimeout
	errKindProtocol
	errKindClosed // the server closed before answering (EOF, or Connection: close with requests pipelined behind)
	numErrKinds
)

var errKindNames = [numErrKinds]string{"connect", "write", "read", "timeout", "protocol", "closed"}

func errKindOf(err error, reading bool) int {
	var ne net.Error
	switch {
	case errors.Is(err, errProtocol):
		return errKindProtocol
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return errKindTimeout
	case errors.Is(err, errCutResponse) || errors.Is(err, errClosedEarly) || isEOF(err):
		return errKindClosed
	case reading:
		return errKindRead
	default:
		return errKindWrite
	}
}

// Histogram range: 1 µs to an hour, 3 significant digits (~190 KB each).
const (
	histLowestUs  = 1
	histHighestUs = int64(time.Hour / time.Microsecond)
	histDigits    = 3
)

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histLowestUs, histHighestUs, histDigits)
}

// toUs rounds up, so a latency is never reported below what it was, and
// clamps to the histogram's range.
func toUs(d time.Duration) int64 {
	us := (int64(d) + 999) / 1000
	if us < histLowestUs {
		return histLowestUs
	}
	if us > histHighestUs {
		return histHighestUs
	}
	return us
}

// sample is one finished request, buffered per connection and recorded in
// the shared histograms in batches (see flushSamples).
type sample struct {
	latency, delay time.Duration // from the intended time to the response, and to the write
	status         int16         // 0: error
	class, errKind uint8
	measured       bool // false: a warm-up request, counted in the live progress only
}

// recorder holds every count and histogram of a run, shared by the
// connections under one mutex. Connections batch their samples, so the lock
// is taken a few hundred times per second, not per request.
type recorder struct {
	mu        sync.Mutex
	hist      [numClasses]*hdrhistogram.Histogram
	all       *hdrhistogram.Histogram
	delay     *hdrhistogram.Histogram // intended time -> write: generator lag plus waiting for a free connection
	interval  *hdrhistogram.Histogram // every response since the last Progress, warm-up included
	status    [600]uint64
	errs      [numErrKinds]uint64
	firstErr  [numErrKinds]string
	c         counts
	doneAll   uint64 // every finished request, warm-up included (live rate)
	lastProgN uint64
	lastProgT time.Duration
}

func newRecorder() *recorder {
	r := &recorder{all: newHist(), delay: newHist(), interval: newHist()}
	for i := range r.hist {
		r.hist[i] = newHist()
	}
	return r
}

// counts are a connection's counters, added to the recorder's in batches.
type counts struct {
	// Of the measured requests (by intended time):
	sent       uint64 // written
	unanswered uint64 // written, then no response when the run was cut
	unsent     uint64 // due in the window and never written
	// By wall clock, whatever the requests' intended times:
	wroteInWindow uint64 // requests written during the window
	doneInWindow  uint64 // responses read during the window
}

func (c *counts) add(o counts) {
	c.sent += o.sent
	c.unanswered += o.unanswered
	c.unsent += o.unsent
	c.wroteInWindow += o.wroteInWindow
	c.doneInWindow += o.doneInWindow
}

// add records a batch of samples and the batch's counters.
func (r *recorder) add(ss []sample, c counts) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.c.add(c)
	r.doneAll += uint64(len(ss))
	for i := range ss {
		s := &ss[i]
		lat := toUs(s.latency)
		_ = r.interval.RecordValue(lat)
		if !s.measured {
			continue
		}
		_ = r.hist[s.class].RecordValue(lat)
		_ = r.all.RecordValue(lat)
		_ = r.delay.RecordValue(toUs(s.delay))
		if s.class == classError {
			r.errs[s.errKind]++
		} else {
			r.status[s.status]++
		}
	}
}

// noteError keeps the first message of each error kind for the summary. It
// allocates, once per kind.
func (r *recorder) noteError(kind int, err error) {
	r.mu.Lock()
	if r.firstErr[kind] == "" {
		r.firstErr[kind] = err.Error()
	}
	r.mu.Unlock()
}

// Latency summarises one histogram.
type Latency struct {
	Count                    int64
	P50, P90, P99, P999, Max time.Duration
	Mean                     time.Duration
	hist                     *hdrhistogram.Histogram
}

func latencyOf(h *hdrhistogram.Histogram) Latency {
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	return Latency{
		Count: h.TotalCount(),
		P50:   us(h.ValueAtQuantile(50)),
		P90:   us(h.ValueAtQuantile(90)),
		P99:   us(h.ValueAtQuantile(99)),
		P999:  us(h.ValueAtQuantile(99.9)),
		Max:   us(h.Max()),
		Mean:  time.Duration(h.Mean() * float64(time.Microsecond)),
		hist:  h,
	}
}

// Histogram is the full latency histogram behind the summary, in
// microseconds (for reports and for merging runs). Do not modify it.
func (l Latency) Histogram() *hdrhistogram.Histogram { return l.hist }

// CountAbove is the number of requests slower than d (to the histogram's
// precision, 3 significant digits).
func (l Latency) CountAbove(d time.Duration) int64 {
	if l.hist == nil {
		return 0
	}
	limit := int64(d / time.Microsecond)
	var n int64
	for _, b := range l.hist.Distribution() {
		if b.From > limit {
			n += b.Count
		}
	}
	return n
}

// MarshalJSON writes the durations in microseconds.
func (l Latency) MarshalJSON() ([]byte, error) {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return json.Marshal(struct {
		Count int64   `json:"count"`
		P50   float64 `json:"p50_us"`
		P90   float64 `json:"p90_us"`
		P99   float64 `json:"p99_us"`
		P999  float64 `json:"p999_us"`
		Max   float64 `json:"max_us"`
		Mean  float64 `json:"mean_us"`
	}{l.Count, us(l.P50), us(l.P90), us(l.P99), us(l.P999), us(l.Max), us(l.Mean)})
}

// Result is what a run measured, warm-up excluded. Every request due in the
// measured window is exactly one of: a response (Status), an error (Errors),
// unanswered, or unsent:
//
//	Intended == Responses + Errors + Unanswered + Unsent
type Result struct {
	Addr     string        `json:"addr"`
	Conns    int           `json:"conns"`
	Pipeline int           `json:"pipeline"`
	Window   time.Duration `json:"-"` // measured window: from the end of warm-up to the last intended send time

	WindowSeconds float64 `json:"window_s"`
	Intended      uint64  `json:"intended"`  // requests due in the window
	Sent          uint64  `json:"sent"`      // written to a connection
	Responses     uint64  `json:"responses"` // answered with a status
	Errors        uint64  `json:"errors"`    // failed without a status (see ErrorKinds)
	Unanswered    uint64  `json:"unanswered"`
	Unsent        uint64  `json:"unsent"`
	// SentRate and Rate are the requests written and the responses read per
	// second of the window, by wall clock. They differ from Sent and
	// Responses over the window when the server cannot keep up: requests
	// written during the window may then be due before it (a warm-up backlog),
	// and requests due in it are sent after it or never (Unsent).
	SentRate float64 `json:"sent_per_s"`
	Rate     float64 `json:"responses_per_s"`

	Status      map[int]uint64    `json:"status"`                 // responses by status code
	ErrorKinds  map[string]uint64 `json:"error_kinds,omitempty"`  // errors by kind: connect, write, read, timeout, protocol, closed
	FirstErrors map[string]string `json:"first_errors,omitempty"` // the first error message of each kind

	// Latency from the intended send time to the end of the response, by
	// outcome ("2xx", "3xx", "4xx", "5xx", "error"; classes with no request
	// are left out) and overall ("all").
	Latency map[string]Latency `json:"latency"`
	// SendDelay is the time from the intended send time to the write: the
	// generator's own lag plus the wait for a free connection. Its p99 near
	// the latency's p99 says the connections, not the server, were the queue.
	SendDelay Latency `json:"send_delay"`
}

// Non2xx is the number of requests answered with a status outside 2xx, plus errors.
func (r *Result) Non2xx() uint64 {
	n := r.Errors
	for code, c := range r.Status {
		if code < 200 || code >= 300 {
			n += c
		}
	}
	return n
}

func (r *recorder) result(window time.Duration) *Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := &Result{
		Window:        window,
		WindowSeconds: window.Seconds(),
		Sent:          r.c.sent,
		Unanswered:    r.c.unanswered,
		Unsent:        r.c.unsent,
		Status:        map[int]uint64{},
		Latency:       map[string]Latency{"all": latencyOf(r.all.Clone())},
		SendDelay:     latencyOf(r.delay.Clone()),
	}
	for code, n := range r.status {
		if n > 0 {
			res.Status[code] = n
			res.Responses += n
		}
	}
	for k, n := range r.errs {
		if n > 0 {
			if res.ErrorKinds == nil {
				res.ErrorKinds, res.FirstErrors = map[string]uint64{}, map[string]string{}
			}
			res.ErrorKinds[errKindNames[k]] = n
			res.FirstErrors[errKindNames[k]] = r.firstErr[k]
			res.Errors += n
		}
	}
	for c, h := range r.hist {
		if h.TotalCount() > 0 {
			res.Latency[classNames[c]] = latencyOf(h.Clone())
		}
	}
	res.Intended = res.Responses + res.Errors + res.Unanswered + res.Unsent
	if s := window.Seconds(); s > 0 {
		res.SentRate = float64(r.c.wroteInWindow) / s
		res.Rate = float64(r.c.doneInWindow) / s
	}
	return res
}

// Progress is a live view of a run, for a line per second.
type Progress struct {
	Elapsed time.Duration // since the start, warm-up included
	Warmup  bool          // still in the warm-up
	// Cumulative over the measured window (0 during warm-up).
	Sent, Responses, Non2xx, Errors uint64
	// Over the interval since the previous call, warm-up included.
	Rate     float64       // finished requests per second
	P50, P99 time.Duration // latency from intended send time
	Max      time.Duration
	Queued   int // requests due and waiting for a free connection now
}

func (r *recorder) progress(now time.Duration) Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := Progress{Elapsed: now, Sent: r.c.sent}
	for code, n := range r.status {
		p.Responses += n
		if code < 200 || code >= 300 {
			p.Non2xx += n
		}
	}
	for _, n := range r.errs {
		p.Errors += n
	}
	p.Non2xx += p.Errors
	if dt := (now - r.lastProgT).Seconds(); dt > 0 {
		p.Rate = float64(r.doneAll-r.lastProgN) / dt
	}
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	p.P50, p.P99, p.Max = us(r.interval.ValueAtQuantile(50)), us(r.interval.ValueAtQuantile(99)), us(r.interval.Max())
	r.interval.Reset()
	r.lastProgN, r.lastProgT = r.doneAll, now
	return p
}
