package edge

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/flashgate/flashgate/lib/testenv"
)

type orderResult struct {
	code    int
	orderID string
	typ     string
}

func postIdem(t *testing.T, addr, user, key, body string) orderResult {
	t.Helper()
	code, h, b := post(t, addr, user, key, body)
	var v struct {
		OrderID string `json:"order_id"`
		Type    string `json:"type"`
	}
	if err := json.Unmarshal([]byte(b), &v); err != nil {
		t.Fatalf("response not JSON: %q", b)
	}
	if code == 202 && h.Get("Location") != "/v1/orders/"+v.OrderID {
		t.Fatalf("202 Location %q for order %s", h.Get("Location"), v.OrderID)
	}
	return orderResult{code, v.OrderID, v.Type[strings.LastIndexByte(v.Type, '/')+1:]}
}

// A retry gets the first response and takes no stock; a different order under
// the same key is 422; keys are per user.
func TestIdempotentRetries(t *testing.T) {
	kf := testenv.Broker(t, 3)
	s := startTestEdge(t, kf, "I-1", 10)
	body := `{"sku":"I-1","qty":2}`
	first := postIdem(t, s.cfg.Addr, "alice", "k-1", body)
	if first.code != 202 {
		t.Fatalf("first: %+v", first)
	}
	for i := 0; i < 3; i++ {
		if again := postIdem(t, s.cfg.Addr, "alice", "k-1", " {\"qty\": 2, \"sku\": \"I-1\"} "); again != first {
			t.Fatalf("retry %d: %+v, want %+v", i, again, first)
		}
	}
	if got := postIdem(t, s.cfg.Addr, "alice", "k-1", `{"sku":"I-1","qty":1}`); got.code != 422 || got.typ != "idempotency-mismatch" {
		t.Fatalf("same key, other order: %+v", got)
	}
	if got := postIdem(t, s.cfg.Addr, "bob", "k-1", body); got.code != 202 || got.orderID == first.orderID {
		t.Fatalf("another user's key k-1: %+v", got)
	}
	if st, _ := s.SKU("I-1"); st.Remaining != 6 || st.Accepted != 2 {
		t.Fatalf("after 2 orders of 2 units and retries: %+v", st)
	}
	if n := countRecords(t, kf); n != 2 {
		t.Fatalf("order.created holds %d records, want 2", n)
	}
}

// While the first request waits for Kafka a retry gets 409; concurrent
// requests with one key take stock once; after the ack retries replay it.
func TestIdempotencyInFlightAndConcurrent(t *testing.T) {
	kf := testenv.Broker(t, 1)
	c := kf.Cluster()
	release := make(chan struct{})
	var hold atomic.Bool
	hold.Store(true)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if hold.Load() {
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	s := startTestEdge(t, kf, "I-2", 100)
	body := `{"sku":"I-2","qty":1}`
	const n = 8
	results := make(chan orderResult, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- postIdem(t, s.cfg.Addr, "carol", "same-key", body)
		}()
	}
	// The 409s come back at once, the one order waits for the broker.
	for i := 0; i < n-1; i++ {
		if r := <-results; r.code != 409 || r.typ != "idempotency-in-flight" {
			t.Fatalf("concurrent duplicate: %+v, want 409 idempotency-in-flight", r)
		}
	}
	hold.Store(false)
	close(release)
	wg.Wait()
	first := <-results
	if first.code != 202 {
		t.Fatalf("the one order: %+v", first)
	}
	if again := postIdem(t, s.cfg.Addr, "carol", "same-key", body); again != first {
		t.Fatalf("retry after the ack: %+v, want %+v", again, first)
	}
	if st, _ := s.SKU("I-2"); st.Remaining != 99 {
		t.Fatalf("%d units left, want 99: the key took stock more than once", st.Remaining)
	}
}

// After a definite produce failure (stock given back) the same key may try
// again and gets a new order.
func TestIdempotencyAfterFailure(t *testing.T) {
	kf := testenv.Broker(t, 1)
	var failing atomic.Bool
	failing.Store(true)
	countProduces(kf.Cluster(), &failing)
	s := startTestEdge(t, kf, "I-3", 5)
	body := `{"sku":"I-3","qty":1}`
	if r := postIdem(t, s.cfg.Addr, "dave", "k", body); r.code != 503 {
		t.Fatalf("with the broker refusing: %+v", r)
	}
	failing.Store(false)
	r := postIdem(t, s.cfg.Addr, "dave", "k", body)
	if r.code != 202 {
		t.Fatalf("retry after the failure: %+v", r)
	}
	if st, _ := s.SKU("I-3"); st.Remaining != 4 {
		t.Fatalf("%d units left, want 4", st.Remaining)
	}
	// Refusals are not remembered: a sold-out answer is re-evaluated.
	for i := 0; i < 4; i++ {
		postIdem(t, s.cfg.Addr, fmt.Sprint("u", i), "", body)
	}
	if r := postIdem(t, s.cfg.Addr, "erin", "k2", body); r.code != 409 || r.typ != "sold-out" {
		t.Fatalf("sold out: %+v", r)
	}
	if r := postIdem(t, s.cfg.Addr, "erin", "k2", `{"sku":"I-3","qty":2}`); r.code != 409 || r.typ != "sold-out" {
		t.Fatalf("a refused key is free for another order: %+v", r)
	}
}
