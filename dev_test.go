package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/flashgate/flashgate/edge"
	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/testenv"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type devStack struct {
	env    devEnv
	cancel context.CancelFunc
	done   chan error
}

// startDev runs `flashgate dev` in-process on dir with fresh ports.
func startDev(t *testing.T, dir string, tweaks ...func(*devOptions)) *devStack {
	t.Helper()
	// Bounds a busy CI machine does not reach (its packages run in parallel,
	// one of them opening 10,000 connections): a slow ack is slow, not a
	// failure. The tests about timeouts and the breaker are in edge.
	ecfg := edge.DefaultConfig()
	ecfg.DeliveryTimeout, ecfg.ReconcileAfter, ecfg.BreakerStall = 30*time.Second, time.Minute, time.Minute
	o := devOptions{
		DataDir: dir, EdgeAddr: freeAddr(t), AdminAddr: freeAddr(t), KafkaAddr: freeAddr(t),
		Partitions: 3, Edge: ecfg, Ingest: ingest.DefaultConfig(), PGNoFsync: true,
		PaymentWindow: 15 * time.Minute, ExpireEvery: time.Second,
	}
	for _, f := range tweaks {
		f(&o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st := &devStack{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan devEnv, 1)
	go func() { st.done <- runDev(ctx, o, func(e devEnv) { ready <- e }) }()
	select {
	case st.env = <-ready:
	case err := <-st.done:
		t.Fatalf("flashgate dev did not start: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("flashgate dev not ready after 2 minutes")
	}
	t.Cleanup(func() { st.stop(t) })
	return st
}

func (st *devStack) stop(t *testing.T) {
	t.Helper()
	if st.cancel == nil {
		return
	}
	st.cancel()
	st.cancel = nil
	select {
	case err := <-st.done:
		if err != nil {
			t.Errorf("flashgate dev stopped with %v", err)
		}
	case <-time.After(time.Minute):
		t.Error("flashgate dev did not stop within a minute")
	}
}

func doJSON(t *testing.T, method, url, user, body string) (int, map[string]any) {
	t.Helper()
	return doJSONKey(t, method, url, user, "", body)
}

// doJSONKey is doJSON with an Idempotency-Key (none if key is empty).
func doJSONKey(t *testing.T, method, url, user, key, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if user != "" {
		req.Header.Set("X-User-ID", user)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s %s: %d with a body that is not JSON: %q", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, v
}

func putSKU(t *testing.T, st *devStack, sku string, stock int, perUserLimit ...int) {
	t.Helper()
	limit := 0
	if len(perUserLimit) > 0 {
		limit = perUserLimit[0]
	}
	code, v := doJSON(t, "PUT", st.env.AdminURL+"/admin/v1/skus/"+sku, "", fmt.Sprintf(`{"stock":%d,"price_cents":1234,"per_user_limit":%d}`, stock, limit))
	if code != 200 || v["remaining"] != float64(stock) {
		t.Fatalf("PUT sku %s: %d %v", sku, code, v)
	}
}

// ledgerCounts returns, per order id of sku, how many rows the ledger has,
// waiting until it holds want distinct orders.
func ledgerCounts(t *testing.T, url, sku string, want int) map[string]int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		rows, err := conn.Query(ctx, "SELECT order_id::text, count(*) FROM orders WHERE sku = $1 GROUP BY order_id", sku)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for rows.Next() {
			var id string
			var n int
			rows.Scan(&id, &n)
			got[id] = n
		}
		if len(got) >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The vertical slice: POST on the gnet edge -> stock -> order.created -> 202
// after the ack -> ingest COPY -> orders -> GET; then a restart on the same
// data dir reuses the cluster, applies no migration again and keeps the stock.
func TestDevEndToEnd(t *testing.T) {
	dir := testenv.TempDir(t)
	st := startDev(t, dir)
	const stock, users, perUser = 50, 8, 10
	putSKU(t, st, "E2E-1", stock)

	var mu sync.Mutex
	accepted := map[string]string{} // order id -> user
	soldOut := 0
	var wg sync.WaitGroup
	for u := 0; u < users; u++ {
		wg.Add(1)
		go func(user string) {
			defer wg.Done()
			for i := 0; i < perUser; i++ {
				code, v := doJSON(t, "POST", st.env.EdgeURL+"/v1/orders", user, `{"sku":"E2E-1","qty":1}`)
				mu.Lock()
				switch {
				case code == 202 && v["status"] == "accepted" && v["user_id"] == user:
					accepted[v["order_id"].(string)] = user
				case code == 409 && strings.HasSuffix(v["type"].(string), "/sold-out"):
					soldOut++
				default:
					t.Errorf("POST /v1/orders: %d %v", code, v)
				}
				mu.Unlock()
			}
		}(fmt.Sprint("user-", u))
	}
	wg.Wait()
	if len(accepted) != stock || soldOut != users*perUser-stock {
		t.Fatalf("%d accepted, %d sold out; want %d and %d", len(accepted), soldOut, stock, users*perUser-stock)
	}

	// Every 202 is in the ledger exactly once, and nothing else is.
	counts := ledgerCounts(t, st.env.DatabaseURL, "E2E-1", stock)
	if len(counts) != stock {
		t.Fatalf("ledger has %d orders of E2E-1, want %d", len(counts), stock)
	}
	for id, n := range counts {
		if _, ok := accepted[id]; !ok || n != 1 {
			t.Errorf("order %s: %d rows in the ledger, answered 202: %v", id, n, ok)
		}
	}

	// GET shows the ledger's state to the owner and nothing to anyone else.
	for id, user := range accepted {
		code, v := doJSON(t, "GET", st.env.EdgeURL+"/v1/orders/"+id, user, "")
		if code != 200 || v["status"] != "pending_payment" || v["order_id"] != id || v["price_cents"] != float64(1234) {
			t.Fatalf("GET own order: %d %v", code, v)
		}
		if code, _ := doJSON(t, "GET", st.env.EdgeURL+"/v1/orders/"+id, "someone-else", ""); code != 404 {
			t.Fatalf("GET another user's order: %d, want 404", code)
		}
		break
	}

	// Refusals are problem+json with the contract's types.
	for _, c := range []struct {
		user, body string
		code       int
		typ        string
	}{
		{"u1", `{"sku":"NOPE","qty":1}`, 404, "unknown-sku"},
		{"", `{"sku":"E2E-1","qty":1}`, 401, "unauthorized"},
		{"u1", `{"sku":"E2E-1","qty":0}`, 400, "invalid-request"},
		{"u1", `{"sku":"E2E-1"}`, 400, "invalid-request"},
	} {
		code, v := doJSON(t, "POST", st.env.EdgeURL+"/v1/orders", c.user, c.body)
		if code != c.code || !strings.HasSuffix(fmt.Sprint(v["type"]), "/"+c.typ) {
			t.Errorf("POST %s as %q: %d %v; want %d %s", c.body, c.user, code, v, c.code, c.typ)
		}
	}

	testPipelinedInOrder(t, st)

	// A per-user limit of 2: the third unit is refused, for this user only.
	putSKU(t, st, "LIMITED", 100, 2)
	for i, want := range []int{202, 202, 409} {
		code, v := doJSON(t, "POST", st.env.EdgeURL+"/v1/orders", "limited-user", `{"sku":"LIMITED","qty":1}`)
		if code != want || code == 409 && !strings.HasSuffix(fmt.Sprint(v["type"]), "/purchase-limit") {
			t.Fatalf("limited order %d: %d %v, want %d", i, code, v, want)
		}
	}
	if code, _ := doJSON(t, "POST", st.env.EdgeURL+"/v1/orders", "other-user", `{"sku":"LIMITED","qty":2}`); code != 202 {
		t.Fatalf("another user's order on a limited SKU: %d", code)
	}
	ledgerCounts(t, st.env.DatabaseURL, "LIMITED", 3)

	// An order with an Idempotency-Key, retried after the restart: the edge
	// reloads its keys from the ledger, so the retry gets the same order.
	putSKU(t, st, "KEYED", 10)
	code, first := doJSONKey(t, "POST", st.env.EdgeURL+"/v1/orders", "keyed-user", "key-1", `{"sku":"KEYED","qty":2}`)
	if code != 202 {
		t.Fatalf("keyed order: %d %v", code, first)
	}

	st.stop(t)
	st2 := startDev(t, dir)
	code, v := doJSON(t, "GET", st2.env.AdminURL+"/admin/v1/skus/E2E-1", "", "")
	if code != 200 || v["stock"] != float64(stock) || v["remaining"] != float64(0) {
		t.Fatalf("after restart: %d %v; want stock %d, remaining 0", code, v, stock)
	}
	if code, _ := doJSON(t, "POST", st2.env.EdgeURL+"/v1/orders", "late", `{"sku":"E2E-1","qty":1}`); code != 409 {
		t.Fatalf("order after restart on a sold-out SKU: %d, want 409", code)
	}
	code, again := doJSONKey(t, "POST", st2.env.EdgeURL+"/v1/orders", "keyed-user", "key-1", `{"sku":"KEYED","qty":2}`)
	if code != 202 || again["order_id"] != first["order_id"] {
		t.Fatalf("retry after restart: %d %v; want 202 with the first order %v", code, again, first["order_id"])
	}
	if code, v := doJSONKey(t, "POST", st2.env.EdgeURL+"/v1/orders", "keyed-user", "key-1", `{"sku":"KEYED","qty":1}`); code != 422 {
		t.Fatalf("another order under the key after restart: %d %v, want 422", code, v)
	}
	if code, v := doJSON(t, "GET", st2.env.AdminURL+"/admin/v1/skus/KEYED", "", ""); code != 200 || v["remaining"] != float64(8) {
		t.Fatalf("KEYED after the retry: %d %v, want remaining 8", code, v)
	}
	// Purchase counts are rebuilt from the ledger, not reset.
	if code, v := doJSON(t, "POST", st2.env.EdgeURL+"/v1/orders", "limited-user", `{"sku":"LIMITED","qty":1}`); code != 409 {
		t.Fatalf("limited user after restart: %d %v, want 409 purchase-limit", code, v)
	}
	if n := len(ledgerCounts(t, st2.env.DatabaseURL, "E2E-1", stock)); n != stock {
		t.Fatalf("after restart the ledger has %d orders, want %d", n, stock)
	}
	ms, _ := ledger.Migrations()
	conn, err := pgx.Connect(context.Background(), st2.env.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var applied int
	conn.QueryRow(context.Background(), "SELECT count(*) FROM schema_migrations").Scan(&applied)
	if applied != len(ms) {
		t.Fatalf("schema_migrations has %d rows after a restart, want %d", applied, len(ms))
	}
}

// Pipelined requests in one write come back in request order, even though
// the order's 202 waits for Kafka while the others are answered at once.
func testPipelinedInOrder(t *testing.T, st *devStack) {
	putSKU(t, st, "PIPE", 10)
	host := strings.TrimPrefix(st.env.EdgeURL, "http://")
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"sku":"PIPE","qty":1}`
	reqs := fmt.Sprintf("POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-User-ID: p1\r\nContent-Length: %d\r\n\r\n%s", len(body), body) +
		"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" +
		fmt.Sprintf("POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-User-ID: p1\r\nContent-Length: %d\r\n\r\n%s", len(body), body) +
		"POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-User-ID: p1\r\nContent-Length: 2\r\n\r\n{}" +
		"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	if _, err := c.Write([]byte(reqs)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i, want := range []int{202, 200, 202, 400, 404} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("pipelined response %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("pipelined response %d: %d, want %d", i, resp.StatusCode, want)
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection not closed after Connection: close (%v)", err)
	}
}

// Two stacks with their own ports and data dirs run side by side.
func TestTwoDevStacksSideBySide(t *testing.T) {
	a := startDev(t, testenv.TempDir(t))
	b := startDev(t, testenv.TempDir(t))
	for i, st := range []*devStack{a, b} {
		putSKU(t, st, "SIDE", 5)
		code, v := doJSON(t, "POST", st.env.EdgeURL+"/v1/orders", "side", `{"sku":"SIDE","qty":2}`)
		if code != 202 {
			t.Fatalf("stack %d: %d %v", i, code, v)
		}
		counts := ledgerCounts(t, st.env.DatabaseURL, "SIDE", 1)
		if len(counts) != 1 || counts[v["order_id"].(string)] != 1 {
			t.Fatalf("stack %d ledger: %v, want only %v", i, counts, v["order_id"])
		}
	}
	if a.env.DatabaseURL == b.env.DatabaseURL || a.env.KafkaBrokers == b.env.KafkaBrokers {
		t.Fatalf("stacks share a backend: %+v %+v", a.env, b.env)
	}
}

// TestDevWithIngestElsewhere: `flashgate dev -ingest.workers 0` starts and
// takes orders with no ingest in the process (its group never committed), the
// orders wait in Kafka, and an ingest started beside it writes them.
func TestDevWithIngestElsewhere(t *testing.T) {
	st := startDev(t, testenv.TempDir(t), func(o *devOptions) { o.Ingest.Workers = 0 })
	putSKU(t, st, "ELSEWHERE", 10)
	ids := map[string]bool{}
	for i := range 3 {
		code, v := doJSON(t, "POST", st.env.EdgeURL+"/v1/orders", fmt.Sprintf("else%d", i), `{"sku":"ELSEWHERE","qty":1}`)
		if code != 202 {
			t.Fatalf("order %d: %d %v", i, code, v)
		}
		ids[v["order_id"].(string)] = true
	}
	time.Sleep(300 * time.Millisecond) // six batch ages: an ingest in the process would have written them
	if got := ledgerCounts(t, st.env.DatabaseURL, "ELSEWHERE", 0); len(got) != 0 {
		t.Fatalf("the ledger has orders with no ingest running: %v", got)
	}

	pool, err := ledger.Open(context.Background(), st.env.DatabaseURL, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	cfg := ingest.DefaultConfig()
	cfg.Brokers = broker.Seeds(st.env.KafkaBrokers)
	ing, err := ingest.Start(cfg, pool)
	if err != nil {
		t.Fatal(err)
	}
	defer ing.Stop()
	got := ledgerCounts(t, st.env.DatabaseURL, "ELSEWHERE", len(ids))
	if len(got) != len(ids) {
		t.Fatalf("ledger: %v, want the orders %v", got, ids)
	}
	for id, n := range got {
		if !ids[id] || n != 1 {
			t.Fatalf("ledger: %v, want each of %v once", got, ids)
		}
	}
}

// The outside check: a stock Kafka tool (Debian's kcat, librdkafka) reads
// the 202'd orders from order.created as docs/records.md describes them,
// keyed by user id. It catches what our own franz-go consumer would forgive.
func TestKcatReadsOrders(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Skip("kcat not installed: apt-get install kcat")
	}
	st := startDev(t, testenv.TempDir(t))
	const stock = 5
	putSKU(t, st, "KCAT-1", stock)

	// One more order than stock: the refused one must leave no record.
	type sent struct{ user, idemKey string }
	accepted := map[string]sent{} // order id -> what the request carried
	for i := 0; i <= stock; i++ {
		s := sent{user: fmt.Sprint("kcat-user-", i%3)}
		if i%2 == 0 {
			s.idemKey = fmt.Sprint("kcat-key-", i)
		}
		req, _ := http.NewRequest("POST", st.env.EdgeURL+"/v1/orders", strings.NewReader(`{"sku":"KCAT-1","qty":1}`))
		req.Header.Set("X-User-ID", s.user)
		if s.idemKey != "" {
			req.Header.Set("Idempotency-Key", s.idemKey)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var v struct {
			OrderID string `json:"order_id"`
		}
		switch {
		case i < stock && resp.StatusCode == 202 && json.Unmarshal(b, &v) == nil && v.OrderID != "":
			accepted[v.OrderID] = s
		case i == stock && resp.StatusCode == 409:
		default:
			t.Fatalf("order %d: %d %s", i, resp.StatusCode, b)
		}
	}

	// -e: exit at the end of every partition; every 202 was acked before it
	// was sent, so all records are there already. -q: no banner on stderr.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, "-C", "-b", st.env.KafkaBrokers, "-t", broker.TopicOrderCreated,
		"-o", "beginning", "-e", "-q", "-f", `%k\t%s\n`)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v; stderr:\n%s", cmd, err, stderr.String())
	}

	// The documented fields and their JSON types; created_at and the
	// optional ones are checked below.
	documented := map[string]string{
		"v": "number", "order_id": "string", "user_id": "string", "sku": "string", "qty": "number",
		"price_cents": "number", "idempotency_key": "string", "client_ip": "string", "created_at": "string",
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		key, value, ok := strings.Cut(line, "\t")
		if !ok {
			t.Errorf("kcat line without a key/value tab: %q", line)
			continue
		}
		var fields map[string]any
		dec := json.NewDecoder(strings.NewReader(value))
		dec.UseNumber()
		if err := dec.Decode(&fields); err != nil {
			t.Errorf("record value is not JSON (%v): %s", err, value)
			continue
		}
		for name, v := range fields {
			typ := "string"
			if _, isNum := v.(json.Number); isNum {
				typ = "number"
			} else if _, isStr := v.(string); !isStr {
				typ = fmt.Sprintf("%T", v)
			}
			switch want, ok := documented[name]; {
			case !ok:
				t.Errorf("field %q is not in docs/records.md (document it there): %s", name, value)
			case typ != want:
				t.Errorf("field %q is a JSON %s, docs/records.md says %s: %s", name, typ, want, value)
			}
		}
		id, _ := fields["order_id"].(string)
		s, ok := accepted[id]
		if !ok {
			t.Errorf("record of an order that was not answered 202: %s", value)
			continue
		}
		if seen[id] {
			t.Errorf("order %s twice in order.created", id)
		}
		seen[id] = true

		var o order.Order
		if err := order.Decode([]byte(value), &o); err != nil {
			t.Errorf("order %s: %v", id, err)
			continue
		}
		n, _ := strconv.ParseInt(id, 10, 64)
		createdAt, _ := fields["created_at"].(string)
		if at, err := time.Parse(order.TimeFormat, createdAt); err != nil || !at.Equal(orderid.Time(n)) || !strings.HasSuffix(createdAt, "Z") {
			t.Errorf("order %s: created_at %q is not the id's time %s in UTC milliseconds (%v)", id, createdAt, orderid.Time(n).Format(order.TimeFormat), err)
		}
		if fields["v"] != json.Number("1") || o.SKU != "KCAT-1" || o.Qty != 1 || o.PriceCents != 1234 || o.ClientIP != "127.0.0.1" || o.IdemKey != s.idemKey {
			t.Errorf("order %s: %s; want v 1, sku KCAT-1, qty 1, price_cents 1234, client_ip 127.0.0.1, idempotency_key %q", id, value, s.idemKey)
		}
		if key != s.user || o.UserID != s.user {
			t.Errorf("order %s of %s: key %q, user_id %q; both should be the user id", id, s.user, key, o.UserID)
		}
	}
	for id := range accepted {
		if !seen[id] {
			t.Errorf("order %s answered 202 but kcat did not read it from %s", id, broker.TopicOrderCreated)
		}
	}
	t.Logf("kcat read %d records, %d orders answered 202", len(seen), len(accepted))
}

// ledger reconcile finds an edge holding units the ledger has no order for
// (here: an order cancelled behind the system's back, so no release), and
// -reconcile.repair reloads the SKU's stock from the ledger.
func TestReconcileRepairsAnUndersoldSKU(t *testing.T) {
	st := startDev(t, testenv.TempDir(t))
	putSKU(t, st, "REC-1", 5)
	var ids []string
	for i := 0; i < 3; i++ {
		code, v := doJSON(t, "POST", st.env.EdgeURL+"/v1/orders", fmt.Sprint("r", i), `{"sku":"REC-1","qty":1}`)
		if code != 202 {
			t.Fatalf("order: %d %v", code, v)
		}
		ids = append(ids, v["order_id"].(string))
	}
	ledgerCounts(t, st.env.DatabaseURL, "REC-1", 3) // waits until ingest wrote them

	ctx := context.Background()
	pool, err := ledger.Open(ctx, st.env.DatabaseURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	adm, err := broker.NewAdmin([]string{st.env.KafkaBrokers})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	target := reconcileTarget{pool: pool, adm: adm, group: ingest.DefaultConfig().Group, edges: []string{st.env.AdminURL}}
	run := func(repair bool) (int, string) {
		var out strings.Builder
		n, err := reconcile(ctx, target, repair, &out)
		if err != nil {
			t.Fatalf("reconcile: %v\n%s", err, out.String())
		}
		return n, out.String()
	}
	if n, out := run(false); n != 0 || !strings.Contains(out, "REC-1") {
		t.Fatalf("a consistent sale: %d differences\n%s", n, out)
	}

	if _, err := pool.Exec(ctx, "UPDATE orders SET status = 'cancelled' WHERE order_id = $1", ids[0]); err != nil {
		t.Fatal(err)
	}
	n, out := run(false)
	if n != 1 || !strings.Contains(out, "undersold") {
		t.Fatalf("after a silent cancel: %d differences\n%s", n, out)
	}
	if n, out = run(true); !strings.Contains(out, "repaired: stock 5, taken 2, remaining 3") {
		t.Fatalf("repair: %d\n%s", n, out)
	}
	if n, out = run(false); n != 0 {
		t.Fatalf("after the repair: %d differences\n%s", n, out)
	}
	code, v := doJSON(t, "GET", st.env.AdminURL+"/admin/v1/skus/REC-1", "", "")
	if code != 200 || v["remaining"] != float64(3) {
		t.Fatalf("the edge after the repair: %d %v", code, v)
	}
}
