package edge

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/payment"
	"github.com/flashgate/flashgate/lib/testenv"
)

var webhookSecret = []byte("test-webhook-secret-0123456789")

// startLifecycle runs an edge with its ledger, ingest and the outbox relay,
// selling sku with stock units.
func startLifecycle(t *testing.T, sku string, stock int64) *Server {
	t.Helper()
	kf := testenv.Broker(t, 3)
	pool, url := testenv.Ledger(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	startIngest(t, kf, url)

	// ingest runs the outbox relay too: releases reach flash-sale.events.

	cfg := DefaultConfig()
	cfg.Addr, cfg.Brokers = freeAddr(t), []string{kf.Addr()}
	hook, err := payment.NewHMAC("testpay", webhookSecret)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Payments = []payment.Provider{hook}
	s, err := New(cfg, pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.LoadSaleItems(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutSaleItem(ctx, ledger.SaleItem{SKU: sku, Stock: stock, PriceCents: 500}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	return s
}

// startIngest runs ingest (and its outbox relay) from kf into the ledger at
// url until the test ends, and returns its configuration.
func startIngest(t *testing.T, kf *broker.Embedded, url string) ingest.Config {
	t.Helper()
	icfg := ingest.DefaultConfig()
	icfg.Brokers = []string{kf.Addr()}
	ipool, err := ledger.Open(context.Background(), url, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ipool.Close)
	svc, err := ingest.Start(icfg, ipool)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Stop)
	return icfg
}

// call sends a request to the edge and returns the status and body.
func call(t *testing.T, s *Server, method, path, user string, hdr map[string]string, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+s.cfg.Addr+path, strings.NewReader(body))
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
	return resp.StatusCode, string(b)
}

// waitStatus waits until the ledger holds order id (GET answers its status).
func waitStatus(t *testing.T, s *Server, id, user, status string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := call(t, s, "GET", "/v1/orders/"+id, user, nil, "")
		if code == 200 && strings.Contains(body, `"status":"`+status+`"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("order %s never reached %s: %d %s", id, status, code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A cancelled order's units come back to the sale, once, and only its owner
// can cancel it, only while it awaits payment.
func TestCancelReleasesStock(t *testing.T) {
	s := startLifecycle(t, "CAN-1", 2)
	code, body := call(t, s, "POST", "/v1/orders", "alice", nil, `{"sku":"CAN-1","qty":2}`)
	if code != 202 {
		t.Fatalf("order: %d %s", code, body)
	}
	id := orderIDOf(t, body)
	if code, body := call(t, s, "POST", "/v1/orders", "bob", nil, `{"sku":"CAN-1","qty":1}`); code != 409 {
		t.Fatalf("order on no stock: %d %s", code, body)
	}
	waitStatus(t, s, id, "alice", "pending_payment")

	if code, body := call(t, s, "POST", "/v1/orders/"+id+"/cancel", "bob", nil, ""); code != 404 {
		t.Fatalf("bob cancels alice's order: %d %s, want 404", code, body)
	}
	if code, body := call(t, s, "POST", "/v1/orders/"+id+"/cancel", "alice", nil, ""); code != 200 || !strings.Contains(body, `"status":"cancelled"`) {
		t.Fatalf("alice cancels: %d %s", code, body)
	}
	if code, body := call(t, s, "POST", "/v1/orders/"+id+"/cancel", "alice", nil, ""); code != 409 || !strings.Contains(body, "invalid-transition") {
		t.Fatalf("second cancel: %d %s, want 409 invalid-transition", code, body)
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.items.lookup([]byte("CAN-1")).remaining() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the cancelled order's 2 units never came back: %d left", s.items.lookup([]byte("CAN-1")).remaining())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, user := range []string{"bob", "carol"} {
		if code, body := call(t, s, "POST", "/v1/orders", user, nil, `{"sku":"CAN-1","qty":1}`); code != 202 {
			t.Fatalf("%s orders a released unit: %d %s", user, code, body)
		}
	}
	if code, _ := call(t, s, "POST", "/v1/orders", "dave", nil, `{"sku":"CAN-1","qty":1}`); code != 409 {
		t.Fatalf("a third order on 2 released units: %d, want 409 (released once)", code)
	}
}

// Signed payment webhooks pay an order once; bad, stale, replayed and
// misdirected ones are refused with their own 4xx and change nothing.
func TestPaymentWebhook(t *testing.T) {
	logs := captureLogs(t)
	defer func() { logs.assertNotLogged(t, string(webhookSecret)) }()
	s := startLifecycle(t, "PAY-1", 10)
	code, body := call(t, s, "POST", "/v1/orders", "payer", nil, `{"sku":"PAY-1","qty":2}`)
	if code != 202 {
		t.Fatalf("order: %d %s", code, body)
	}
	id := orderIDOf(t, body)
	waitStatus(t, s, id, "payer", "pending_payment")

	event := func(evID, orderID string, cents int) string {
		return `{"id":"` + evID + `","type":"payment.succeeded","order_id":"` + orderID + `","amount_cents":` + strconv.Itoa(cents) + `}`
	}
	hook := func(body string, sig string) (int, string) {
		return call(t, s, "POST", "/v1/payments/testpay/webhook", "", map[string]string{"Flashgate-Signature": sig}, body)
	}
	now := time.Now()
	paid := event("evt_1", id, 1000)
	for _, c := range []struct {
		name, body, sig string
		want            int
	}{
		{"wrong secret", paid, payment.Sign([]byte("another-secret-0123456789"), []byte(paid), now), 401},
		{"stale", paid, payment.Sign(webhookSecret, []byte(paid), now.Add(-10*time.Minute)), 401},
		{"no signature", paid, "", 400},
		{"unknown order", event("evt_2", "12345", 1000), payment.Sign(webhookSecret, []byte(event("evt_2", "12345", 1000)), now), 404},
		{"malformed", `{"id":"evt_3"}`, payment.Sign(webhookSecret, []byte(`{"id":"evt_3"}`), now), 400},
	} {
		if code, body := hook(c.body, c.sig); code != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, code, body, c.want)
		}
	}
	if code, body := call(t, s, "POST", "/v1/payments/nosuch/webhook", "", nil, paid); code != 404 {
		t.Errorf("unknown provider: %d %s", code, body)
	}
	waitStatus(t, s, id, "payer", "pending_payment") // nothing applied

	if code, body := hook(paid, payment.Sign(webhookSecret, []byte(paid), now)); code != 200 || !strings.Contains(body, `"status":"paid"`) {
		t.Fatalf("signed payment: %d %s", code, body)
	}
	if code, body := hook(paid, payment.Sign(webhookSecret, []byte(paid), now)); code != 409 || !strings.Contains(body, "duplicate-event") {
		t.Fatalf("replayed payment: %d %s, want 409 duplicate-event", code, body)
	}
	if code, body := call(t, s, "POST", "/v1/orders/"+id+"/cancel", "payer", nil, ""); code != 409 {
		t.Fatalf("cancel of a paid order: %d %s, want 409", code, body)
	}
	waitStatus(t, s, id, "payer", "paid")
}

// GET /v1/orders pages through the caller's orders, newest first, and only
// theirs.
func TestListOrders(t *testing.T) {
	s := startLifecycle(t, "LIST-1", 100)
	var ids []string
	for i := 0; i < 7; i++ {
		code, body := call(t, s, "POST", "/v1/orders", "lister", nil, `{"sku":"LIST-1","qty":1}`)
		if code != 202 {
			t.Fatalf("order %d: %d %s", i, code, body)
		}
		ids = append(ids, orderIDOf(t, body))
	}
	if code, body := call(t, s, "POST", "/v1/orders", "other", nil, `{"sku":"LIST-1","qty":1}`); code != 202 {
		t.Fatalf("other's order: %d %s", code, body)
	}
	waitStatus(t, s, ids[6], "lister", "pending_payment")
	waitStatus(t, s, ids[0], "lister", "pending_payment")

	type page struct {
		Orders []struct {
			OrderID string `json:"order_id"`
			UserID  string `json:"user_id"`
		} `json:"orders"`
		Next string `json:"next_cursor"`
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		code, body := call(t, s, "GET", "/v1/orders?limit=3&cursor="+cursor, "lister", nil, "")
		var p page
		if code != 200 || json.Unmarshal([]byte(body), &p) != nil {
			t.Fatalf("page %d: %d %s", pages, code, body)
		}
		for _, o := range p.Orders {
			if o.UserID != "lister" {
				t.Fatalf("another user's order listed: %s", body)
			}
			got = append(got, o.OrderID)
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	if len(got) != 7 {
		t.Fatalf("listed %v, want the 7 orders", got)
	}
	for i, id := range got {
		if id != ids[6-i] {
			t.Fatalf("listed %v, want newest first %v", got, ids)
		}
	}
	for _, q := range []string{"limit=0", "limit=101", "limit=x", "cursor=abc"} {
		if code, body := call(t, s, "GET", "/v1/orders?"+q, "lister", nil, ""); code != 400 {
			t.Errorf("GET /v1/orders?%s: %d %s, want 400", q, code, body)
		}
	}
}

// GET /v1/orders/{id}/events streams the order's changes as Server-Sent
// Events: only to its owner, live as they happen, ended by a drain.
func TestOrderEventStream(t *testing.T) {
	s := startLifecycle(t, "SSE-1", 10)
	code, body := call(t, s, "POST", "/v1/orders", "watcher", nil, `{"sku":"SSE-1","qty":1}`)
	if code != 202 {
		t.Fatalf("order: %d %s", code, body)
	}
	id := orderIDOf(t, body)
	waitStatus(t, s, id, "watcher", "pending_payment")
	if code, body := call(t, s, "GET", "/v1/orders/"+id+"/events", "peeker", nil, ""); code != 404 {
		t.Fatalf("another user's stream: %d %s, want 404", code, body)
	}

	req, _ := http.NewRequest("GET", "http://"+s.cfg.Addr+"/v1/orders/"+id+"/events", nil)
	req.Header.Set("X-User-ID", "watcher")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %v", resp.StatusCode, resp.Header)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()

	paid := `{"id":"evt_sse","type":"payment.succeeded","order_id":"` + id + `","amount_cents":500}`
	if code, body := call(t, s, "POST", "/v1/payments/testpay/webhook", "", map[string]string{"Flashgate-Signature": payment.Sign(webhookSecret, []byte(paid), time.Now())}, paid); code != 200 {
		t.Fatalf("payment: %d %s", code, body)
	}
	deadline := time.After(20 * time.Second)
	for got := false; !got; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the stream ended before the payment's event")
			}
			got = strings.HasPrefix(l, "data: ") && strings.Contains(l, `"status":"paid"`) && strings.Contains(l, id)
		case <-deadline:
			t.Fatal("no event for the payment within 20 s")
		}
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range lines { // the drain ends the stream: the body reaches EOF
	}
}
