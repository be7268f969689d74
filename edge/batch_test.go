package edge

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/testenv"
)

// batchResult is one line of a batch's response.
type batchResult struct {
	Line       int    `json:"line"`
	Status     int    `json:"status"`
	OrderID    string `json:"order_id"`
	Problem    string `json:"problem"`
	Detail     string `json:"detail"`
	RetryAfter int    `json:"retry_after"`
}

// postBatch sends lines (joined with newlines) to POST /v1/orders/batch as
// user and returns the status, the header and, for a 200, the result lines.
func postBatch(t *testing.T, addr, user string, hdr map[string]string, lines ...string) (int, http.Header, []batchResult, string) {
	t.Helper()
	body := strings.Join(lines, "\n") + "\n"
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/orders/batch", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-ndjson")
	if user != "" {
		req.Header.Set("X-User-ID", user)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return resp.StatusCode, resp.Header, nil, string(b)
	}
	var out []batchResult
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		var r batchResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("result line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return resp.StatusCode, resp.Header, out, string(b)
}

// wantResults checks the results are one per line, in order, with the
// statuses and problems of want ("202", "409 sold-out", ...).
func wantResults(t *testing.T, got []batchResult, body string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d result lines, want %d:\n%s", len(got), len(want), body)
	}
	for i, w := range want {
		r := got[i]
		status, problem, _ := strings.Cut(w, " ")
		if r.Line != i+1 || strconv.Itoa(r.Status) != status || r.Problem != problem || (r.Status == 202) != (r.OrderID != "") {
			t.Errorf("result %d = %+v, want line %d: %s", i, r, i+1, w)
		}
		if r.Status != 202 && r.Detail == "" {
			t.Errorf("result %d = %+v has no detail", i, r)
		}
	}
}

// ordersInKafka returns the orders in order.created by id.
func ordersInKafka(t *testing.T, brokers []string) map[string]order.Order {
	t.Helper()
	out := map[string]order.Order{}
	for _, r := range readOrderCreated(t, brokers) {
		var o order.Order
		if err := order.Decode(r.Value, &o); err != nil {
			t.Fatalf("record %s: %v", r.Value, err)
		}
		if string(r.Key) != o.UserID {
			t.Errorf("order %d keyed %q, want its user %q", o.ID, r.Key, o.UserID)
		}
		out[strconv.FormatInt(o.ID, 10)] = o
	}
	return out
}

// A batch mixing good lines with refused ones: each line is answered as
// POST /v1/orders would answer it, in input order; the stock taken is
// exactly the accepted lines'; every accepted order is in Kafka and reaches
// the ledger once; idempotency keys are shared with single orders.
func TestBatchOrders(t *testing.T) {
	s := startLifecycle(t, "BAT-1", 5)
	ctx := context.Background()
	if _, err := s.PutSaleItem(ctx, ledger.SaleItem{SKU: "BAT-LIM", Stock: 100, PriceCents: 100, PerUserLimit: 2}); err != nil {
		t.Fatal(err)
	}
	code, _, body := post(t, s.cfg.Addr, "batcher", "k-first", `{"sku":"BAT-1","qty":1}`)
	if code != 202 {
		t.Fatalf("single order: %d %s", code, body)
	}
	firstID := orderIDOf(t, body)

	code, h, res, body := postBatch(t, s.cfg.Addr, "batcher", nil,
		`{"sku":"BAT-1","qty":2,"idempotency_key":"k-a"}`,     // 202: 2 left
		`{"sku":"BAT-1","qty":1,"idempotency_key":"k-first"}`, // 202: the single order again
		`{"sku":"BAT-1",`,           // 400
		`{"sku":"BAT-LIM","qty":2}`, // 202
		`{"sku":"BAT-LIM","qty":1}`, // 409: past the per-user limit of 2
		`{"sku":"BAT-1","qty":5}`,   // 409: 2 left
		``,                          // 400
		`{"sku":"BAT-1","qty":2,"idempotency_key":"k-first"}`, // 422: the key ordered 1
		`{"sku":"NOPE","qty":1}`,                              // 404
		` {"qty":2, "sku":"BAT-1"} `+"\r",                     // 202: 0 left
		`{"sku":"BAT-1","qty":1,"extra":1}`,                   // 400
	)
	if code != 200 || h.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("batch: %d %v %s", code, h, body)
	}
	wantResults(t, res, body, "202", "202", "400 invalid-request", "202", "409 purchase-limit", "409 sold-out",
		"400 invalid-request", "422 idempotency-mismatch", "404 unknown-sku", "202", "400 invalid-request")
	if res[1].OrderID != firstID {
		t.Fatalf("the retried key answered order %s, want the single order's %s", res[1].OrderID, firstID)
	}
	accepted := map[string]int64{firstID: 1, res[0].OrderID: 2, res[3].OrderID: 2, res[9].OrderID: 2}
	if len(accepted) != 4 {
		t.Fatalf("accepted order ids repeat: %s", body)
	}
	if st, _ := s.SKU("BAT-1"); st.Remaining != 0 || st.TakenUnits != 5 || st.Accepted != 3 {
		t.Fatalf("BAT-1 after the batch: %+v, want all 5 units taken by 3 orders", st)
	}
	if st, _ := s.SKU("BAT-LIM"); st.Remaining != 98 {
		t.Fatalf("BAT-LIM after the batch: %+v, want 98 left", st)
	}

	// Every 202 is in Kafka, as ordered.
	inKafka := ordersInKafka(t, s.cfg.Brokers)
	if len(inKafka) != len(accepted) {
		t.Errorf("order.created holds %d orders, want the %d accepted", len(inKafka), len(accepted))
	}
	for id, qty := range accepted {
		o, ok := inKafka[id]
		if !ok || o.UserID != "batcher" || int64(o.Qty) != qty {
			t.Errorf("accepted order %s (qty %d) in Kafka: %+v, %v", id, qty, o, ok)
		}
	}
	if o := inKafka[res[0].OrderID]; o.IdemKey != "k-a" || o.SKU != "BAT-1" || o.PriceCents != 500 || o.ClientIP != "127.0.0.1" {
		t.Errorf("line 1's record: %+v", o)
	}

	// The keys replay, through a batch or a single order.
	code, _, again, body := postBatch(t, s.cfg.Addr, "batcher", nil, `{"sku":"BAT-1","qty":2,"idempotency_key":"k-a"}`, `{"sku":"BAT-1","qty":1}`)
	if code != 200 {
		t.Fatalf("retried batch: %d %s", code, body)
	}
	wantResults(t, again, body, "202", "409 sold-out")
	if again[0].OrderID != res[0].OrderID {
		t.Fatalf("retried line answered order %s, want %s", again[0].OrderID, res[0].OrderID)
	}
	if code, _, body := post(t, s.cfg.Addr, "batcher", "k-a", `{"sku":"BAT-1","qty":2}`); code != 202 || orderIDOf(t, body) != res[0].OrderID || !strings.Contains(body, `"qty":2`) {
		t.Fatalf("single order with a batch line's key: %d %s, want its 202", code, body)
	}

	// The ledger gets each order once.
	if err := ingest.WaitCaughtUp(ctx, s.prod, ingest.DefaultConfig().Group, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM orders WHERE user_id = 'batcher'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(accepted) {
		t.Fatalf("the ledger holds %d orders of the batcher, want %d", n, len(accepted))
	}
	waitStatus(t, s, res[0].OrderID, "batcher", "pending_payment")
}

// Rate limits count lines, not requests: a batch cannot multiply a user's
// order rate.
func TestBatchLinesAreRateLimited(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "BRL-1", 1000, func(c *Config) {
		c.RatePerUser = RateLimit{Rate: 1, Burst: 3, Slots: 1 << 10}
	})
	line := `{"sku":"BRL-1","qty":1}`
	code, _, res, body := postBatch(t, s.cfg.Addr, "rl-batcher", nil, line, line, line, line, line)
	if code != 200 {
		t.Fatalf("batch: %d %s", code, body)
	}
	wantResults(t, res, body, "202", "202", "202", "429 rate-limited", "429 rate-limited")
	if res[3].RetryAfter < 1 {
		t.Errorf("a rate-limited line without retry_after: %+v", res[3])
	}
	if st, _ := s.SKU("BRL-1"); st.Remaining != 997 {
		t.Fatalf("%d left, want 997: refused lines took no stock", st.Remaining)
	}
}

// A broker refusing the records: every admitted line is answered 503 and its
// units are given back; once it takes them again, so does the batch.
func TestBatchProduceRefused(t *testing.T) {
	kf := testenv.Broker(t, 3)
	var failing atomic.Bool
	failing.Store(true)
	produces := countProduces(kf.Cluster(), &failing)
	s := startTestEdge(t, kf, "BF-1", 10, func(c *Config) {
		c.BreakerFailures = 1000 // this test is about each line's outcome, not the breaker
	})
	lines := []string{
		`{"sku":"BF-1","qty":2,"idempotency_key":"bf-a"}`,
		`{"sku":"BF-1","qty":1}`,
		`{"sku":"BF-1","qty":11}`,
		`{"sku":"BF-1","qty":3,"idempotency_key":"bf-b"}`,
	}
	code, _, res, body := postBatch(t, s.cfg.Addr, "bf-user", nil, lines...)
	if code != 200 {
		t.Fatalf("batch: %d %s", code, body)
	}
	wantResults(t, res, body, "503 unavailable", "503 unavailable", "409 sold-out", "503 unavailable")
	if res[0].RetryAfter != 1 || produces.Load() == 0 {
		t.Fatalf("refused line: %+v after %d produce requests", res[0], produces.Load())
	}
	if st, _ := s.SKU("BF-1"); st.Remaining != 10 || st.TakenUnits != 0 || st.Accepted != 0 {
		t.Fatalf("after refused produces: %+v; want all 10 units back", st)
	}

	failing.Store(false)
	code, _, res, body = postBatch(t, s.cfg.Addr, "bf-user", nil, lines...) // the keys are free again
	if code != 200 {
		t.Fatalf("batch after recovery: %d %s", code, body)
	}
	wantResults(t, res, body, "202", "202", "409 sold-out", "202")
	if st, _ := s.SKU("BF-1"); st.Remaining != 4 {
		t.Fatalf("%d left, want 4", st.Remaining)
	}
	inKafka := ordersInKafka(t, []string{kf.Addr()})
	for _, i := range []int{0, 1, 3} {
		if _, ok := inKafka[res[i].OrderID]; !ok {
			t.Errorf("line %d's order %s was answered 202 but is not in Kafka", i+1, res[i].OrderID)
		}
	}
	if len(inKafka) != 3 {
		t.Fatalf("order.created holds %d orders, want the 3 accepted", len(inKafka))
	}
}

// A line whose produce times out is answered 503, keeps its units taken and
// waits for reconciliation, as a single order does.
func TestBatchUnknownOutcome(t *testing.T) {
	kf := testenv.Broker(t, 1)
	var hold, drop atomic.Bool
	var held atomic.Int64
	hold.Store(true)
	holdProduces(kf.Cluster(), &hold, &drop, &held)
	t.Cleanup(func() { hold.Store(false) })
	s := startTestEdge(t, kf, "BU-1", 10, func(c *Config) {
		c.DeliveryTimeout, c.BreakerStall = time.Second, time.Hour
	})
	code, _, res, body := postBatch(t, s.cfg.Addr, "bu-user", nil,
		`{"sku":"BU-1","qty":1,"idempotency_key":"bu-a"}`,
		`{"sku":"BU-1","qty":20}`,
		`{"sku":"BU-1","qty":2}`,
		`{"sku":"BU-1","qty":1,"idempotency_key":"bu-a"}`, // line 1 holds the key until its outcome is known
	)
	if code != 200 {
		t.Fatalf("batch: %d %s", code, body)
	}
	wantResults(t, res, body, "503 unavailable", "409 sold-out", "503 unavailable", "409 idempotency-in-flight")
	if st, _ := s.SKU("BU-1"); st.Remaining != 7 || s.unknown.len() != 2 || held.Load() == 0 {
		t.Fatalf("after timeouts: %+v, %d unknown, %d held; want 7 left and 2 unknown", st, s.unknown.len(), held.Load())
	}
	_, _, res, body = postBatch(t, s.cfg.Addr, "bu-user", nil, `{"sku":"BU-1","qty":1,"idempotency_key":"bu-a"}`)
	wantResults(t, res, body, "409 idempotency-in-flight")
}

// Whole-request refusals: no line is applied.
func TestBatchRefusals(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "BR-1", 10, func(c *Config) { c.MaxBodyBytes, c.MaxBatchOrders, c.MaxBatchesInFlight = 1024, 3, 1 })
	line := `{"sku":"BR-1","qty":1}`
	for _, c := range []struct {
		name, method, user string
		hdr                map[string]string
		body               string
		want               int
		says               string
	}{
		{"over the line count", "POST", "u", nil, strings.Repeat(line+"\n", 4), 413, "-edge.maxBatchOrders"},
		{"over the body size", "POST", "u", nil, strings.Repeat(line+"\n", 60), 413, "-edge.maxBodyBytes"},
		{"no identity", "POST", "", nil, line, 401, "X-User-ID"},
		{"unknown API key", "POST", "u", map[string]string{"X-API-Key": "no-such-key-0123456789"}, line, 401, "X-API-Key"},
		{"a request Idempotency-Key", "POST", "u", map[string]string{"Idempotency-Key": "k"}, line, 400, "idempotency_key"},
		{"empty", "POST", "u", nil, "", 400, "no order"},
		{"GET", "GET", "u", nil, "", 405, "POST /v1/orders/batch"},
	} {
		req, _ := http.NewRequest(c.method, "http://"+s.cfg.Addr+"/v1/orders/batch", strings.NewReader(c.body))
		if c.user != "" {
			req.Header.Set("X-User-ID", c.user)
		}
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want || !strings.Contains(string(b), c.says) || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %s, want %d saying %q", c.name, resp.StatusCode, b, c.want, c.says)
		}
	}
	s.batchesInFlight.Store(1) // as if the one batch allowed were being answered
	code, h, _, body := postBatch(t, s.cfg.Addr, "u", nil, line)
	s.batchesInFlight.Store(0)
	if code != 503 || h.Get("Retry-After") == "" || !strings.Contains(body, "-edge.maxBatchesInFlight") {
		t.Errorf("past the batches in flight: %d %v %s", code, h, body)
	}
	if st, _ := s.SKU("BR-1"); st.Remaining != 10 {
		t.Fatalf("refused batches took stock: %d left", st.Remaining)
	}
	if code, _, res, body := postBatch(t, s.cfg.Addr, "u", nil, line, line, line); code != 200 {
		t.Fatalf("a batch at the limit: %d %s", code, body)
	} else {
		wantResults(t, res, body, "202", "202", "202")
	}
	if s.batchesInFlight.Load() != 0 {
		t.Fatalf("%d batches still counted in flight", s.batchesInFlight.Load())
	}
}

// Batches pipelined on one connection with single orders are answered in
// request order.
func TestBatchPipelined(t *testing.T) {
	kf := testenv.Broker(t, 3)
	s := startTestEdge(t, kf, "BP-1", 100)
	single := "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-User-ID: p1\r\nContent-Length: 23\r\n\r\n" + `{"sku":"BP-1","qty":1}` + "\n"
	lines := `{"sku":"BP-1","qty":1}` + "\n" + `{"sku":"BP-1","qty":2}` + "\n"
	bat := fmt.Sprintf("POST /v1/orders/batch HTTP/1.1\r\nHost: x\r\nX-User-ID: p2\r\nContent-Length: %d\r\n\r\n%s", len(lines), lines)
	conn, err := net.Dial("tcp", s.cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte(single + bat + single + bat)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for i, want := range []string{"Accepted", "batch", "Accepted", "batch"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := strings.TrimPrefix(resp.Status, "202 ")
		if resp.StatusCode == 200 && strings.Count(string(b), `"status":202`) == 2 {
			got = "batch"
		}
		if got != want {
			t.Fatalf("response %d: %s %s, want %s", i, resp.Status, b, want)
		}
	}
	if st, _ := s.SKU("BP-1"); st.Remaining != 100-8 {
		t.Fatalf("%d left, want 92", st.Remaining)
	}
}

// An admin cancels pending orders in bulk: each one's units come back to
// the sale once; orders that cannot be cancelled are reported one by one.
func TestAdminBulkCancel(t *testing.T) {
	s := startLifecycle(t, "BC-1", 3)
	code, _, res, body := postBatch(t, s.cfg.Addr, "alice", nil, `{"sku":"BC-1","qty":1}`, `{"sku":"BC-1","qty":1}`)
	if code != 200 {
		t.Fatalf("batch: %d %s", code, body)
	}
	wantResults(t, res, body, "202", "202")
	a1, a2 := res[0].OrderID, res[1].OrderID
	code, _, body = post(t, s.cfg.Addr, "bob", "", `{"sku":"BC-1","qty":1}`)
	if code != 202 {
		t.Fatalf("bob's order: %d %s", code, body)
	}
	b1 := orderIDOf(t, body)
	for id, user := range map[string]string{a1: "alice", a2: "alice", b1: "bob"} {
		waitStatus(t, s, id, user, "pending_payment")
	}
	if code, body := call(t, s, "POST", "/v1/orders/"+b1+"/cancel", "bob", nil, ""); code != 200 {
		t.Fatalf("bob cancels: %d %s", code, body)
	}
	remaining := func() int64 { st, _ := s.SKU("BC-1"); return st.Remaining }
	waitRemaining := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for remaining() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%d units left, want %d", remaining(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitRemaining(1)

	a, err := StartAdminWithToken("127.0.0.1:0", "", s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop(context.Background())
	admin := func(method, body string) (int, string) {
		req, _ := http.NewRequest(method, "http://"+a.Addr()+"/admin/v1/orders/cancel", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	type results struct {
		Cancelled int `json:"cancelled"`
		Results   []struct {
			OrderID string `json:"order_id"`
			Status  int    `json:"status"`
			Problem string `json:"problem"`
			Order   *struct {
				Status string `json:"status"`
				UserID string `json:"user_id"`
			} `json:"order"`
		} `json:"results"`
	}
	bulk := func(body string, want ...string) results {
		t.Helper()
		code, resp := admin("POST", body)
		var r results
		if code != 200 || json.Unmarshal([]byte(resp), &r) != nil || len(r.Results) != len(want) {
			t.Fatalf("bulk cancel %s: %d %s", body, code, resp)
		}
		for i, w := range want {
			got := strconv.Itoa(r.Results[i].Status)
			if r.Results[i].Problem != "" {
				got += " " + r.Results[i].Problem
			}
			if got != w {
				t.Errorf("bulk cancel %s: result %d = %+v, want %s", body, i, r.Results[i], w)
			}
		}
		return r
	}
	unknown := "1" + strings.Repeat("0", 17)
	r := bulk(`["`+a1+`", `+a2+`, "`+b1+`", "`+unknown+`"]`, "200", "200", "409 invalid-transition", "404 not-found")
	if r.Cancelled != 2 || r.Results[0].OrderID != a1 || r.Results[1].Order == nil || r.Results[1].Order.Status != "cancelled" || r.Results[1].Order.UserID != "alice" {
		t.Fatalf("bulk cancel: %+v", r)
	}
	waitRemaining(3)
	waitStatus(t, s, a1, "alice", "cancelled")

	// Again: refused one by one, nothing released twice.
	bulk(`["`+a2+`","`+a1+`"]`, "409 invalid-transition", "409 invalid-transition")
	time.Sleep(500 * time.Millisecond) // time for a second release to arrive, were there one
	if got := remaining(); got != 3 {
		t.Fatalf("%d units left after a repeated bulk cancel, want 3", got)
	}
	for i := 0; i < 3; i++ {
		if code, _, body := postOrder(t, s.cfg.Addr, fmt.Sprint("buyer", i), "BC-1"); code != 202 {
			t.Fatalf("order %d of a released unit: %d %s", i, code, body)
		}
	}
	if code, _, _ := postOrder(t, s.cfg.Addr, "buyer3", "BC-1"); code != 409 {
		t.Fatalf("a fourth order on 3 released units: %d, want 409 (each released once)", code)
	}

	for _, c := range []struct {
		method, body string
		want         int
	}{
		{"POST", `{"order_ids":["` + a1 + `"]}`, 400},
		{"POST", `["x"]`, 400},
		{"POST", `[]`, 400},
		{"POST", `["` + a1 + `","` + a1 + `"]`, 400},
		{"POST", "[" + strings.Repeat(`"`+a1+`",`, ledger.MaxBulkCancel) + `"` + a1 + `"]`, 413},
		{"GET", "", 405},
	} {
		if code, body := admin(c.method, c.body); code != c.want || !strings.Contains(body, "/problems/") {
			t.Errorf("%s %.60s: %d %s, want %d", c.method, c.body, code, body, c.want)
		}
	}
}
