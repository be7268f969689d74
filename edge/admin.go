package edge

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http/pprof"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/order"
)

var adminToken = flag.String("admin.token", os.Getenv("FLASHGATE_ADMIN_TOKEN"),
	"bearer token every admin request must carry (default $FLASHGATE_ADMIN_TOKEN); required when --admin-addr is not on loopback")

// Admin is the admin plane (fasthttp): sale setup, status, /metrics and
// /debug/pprof/. It binds to loopback by default; bound elsewhere it needs a
// token.
type Admin struct {
	srv   *Server
	http  *fasthttp.Server
	ln    net.Listener
	token []byte // empty: no token required (loopback only)
	done  chan error

	shutdown atomic.Pointer[func()] // POST /admin/v1/shutdown calls it
}

// OnShutdown sets what POST /admin/v1/shutdown does: end the process (a
// handover's last step, see HandoverDrain). Without it the endpoint answers
// 501.
func (a *Admin) OnShutdown(fn func()) { a.shutdown.Store(&fn) }

// AdminToken is the -admin.token flag (or $FLASHGATE_ADMIN_TOKEN): what
// clients of the admin plane send as a bearer token.
func AdminToken() string { return *adminToken }

// StartAdmin serves the admin plane for srv on addr, with the -admin.token flag.
func StartAdmin(addr string, srv *Server) (*Admin, error) {
	return StartAdminWithToken(addr, *adminToken, srv)
}

// StartAdminWithToken serves the admin plane for srv on addr. With a token,
// every request must carry "Authorization: Bearer <token>"; without one the
// address must be on loopback.
func StartAdminWithToken(addr, token string, srv *Server) (*Admin, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--admin-addr %q: %w", addr, err)
	}
	if ip, err := netip.ParseAddr(host); token == "" && (err != nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("the admin plane on %s (not loopback) needs a token; possible fix: -admin.token or $FLASHGATE_ADMIN_TOKEN, or --admin-addr 127.0.0.1:PORT", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin plane cannot listen on %s: %w; possible fix: --admin-addr with a free port", addr, err)
	}
	a := &Admin{srv: srv, ln: ln, token: []byte(token), done: make(chan error, 1)}
	a.http = &fasthttp.Server{
		Handler:            a.handle,
		Name:               "flashgate-admin",
		ReadTimeout:        10 * time.Second,
		MaxRequestBodySize: 1 << 20,
	}
	go func() { a.done <- a.http.Serve(ln) }()
	return a, nil
}

// Addr is the admin plane's listen address.
func (a *Admin) Addr() string { return a.ln.Addr().String() }

// Stop stops the admin plane.
func (a *Admin) Stop(ctx context.Context) error {
	err := a.http.ShutdownWithContext(ctx)
	<-a.done
	return err
}

var pprofHandlers = map[string]fasthttp.RequestHandler{
	"/debug/pprof/cmdline": fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Cmdline),
	"/debug/pprof/profile": fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Profile),
	"/debug/pprof/symbol":  fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Symbol),
	"/debug/pprof/trace":   fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Trace),
}

var pprofIndex = fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Index)

// servePprof answers a /debug/pprof/ path: a profile, or the index.
func servePprof(ctx *fasthttp.RequestCtx, path string) {
	if h, ok := pprofHandlers[path]; ok {
		h(ctx)
	} else {
		pprofIndex(ctx)
	}
}

func (a *Admin) handle(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) == "/dashboard" && (ctx.IsGet() || ctx.IsHead()) {
		serveDashboard(ctx) // the page holds no data: its reads of /metrics need the token
		return
	}
	if len(a.token) > 0 && !a.authorized(ctx) {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="flashgate-admin"`)
		adminProblem(ctx, 401, probUnauthorized, "the admin plane needs Authorization: Bearer <admin token>")
		return
	}
	path := string(ctx.Path())
	switch {
	case strings.HasPrefix(path, "/admin/v1/skus/") && strings.HasSuffix(path, "/reload"):
		sku := strings.TrimSuffix(path[len("/admin/v1/skus/"):], "/reload")
		switch {
		case !order.ValidSKU(sku):
			adminProblem(ctx, 400, probInvalidRequest, "sku must be 1-64 bytes of [A-Za-z0-9_.-]")
		case !ctx.IsPost():
			adminProblem(ctx, 405, probMethod, "use POST")
		default:
			st, err := a.srv.ReloadSKU(ctx, sku)
			if err != nil {
				adminProblem(ctx, 409, probUnavailable, err.Error())
				return
			}
			adminJSON(ctx, 200, st)
		}
	case strings.HasPrefix(path, "/admin/v1/skus/"):
		sku := path[len("/admin/v1/skus/"):]
		switch {
		case !order.ValidSKU(sku):
			adminProblem(ctx, 400, probInvalidRequest, "sku must be 1-64 bytes of [A-Za-z0-9_.-]")
		case ctx.IsPut():
			a.putSKU(ctx, sku)
		case ctx.IsGet():
			a.getSKU(ctx, sku)
		default:
			adminProblem(ctx, 405, probMethod, "use GET or PUT")
		}
	case path == "/admin/v1/orders/cancel":
		a.bulkCancel(ctx)
	case path == "/admin/v1/status":
		a.status(ctx)
	case path == "/admin/v1/drain" || path == "/admin/v1/shutdown" || path == "/admin/v1/resume":
		if !ctx.IsPost() {
			adminProblem(ctx, 405, probMethod, "use POST")
			return
		}
		a.handover(ctx, path[len("/admin/v1/"):])
	case path == "/metrics":
		ctx.SetContentType("text/plain; version=0.0.4")
		metrics.WritePrometheus(ctx, true)
		a.srv.writeMetrics(ctx)
	case strings.HasPrefix(path, "/debug/pprof/"):
		servePprof(ctx, path)
	default:
		adminProblem(ctx, 404, probNotFound, "no such endpoint")
	}
}

func (a *Admin) authorized(ctx *fasthttp.RequestCtx) bool {
	got, ok := bytes.CutPrefix(ctx.Request.Header.Peek("Authorization"), []byte("Bearer "))
	return ok && subtle.ConstantTimeCompare(got, a.token) == 1
}

// skuRequest is the body of PUT /admin/v1/skus/{sku}.
type skuRequest struct {
	Stock        *int64     `json:"stock"`
	PriceCents   *int64     `json:"price_cents"`
	PerUserLimit int32      `json:"per_user_limit"`
	StartsAt     *time.Time `json:"starts_at"`
	EndsAt       *time.Time `json:"ends_at"`
}

func (a *Admin) putSKU(ctx *fasthttp.RequestCtx, sku string) {
	var req skuRequest
	dec := json.NewDecoder(bytes.NewReader(ctx.PostBody()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		adminProblem(ctx, 400, probInvalidRequest, "body must be {\"stock\": N, \"price_cents\": P, \"per_user_limit\": K, \"starts_at\": RFC3339, \"ends_at\": RFC3339}: "+err.Error())
		return
	}
	if dec.More() {
		adminProblem(ctx, 400, probInvalidRequest, "unexpected data after the JSON object")
		return
	}
	item := ledger.SaleItem{SKU: sku, PerUserLimit: req.PerUserLimit}
	switch {
	case req.Stock == nil || *req.Stock < 0:
		adminProblem(ctx, 400, probInvalidRequest, "stock is required and must be >= 0")
		return
	case req.PriceCents == nil || *req.PriceCents < 0:
		adminProblem(ctx, 400, probInvalidRequest, "price_cents is required and must be >= 0")
		return
	case req.PerUserLimit < 0:
		adminProblem(ctx, 400, probInvalidRequest, "per_user_limit must be >= 0 (0 = no limit)")
		return
	}
	item.Stock, item.PriceCents = *req.Stock, *req.PriceCents
	if req.StartsAt != nil {
		item.StartsAt = *req.StartsAt
	}
	if req.EndsAt != nil {
		item.EndsAt = *req.EndsAt
	}
	if !item.StartsAt.IsZero() && !item.EndsAt.IsZero() && !item.EndsAt.After(item.StartsAt) {
		adminProblem(ctx, 400, probInvalidRequest, "ends_at must be after starts_at")
		return
	}
	if _, err := a.srv.PutSaleItem(ctx, item); err != nil {
		adminProblem(ctx, 503, probUnavailable, err.Error())
		return
	}
	a.getSKU(ctx, sku)
}

// PutSaleItem stores a sale item in the ledger, then in the sale table, so a
// restart finds what was loaded.
func (s *Server) PutSaleItem(ctx context.Context, item ledger.SaleItem) (ledger.SaleItem, error) {
	if err := s.items.roomFor(item.SKU); err != nil {
		return item, err // refuse before touching the ledger
	}
	saved, err := ledger.PutSaleItem(ctx, s.pool, item)
	if err != nil {
		return saved, err
	}
	_, err = s.items.put(saved, -1)
	return saved, err
}

// SKUState is what GET /admin/v1/skus/{sku} returns.
type SKUState struct {
	SKU          string     `json:"sku"`
	Stock        int64      `json:"stock"`
	Remaining    int64      `json:"remaining"`
	Accepted     int64      `json:"accepted"`
	TakenUnits   int64      `json:"taken_units"`
	PriceCents   int64      `json:"price_cents"`
	PerUserLimit int32      `json:"per_user_limit"`
	StartsAt     *time.Time `json:"starts_at,omitempty"`
	EndsAt       *time.Time `json:"ends_at,omitempty"`
	Active       bool       `json:"active"`
	// ReleaseSeq is the last stock release applied (see ledger release_seq).
	ReleaseSeq int64 `json:"release_seq"`
}

// SKU returns the state of a sale item, or false if the edge has none.
func (s *Server) SKU(sku string) (SKUState, bool) {
	it := s.items.lookup([]byte(sku))
	if it == nil {
		return SKUState{}, false
	}
	return skuState(it), true
}

func skuState(it *saleItem) SKUState {
	st := SKUState{
		SKU: it.sku, Stock: it.stock.Load(), Remaining: it.remaining(), Accepted: it.accepted.Load(),
		TakenUnits: it.takenUnits(), PriceCents: it.priceCents.Load(), PerUserLimit: it.perUserLimit.Load(),
		Active: it.active(time.Now().UnixNano()), ReleaseSeq: it.releaseSeq.Load(),
	}
	if ns := it.startsAtNs.Load(); ns != 0 {
		t := time.Unix(0, ns).UTC()
		st.StartsAt = &t
	}
	if ns := it.endsAtNs.Load(); ns != 0 {
		t := time.Unix(0, ns).UTC()
		st.EndsAt = &t
	}
	return st
}

func (a *Admin) getSKU(ctx *fasthttp.RequestCtx, sku string) {
	st, ok := a.srv.SKU(sku)
	if !ok {
		adminProblem(ctx, 404, probUnknownSKU, "no sale for this sku")
		return
	}
	adminJSON(ctx, 200, st)
}

func (a *Admin) status(ctx *fasthttp.RequestCtx) {
	s := a.srv
	skus := s.items.all()
	adminJSON(ctx, 200, map[string]any{
		"ready":              s.Ready(),
		"draining":           s.draining.Load(),
		"event_loops":        s.cfg.loops(),
		"connections":        s.conns.Load(),
		"skus":               len(skus),
		"skus_capacity":      s.cfg.MaxSKUs,
		"produces_in_flight": s.produces.Load(),
		"kafka_buffered":     s.prod.BufferedProduceRecords(),
		"kafka_buffer_cap":   s.cfg.MaxBufferedRecords,
		"kafka_breaker":      s.breaker.state(time.Now().UnixNano()),
		"unknown_orders":     s.unknown.len(),
	})
}

// handover serves POST /admin/v1/drain (stop taking orders, answer once
// every order handed to Kafka has its answer), POST
// /admin/v1/shutdown?grace=D (then end the process, answering for D more so
// that clients move to the edge that took over) and POST /admin/v1/resume
// (take orders again: the handover failed).
func (a *Admin) handover(ctx *fasthttp.RequestCtx, step string) {
	switch step {
	case "drain":
		dctx, cancel := context.WithTimeout(ctx, 2*a.srv.cfg.DeliveryTimeout)
		defer cancel()
		if err := a.srv.Drain(dctx); err != nil {
			adminProblem(ctx, 503, probUnavailable, err.Error())
			return
		}
		adminJSON(ctx, 200, map[string]any{"draining": true, "produces_in_flight": a.srv.produces.Load()})
	case "resume":
		if !a.srv.Resume() {
			adminProblem(ctx, 409, probUnavailable, "the edge is stopping")
			return
		}
		adminJSON(ctx, 200, map[string]any{"draining": false})
	case "shutdown":
		fn := a.shutdown.Load()
		if fn == nil {
			adminProblem(ctx, 501, probMethod, "this process cannot be shut down through its admin plane")
			return
		}
		if g := string(ctx.QueryArgs().Peek("grace")); g != "" {
			d, err := time.ParseDuration(g)
			if err != nil || d < 0 || d > time.Minute {
				adminProblem(ctx, 400, probInvalidRequest, "grace must be a duration between 0s and 1m, e.g. 2s")
				return
			}
			a.srv.SetStopGrace(d)
		}
		(*fn)()
		adminJSON(ctx, 202, map[string]any{"shutting_down": true})
	}
}

func adminJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(errors.Join(errors.New("BUG: admin response not encodable"), err))
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

func adminProblem(ctx *fasthttp.RequestCtx, status int, name, detail string) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/problem+json")
	ctx.SetBody(appendProblem(nil, status, name, detail))
}

// writeMetrics writes the server's own gauges: each bounded table's use and
// capacity, and per SKU the stock, the units remaining and the orders
// accepted.
func (s *Server) writeMetrics(w io.Writer) {
	items := s.items.all()
	fmt.Fprintf(w, "flashgate_edge_skus %d\nflashgate_edge_skus_capacity %d\n", len(items), s.cfg.MaxSKUs)
	fmt.Fprintf(w, "flashgate_edge_purchase_slots_used %d\nflashgate_edge_purchase_slots_capacity %d\n", s.purchases.used.Load(), len(s.purchases.slots))
	fmt.Fprintf(w, "flashgate_edge_connections_capacity %d\n", s.cfg.MaxConns)
	fmt.Fprintf(w, "flashgate_edge_produces_in_flight %d\nflashgate_edge_kafka_buffered_records %d\nflashgate_edge_kafka_buffered_records_capacity %d\n",
		s.produces.Load(), s.prod.BufferedProduceRecords(), s.cfg.MaxBufferedRecords)
	open := 0
	if s.breaker.state(time.Now().UnixNano()) != "closed" {
		open = 1
	}
	fmt.Fprintf(w, "flashgate_edge_breaker_open %d\nflashgate_edge_unknown_orders_capacity %d\n", open, s.cfg.MaxUnknownOrders)
	fmt.Fprintf(w, "flashgate_edge_batches_in_flight %d\nflashgate_edge_batches_in_flight_capacity %d\n", s.batchesInFlight.Load(), s.cfg.MaxBatchesInFlight)
	skus := make([]string, 0, len(items))
	for sku := range items {
		skus = append(skus, sku)
	}
	sort.Strings(skus)
	for _, sku := range skus {
		it := items[sku] // SKUs are [A-Za-z0-9_.-]: safe in a label value
		fmt.Fprintf(w, "flashgate_edge_sku_stock{sku=%q} %d\nflashgate_edge_sku_remaining{sku=%q} %d\nflashgate_edge_sku_accepted_total{sku=%q} %d\n",
			sku, it.stock.Load(), sku, it.remaining(), sku, it.accepted.Load())
	}
}

// OpsServer serves /metrics, /healthz and /debug/pprof/ for a process
// without an admin plane of its own (flashgate ingest).
type OpsServer struct{ srv *fasthttp.Server }

// StartOpsServer listens on addr and serves until Shutdown.
func StartOpsServer(addr string) (*OpsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	o := &OpsServer{srv: &fasthttp.Server{Name: "flashgate", Handler: func(ctx *fasthttp.RequestCtx) {
		switch path := string(ctx.Path()); {
		case path == "/healthz":
			ctx.SetContentType("application/json")
			ctx.SetBodyString(`{"status":"ok"}`)
		case path == "/metrics":
			ctx.SetContentType("text/plain; version=0.0.4")
			metrics.WritePrometheus(ctx, true)
		case strings.HasPrefix(path, "/debug/pprof/"):
			servePprof(ctx, path)
		default:
			adminProblem(ctx, 404, probNotFound, "no such endpoint: /metrics, /healthz, /debug/pprof/")
		}
	}}}
	go o.srv.Serve(ln) //nolint:errcheck // ends with Shutdown
	return o, nil
}

// Shutdown stops serving.
func (o *OpsServer) Shutdown() { _ = o.srv.Shutdown() }
