package edge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/testenv"
)

var benchOrderReq = []byte("POST /v1/orders HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nContent-Type: application/json\r\n" +
	"X-User-ID: user-12345\r\nIdempotency-Key: 6f1c0f6e-6a3e-4bd8-9b53-2f4f3c1f8a11\r\nContent-Length: 27\r\n\r\n{\"sku\":\"SKU-0001\",\"qty\":1}\n")

// BenchmarkParseRequest compares our parser with net/http's on an order request.
func BenchmarkParseRequest(b *testing.B) {
	b.Run("flashgate", func(b *testing.B) {
		var r request
		cfg := DefaultConfig()
		pl := cfg.parseLimits()
		b.SetBytes(int64(len(benchOrderReq)))
		b.ReportAllocs()
		for b.Loop() {
			if n, st := parseRequest(benchOrderReq, &r, &pl); n != len(benchOrderReq) || st != 0 {
				b.Fatal(n, st)
			}
		}
	})
	b.Run("peer-nethttp", func(b *testing.B) {
		rd := bytes.NewReader(benchOrderReq)
		br := bufio.NewReader(rd)
		b.SetBytes(int64(len(benchOrderReq)))
		b.ReportAllocs()
		for b.Loop() {
			rd.Reset(benchOrderReq)
			br.Reset(rd)
			req, err := http.ReadRequest(br)
			if err != nil {
				b.Fatal(err)
			}
			req.Body.Close()
		}
	})
}

// parse + route + a fixed response allocate nothing.
func TestServeFixedZeroAllocs(t *testing.T) {
	s := &Server{cfg: DefaultConfig()}
	s.lim = s.cfg.parseLimits()
	cs := &connState{srv: s, slots: make([]*slot, 4), out: make([]byte, 0, 4096)}
	in := []byte("GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\n\r\n")
	allocs := testing.AllocsPerRun(1000, func() {
		n, st := parseRequest(in, &cs.req, &s.lim)
		if n != len(in) || st != 0 {
			t.Fatal(n, st)
		}
		s.serve(cs, &cs.req)
		cs.out = cs.out[:0]
	})
	if allocs != 0 {
		t.Fatalf("parse + route + fixed response: %v allocations per request", allocs)
	}
	// A refusal built on the loop (problem+json) allocates nothing either.
	bad := []byte("POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
	allocs = testing.AllocsPerRun(1000, func() {
		parseRequest(bad, &cs.req, &s.lim)
		s.serve(cs, &cs.req)
		cs.out = cs.out[:0]
	})
	if allocs != 0 {
		t.Fatalf("401 problem response: %v allocations per request", allocs)
	}
}

// TestServeOrderZeroAllocs takes accepted orders (Kafka hand-off off) through
// parse, identity, rate limits, admission and the 202, without and with an
// Idempotency-Key: once the connection's buffers have grown, nothing
// allocates.
func TestServeOrderZeroAllocs(t *testing.T) {
	s := testAdmission(1)
	s.cfg.UnsafeNoKafka = true
	s.cfg.RatePerIP = RateLimit{}
	s.lim = s.cfg.parseLimits()
	s.recent = newRecentOrders(1 << 10)
	var err error
	if s.limits, err = newLimiters(&s.cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := s.items.put(ledger.SaleItem{SKU: "A", Stock: 1 << 40, PriceCents: 100}, -1); err != nil {
		t.Fatal(err)
	}
	cs := newConnState(s, nil, &shard{srv: s}, netip.MustParseAddr("10.0.0.1"))
	for _, idem := range []bool{false, true} {
		// The requests are built first: their allocations are the test's.
		reqs := make([][]byte, 1100)
		for i := range reqs {
			key := ""
			if idem {
				key = fmt.Sprintf("Idempotency-Key: k%d\r\n", i)
			}
			reqs[i] = fmt.Appendf(nil, "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-User-ID: u%d\r\n%sContent-Length: 19\r\n\r\n{\"sku\":\"A\",\"qty\":1}", i, key)
		}
		for _, in := range reqs[:50] { // grow the connection's buffers
			serveInline(t, cs, in)
		}
		i := 50
		allocs := testing.AllocsPerRun(1000, func() {
			serveInline(t, cs, reqs[i])
			i++
		})
		if allocs != 0 {
			t.Errorf("accepted order (idempotency key: %v): %v allocations per request", idem, allocs)
		}
	}
}

// serveInline parses and serves one request that is answered on the loop,
// and checks that the answer is a 202.
func serveInline(t *testing.T, cs *connState, in []byte) {
	n, st := parseRequest(in, &cs.req, &cs.srv.lim)
	if n != len(in) || st != 0 {
		t.Fatalf("parse: %d of %d bytes, status %d", n, len(in), st)
	}
	cs.srv.serve(cs, &cs.req)
	cs.flushReady()
	if !bytes.HasPrefix(cs.out, []byte("HTTP/1.1 202 ")) {
		t.Fatalf("not accepted: %.200q", cs.out)
	}
	cs.out = cs.out[:0]
}

// BenchmarkOrdersE2E measures orders/s through HTTP, admission and the Kafka
// hand-off (202 after the ack of the embedded broker), 64 keep-alive
// connections, against a net/http server doing the same with the same
// producer settings (the textbook stack's front half).
func BenchmarkOrdersE2E(b *testing.B) {
	kf := testenv.Broker(b, 6)
	b.Run("flashgate", func(b *testing.B) {
		cfg := DefaultConfig()
		cfg.Addr = freeAddr(b)
		cfg.Brokers = []string{kf.Addr()}
		// One user at full speed: measure the pipeline, not the limits.
		cfg.RateGlobal, cfg.RatePerIP, cfg.RatePerUser = RateLimit{}, RateLimit{}, RateLimit{}
		if n, _ := strconv.Atoi(os.Getenv("FLASHGATE_BENCH_LOOPS")); n > 0 {
			cfg.Loops = n
		}
		s, err := New(cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.items.put(ledger.SaleItem{SKU: "SKU-0001", Stock: 1 << 50, PriceCents: 100}, -1); err != nil {
			b.Fatal(err)
		}
		if err := s.Start(); err != nil {
			b.Fatal(err)
		}
		defer s.Stop(context.Background())
		runOrderLoad(b, cfg.Addr)
	})
	b.Run("peer-nethttp", func(b *testing.B) {
		addr := freeAddr(b)
		stop := startNetHTTPPeer(b, addr, kf.Addr())
		defer stop()
		runOrderLoad(b, addr)
	})
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func runOrderLoad(b *testing.B, addr string) {
	c := &fasthttp.HostClient{Addr: addr, MaxConns: 64, ReadTimeout: 10 * time.Second}
	b.SetParallelism(32) // 64 concurrent requests on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + addr + "/v1/orders")
		req.Header.SetMethod("POST")
		req.Header.Set("X-User-ID", "user-12345")
		req.SetBodyString(`{"sku":"SKU-0001","qty":1}`)
		for pb.Next() {
			if err := c.Do(req, resp); err != nil {
				b.Fatal(err)
			}
			if resp.StatusCode() != 202 {
				b.Fatalf("status %d: %s", resp.StatusCode(), resp.Body())
			}
		}
	})
	b.StopTimer() // the server's drain on return is not part of the measure
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "orders/s")
}

// startNetHTTPPeer serves POST /v1/orders with net/http, encoding/json, an
// atomic stock counter and a synchronous produce per request.
func startNetHTTPPeer(b *testing.B, addr, brokerAddr string) func() {
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokerAddr), kgo.DefaultProduceTopic(broker.TopicOrderCreated),
		kgo.RequiredAcks(kgo.AllISRAcks()), broker.Compression(DefaultConfig().ProduceCompressMin), kgo.ProducerLinger(DefaultConfig().ProduceLinger))
	if err != nil {
		b.Fatal(err)
	}
	var stock atomic.Int64
	stock.Store(1 << 50)
	var seq atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/orders", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			SKU string `json:"sku"`
			Qty int64  `json:"qty"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Qty < 1 {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		if stock.Add(-body.Qty) < 0 {
			stock.Add(body.Qty)
			http.Error(w, "sold out", http.StatusConflict)
			return
		}
		id := strconv.FormatInt(seq.Add(1), 10)
		user := r.Header.Get("X-User-ID")
		val, _ := json.Marshal(map[string]any{"order_id": id, "user_id": user, "sku": body.SKU, "qty": body.Qty})
		if err := prod.ProduceSync(r.Context(), &kgo.Record{Key: []byte(user), Value: val}).FirstErr(); err != nil {
			stock.Add(body.Qty)
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(202)
		fmt.Fprintf(w, `{"order_id":%q,"status":"accepted"}`, id)
	})
	srv := &http.Server{Addr: addr, Handler: mux}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	return func() { srv.Close(); prod.Close() }
}
