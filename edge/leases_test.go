package edge

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/testenv"
)

// leaseSetup changes what startLeasingEdges runs.
type leaseSetup struct {
	ledgerURL func(i int, url string) string // the ledger's URL edge i uses
	noIngest  bool                           // orders stay in Kafka
	config    func(*Config)
}

// startLeasingEdges runs n edges with stock leases on one broker, ledger and
// ingest, as nodes 1..n.
func startLeasingEdges(t *testing.T, n int, ttl time.Duration, setup ...leaseSetup) ([]*Server, ledger.TxBeginner) {
	t.Helper()
	var su leaseSetup
	if len(setup) > 0 {
		su = setup[0]
	}
	kf := testenv.Broker(t, 3)
	pool, url := testenv.Ledger(t)
	if !su.noIngest {
		startIngest(t, kf, url)
	}
	var edges []*Server
	for i := 1; i <= n; i++ {
		edgePool := pool
		if su.ledgerURL != nil {
			if u := su.ledgerURL(i, url); u != url {
				p, err := ledger.Open(context.Background(), u, 4)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(p.Close)
				edgePool = p
			}
		}
		cfg := DefaultConfig()
		cfg.Addr, cfg.Brokers, cfg.NodeID = freeAddr(t), []string{kf.Addr()}, i
		cfg.LeaseTTL, cfg.DeliveryTimeout, cfg.ReconcileAfter = ttl, ttl/2, ttl/2
		cfg.LeaseMinBlock = 4
		cfg.RatePerIP = RateLimit{} // every client is 127.0.0.1
		if su.config != nil {
			su.config(&cfg)
		}
		s, err := New(cfg, edgePool)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.LoadSaleItems(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Stop(context.Background()) })
		edges = append(edges, s)
	}
	return edges, pool
}

// waitKnown waits until every edge has learnt of sku from the ledger (each
// reads the items' terms every second).
func waitKnown(t *testing.T, edges []*Server, sku string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range edges {
		for {
			if _, ok := s.SKU(sku); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("edge %d never learnt of %s", s.cfg.NodeID, sku)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// sellOut sends orders from new users to every edge until each refuses them as
// sold out, retrying the 503s of an edge waiting for its next block, and
// returns the 202s per edge.
func sellOut(t *testing.T, edges []*Server, sku string, clientsPerEdge int) []int64 {
	t.Helper()
	accepted := make([]int64, len(edges))
	var users atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Minute)
	for e, s := range edges {
		for c := 0; c < clientsPerEdge; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					code, _, body := postOrder(t, s.cfg.Addr, fmt.Sprint("lu", users.Add(1)), sku)
					switch code {
					case http.StatusAccepted:
						atomic.AddInt64(&accepted[e], 1)
					case http.StatusConflict:
						return // sold out: this edge and the pool are empty
					case http.StatusServiceUnavailable:
						time.Sleep(20 * time.Millisecond)
					default:
						t.Errorf("edge %d: %d %s", e+1, code, body)
						return
					}
				}
				t.Errorf("edge %d never answered sold out", e+1)
			}()
		}
	}
	wg.Wait()
	return accepted
}

// Three edges sell one SKU from leased blocks: together exactly its stock,
// not one unit more (no oversell) or less (no edge says sold out while units
// are left anywhere), each edge selling part of it; the ledger agrees.
func TestLeasedEdgesSellExactlyTheStock(t *testing.T) {
	edges, pool := startLeasingEdges(t, 3, 6*time.Second)
	const stock = 600
	// Put through the first edge; the others learn of it from the ledger.
	if _, err := edges[0].PutSaleItem(context.Background(), ledger.SaleItem{SKU: "LEASED-1", Stock: stock, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	waitKnown(t, edges, "LEASED-1")
	accepted := sellOut(t, edges, "LEASED-1", 6)
	var total int64
	for i, n := range accepted {
		total += n
		if n == 0 {
			t.Errorf("edge %d sold nothing", i+1)
		}
	}
	if total != stock {
		t.Fatalf("edges accepted %v = %d orders of a stock of %d", accepted, total, stock)
	}
	p, err := ledger.StockPool(context.Background(), pool, "LEASED-1")
	if err != nil {
		t.Fatal(err)
	}
	var out int64
	for _, n := range p.Outstanding {
		out += n
	}
	if p.Pool != 0 || p.Pool+p.Taken+out != stock {
		t.Fatalf("ledger: pool %d, taken %d, outstanding %v; want 0 + %d in orders and leases", p.Pool, p.Taken, p.Outstanding, stock)
	}
	t.Logf("accepted per edge %v; ledger taken %d, in flight to it %d", accepted, p.Taken, out)
}

// An edge that dies holding leased units: once its lease has expired (and
// its last produce could have landed) the others reclaim the units and sell
// them; in all, exactly the stock.
func TestDeadEdgesLeaseIsReclaimed(t *testing.T) {
	edges, pool := startLeasingEdges(t, 3, 4*time.Second)
	const stock = 200
	dead := edges[0]
	if _, err := dead.PutSaleItem(context.Background(), ledger.SaleItem{SKU: "LEASED-2", Stock: stock, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	waitKnown(t, edges, "LEASED-2")
	// The doomed edge takes a block and sells a little of it.
	sold := 0
	for sold < 3 {
		code, _, body := postOrder(t, dead.cfg.Addr, fmt.Sprint("d", sold), "LEASED-2")
		switch code {
		case 202:
			sold++
		case 503:
			time.Sleep(20 * time.Millisecond)
		default:
			t.Fatalf("order on the doomed edge: %d %s", code, body)
		}
	}
	it := dead.items.lookup([]byte("LEASED-2"))
	held := it.remaining()
	if held == 0 {
		t.Fatal("the doomed edge holds no units: the test would prove nothing")
	}
	// It dies: no more renewals, returns or orders (its connections stay
	// open but it sells nothing: a process frozen, as far as the ledger can
	// tell).
	dead.stopTicker()
	<-dead.leases.done
	it.mu.Lock()
	it.drainAll() // what it held is gone with it
	it.mu.Unlock()

	// The others sell what the pool has (the dead edge's units are not in it
	// until its lease expires), then, once those are reclaimed, the rest.
	accepted := sellOut(t, edges[1:], "LEASED-2", 4)
	deadline := time.Now().Add(time.Minute)
	for {
		p, err := ledger.StockPool(context.Background(), pool, "LEASED-2")
		if err != nil {
			t.Fatal(err)
		}
		if p.Outstanding[dead.cfg.NodeID] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead edge's lease still holds %d units after a minute", p.Outstanding[dead.cfg.NodeID])
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A live edge that found the pool empty asks again within a quarter of
	// -edge.leaseHorizon; until then it answers sold out. Sell until the
	// pool is empty and the live edges hold nothing.
	for {
		for i, n := range sellOut(t, edges[1:], "LEASED-2", 4) {
			accepted[i] += n
		}
		p, err := ledger.StockPool(context.Background(), pool, "LEASED-2")
		if err != nil {
			t.Fatal(err)
		}
		left := p.Pool
		for _, e := range edges[1:] {
			left += e.items.lookup([]byte("LEASED-2")).remaining()
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d units left unsold a minute on", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
	total := int64(sold) + accepted[0] + accepted[1]
	if total != stock {
		t.Fatalf("sold %d on the dead edge + %v on the others = %d, want the stock %d (the dead edge held %d)", sold, accepted, total, stock, held)
	}
	p, err := ledger.StockPool(context.Background(), pool, "LEASED-2")
	if err != nil {
		t.Fatal(err)
	}
	if p.Pool != 0 || p.Outstanding[dead.cfg.NodeID] != 0 {
		t.Fatalf("ledger after the reclaim: pool %d, outstanding %v; want the dead node's lease empty", p.Pool, p.Outstanding)
	}
}

// tcpProxy forwards connections to target until cut: then it closes them
// and refuses new ones (a network partition between one edge and the
// ledger). Black-holed instead, it keeps every connection open and takes
// new ones, but forwards nothing: requests hang until their deadlines.
type tcpProxy struct {
	l      net.Listener
	target string
	cut    atomic.Bool
	hole   atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

// forward copies src to dst until either ends, dropping what it reads
// while the proxy is black-holed.
func (p *tcpProxy) forward(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.hole.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func startProxy(t *testing.T, target string) *tcpProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{l: l, target: target}
	t.Cleanup(func() { l.Close(); p.Cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if p.cut.Load() {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			if p.hole.Load() {
				continue // held open, never answered
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, u)
			p.mu.Unlock()
			go p.forward(u, c)
			go p.forward(c, u)
		}
	}()
	return p
}

// proxyLedger starts a proxy to the ledger at url and returns it with the
// URL that goes through it.
func proxyLedger(t *testing.T, raw string) (*tcpProxy, string) {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, u.Host)
	u.Host = p.l.Addr().String()
	return p, u.String()
}

func (p *tcpProxy) Cut() {
	p.cut.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// An edge cut off from the ledger (Kafka still reachable) stops selling its
// leased units before its lease expires; the others reclaim what it did not
// sell and sell it. In all, exactly the stock: the cut-off edge never sells
// a unit the ledger has given to another.
func TestCutOffEdgeStopsSellingItsLease(t *testing.T) {
	var proxy *tcpProxy
	edges, pool := startLeasingEdges(t, 3, 6*time.Second, leaseSetup{ledgerURL: func(i int, raw string) string {
		if i != 1 {
			return raw
		}
		proxy, raw = proxyLedger(t, raw)
		return raw
	}})
	const stock = 300
	cut := edges[0]
	if _, err := edges[1].PutSaleItem(context.Background(), ledger.SaleItem{SKU: "LEASED-3", Stock: stock, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	waitKnown(t, edges, "LEASED-3")
	var cutSold atomic.Int64
	for cutSold.Load() < 60 { // a sell rate that makes its blocks grow
		if n := cut.items.lookup([]byte("LEASED-3")).remaining(); n >= 20 && cutSold.Load() >= 20 {
			break
		}
		code, _, body := postOrder(t, cut.cfg.Addr, fmt.Sprint("c", cutSold.Load()), "LEASED-3")
		switch code {
		case 202:
			cutSold.Add(1)
		case 503:
			time.Sleep(20 * time.Millisecond)
		default:
			t.Fatalf("order on the edge to be cut off: %d %s", code, body)
		}
	}
	reclaimedBefore := leaseReclaimedTotal.Get()
	proxy.Cut()
	heldAtCut, _ := ledger.StockPool(context.Background(), pool, "LEASED-3")
	t.Logf("at the cut: the edge holds %d, its lease %d, pool %d", cut.items.lookup([]byte("LEASED-3")).remaining(), heldAtCut.Outstanding[cut.cfg.NodeID], heldAtCut.Pool)
	// The others sell what the pool has, then, once the cut-off edge's
	// lease is reclaimed, the rest.
	deadline := time.Now().Add(2 * time.Minute)
	var accepted int64
	reclaimed := false
	for {
		for _, n := range sellOut(t, edges[1:], "LEASED-3", 4) {
			accepted += n
		}
		p, err := ledger.StockPool(context.Background(), pool, "LEASED-3")
		if err != nil {
			t.Fatal(err)
		}
		if !reclaimed && p.Outstanding[cut.cfg.NodeID] == 0 {
			reclaimed = true
			// Its units are the others' now: the cut-off edge, which never
			// heard of it, must not sell one of them.
			for i := 0; i < 50; i++ {
				code, _, body := postOrder(t, cut.cfg.Addr, fmt.Sprint("late", i), "LEASED-3")
				if code != 503 {
					t.Fatalf("the cut-off edge answered %d after its lease was reclaimed: %s", code, body)
				}
			}
		}
		left := p.Pool + p.Outstanding[cut.cfg.NodeID]
		for _, e := range edges[1:] {
			left += e.items.lookup([]byte("LEASED-3")).remaining()
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d units left unsold (pool %d, cut-off edge's lease %d) two minutes on", left, p.Pool, p.Outstanding[cut.cfg.NodeID])
		}
		time.Sleep(100 * time.Millisecond)
	}
	if total := accepted + cutSold.Load(); total != stock {
		t.Fatalf("sold %d on the others + %d on the cut-off edge = %d, want the stock %d", accepted, cutSold.Load(), total, stock)
	}
	if leaseReclaimedTotal.Get() == reclaimedBefore {
		t.Fatal("nothing was reclaimed: the cut-off edge held no units the test could lose")
	}
	t.Logf("the cut-off edge sold %d, the others %d; %d units reclaimed", cutSold.Load(), accepted, leaseReclaimedTotal.Get()-reclaimedBefore)
}

// An order that finds its edge out of leased units waits for the next grant
// instead of getting 503, and once every unit is in an order Kafka
// acknowledged the rest are told sold out, without ingest writing a single
// order (none runs here: the edges' reports of their unsettled units
// decide). Exactly the stock is sold; every other order gets 409, none 503.
func TestParkedOrdersWaitForGrants(t *testing.T) {
	edges, _ := startLeasingEdges(t, 2, 20*time.Second, leaseSetup{noIngest: true, config: func(c *Config) {
		c.LeaseWait = c.DeliveryTimeout
	}})
	const stock, orders = 40, 100
	if _, err := edges[0].PutSaleItem(context.Background(), ledger.SaleItem{SKU: "PARKED-1", Stock: stock, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	waitKnown(t, edges, "PARKED-1")
	parkedBefore := ordersParkedTotal.Get()
	var codes sync.Map // status -> *atomic.Int64
	var wg sync.WaitGroup
	for i := range orders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, body := postOrder(t, edges[i%2].cfg.Addr, fmt.Sprint("pu", i), "PARKED-1")
			n, _ := codes.LoadOrStore(code, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
			if code != 202 && code != 409 {
				t.Errorf("order %d on edge %d: %d %s", i, i%2+1, code, body)
			}
		}()
	}
	wg.Wait()
	count := func(code int) int64 {
		if n, ok := codes.Load(code); ok {
			return n.(*atomic.Int64).Load()
		}
		return 0
	}
	if count(202) != stock || count(409) != orders-stock {
		t.Fatalf("%d accepted and %d sold out of %d orders; want exactly the stock %d accepted, the rest sold out", count(202), count(409), orders, stock)
	}
	if ordersParkedTotal.Get() == parkedBefore {
		t.Fatal("no order waited for a grant: the test proved nothing")
	}
	t.Logf("%d orders waited for a grant", ordersParkedTotal.Get()-parkedBefore)
}

// A parked order is answered when its wait is over even if the ledger
// cannot be reached (503 lease-wait, not before -edge.leaseWait), whether
// the ledger's connections are cut or black-holed (held open, never
// answered: the lease manager's calls then hang until their deadlines), and
// a drain answers the parked orders at once (503, Connection: close).
func TestParkedOrdersAreAnsweredWhenTheLedgerIsGone(t *testing.T) {
	for _, hole := range []bool{false, true} {
		t.Run(map[bool]string{false: "cut", true: "black hole"}[hole], func(t *testing.T) { parkedWithoutLedger(t, hole) })
	}
}

func parkedWithoutLedger(t *testing.T, hole bool) {
	var proxy *tcpProxy
	edges, _ := startLeasingEdges(t, 1, 20*time.Second, leaseSetup{
		ledgerURL: func(i int, raw string) string {
			proxy, raw = proxyLedger(t, raw)
			return raw
		},
		config: func(c *Config) { c.LeaseWait = 2 * time.Second },
	})
	s := edges[0]
	if _, err := s.PutSaleItem(context.Background(), ledger.SaleItem{SKU: "PARKED-2", Stock: 1000, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	waitKnown(t, edges, "PARKED-2")
	for i := 0; ; i++ { // until a grant arrived: the pool is known to have units
		code, _, body := postOrder(t, s.cfg.Addr, fmt.Sprint("pg", i), "PARKED-2")
		if code == 202 {
			break
		}
		if code != 503 || i > 500 {
			t.Fatalf("first order: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond) // the first renewal
	}
	if hole {
		proxy.hole.Store(true)
	} else {
		proxy.Cut()
	}
	// Sell what the edge holds; the next order waits for a grant that cannot
	// come. An order unanswered for a minute (30 times its wait) hangs.
	client := &http.Client{Timeout: time.Minute}
	var code int
	var body string
	var took time.Duration
	for i := 0; ; i++ {
		start := time.Now()
		code, body = postWith(t, client, s.cfg.Addr, fmt.Sprint("ph", i), "PARKED-2")
		took = time.Since(start)
		if code != 202 {
			break
		}
		if i > 1000 {
			t.Fatal("the edge kept selling without the ledger")
		}
	}
	if code != 503 || !strings.Contains(body, "leasing more stock") || took < s.cfg.LeaseWait {
		t.Fatalf("the order past the edge's units: %d after %v: %s; want 503 lease-wait after -edge.leaseWait (%v)", code, took, body, s.cfg.LeaseWait)
	}
	// Another waits; the edge drains meanwhile.
	type answer struct {
		code  int
		close bool
		body  string
	}
	got := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+s.cfg.Addr+"/v1/orders", strings.NewReader(`{"sku":"PARKED-2","qty":1}`))
		req.Header.Set("X-User-ID", "pdrain")
		resp, err := client.Do(req)
		if err != nil {
			got <- answer{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- answer{resp.StatusCode, resp.Close, string(b)}
	}()
	for s.parked.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.parked.Load() != 0 {
		t.Fatalf("the drain returned with %d orders parked", s.parked.Load())
	}
	a := <-got
	if a.code != 503 || !strings.Contains(a.body, "shutting down") || !a.close {
		t.Fatalf("the order parked during the drain: %d (close %v) %s; want 503, shutting down, Connection: close", a.code, a.close, a.body)
	}
}

// postWith orders one unit of sku as user with client; an error (a timeout)
// fails the test.
func postWith(t *testing.T, client *http.Client, addr, user, sku string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/orders", strings.NewReader(fmt.Sprintf(`{"sku":%q,"qty":1}`, sku)))
	req.Header.Set("X-User-ID", user)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("order of %s: %v", user, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A SKU sold out across its edges sells again when its stock is raised: the
// edge learns of the new stock from the sale item's terms and asks the
// ledger again (it had stopped asking once the pool was empty).
func TestRestockedSKUSellsAgain(t *testing.T) {
	edges, _ := startLeasingEdges(t, 2, 10*time.Second)
	if _, err := edges[0].PutSaleItem(context.Background(), ledger.SaleItem{SKU: "RESTOCK-1", Stock: 10, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	waitKnown(t, edges, "RESTOCK-1")
	var sold int64
	for _, n := range sellOut(t, edges, "RESTOCK-1", 2) {
		sold += n
	}
	if sold != 10 {
		t.Fatalf("sold %d of 10", sold)
	}
	if _, err := edges[0].PutSaleItem(context.Background(), ledger.SaleItem{SKU: "RESTOCK-1", Stock: 25, PriceCents: 100}); err != nil {
		t.Fatal(err)
	}
	// Both edges learn of it within a second (the terms' refresh); then
	// they sell exactly the 15 new units.
	deadline := time.Now().Add(time.Minute)
	for {
		var more int64
		for _, n := range sellOut(t, edges, "RESTOCK-1", 2) {
			more += n
		}
		sold += more
		if sold >= 25 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if sold != 25 {
		t.Fatalf("sold %d of the 25 units after the restock", sold)
	}
}
