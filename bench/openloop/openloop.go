// Package openloop is an open-loop HTTP/1.1 load generator: requests leave at
// the times a Source says (a fixed rate, or a recorded schedule), whatever the
// server's speed, and each latency is measured from the request's intended
// send time. A server that stalls therefore shows the stall in every request
// that was due during it, not only in the few that happened to be in flight
// (no "coordinated omission"): when all connections are busy, a due request
// waits in a bounded queue and its wait counts.
//
// Use:
//
//	src := openloop.NewRateSource(50000, 30*time.Second, build)
//	run, err := openloop.New(openloop.Config{Addr: "127.0.0.1:8080", Conns: 64}, src)
//	res, err := run.Run(ctx)
//
// It talks over raw keep-alive TCP connections with its own minimal response
// reader (status line, Content-Length, Connection: close; chunked bodies are
// refused with a clear error) rather than fasthttp's client. The timestamps
// are then taken right at the write and the read, with no client pool in
// between that queues requests out of sight (fasthttp's HostClient waits for
// a free connection itself, which would hide the very wait this package must
// count, or fail the request with ErrNoFreeConns). Requests already due can
// be pipelined in one write (Config.Pipeline), which HostClient does not do.
// And the steady state allocates nothing while the bytes sent are exactly the
// Source's, which a replay of a recorded trace needs, including requests a
// client library would refuse to build.
package openloop

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config of a run. The zero value of each field means its default.
type Config struct {
	// Addr is the server's host:port, or several, comma-separated: the
	// connections are spread over them, and a request goes to the address
	// of its Lane (a load balancer with affinity, e.g. by user).
	Addr string
	// Conns is the number of keep-alive connections, all opened before the
	// first request. A request due while every connection is busy waits for
	// one, and the wait counts as latency. Default 64.
	Conns int
	// Pipeline is the most requests one connection writes at once: a free
	// connection takes the requests already due, up to Pipeline, writes them
	// in one write and reads their responses before it takes more. Default 1
	// (no pipelining).
	Pipeline int
	// Queue is the most requests generated ahead of the connections (due, not
	// yet written). It bounds memory, not correctness: when it is full the
	// Source is read later, and those requests still count from their
	// intended times. Default 16384.
	Queue int
	// Warmup is sent at the same schedule but left out of the Result.
	Warmup time.Duration
	// Duration of the measured window after Warmup: no request due at or after
	// Warmup+Duration is sent, and requests due before it that no connection
	// could take by then are counted as unsent. 0 means until the Source ends.
	Duration time.Duration
	// Timeout for a batch's write and each of its responses; past it the
	// requests are errors ("timeout") and the connection is replaced.
	// Default 10s.
	Timeout time.Duration
	// Drain is how long the run waits, after the last request is due, for the
	// responses still outstanding and the requests still queued; then it cuts
	// the connections and counts what is left as unanswered or unsent.
	// Default 5s.
	Drain time.Duration
	// DialTimeout for each connection. Default 3s.
	DialTimeout time.Duration
	// OnResponse, if set, is called with the outcome of every request that
	// was due in the run and written or failed (warm-up included: see
	// Response.Measured), from the goroutine of the connection that sent it
	// (conn, 0..Conns-1), so calls for different connections run
	// concurrently. It must be quick: the connection sends nothing while
	// it runs. Requests never written (Result.Unsent) and those left
	// unanswered when Drain cut the run are not reported. Without
	// OnResponse, response bodies are skipped unread.
	OnResponse func(conn int, r *Response)
	// RedialInterval: after a failed dial, a connection fails its requests at
	// once ("connect" errors) instead of dialing again for this long, so a
	// server that is down costs neither it nor the generator a dial per
	// request. Default 100ms.
	RedialInterval time.Duration
}

// Limits of the configuration, to catch typos before they cost memory.
const (
	maxConns    = 100000
	maxPipeline = 1024
	maxQueue    = 1 << 22
	// flushEvery bounds how stale the shared counters and histograms are:
	// a connection records its samples once it has this many, or after
	// flushInterval.
	flushEvery    = 256
	flushInterval = 100 * time.Millisecond
	// sleepChunk bounds one wait of the dispatcher, so that a cancelled run
	// stops within it even when the next request is far off.
	sleepChunk = 10 * time.Millisecond
)

func (c *Config) setDefaults() {
	if c.Conns == 0 {
		c.Conns = 64 // enough for ~50K req/s at ~1 ms per round trip
	}
	if c.Pipeline == 0 {
		c.Pipeline = 1 // one request per round trip, as browsers and most clients
	}
	if c.Queue == 0 {
		c.Queue = 16384 // ~0.3 s at 50K req/s; ~2.5 MB of 150-byte requests
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second // above any latency worth measuring, below a run
	}
	if c.Drain == 0 {
		c.Drain = 5 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 3 * time.Second
	}
	if c.RedialInterval == 0 {
		c.RedialInterval = 100 * time.Millisecond
	}
}

func (c *Config) validate() error {
	addrs := strings.Split(c.Addr, ",")
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("openloop: Addr %q is not host:port (or a comma-separated list of them): %w", c.Addr, err)
		}
	}
	switch {
	case c.Conns < len(addrs):
		return fmt.Errorf("openloop: %d connections for %d addresses: want at least one each", c.Conns, len(addrs))
	case c.Conns < 1 || c.Conns > maxConns:
		return fmt.Errorf("openloop: Conns %d is outside 1..%d", c.Conns, maxConns)
	case c.Pipeline < 1 || c.Pipeline > maxPipeline:
		return fmt.Errorf("openloop: Pipeline %d is outside 1..%d", c.Pipeline, maxPipeline)
	case c.Queue < 1 || c.Queue > maxQueue:
		return fmt.Errorf("openloop: Queue %d is outside 1..%d", c.Queue, maxQueue)
	case c.Warmup < 0 || c.Duration < 0 || c.Timeout < 0 || c.Drain < 0 || c.DialTimeout < 0 || c.RedialInterval < 0:
		return errors.New("openloop: durations must not be negative")
	}
	return nil
}

// Response is the outcome of one request, for Config.OnResponse. Its slices
// are valid only during the call.
type Response struct {
	Tag uint64 // Request.Tag
	Aux []byte // Request.Aux
	// Status is the response's status code; 0 when the request failed
	// without one (ErrKind says how).
	Status  int
	ErrKind string // "connect", "write", "read", "timeout", "protocol", "closed"; "" with a Status
	Body    []byte // the response body; nil if it did not fit the read buffer (64 KiB)
	// At is the intended send time, Wrote the time it was written (Done if
	// it never was) and Done the time the response ended (or the request
	// failed), all offsets from the run's start; the latency is Done-At.
	At, Wrote, Done time.Duration
	Measured        bool // the request was due in the measured window (not warm-up)
}

// Runner runs one load: New, then Run once; Progress from any goroutine.
type Runner struct {
	cfg     Config
	src     Source
	rec     *recorder
	end     time.Duration   // Warmup+Duration, or MaxInt64
	free    chan *Request   // request slots the Source may fill
	due     []chan *Request // per address: filled slots whose intended time has come
	addrs   []string
	workers []*worker
	started atomic.Bool
	aborted atomic.Bool // the drain timed out: connections are cut, queued requests are unsent
	dialCtx context.Context
	cutDial context.CancelFunc // abort interrupts dials in progress
	dialer  net.Dialer

	mu sync.Mutex // guards t0 against Progress
	t0 time.Time  // start of the run; written before any goroutine reads it without mu
}

// New checks cfg and allocates everything the run needs: request slots,
// buffers and histograms. Nothing is allocated per request after that,
// unless the Source does.
func New(cfg Config, src Source) (*Runner, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if src == nil {
		return nil, errors.New("openloop: nil Source")
	}
	r := &Runner{
		cfg:   cfg,
		src:   src,
		rec:   newRecorder(),
		end:   math.MaxInt64,
		free:  make(chan *Request, cfg.Queue),
		addrs: strings.Split(cfg.Addr, ","),
	}
	for range r.addrs {
		r.due = append(r.due, make(chan *Request, cfg.Queue))
	}
	if cfg.Duration > 0 {
		r.end = cfg.Warmup + cfg.Duration
	}
	r.dialer.Timeout = cfg.DialTimeout
	r.dialCtx, r.cutDial = context.WithCancel(context.Background())
	slots := make([]Request, cfg.Queue)
	for i := range slots {
		r.free <- &slots[i]
	}
	r.workers = make([]*worker, cfg.Conns)
	for i := range r.workers {
		r.workers[i] = newWorker(r, i)
	}
	return r, nil
}

func (r *Runner) now() time.Duration { return time.Since(r.t0) }

// Started is the wall-clock time the run started (its offsets count from
// it), once Run has opened the connections; zero before.
func (r *Runner) Started() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.t0
}

// measured reports whether a request due at at is in the measured window.
func (r *Runner) measured(at time.Duration) bool { return at >= r.cfg.Warmup && at < r.end }

// inWindow reports whether the wall-clock offset now is in the measured
// window. Rates count by it: in overload the requests written during the
// window may be due long before it (a warm-up backlog), and they are load
// the server took all the same.
func (r *Runner) inWindow(now time.Duration) bool { return now >= r.cfg.Warmup && now < r.end }

// Run opens the connections, sends the Source's requests at their times and
// returns what it measured. It returns when the Source ends (or Duration
// passes, or ctx is cancelled) and the outstanding responses are in, or
// Drain has passed. It fails only if a connection cannot be opened at the
// start; failures after that are counted in the Result.
func (r *Runner) Run(ctx context.Context) (*Result, error) {
	if !r.started.CompareAndSwap(false, true) {
		return nil, errors.New("openloop: a Runner runs once; make another with New")
	}
	for i, w := range r.workers {
		if err := w.dialStart(); err != nil {
			for _, w := range r.workers[:i] {
				w.closeConn()
			}
			r.cutDial()
			return nil, fmt.Errorf("openloop: connection %d of %d to %s: %w; possible fix: check that the server listens there and accepts %d connections",
				i+1, len(r.workers), w.addr, err, len(r.workers))
		}
	}
	r.mu.Lock()
	r.t0 = time.Now()
	r.mu.Unlock()

	var wg sync.WaitGroup
	for _, w := range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run()
		}()
	}
	stoppedAt, cancelled := r.dispatch(ctx)
	for _, due := range r.due {
		close(due)
	}

	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	drain := time.NewTimer(r.cfg.Drain)
	select {
	case <-finished:
	case <-drain.C:
		r.abort()
		<-finished
	}
	drain.Stop()
	r.cutDial()

	window := stoppedAt
	if !cancelled && r.cfg.Duration > 0 {
		window = r.end
	}
	window = max(window-r.cfg.Warmup, 0)
	res := r.rec.result(window)
	res.Addr, res.Conns, res.Pipeline = r.cfg.Addr, r.cfg.Conns, r.cfg.Pipeline
	return res, nil
}

// Progress returns the counts so far and the latencies since the previous
// call. It may be called from any goroutine while Run runs; the counts lag by
// up to ~100 ms (connections record in batches).
func (r *Runner) Progress() Progress {
	r.mu.Lock()
	t0 := r.t0
	r.mu.Unlock()
	if t0.IsZero() {
		return Progress{}
	}
	now := time.Since(t0)
	p := r.rec.progress(now)
	p.Warmup = now < r.cfg.Warmup
	if p.Warmup {
		p.Sent, p.Responses, p.Non2xx, p.Errors = 0, 0, 0, 0
	}
	for _, due := range r.due {
		p.Queued += len(due)
	}
	return p
}

// dispatch moves requests from the Source to the due queue at their intended
// times, until the Source ends, the window ends or ctx is cancelled. It
// returns when it stopped (an offset from the start) and whether ctx did it.
func (r *Runner) dispatch(ctx context.Context) (stoppedAt time.Duration, cancelled bool) {
	sl := newSleeper()
	defer sl.close()
	done := ctx.Done()
	var endC <-chan time.Time
	if r.cfg.Duration > 0 {
		t := time.NewTimer(r.end - r.now())
		defer t.Stop()
		endC = t.C
	}
	var s *Request
	for {
		if s == nil {
			select {
			case s = <-r.free:
			default:
				select { // every slot is queued or being written: wait for one
				case s = <-r.free:
				case <-done:
					return r.now(), true
				case <-endC:
					r.countUnsent(nil, true)
					return r.now(), false
				}
			}
			if !r.src.Next(s) {
				return r.now(), false
			}
			if s.At >= r.end {
				return r.now(), false
			}
		}
		if !r.sleepUntil(sl, done, s.At) {
			return r.now(), true
		}
		due := r.due[int(s.Lane%uint32(len(r.due)))]
		select {
		case due <- s:
			s = nil
			continue
		default:
		}
		select { // the queue is full: every connection is busy and the backlog is at Queue
		case due <- s:
			s = nil
		case <-done:
			r.countUnsent(s, false)
			return r.now(), true
		case <-endC:
			r.countUnsent(s, true)
			return r.now(), false
		}
	}
}

// sleepUntil waits until the offset at; false if done closed first.
func (r *Runner) sleepUntil(sl *sleeper, done <-chan struct{}, at time.Duration) bool {
	for {
		wait := at - r.now()
		if wait <= 0 {
			return true
		}
		select {
		case <-done:
			return false
		default:
		}
		sl.sleep(min(wait, sleepChunk))
	}
}

// countUnsent counts s, a request that was due but never queued, and with
// rest the Source's requests due before the end of the window that the
// dispatcher could not even read because no connection was free. s may be
// nil (no request in hand).
func (r *Runner) countUnsent(s *Request, rest bool) {
	var n uint64
	if s != nil && r.measured(s.At) {
		n++
	}
	if rest {
		if s == nil {
			s = &Request{}
		}
		for r.src.Next(s) && s.At < r.end {
			if r.measured(s.At) {
				n++
			}
		}
	}
	r.rec.add(nil, counts{unsent: n})
}

// abort cuts every connection: blocked reads and writes return at once.
func (r *Runner) abort() {
	r.aborted.Store(true)
	r.cutDial()
	for _, w := range r.workers {
		w.mu.Lock()
		if w.conn != nil {
			_ = w.conn.SetDeadline(time.Unix(1, 0))
		}
		w.mu.Unlock()
	}
}
