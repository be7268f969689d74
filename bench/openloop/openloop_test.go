package openloop

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// statusServer answers /s/NNN with status NNN, through net/http.
func statusServer(t *testing.T, before func(r *http.Request)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if before != nil {
			before(r)
		}
		code := 200
		if c, ok := strings.CutPrefix(r.URL.Path, "/s/"); ok {
			code, _ = strconv.Atoi(c)
		}
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(code)
		w.Write([]byte("{}"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func addrOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

func post(path string) BuildFunc {
	return func(i uint64, dst []byte) []byte {
		return AppendRequest(dst, "POST", "127.0.0.1", path, []Header{{"Content-Type", "application/json"}}, []byte(`{"sku":"A","qty":1}`))
	}
}

func run(t *testing.T, cfg Config, src Source) *Result {
	t.Helper()
	if cfg.Drain == 0 {
		cfg.Drain = time.Minute // a busy machine answers late; the counts must not depend on it
	}
	r, err := New(cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkIdentity(t, res)
	return res
}

func checkIdentity(t *testing.T, res *Result) {
	t.Helper()
	if res.Intended != res.Responses+res.Errors+res.Unanswered+res.Unsent {
		t.Fatalf("intended %d != responses %d + errors %d + unanswered %d + unsent %d",
			res.Intended, res.Responses, res.Errors, res.Unanswered, res.Unsent)
	}
	if res.Latency["all"].Count != int64(res.Responses+res.Errors) {
		t.Fatalf("latency histogram holds %d, want responses+errors = %d", res.Latency["all"].Count, res.Responses+res.Errors)
	}
}

func TestCountsByStatus(t *testing.T) {
	srv := statusServer(t, nil)
	paths := []string{"/s/202", "/s/202", "/s/409", "/s/503"}
	src := NewRateSource(2000, 0, func(i uint64, dst []byte) []byte {
		return post(paths[i%4])(i, dst)
	})
	res := run(t, Config{Addr: addrOf(srv), Conns: 8, Duration: time.Second, Warmup: 200 * time.Millisecond}, src)
	// Warm-up: requests 0..399; measured: 400..2399, 2000 of them, i%4 spread evenly.
	if res.Intended != 2000 || res.Sent != 2000 || res.Errors != 0 || res.Unsent != 0 || res.Unanswered != 0 {
		t.Fatalf("intended %d sent %d errors %d unsent %d unanswered %d, want 2000 2000 0 0 0 (errors: %v)",
			res.Intended, res.Sent, res.Errors, res.Unsent, res.Unanswered, res.FirstErrors)
	}
	if res.Status[202] != 1000 || res.Status[409] != 500 || res.Status[503] != 500 || len(res.Status) != 3 {
		t.Fatalf("status counts %v, want 202:1000 409:500 503:500", res.Status)
	}
	if res.Latency["2xx"].Count != 1000 || res.Latency["4xx"].Count != 500 || res.Latency["5xx"].Count != 500 {
		t.Fatalf("latency counts by class: 2xx %d 4xx %d 5xx %d", res.Latency["2xx"].Count, res.Latency["4xx"].Count, res.Latency["5xx"].Count)
	}
	if _, ok := res.Latency["error"]; ok {
		t.Fatal("an error class without errors")
	}
	// Rate counts the requests that finished inside the window, whenever they
	// were due: on a busy machine a few warm-up requests finish in it and a
	// few measured ones after it, so only its bounds are certain.
	if res.WindowSeconds != 1 || res.Rate <= 0 || res.Rate*res.WindowSeconds > 2400 {
		t.Fatalf("rate %.0f over %.2fs, want the window of 1s and at most the 2400 requests sent", res.Rate, res.WindowSeconds)
	}
	if res.Non2xx() != 1000 {
		t.Fatalf("Non2xx %d, want 1000", res.Non2xx())
	}
}

// A server that stalls 200 ms once: every request due during the stall is
// late by the rest of it, so about rate x 0.2 requests are slow, not just the
// one in flight on each connection (which is what a closed-loop generator,
// timing from the actual send, would report).
func TestStallShowsFromIntendedTime(t *testing.T) {
	const rate, stall = 1000.0, 200 * time.Millisecond
	var n atomic.Int64
	var mu sync.Mutex
	var until time.Time
	srv := statusServer(t, func(*http.Request) {
		if n.Add(1) == 300 { // ~0.3 s in
			mu.Lock()
			until = time.Now().Add(stall)
			mu.Unlock()
		}
		mu.Lock()
		u := until
		mu.Unlock()
		time.Sleep(time.Until(u))
	})
	res := run(t, Config{Addr: addrOf(srv), Conns: 16, Duration: time.Second}, NewRateSource(rate, 0, post("/s/202")))
	if res.Status[202] != 1000 || res.Errors != 0 {
		t.Fatalf("status %v errors %d", res.Status, res.Errors)
	}
	// A request due at T+x waits 0.2s-x: those due in the first 150 ms of the
	// stall are slower than 50 ms. A closed-loop count would be about one per
	// connection (16). The upper bound is loose: on a loaded machine (or
	// under -race) requests after the stall can be slow too while the
	// backlog clears; but most requests of the second are fast.
	const threshold = 50 * time.Millisecond
	want := rate * (stall - threshold).Seconds()
	got := float64(res.Latency["all"].CountAbove(threshold))
	t.Logf("%v requests slower than %v (expected ~%v); p99 %v max %v; send delay p99 %v",
		got, threshold, want, res.Latency["all"].P99, res.Latency["all"].Max, res.SendDelay.P99)
	if got < 0.7*want || got > float64(res.Intended)/2 {
		t.Fatalf("%v requests slower than %v, want ~%v (rate x stall): latency is not measured from the intended time", got, threshold, want)
	}
	if m := res.Latency["all"].Max; m < stall*9/10 {
		t.Fatalf("max latency %v, want at least about the stall (%v)", m, stall)
	}
	// The wait happened in the queue, before the write: the send delay shows it.
	if res.SendDelay.Max < stall/2 {
		t.Fatalf("send delay max %v: the wait for a free connection was not counted", res.SendDelay.Max)
	}
}

// countConns counts a server's open connections.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var open atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	return &open
}

func TestCancelStopsCleanly(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(202)
	}))
	open := countConns(srv)
	srv.Start()
	t.Cleanup(srv.Close)
	before := runtime.NumGoroutine()

	r, err := New(Config{Addr: addrOf(srv), Conns: 8, Duration: time.Minute}, NewRateSource(1000, 0, post("/")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("Run took %v after cancel at 300ms (its Duration is a minute)", took)
	}
	checkIdentity(t, res)
	if res.Responses == 0 || res.Errors != 0 || res.Unanswered != 0 {
		t.Fatalf("responses %d errors %d unanswered %d (%v)", res.Responses, res.Errors, res.Unanswered, res.FirstErrors)
	}
	if res.WindowSeconds <= 0 || res.WindowSeconds > 30 {
		t.Fatalf("window %.2fs, want the time until cancel (0.3s less dialling)", res.WindowSeconds)
	}
	if _, err := r.Run(context.Background()); err == nil {
		t.Fatal("a second Run did not fail")
	}
	waitFor(t, "server connections closed", func() bool { return open.Load() == 0 })
	waitFor(t, "goroutines gone", func() bool { return runtime.NumGoroutine() <= before })
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A server that never answers: the run still ends Drain after its window,
// with the requests written counted unanswered and those queued unsent.
func TestDrainCutsAHungServer(t *testing.T) {
	release := make(chan struct{})
	srv := statusServer(t, func(*http.Request) { <-release })
	t.Cleanup(func() { close(release) }) // before srv.Close, which waits for handlers
	start := time.Now()
	res := run(t, Config{Addr: addrOf(srv), Conns: 4, Duration: 300 * time.Millisecond, Drain: 200 * time.Millisecond},
		NewRateSource(200, 0, post("/")))
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("Run took %v; want ~0.5s (window + drain): the drain did not cut the hung requests", took)
	}
	if res.Intended != 60 || res.Unanswered != 4 || res.Unsent != 56 || res.Responses != 0 || res.Errors != 0 {
		t.Fatalf("intended %d unanswered %d unsent %d responses %d errors %d; want 60 4 56 0 0",
			res.Intended, res.Unanswered, res.Unsent, res.Responses, res.Errors)
	}
}

// When the queue is full past the end of the window, the requests the
// dispatcher could not even read are counted unsent, not forgotten.
func TestUnsentPastQueue(t *testing.T) {
	release := make(chan struct{})
	srv := statusServer(t, func(*http.Request) { <-release })
	t.Cleanup(func() { close(release) })
	res := run(t, Config{Addr: addrOf(srv), Conns: 2, Queue: 8, Duration: 300 * time.Millisecond, Drain: 100 * time.Millisecond},
		NewRateSource(200, 0, post("/")))
	if res.Intended != 60 || res.Unanswered != 2 || res.Unsent != 58 {
		t.Fatalf("intended %d unanswered %d unsent %d; want 60 2 58", res.Intended, res.Unanswered, res.Unsent)
	}
}

// Past the server's capacity the schedule holds: the rates are what the
// server took (by wall clock), and the requests due in the window that the
// backlog (here, of the warm-up) kept from being sent are counted unsent.
func TestOverload(t *testing.T) {
	srv := statusServer(t, func(*http.Request) { time.Sleep(10 * time.Millisecond) })
	res := run(t, Config{Addr: addrOf(srv), Conns: 2, Warmup: 200 * time.Millisecond, Duration: 500 * time.Millisecond, Drain: 100 * time.Millisecond},
		NewRateSource(1000, 0, post("/")))
	t.Logf("rate %.0f/s, intended %d, responses %d, unsent %d", res.Rate, res.Intended, res.Responses, res.Unsent)
	if res.Rate <= 0 || res.Rate > 210 || res.SentRate <= 0 || res.SentRate > 220 {
		t.Fatalf("rate %.0f/s, sent %.0f/s; want ~190/s (2 connections x 10 ms)", res.Rate, res.SentRate)
	}
	if res.Intended != 500 || res.Unsent < 400 {
		t.Fatalf("intended %d unsent %d; want 500 and most of them", res.Intended, res.Unsent)
	}
}

func TestConnectErrorAtStart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r, err := New(Config{Addr: addr, Conns: 2}, NewRateSource(10, time.Second, post("/")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "possible fix") {
		t.Fatalf("got %v, want a connect error naming %s with a possible fix", err, addr)
	}
}

func TestConfigErrors(t *testing.T) {
	src := NewRateSource(10, time.Second, post("/"))
	for _, cfg := range []Config{
		{Addr: "127.0.0.1"},
		{Addr: "127.0.0.1:1", Conns: -1},
		{Addr: "127.0.0.1:1", Pipeline: maxPipeline + 1},
		{Addr: "127.0.0.1:1", Duration: -time.Second},
	} {
		if _, err := New(cfg, src); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
	if _, err := New(Config{Addr: "127.0.0.1:1"}, nil); err == nil {
		t.Error("nil source: no error")
	}
}

// Servers may close a keep-alive connection after any response: the next
// request goes on a new connection and nothing is lost or counted twice.
func TestServerClosesConnections(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%10 == 0 {
			w.Header().Set("Connection", "close")
		}
		w.WriteHeader(202)
	}))
	t.Cleanup(srv.Close)
	res := run(t, Config{Addr: addrOf(srv), Conns: 4, Duration: 500 * time.Millisecond}, NewRateSource(1000, 0, post("/")))
	if res.Status[202] != 500 || res.Errors != 0 {
		t.Fatalf("status %v errors %d (%v)", res.Status, res.Errors, res.FirstErrors)
	}
}

// A server that goes away mid-run: its requests are errors, counted by kind,
// with the first message kept; the run still ends on time.
func TestServerGoesAway(t *testing.T) {
	srv := statusServer(t, nil)
	go func() {
		time.Sleep(200 * time.Millisecond)
		srv.CloseClientConnections()
		srv.Listener.Close()
	}()
	res := run(t, Config{Addr: addrOf(srv), Conns: 4, Duration: 500 * time.Millisecond}, NewRateSource(1000, 0, post("/")))
	if res.Responses < 100 || res.Responses > 300 || res.Errors < 200 {
		t.Fatalf("responses %d errors %d; want ~200 and ~300", res.Responses, res.Errors)
	}
	if res.ErrorKinds["connect"] == 0 || !strings.Contains(res.FirstErrors["connect"], "refused") {
		t.Fatalf("error kinds %v, first %v", res.ErrorKinds, res.FirstErrors)
	}
	if _, ok := res.Latency["error"]; !ok {
		t.Fatal("no latency for errors")
	}
}

func TestPipelineBatches(t *testing.T) {
	srv := statusServer(t, nil)
	res := run(t, Config{Addr: addrOf(srv), Conns: 2, Pipeline: 8, Duration: 500 * time.Millisecond}, NewRateSource(4000, 0, post("/s/202")))
	if res.Status[202] != 2000 || res.Errors != 0 {
		t.Fatalf("status %v errors %d (%v)", res.Status, res.Errors, res.FirstErrors)
	}
}

func TestProgress(t *testing.T) {
	srv := statusServer(t, nil)
	r, err := New(Config{Addr: addrOf(srv), Conns: 4, Warmup: 200 * time.Millisecond, Duration: 600 * time.Millisecond},
		NewRateSource(1000, 0, post("/s/404")))
	if err != nil {
		t.Fatal(err)
	}
	if p := r.Progress(); p != (Progress{}) {
		t.Fatalf("progress before Run: %+v", p)
	}
	done := make(chan *Result)
	go func() {
		res, _ := r.Run(context.Background())
		done <- res
	}()
	time.Sleep(100 * time.Millisecond)
	if p := r.Progress(); !p.Warmup || p.Sent != 0 {
		t.Fatalf("progress in warm-up: %+v", p)
	}
	time.Sleep(400 * time.Millisecond)
	p := r.Progress()
	if p.Warmup || p.Sent < 100 || p.Rate < 500 || p.Non2xx == 0 || p.P99 == 0 {
		t.Fatalf("progress: %+v", p)
	}
	res := <-done
	if res.Status[404] != 600 {
		t.Fatalf("status %v", res.Status)
	}
}

func TestAppendRequest(t *testing.T) {
	b := AppendRequest(nil, "POST", "example.test", "/v1/orders", []Header{{"X-User-ID", "u1"}}, []byte(`{"sku":"A"}`))
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	if req.Method != "POST" || req.Host != "example.test" || req.URL.Path != "/v1/orders" || req.Header.Get("X-User-ID") != "u1" || req.ContentLength != 11 {
		t.Fatalf("parsed %+v", req)
	}
	if g := string(AppendRequest(nil, "GET", "h", "/", nil, nil)); g != "GET / HTTP/1.1\r\nHost: h\r\n\r\n" {
		t.Fatalf("GET: %q", g)
	}
}

func TestRateSource(t *testing.T) {
	s := NewRateSource(3, time.Second, func(i uint64, dst []byte) []byte { return strconv.AppendUint(dst, i, 10) })
	var r Request
	var got []string
	for s.Next(&r) {
		got = append(got, r.At.String()+"="+string(r.Raw))
	}
	if want := "0s=0 333.333333ms=1 666.666666ms=2"; strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// rawServer answers every request (no body; counted by its blank line) with
// resp, allocating nothing per request, so that the generator's own
// allocations can be counted.
func rawServer(t testing.TB, resp []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	out := bytes.Repeat(resp, 1024)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 64<<10)
				state := 0 // bytes of "\r\n\r\n" matched
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					reqs := 0
					for _, b := range buf[:n] {
						switch {
						case b == '\r' && (state == 0 || state == 2):
							state++
						case b == '\n' && (state == 1 || state == 3):
							state++
						case b == '\r':
							state = 1
						default:
							state = 0
						}
						if state == 4 {
							reqs, state = reqs+1, 0
						}
					}
					for reqs > 0 {
						k := min(reqs, 1024)
						if _, err := c.Write(out[:k*len(resp)]); err != nil {
							return
						}
						reqs -= k
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

var resp202 = []byte("HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}")

func getSource(rate float64) *RateSource {
	return NewRateSource(rate, 0, func(i uint64, dst []byte) []byte {
		dst = append(dst, "GET /healthz?u="...)
		dst = strconv.AppendUint(dst, i%100000, 10)
		return append(dst, " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"...)
	})
}

// The steady state allocates nothing: after the request slots' buffers have
// grown once, 10000 more requests allocate a few dozen times in all
// (timers, the result), not per request.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	addr := rawServer(t, resp202)
	measure := func(n int) int64 {
		r, err := New(Config{Addr: addr, Conns: 4, Queue: 64, Duration: time.Duration(n) * 100 * time.Microsecond}, getSource(10000))
		if err != nil {
			t.Fatal(err)
		}
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		res, err := r.Run(context.Background())
		runtime.ReadMemStats(&m1)
		if err != nil || res.Status[202] != uint64(n) {
			t.Fatalf("%v %v", err, res.Status)
		}
		return int64(m1.Mallocs - m0.Mallocs)
	}
	small, large := measure(1000), measure(11000)
	perReq := float64(large-small) / 10000
	t.Logf("allocations: %d for 1000 requests, %d for 11000: %.3f per request", small, large, perReq)
	if perReq > 0.02 {
		t.Fatalf("%.3f allocations per request in the steady state, want ~0", perReq)
	}
}

// At a rate well within a loopback server's reach, requests leave on time:
// the generator's own lag stays small.
func TestSendsOnTime(t *testing.T) {
	addr := rawServer(t, resp202)
	res := run(t, Config{Addr: addr, Conns: 16, Duration: time.Second}, getSource(20000))
	t.Logf("rate %.0f/s, latency p50 %v p99 %v, send delay p50 %v p99 %v",
		res.Rate, res.Latency["all"].P50, res.Latency["all"].P99, res.SendDelay.P50, res.SendDelay.P99)
	if res.Status[202] != 20000 {
		t.Fatalf("status %v errors %v", res.Status, res.FirstErrors)
	}
	if limit := 5 * time.Millisecond; !raceEnabled && res.SendDelay.P50 > limit {
		t.Fatalf("send delay p50 %v: the generator is late by itself", res.SendDelay.P50)
	}
}

// tagSource sends n requests at rate, request i tagged i with Aux "aux-i" and
// path /echo/i, so each response can be matched to its request.
type tagSource struct {
	n, i uint64
	rate float64
}

func (s *tagSource) Next(r *Request) bool {
	if s.i == s.n {
		return false
	}
	r.At = time.Duration(float64(s.i) / s.rate * float64(time.Second))
	r.Raw = AppendRequest(r.Raw[:0], "GET", "127.0.0.1", "/echo/"+strconv.FormatUint(s.i, 10), nil, nil)
	r.Tag = s.i
	r.Aux = strconv.AppendUint(append(r.Aux[:0], "aux-"...), s.i, 10)
	s.i++
	return true
}

func TestOnResponseReportsEveryRequest(t *testing.T) {
	for _, pipeline := range []int{1, 8} {
		t.Run("pipeline"+strconv.Itoa(pipeline), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/echo/"))
				if n%10 == 3 {
					w.WriteHeader(409)
				}
				fmt.Fprintf(w, "body-%d", n)
			}))
			t.Cleanup(srv.Close)
			const n = 3000
			var mu sync.Mutex
			seen := map[uint64]string{}
			var bad []string
			cfg := Config{Addr: addrOf(srv), Conns: 4, Pipeline: pipeline, OnResponse: func(conn int, r *Response) {
				mu.Lock()
				defer mu.Unlock()
				if conn < 0 || conn >= 4 {
					bad = append(bad, fmt.Sprintf("conn %d", conn))
				}
				want := 200
				if r.Tag%10 == 3 {
					want = 409
				}
				if r.Status != want || string(r.Body) != fmt.Sprintf("body-%d", r.Tag) || string(r.Aux) != fmt.Sprintf("aux-%d", r.Tag) || r.Done < r.At || !r.Measured {
					bad = append(bad, fmt.Sprintf("tag %d: status %d body %q aux %q at %v done %v", r.Tag, r.Status, r.Body, r.Aux, r.At, r.Done))
				}
				if _, dup := seen[r.Tag]; dup {
					bad = append(bad, fmt.Sprintf("tag %d reported twice", r.Tag))
				}
				seen[r.Tag] = string(r.Body)
			}}
			res := run(t, cfg, &tagSource{n: n, rate: 20000})
			if len(bad) > 0 {
				t.Fatalf("%d bad reports, first: %v", len(bad), bad[0])
			}
			if len(seen) != n || res.Responses != n {
				t.Fatalf("reported %d, responses %d, want %d", len(seen), res.Responses, n)
			}
		})
	}
}

func TestOnResponseReportsErrors(t *testing.T) {
	// A server that closes every connection without answering: every request
	// is reported once, without a status, with the kind of failure.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 4096)
				c.Read(buf)
				c.Close()
			}()
		}
	}()
	var mu sync.Mutex
	kinds := map[string]int{}
	tags := map[uint64]bool{}
	cfg := Config{Addr: ln.Addr().String(), Conns: 2, OnResponse: func(conn int, r *Response) {
		mu.Lock()
		defer mu.Unlock()
		if r.Status != 0 || r.Body != nil {
			t.Errorf("tag %d: status %d body %q from a server that never answers", r.Tag, r.Status, r.Body)
		}
		kinds[r.ErrKind]++
		tags[r.Tag] = true
	}}
	res := run(t, cfg, &tagSource{n: 200, rate: 2000})
	if len(tags) != 200 || res.Errors != 200 {
		t.Fatalf("reported %d distinct requests (kinds %v), errors %d; want 200", len(tags), kinds, res.Errors)
	}
	if kinds[""] > 0 {
		t.Fatalf("errors reported without a kind: %v", kinds)
	}
}

// laneSource sends n requests to /lane/<i%lanes>, each in lane i%lanes.
type laneSource struct {
	i, n  uint64
	lanes uint32
}

func (s *laneSource) Next(r *Request) bool {
	if s.i == s.n {
		return false
	}
	lane := uint32(s.i) % s.lanes
	r.At, r.Tag, r.Lane = time.Duration(s.i)*time.Millisecond, s.i, lane
	r.Raw = AppendRequest(r.Raw[:0], "GET", "127.0.0.1", fmt.Sprintf("/lane/%d", lane), nil, nil)
	s.i++
	return true
}

// With several addresses, each request goes to the address of its lane, and
// every address gets connections.
func TestLanesPickTheAddress(t *testing.T) {
	const lanes = 3
	var got [lanes]map[string]int
	var mu sync.Mutex
	var addrs []string
	for i := 0; i < lanes; i++ {
		got[i] = map[string]int{}
		srv := statusServer(t, func(r *http.Request) {
			mu.Lock()
			got[i][r.URL.Path]++
			mu.Unlock()
		})
		addrs = append(addrs, addrOf(srv))
	}
	res := run(t, Config{Addr: strings.Join(addrs, ","), Conns: 6}, &laneSource{n: 300, lanes: lanes})
	if res.Responses != 300 || res.Errors != 0 {
		t.Fatalf("responses %d errors %d (%v)", res.Responses, res.Errors, res.FirstErrors)
	}
	for i := 0; i < lanes; i++ {
		if len(got[i]) != 1 || got[i][fmt.Sprintf("/lane/%d", i)] != 100 {
			t.Errorf("server %d got %v, want its lane's 100 requests only", i, got[i])
		}
	}
	if _, err := New(Config{Addr: strings.Join(addrs, ","), Conns: 2}, &laneSource{n: 1, lanes: 1}); err == nil {
		t.Error("2 connections for 3 addresses were accepted")
	}
}
