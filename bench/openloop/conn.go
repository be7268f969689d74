package openloop

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

var (
	methodHEAD     = []byte("HEAD ")
	errClosedEarly = errors.New("openloop: the server closed the connection (Connection: close) with requests pipelined behind the response")
	errAborted     = errors.New("openloop: run aborted")
)

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// flight is a request written on a connection and waiting for its response.
type flight struct {
	at, wrote time.Duration // intended send time and write time, offsets from the run's start
	head      bool          // HEAD: the response has no body
	measured  bool
	tag       uint64
	aux       [2]int // Request.Aux is worker.aux[aux[0]:aux[1]]
}

// worker owns one connection: it takes due requests, writes them and reads
// their responses, one batch (of up to Config.Pipeline) at a time.
type worker struct {
	r    *Runner
	id   int
	addr string          // the server this worker's connection goes to
	due  <-chan *Request // the requests for addr
	mu   sync.Mutex      // guards conn against Runner.abort; only the worker changes conn
	conn net.Conn
	rr   *respReader

	wbuf      []byte
	aux       []byte // the batch's Request.Aux, back to back
	resp      Response
	batch     []*Request
	fl        []flight
	samples   []sample
	c         counts // not yet in the recorder
	lastFlush time.Duration
	noted     [numErrKinds]bool // first message of this kind passed to the recorder

	nextDial time.Duration // no dial before this offset, after a failed one
	dialErr  error
}

func newWorker(r *Runner, id int) *worker {
	return &worker{
		r:       r,
		id:      id,
		addr:    r.addrs[id%len(r.addrs)],
		due:     r.due[id%len(r.addrs)],
		rr:      newRespReader(nil),
		wbuf:    make([]byte, 0, 4096),
		batch:   make([]*Request, 0, r.cfg.Pipeline),
		fl:      make([]flight, 0, r.cfg.Pipeline),
		samples: make([]sample, 0, flushEvery),
	}
}

func (w *worker) run() {
	defer w.shutdown()
	due := w.due
	for {
		s, ok := <-due
		if !ok {
			return
		}
		w.batch = append(w.batch[:0], s)
	more:
		for len(w.batch) < cap(w.batch) {
			select {
			case s, ok := <-due:
				if !ok {
					break more
				}
				w.batch = append(w.batch, s)
			default:
				break more
			}
		}
		w.roundTrip()
	}
}

// roundTrip writes the batch and reads its responses.
func (w *worker) roundTrip() {
	r := w.r
	w.wbuf, w.fl, w.aux = w.wbuf[:0], w.fl[:0], w.aux[:0]
	for _, s := range w.batch {
		w.wbuf = append(w.wbuf, s.Raw...)
		f := flight{at: s.At, head: bytes.HasPrefix(s.Raw, methodHEAD), measured: r.measured(s.At), tag: s.Tag}
		if r.cfg.OnResponse != nil {
			f.aux[0] = len(w.aux)
			w.aux = append(w.aux, s.Aux...)
			f.aux[1] = len(w.aux)
		}
		w.fl = append(w.fl, f)
		r.free <- s // never blocks: free holds every slot
	}
	if r.aborted.Load() {
		w.fail(0, r.now(), errAborted, errKindConnect, false)
		return
	}
	if w.conn == nil {
		if err := w.dial(); err != nil {
			w.fail(0, r.now(), err, errKindConnect, false)
			return
		}
	}
	nowT := time.Now()
	wrote := nowT.Sub(r.t0)
	for i := range w.fl {
		w.fl[i].wrote = wrote
	}
	// The deadline is set under mu so that abort's cut is not overwritten.
	w.mu.Lock()
	if r.aborted.Load() {
		w.mu.Unlock()
		w.fail(0, wrote, errAborted, errKindConnect, false)
		return
	}
	_ = w.conn.SetDeadline(nowT.Add(r.cfg.Timeout))
	w.mu.Unlock()
	if _, err := w.conn.Write(w.wbuf); err != nil {
		w.fail(0, r.now(), err, -1, false)
		return
	}
	for i := range w.fl {
		if w.fl[i].measured {
			w.c.sent++
		}
	}
	if r.inWindow(wrote) {
		w.c.wroteInWindow += uint64(len(w.fl))
	}
	var now time.Duration
	for i := range w.fl {
		status, body, closeAfter, err := w.rr.readBody(w.fl[i].head, r.cfg.OnResponse != nil)
		now = r.now()
		if err != nil {
			w.fail(i, now, err, -1, true)
			return
		}
		f := &w.fl[i]
		if r.cfg.OnResponse != nil {
			w.report(f, status, "", body, now)
		}
		if r.inWindow(now) {
			w.c.doneInWindow++
		}
		w.samples = append(w.samples, sample{
			latency: now - f.at, delay: f.wrote - f.at,
			status: int16(status), class: uint8(classOf(status)), measured: f.measured,
		})
		if len(w.samples) == cap(w.samples) {
			w.flush(now)
		}
		if closeAfter {
			if i+1 < len(w.fl) {
				w.fail(i+1, now, errClosedEarly, errKindClosed, true)
				return
			}
			w.closeConn()
		}
	}
	if now-w.lastFlush >= flushInterval {
		w.flush(now)
	}
}

// fail ends the requests fl[from:] without a status and closes the
// connection. kind < 0: derive it from err. written: the requests had been
// written (they are unanswered, not unsent, if the run was aborted).
func (w *worker) fail(from int, now time.Duration, err error, kind int, written bool) {
	w.closeConn()
	if w.r.aborted.Load() {
		for _, f := range w.fl[from:] {
			if !f.measured {
				continue
			}
			if written {
				w.c.unanswered++
			} else {
				w.c.unsent++
			}
		}
		return
	}
	if kind < 0 {
		kind = errKindOf(err, written)
	}
	if !w.noted[kind] {
		w.noted[kind] = true
		w.r.rec.noteError(kind, err)
	}
	for i := range w.fl[from:] {
		f := &w.fl[from+i]
		if w.r.cfg.OnResponse != nil {
			w.report(f, 0, errKindNames[kind], nil, now)
		}
		delay := f.wrote - f.at
		if !written {
			delay = now - f.at
		}
		w.samples = append(w.samples, sample{latency: now - f.at, delay: delay, class: classError, errKind: uint8(kind), measured: f.measured})
		if len(w.samples) == cap(w.samples) {
			w.flush(now)
		}
	}
}

// report hands a request's outcome to Config.OnResponse.
func (w *worker) report(f *flight, status int, errKind string, body []byte, now time.Duration) {
	wrote := f.wrote
	if wrote == 0 || wrote > now {
		wrote = now // failed before the write
	}
	w.resp = Response{Tag: f.tag, Aux: w.aux[f.aux[0]:f.aux[1]], Status: status, ErrKind: errKind,
		Body: body, At: f.at, Wrote: wrote, Done: now, Measured: f.measured}
	w.r.cfg.OnResponse(w.id, &w.resp)
}

func (w *worker) flush(now time.Duration) {
	w.r.rec.add(w.samples, w.c)
	w.samples = w.samples[:0]
	w.c = counts{}
	w.lastFlush = now
}

// dialStart opens the first connection, before the run starts.
func (w *worker) dialStart() error {
	c, err := w.r.dialer.DialContext(w.r.dialCtx, "tcp", w.addr)
	if err != nil {
		return err
	}
	return w.setConn(c)
}

// dial replaces a closed connection. After a failure it fails fast for
// RedialInterval instead of dialing for every request.
func (w *worker) dial() error {
	now := w.r.now()
	if now < w.nextDial {
		return w.dialErr
	}
	c, err := w.r.dialer.DialContext(w.r.dialCtx, "tcp", w.addr)
	if err != nil {
		w.dialErr, w.nextDial = err, now+w.r.cfg.RedialInterval
		return err
	}
	return w.setConn(c)
}

// setConn installs c, unless abort has already passed this worker (it could
// not cut c then).
func (w *worker) setConn(c net.Conn) error {
	w.mu.Lock()
	if w.r.aborted.Load() {
		w.mu.Unlock()
		c.Close()
		return errAborted
	}
	w.conn = c
	w.mu.Unlock()
	w.rr.reset(c)
	return nil
}

func (w *worker) closeConn() {
	w.mu.Lock()
	c := w.conn
	w.conn = nil
	w.mu.Unlock()
	if c != nil {
		c.Close()
	}
	w.rr.reset(nil)
}

func (w *worker) shutdown() {
	w.flush(w.r.now())
	w.closeConn()
}
