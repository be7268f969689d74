package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashgate/flashgate/lib/pgcluster"
)

// startPeer starts the peer with private dependencies, or skips the test
// when redis-server or the PostgreSQL server binaries are missing.
func startPeer(t *testing.T) *peer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("skipping: redis-server is not installed; possible fix: `apt-get install -y redis-server`")
	}
	if _, err := pgcluster.BinDir(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	// Not t.TempDir: its 0700 parent keeps the postgres user out when root.
	dir, err := os.MkdirTemp("", "textbook-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := start(ctx, config{
		addr: "127.0.0.1:0", adminAddr: "127.0.0.1:0", depsDir: dir,
		redisPool: 20, pgConns: 16, pgNoFsync: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}

type client struct {
	t    *testing.T
	http *http.Client
	edge string
	adm  string
}

type reply struct {
	status  int
	orderID string
	problem string // the problem type's name
}

func (c *client) do(method, url, user, key, body string) reply {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if user != "" {
		req.Header.Set("X-User-ID", user)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Error(err)
		return reply{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v struct {
		OrderID string `json:"order_id"`
		Type    string `json:"type"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		c.t.Errorf("%s %s: %d %q is not JSON: %v", method, url, resp.StatusCode, b, err)
	}
	return reply{status: resp.StatusCode, orderID: v.OrderID, problem: strings.TrimPrefix(v.Type, problemBase)}
}

func (c *client) order(user, key, sku string, qty int) reply {
	return c.do("POST", c.edge+"/v1/orders", user, key, fmt.Sprintf(`{"sku":%q,"qty":%d}`, sku, qty))
}

func (c *client) putSKU(sku string, stock, limit int) {
	if r := c.do("PUT", c.adm+"/admin/v1/skus/"+sku, "", "", fmt.Sprintf(`{"stock":%d,"price_cents":100,"per_user_limit":%d}`, stock, limit)); r.status != 200 {
		c.t.Fatalf("PUT %s: %d", sku, r.status)
	}
}

func (c *client) sku(sku string) (remaining, accepted int64) {
	resp, err := c.http.Get(c.adm + "/admin/v1/skus/" + sku)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct{ Remaining, Accepted int64 }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		c.t.Fatal(err)
	}
	return v.Remaining, v.Accepted
}

func TestTextbookPeer(t *testing.T) {
	p := startPeer(t)
	c := &client{t: t, http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}},
		edge: "http://" + p.edgeAddr(), adm: "http://" + p.adminAddr()}
	ctx := context.Background()

	t.Run("flash sale", func(t *testing.T) {
		c.t = t
		const stock, users, requests = 50, 200, 500
		c.putSKU("FS", stock, 1)
		// Each user's first order has key k-<user>; 100 of them are retried
		// with the same key; the other 200 requests are new attempts.
		type attempt struct{ user, key string }
		var as []attempt
		for i := range requests {
			u := fmt.Sprintf("u%d", i%users)
			switch {
			case i < users:
				as = append(as, attempt{u, "k-" + u})
			case i < users+100:
				as = append(as, attempt{u, "k-" + u}) // a retry
			default:
				as = append(as, attempt{u, fmt.Sprintf("again-%d", i)})
			}
		}
		rand.Shuffle(len(as), func(i, j int) { as[i], as[j] = as[j], as[i] })
		replies := make([]reply, len(as))
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i, a := range as {
			wg.Go(func() {
				<-gate
				replies[i] = c.order(a.user, a.key, "FS", 1)
			})
		}
		close(gate)
		wg.Wait()

		ids := map[string]bool{}
		byKey := map[attempt]string{}
		refused := map[string]int{}
		replays := 0
		for i, r := range replies {
			switch {
			case r.status == 202:
				ids[r.orderID] = true
				prev, ok := byKey[as[i]]
				if ok && prev != r.orderID {
					t.Errorf("user %s key %s: order ids %s and %s", as[i].user, as[i].key, prev, r.orderID)
				}
				if ok {
					replays++
				}
				byKey[as[i]] = r.orderID
			case r.status == 409 && (r.problem == "sold-out" || r.problem == "purchase-limit"):
				refused[r.problem]++
			default:
				t.Errorf("%+v: %+v", as[i], r)
			}
		}
		if len(ids) != stock {
			t.Errorf("%d orders accepted, want %d", len(ids), stock)
		}
		t.Logf("%d orders accepted, %d retries answered with the same order, refused: %v", len(ids), replays, refused)

		var rows, units int64
		if err := p.db.QueryRow(ctx, `SELECT count(*), coalesce(sum(qty), 0) FROM orders WHERE sku = 'FS'`).Scan(&rows, &units); err != nil {
			t.Fatal(err)
		}
		if rows != stock || units != stock {
			t.Errorf("PostgreSQL holds %d orders of %d units, want %d", rows, units, stock)
		}
		var over int64
		if err := p.db.QueryRow(ctx, `SELECT count(*) FROM (SELECT user_id FROM orders WHERE sku = 'FS' GROUP BY user_id HAVING sum(qty) > 1) o`).Scan(&over); err != nil {
			t.Fatal(err)
		}
		if over != 0 {
			t.Errorf("%d users bought more than their limit of 1", over)
		}
		for id := range ids {
			var n int
			if err := p.db.QueryRow(ctx, `SELECT count(*) FROM orders WHERE order_id = $1::text::bigint`, id).Scan(&n); err != nil || n != 1 {
				t.Errorf("accepted order %s: %d rows (%v)", id, n, err)
			}
		}
		if rem, acc := c.sku("FS"); rem != 0 || acc != stock {
			t.Errorf("admin: remaining %d accepted %d, want 0 and %d", rem, acc, stock)
		}
	})

	t.Run("failed INSERT gives the units back", func(t *testing.T) {
		c.t = t
		c.putSKU("COMP", 5, 1)
		if _, err := p.db.Exec(ctx, `ALTER TABLE orders RENAME TO orders_away`); err != nil {
			t.Fatal(err)
		}
		r := c.order("v1", "k1", "COMP", 1)
		if _, err := p.db.Exec(ctx, `ALTER TABLE orders_away RENAME TO orders`); err != nil {
			t.Fatal(err)
		}
		if r.status != 503 || r.problem != "unavailable" {
			t.Fatalf("order with the table gone: %+v, want 503 unavailable", r)
		}
		if rem, acc := c.sku("COMP"); rem != 5 || acc != 0 {
			t.Errorf("after the failed INSERT: remaining %d accepted %d, want 5 and 0", rem, acc)
		}
		// Key and purchase were given back too: the retry is a new order.
		if r := c.order("v1", "k1", "COMP", 1); r.status != 202 {
			t.Errorf("retry after the failure: %+v, want 202", r)
		}
	})

	t.Run("cancel gives stock and purchase back", func(t *testing.T) {
		c.t = t
		c.putSKU("CAN", 1, 1)
		r := c.order("w1", "", "CAN", 1)
		if r.status != 202 {
			t.Fatalf("order: %+v", r)
		}
		if got := c.do("GET", c.edge+"/v1/orders/"+r.orderID, "w2", "", ""); got.status != 404 {
			t.Errorf("another user's GET: %+v, want 404", got)
		}
		if got := c.do("POST", c.edge+"/v1/orders/"+r.orderID+"/cancel", "w1", "", ""); got.status != 200 {
			t.Fatalf("cancel: %+v", got)
		}
		if got := c.do("POST", c.edge+"/v1/orders/"+r.orderID+"/cancel", "w1", "", ""); got.status != 409 {
			t.Errorf("second cancel: %+v, want 409", got)
		}
		if got := c.order("w1", "", "CAN", 1); got.status != 202 {
			t.Errorf("order again after cancelling: %+v, want 202", got)
		}
	})

	t.Run("requests the edge refuses", func(t *testing.T) {
		c.t = t
		for _, tc := range []struct {
			user, key, body string
			status          int
			problem         string
		}{
			{"", "", `{"sku":"FS","qty":1}`, 401, "unauthorized"},
			{"x", "", `{"sku":"NOPE","qty":1}`, 404, "unknown-sku"},
			{"x", "", `{"sku":"FS","qty":0}`, 400, "invalid-request"},
			{"x", "", `{"sku":"FS"}`, 400, "invalid-request"},
			{"x", "", `{"sku":"FS","qty":1,"extra":1}`, 400, "invalid-request"},
			{"x", "", `{"sku":"F S","qty":1}`, 400, "invalid-request"},
			{"x", "", `{"sku":"FS","qty":1} {}`, 400, "invalid-request"},
			{"x", "", `{"sku":"FS","qty":"1"}`, 400, "invalid-request"},
			{"x", strings.Repeat("k", 256), `{"sku":"FS","qty":1}`, 400, "invalid-request"},
			{"x", "", `{"sku":"FS","qty":1,"pad":"` + string(bytes.Repeat([]byte("a"), 5000)) + `"}`, 413, "invalid-request"},
		} {
			if r := c.do("POST", c.edge+"/v1/orders", tc.user, tc.key, tc.body); r.status != tc.status || r.problem != tc.problem {
				t.Errorf("user %q body %.40q: %+v, want %d %s", tc.user, tc.body, r, tc.status, tc.problem)
			}
		}
		// Over the limit and without stock: sold out, as on flashgate's edge.
		c.putSKU("ONE", 1, 1)
		if r := c.order("z", "", "ONE", 1); r.status != 202 {
			t.Fatalf("order: %+v", r)
		}
		if r := c.order("z", "", "ONE", 1); r.status != 409 || r.problem != "sold-out" {
			t.Errorf("over the limit and sold out: %+v, want 409 sold-out", r)
		}
		// An idempotency key reused with another body.
		c.putSKU("IDEM", 10, 0)
		first := c.order("y", "same", "IDEM", 1)
		if again := c.order("y", "same", "IDEM", 1); first.status != 202 || again.orderID != first.orderID {
			t.Errorf("replay: %+v then %+v", first, again)
		}
		if other := c.order("y", "same", "IDEM", 2); other.status != 422 || other.problem != "idempotency-mismatch" {
			t.Errorf("same key, other body: %+v, want 422 idempotency-mismatch", other)
		}
	})
}
