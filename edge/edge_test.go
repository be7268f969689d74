package edge

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/testenv"
)

// startTestEdge serves an edge (no ledger) against the broker with one SKU.
func startTestEdge(t *testing.T, kf *broker.Embedded, sku string, stock int64, tweaks ...func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addr = freeAddr(t)
	cfg.Brokers = []string{kf.Addr()}
	// Bounds no slow machine reaches: a test about timeouts or the breaker
	// sets its own.
	cfg.DeliveryTimeout, cfg.BreakerStall = 20*time.Second, time.Minute
	for _, f := range tweaks {
		f(&cfg)
	}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.items.put(ledger.SaleItem{SKU: sku, Stock: stock, PriceCents: 100}, -1); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Stop(ctx)
	})
	return s
}

// postOrder orders one unit of sku as user.
func postOrder(t *testing.T, addr, user, sku string) (int, http.Header, string) {
	t.Helper()
	return post(t, addr, user, "", fmt.Sprintf(`{"sku":%q,"qty":1}`, sku))
}

// post sends POST /v1/orders with an optional Idempotency-Key.
func post(t *testing.T, addr, user, idemKey, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/orders", strings.NewReader(body))
	req.Header.Set("X-User-ID", user)
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// A produce the broker definitely refused answers 503 + Retry-After and gives
// the stock back; nothing is in Kafka for it.
func TestProduceFailureGivesStockBack(t *testing.T) {
	kf := testenv.Broker(t, 3)
	var failing atomic.Bool
	failing.Store(true)
	countProduces(kf.Cluster(), &failing)
	s := startTestEdge(t, kf, "FAIL-1", 3)

	for i := 0; i < 5; i++ {
		code, h, body := postOrder(t, s.cfg.Addr, "u1", "FAIL-1")
		if code != 503 || h.Get("Retry-After") == "" || !strings.Contains(body, "/unavailable") {
			t.Fatalf("order with the broker refusing: %d %v %s", code, h, body)
		}
	}
	if st, _ := s.SKU("FAIL-1"); st.Remaining != 3 || st.TakenUnits != 0 || st.Accepted != 0 {
		t.Fatalf("after refused produces: %+v; want all 3 units back", st)
	}
	failing.Store(false)
	for i := 0; i < 3; i++ {
		if code, _, body := postOrder(t, s.cfg.Addr, "u1", "FAIL-1"); code != 202 {
			t.Fatalf("order %d after recovery: %d %s", i, code, body)
		}
	}
	if code, _, _ := postOrder(t, s.cfg.Addr, "u1", "FAIL-1"); code != 409 {
		t.Fatalf("fourth order on 3 units: %d, want 409", code)
	}
	if n := countRecords(t, kf); n != 3 {
		t.Fatalf("order.created holds %d records, want the 3 accepted", n)
	}
}

func countRecords(t *testing.T, kf *broker.Embedded) int {
	t.Helper()
	return len(readOrderCreated(t, []string{kf.Addr()}))
}

// readOrderCreated reads order.created from the start up to its end offsets
// as listed first: every record acked before the call, however slowly the
// machine serves them (an empty poll is not taken for the end).
func readOrderCreated(t *testing.T, brokers []string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(broker.TopicOrderCreated), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, broker.TopicOrderCreated)
	if err != nil {
		t.Fatalf("listing order.created's end offsets: %v", err)
	}
	want := map[int32]int64{}
	left := 0
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
			left++
		}
	})
	var out []*kgo.Record
	for left > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("order.created: read %d records, partitions %v not read to their end offsets within a minute", len(out), want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if end, ok := want[r.Partition]; ok && r.Offset < end {
				out = append(out, r)
				if r.Offset == end-1 {
					delete(want, r.Partition)
					left--
				}
			}
		})
	}
	return out
}

// Stop with orders waiting for slow acks answers every one of them with its
// 202 before the connections close, and refuses new ones.
func TestStopAnswersOrdersInFlight(t *testing.T) {
	kf := testenv.Broker(t, 3)
	c := kf.Cluster()
	release := make(chan struct{})
	var slept atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		slept.Add(1)
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	s := startTestEdge(t, kf, "SLOW-1", 100)

	const clients = 8
	var wg sync.WaitGroup
	codes := make(chan int, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code, _, _ := postOrder(t, s.cfg.Addr, fmt.Sprint("slow", i), "SLOW-1")
			codes <- code
		}(i)
	}
	for s.produces.Load() < clients {
		time.Sleep(time.Millisecond)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) with %d produces in flight", err, s.produces.Load())
	default:
	}
	close(release)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != 202 {
			t.Fatalf("an order in flight at Stop got %d, want 202", code)
		}
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if slept.Load() == 0 {
		t.Fatal("the broker never delayed a produce: the test proved nothing")
	}
}

// Bytes that break the protocol get 4xx and a closed connection; the
// connection never serves the bytes after them.
func TestMalformedRequestsCloseTheConnection(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "M-1", 10)
	cases := map[string]int{
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n": 400,
		"POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n":   501,
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n":                                      400,
		"GET /" + strings.Repeat("a", 3000) + " HTTP/1.1\r\n\r\n":                              414,
		"GET / HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 9000) + "\r\n\r\n":            431,
		"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n":                 413,
		"GET / HTTP/3.0\r\nHost: x\r\n\r\n":                                                    505,
	}
	for in, want := range cases {
		conn, err := net.Dial("tcp", s.cfg.Addr)
		if err != nil {
			t.Fatal(err)
		}
		// A valid request smuggled after the bad one must never be answered.
		conn.Write([]byte(in + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%.40q: %v", in, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want || !resp.Close {
			t.Errorf("%.40q: %d (close %v), want %d and close", in, resp.StatusCode, resp.Close, want)
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("%.40q: more bytes after the refusal (%v)", in, err)
		}
		conn.Close()
	}
}

// readAll reads what the server sends until it closes the connection.
func readUntilClose(t *testing.T, c net.Conn, within time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(within))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("connection not closed within %v: %v (read %q)", within, err, b)
	}
	return string(b), time.Since(start)
}

// Slowloris: a request trickling in a byte at a time gets 408 once the
// header-read timeout has passed since its first byte; an idle keep-alive
// connection is closed after the idle timeout; a healthy one keeps serving.
func TestTimeouts(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "T-1", 10, func(c *Config) {
		c.HeaderReadTimeout = time.Second
		c.IdleTimeout = 2 * time.Second
	})

	slow, err := net.Dial("tcp", s.cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	stopTrickle := make(chan struct{})
	go func() {
		req := "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", 100)
		for i := 0; i < len(req); i++ {
			select {
			case <-stopTrickle:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := slow.Write([]byte{req[i]}); err != nil {
				return
			}
		}
	}()
	got, took := readUntilClose(t, slow, 5*time.Second)
	close(stopTrickle)
	if !strings.HasPrefix(got, "HTTP/1.1 408 ") || took < 900*time.Millisecond {
		t.Fatalf("slow request: %q after %v; want 408 after about 1s", got, took)
	}

	idle, err := net.Dial("tcp", s.cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	got, took = readUntilClose(t, idle, 6*time.Second)
	if !strings.HasPrefix(got, "HTTP/1.1 200 ") || strings.Count(got, "HTTP/1.1") != 1 || took < 1900*time.Millisecond {
		t.Fatalf("idle connection: %q closed after %v; want one 200, then a close after about 2s", got, took)
	}

	// Requests every 500ms keep a connection alive past both timeouts.
	busy, err := net.Dial("tcp", s.cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	br := bufio.NewReader(busy)
	for i := 0; i < 8; i++ {
		busy.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
		busy.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("busy connection, request %d: %v %v", i, resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		time.Sleep(500 * time.Millisecond)
	}
}

// Past -edge.maxConns a new connection gets 503 and is closed; once one
// closes, a new one is served again.
func TestMaxConns(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "C-1", 10, func(c *Config) { c.MaxConns = 3 })
	var open []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", s.cfg.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d: %v %v", i, resp, err)
		}
		open = append(open, c)
	}
	extra, err := net.Dial("tcp", s.cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if got, _ := readUntilClose(t, extra, 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 503 ") || !strings.Contains(got, "Retry-After: 1") {
		t.Fatalf("connection past the cap: %q, want 503 with Retry-After", got)
	}
	open[0].Close()
	for deadline := time.Now().Add(5 * time.Second); s.conns.Load() > 2; {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still counted after one closed", s.conns.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	again, err := net.Dial("tcp", s.cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	again.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	if resp, err := http.ReadResponse(bufio.NewReader(again), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after a slot freed: %v %v", resp, err)
	}
}

// A client that pipelines without reading while its orders wait on a stalled
// broker cannot make the edge buffer without bound: it is closed.
func TestPipelineFloodIsBounded(t *testing.T) {
	kf := testenv.Broker(t, 1)
	c := kf.Cluster()
	release := make(chan struct{})
	defer close(release)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	s := startTestEdge(t, kf, "F-1", 1<<40, func(c *Config) { c.MaxPipeline = 4 })
	conn, err := net.Dial("tcp", s.cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"sku":"F-1","qty":1}`
	req := []byte(fmt.Sprintf("POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-User-ID: f\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	var werr error
	for i := 0; i < 100000 && werr == nil; i++ {
		_, werr = conn.Write(req)
	}
	if werr == nil {
		t.Fatal("the edge took 100000 pipelined requests from a client that reads nothing")
	}
	if ne, ok := werr.(net.Error); ok && ne.Timeout() {
		t.Fatal("writes blocked instead of the edge closing the connection")
	}
	if n := s.produces.Load(); n > 4 {
		t.Fatalf("%d orders in flight on one connection, cap 4", n)
	}
}

// Off loopback the admin plane needs a token; with one, requests without it
// get 401.
func TestAdminToken(t *testing.T) {
	logs := captureLogs(t)
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "A-1", 1)
	if _, err := StartAdminWithToken("0.0.0.0:0", "", s); err == nil || !strings.Contains(err.Error(), "needs a token") {
		t.Fatalf("admin on 0.0.0.0 without a token: %v", err)
	}
	a, err := StartAdminWithToken("127.0.0.1:0", "s3cret", s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop(context.Background())
	for _, c := range []struct {
		auth string
		want int
	}{{"", 401}, {"Bearer wrong", 401}, {"s3cret", 401}, {"Bearer s3cret", 200}} {
		req, _ := http.NewRequest("GET", "http://"+a.Addr()+"/admin/v1/skus/A-1", nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("Authorization %q: %d, want %d", c.auth, resp.StatusCode, c.want)
		}
	}
	logs.assertNotLogged(t, "s3cret")
}

// Past a user's burst orders get 429 with Retry-After and the RateLimit
// headers; other users are not affected.
func TestRateLimitedOrders(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "R-1", 1000, func(c *Config) {
		// The slowest rate: no token comes back while the test runs, however
		// long the first orders take on a busy machine.
		c.RatePerUser = RateLimit{Rate: 0.01, Burst: 3, Slots: 1 << 10}
	})
	for i := 0; i < 3; i++ {
		if code, _, body := postOrder(t, s.cfg.Addr, "rl-user", "R-1"); code != 202 {
			t.Fatalf("order %d within the burst: %d %s", i, code, body)
		}
	}
	code, h, body := postOrder(t, s.cfg.Addr, "rl-user", "R-1")
	// Retry-After: the time to the next token, 100 s at this rate less what
	// has refilled since the burst began.
	ra, _ := strconv.Atoi(h.Get("Retry-After"))
	if code != 429 || ra < 1 || ra > 100 || !strings.Contains(body, "/rate-limited") ||
		h.Get("RateLimit-Policy") != `"user";q=3;w=300` || !strings.HasPrefix(h.Get("RateLimit"), `"user";r=0;t=`) {
		t.Fatalf("past the burst: %d %v %s", code, h, body)
	}
	if code, _, _ := postOrder(t, s.cfg.Addr, "other-user", "R-1"); code != 202 {
		t.Fatalf("another user: %d", code)
	}
	if st, _ := s.SKU("R-1"); st.Remaining != 996 {
		t.Fatalf("a refused order took stock: %d left, want 996", st.Remaining)
	}
}

// /metrics shows the tables' use and capacity and each SKU's stock.
func TestAdminMetrics(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "MET-1", 7)
	postOrder(t, s.cfg.Addr, "m1", "MET-1")
	a, err := StartAdminWithToken("127.0.0.1:0", "", s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop(context.Background())
	resp, err := http.Get("http://" + a.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`flashgate_edge_sku_remaining{sku="MET-1"} 6`, `flashgate_edge_sku_accepted_total{sku="MET-1"} 1`,
		"flashgate_edge_skus_capacity ", "flashgate_edge_purchase_slots_capacity ", `flashgate_edge_responses_total{code="202"}`,
		"flashgate_edge_order_duration_seconds_bucket"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// A partner's API key has its own limit, in place of the per-IP one; an
// unknown key is refused.
func TestAPIKeyLimits(t *testing.T) {
	kf := testenv.Broker(t, 1)
	const partner = "partner-key-0123456789"
	s := startTestEdge(t, kf, "K-1", 1000, func(c *Config) {
		// The slowest rates: no token comes back while the test runs.
		c.RatePerIP = RateLimit{Rate: 0.01, Burst: 2, Slots: 1 << 10}
		c.APIKeys = map[string]RateLimit{partner: {Rate: 0.01, Burst: 5}}
	})
	order := func(user, key string) (int, http.Header) {
		req, _ := http.NewRequest("POST", "http://"+s.cfg.Addr+"/v1/orders", strings.NewReader(`{"sku":"K-1","qty":1}`))
		req.Header.Set("X-User-ID", user)
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	// From this IP without a key: the per-IP burst of 2.
	for i, want := range []int{202, 202, 429} {
		if code, _ := order(fmt.Sprint("ip-user-", i), ""); code != want {
			t.Fatalf("order %d without a key: %d, want %d", i, code, want)
		}
	}
	// With the partner's key: its own burst of 5, whatever the IP did.
	for i := 0; i < 5; i++ {
		if code, _ := order(fmt.Sprint("partner-user-", i), partner); code != 202 {
			t.Fatalf("partner order %d: %d", i, code)
		}
	}
	if code, h := order("partner-user-9", partner); code != 429 || !strings.HasPrefix(h.Get("RateLimit"), `"api-key";r=0`) {
		t.Fatalf("partner past its burst: %d %v", code, h)
	}
	if code, _ := order("someone", "invented-key-0123456789"); code != 401 {
		t.Fatalf("unknown API key: %d, want 401", code)
	}
}

func TestLoadAPIKeys(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := dir + "/keys"
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keys, err := LoadAPIKeys(write("# partners\npartner-a-0123456789 100 200\n\npartner-b-0123456789 0.5 1\n"))
	if err != nil || len(keys) != 2 || keys["partner-b-0123456789"] != (RateLimit{Rate: 0.5, Burst: 1}) {
		t.Fatalf("LoadAPIKeys = %v, %v", keys, err)
	}
	for _, bad := range []string{"short 1 1\n", "partner-a-0123456789 x 1\n", "partner-a-0123456789 1\n", "partner-a-0123456789 1 1\npartner-a-0123456789 2 2\n", "partner-a-0123456789 -1 1\n"} {
		if _, err := LoadAPIKeys(write(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

// Until ingest has written an order, GET answers "accepted" from the
// recent-orders table, to its owner only.
func TestGetAcceptedBeforeLedger(t *testing.T) {
	kf := testenv.Broker(t, 1)
	pool, _ := testenv.Ledger(t) // an empty ledger: no ingest runs here
	cfg := DefaultConfig()
	cfg.Addr, cfg.Brokers = freeAddr(t), []string{kf.Addr()}
	s, err := New(cfg, pool)
	if err != nil {
		t.Fatal(err)
	}
	s.items.put(ledger.SaleItem{SKU: "G-1", Stock: 5}, -1)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	code, _, body := postOrder(t, s.cfg.Addr, "getter", "G-1")
	if code != 202 {
		t.Fatalf("order: %d %s", code, body)
	}
	get := func(user string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+s.cfg.Addr+"/v1/orders/"+body[len(`{"order_id":"`):strings.Index(body, `","status"`)], nil)
		req.Header.Set("X-User-ID", user)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, got := get("getter"); code != 200 || got != body {
		t.Fatalf("GET by the owner: %d %s, want 200 %s", code, got, body)
	}
	if code, _ := get("someone-else"); code != 404 {
		t.Fatalf("GET by another user: %d, want 404", code)
	}
}

// A drained edge refuses orders with 503 and Connection: close but still
// takes connections and answers them; Resume (a handover that failed) gives
// it its orders back, unless it is stopping.
func TestDrainAndResume(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "D-1", 10)
	if code, _, body := postOrder(t, s.cfg.Addr, "u1", "D-1"); code != 202 {
		t.Fatalf("before the drain: %d %s", code, body)
	}
	if err := s.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	code, hdr, body := postOrder(t, s.cfg.Addr, "u2", "D-1")
	if code != 503 || hdr.Get("Retry-After") == "" || !strings.Contains(body, "/unavailable") {
		t.Fatalf("while drained: %d %v %s, want 503 unavailable with Retry-After", code, hdr, body)
	}
	resp, err := http.Get("http://" + s.cfg.Addr + "/healthz") // a new connection, answered
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !resp.Close {
		t.Error("a response while draining without Connection: close")
	}
	if !s.Resume() {
		t.Fatal("Resume refused on an edge that is not stopping")
	}
	if code, _, body := postOrder(t, s.cfg.Addr, "u3", "D-1"); code != 202 {
		t.Fatalf("after Resume: %d %s", code, body)
	}
	if st, _ := s.SKU("D-1"); st.Remaining != 8 {
		t.Fatalf("remaining %d, want 8 (two orders)", st.Remaining)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.Resume() {
		t.Fatal("Resume accepted on a stopped edge")
	}
}

// A started edge leaves the runtime a P for every event loop on top of the
// ones it had: the loops park theirs in epoll_wait, and the Kafka promises
// must not wait for sysmon to take one back (procs.go).
func TestEdgeKeepsPsFreeOfItsEventLoops(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set in the environment: the edge leaves it as it is")
	}
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "P-1", 1, func(c *Config) { c.Loops = 3 })
	if got, want := runtime.GOMAXPROCS(0), baseProcs()+s.cfg.loops(); got < want {
		t.Fatalf("GOMAXPROCS %d with %d event loops, want at least %d", got, s.cfg.loops(), want)
	}
}
