package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// Limits of the API, the same as flashgate's edge.
const (
	maxBodyBytes  = 4 << 10
	maxUserIDLen  = 64
	maxSKULen     = 64
	maxIdemKeyLen = 255
	maxQty        = 1_000_000
	maxListOrders = 100
	// backendTimeout bounds each request's Redis and PostgreSQL work.
	backendTimeout = 5 * time.Second
)

// problemBase prefixes problem types; the names are flashgate's, so a replay
// classifies both servers' answers alike.
const problemBase = "https://flashgate.dev/problems/"

type server struct {
	rdb *redis.Client
	db  *pgxpool.Pool
}

func (s *server) edgeHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/orders", s.postOrder)
	mux.HandleFunc("GET /v1/orders", s.listOrders)
	mux.HandleFunc("GET /v1/orders/{id}", s.getOrder)
	mux.HandleFunc("POST /v1/orders/{id}/cancel", s.cancelOrder)
	mux.HandleFunc("GET /healthz", healthz)
	return mux
}

func (s *server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /admin/v1/skus/{sku}", s.putSKU)
	mux.HandleFunc("GET /admin/v1/skus/{sku}", s.getSKU)
	mux.HandleFunc("GET /healthz", healthz)
	// As on flashgate's admin plane: profile the peer under load.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	return mux
}

func healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, 200, map[string]string{"status": "ok"})
}

type orderRequest struct {
	SKU *string `json:"sku"`
	Qty *int64  `json:"qty"`
}

// acceptedBody is the 202 of POST /v1/orders.
type acceptedBody struct {
	OrderID string `json:"order_id"`
	Status  string `json:"status"`
	SKU     string `json:"sku"`
	Qty     int64  `json:"qty"`
	UserID  string `json:"user_id"`
}

// postOrder: one EVALSHA (idempotency, SKU, limit, stock, decrement, id),
// then one INSERT; the 202 leaves after the INSERT committed.
func (s *server) postOrder(w http.ResponseWriter, r *http.Request) {
	user, ok := identify(w, r)
	if !ok {
		return
	}
	key, hasKey := r.Header.Get("Idempotency-Key"), len(r.Header.Values("Idempotency-Key")) > 0
	if hasKey && (key == "" || len(key) > maxIdemKeyLen) {
		problem(w, 400, "invalid-request", "Idempotency-Key must be 1-255 bytes")
		return
	}
	var req orderRequest
	if !decodeBody(w, r, &req) {
		return
	}
	switch {
	case req.SKU == nil || req.Qty == nil:
		problem(w, 400, "invalid-request", "sku and qty are required")
		return
	case !validName(*req.SKU, maxSKULen, true):
		problem(w, 400, "invalid-request", "sku must be a string of 1-64 bytes of [A-Za-z0-9_.-]")
		return
	case *req.Qty < 1 || *req.Qty > maxQty:
		problem(w, 400, "invalid-request", "qty must be an integer from 1 to 1000000")
		return
	}
	sku, qty := *req.SKU, *req.Qty

	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	a, err := admit(ctx, s.rdb, user, sku, qty, key)
	if err != nil {
		slog.Warn("textbook: redis admission failed", "err", err)
		unavailable(w, "the stock store cannot be reached now")
		return
	}
	switch a.outcome {
	case replayed:
		accepted(w, a.id, sku, qty, user)
		return
	case unknownSKU:
		problem(w, 404, "unknown-sku", "no sale for this sku")
		return
	case purchaseLimit:
		problem(w, 409, "purchase-limit", "the per-user purchase limit of this sku is reached")
		return
	case soldOut:
		problem(w, 409, "sold-out", "no stock left")
		return
	case idemMismatch:
		problem(w, 422, "idempotency-mismatch", "this Idempotency-Key was used with a different body")
		return
	}

	// The INSERT does not stop when the client goes away: a cancelled INSERT
	// may still have committed, and giving its units back would oversell.
	wctx, wcancel := context.WithTimeout(context.WithoutCancel(r.Context()), backendTimeout)
	defer wcancel()
	var keyArg *string
	if hasKey {
		keyArg = &key
	}
	_, err = s.db.Exec(wctx, insertSQL, a.id, user, sku, qty, a.priceCents, keyArg, clientIP(r), time.UnixMilli(a.ms))
	if err == nil {
		accepted(w, a.id, sku, qty, user)
		return
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) && !pgconn.SafeToRetry(err) {
		// Sent, outcome unknown (timeout, connection lost): the row may be
		// there, so the units stay taken (undersell rather than oversell).
		slog.Warn("textbook: INSERT outcome unknown; its units stay taken", "order_id", a.id, "err", err)
		unavailable(w, "the order store did not answer in time")
		return
	}
	if rerr := release(wctx, s.rdb, user, sku, qty, true, key); rerr != nil {
		slog.Error("textbook: INSERT failed and the units could not be given back (undersold)", "order_id", a.id, "sku", sku, "qty", qty, "err", rerr)
	}
	if hasKey && isUniqueViolation(err) {
		// The key's Redis entry expired, but the order is in PostgreSQL.
		if o, gerr := orderByKey(wctx, s.db, user, key); gerr == nil {
			if o.SKU != sku || o.Qty != qty {
				problem(w, 422, "idempotency-mismatch", "this Idempotency-Key was used with a different body")
				return
			}
			accepted(w, o.ID, sku, qty, user)
			return
		}
	}
	slog.Warn("textbook: INSERT failed; units given back", "order_id", a.id, "err", err)
	unavailable(w, "the order store cannot be written now")
}

func accepted(w http.ResponseWriter, id int64, sku string, qty int64, user string) {
	ids := strconv.FormatInt(id, 10)
	w.Header().Set("Location", "/v1/orders/"+ids)
	writeJSON(w, 202, acceptedBody{OrderID: ids, Status: "accepted", SKU: sku, Qty: qty, UserID: user})
}

// orderBody is an order as GET shows it (flashgate's fields).
type orderBody struct {
	OrderID    string `json:"order_id"`
	Status     string `json:"status"`
	SKU        string `json:"sku"`
	Qty        int64  `json:"qty"`
	UserID     string `json:"user_id"`
	PriceCents int64  `json:"price_cents"`
	CreatedAt  string `json:"created_at"`
	UpdatedAt  string `json:"updated_at"`
}

const timeFormat = "2006-01-02T15:04:05.000Z07:00"

func toBody(o orderRow) orderBody {
	return orderBody{
		OrderID: strconv.FormatInt(o.ID, 10), Status: o.Status, SKU: o.SKU, Qty: o.Qty, UserID: o.UserID,
		PriceCents: o.PriceCents, CreatedAt: o.CreatedAt.UTC().Format(timeFormat), UpdatedAt: o.UpdatedAt.UTC().Format(timeFormat),
	}
}

func (s *server) getOrder(w http.ResponseWriter, r *http.Request) {
	user, ok := identify(w, r)
	if !ok {
		return
	}
	id, ok := orderID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	o, err := getOrder(ctx, s.db, id)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || (err == nil && o.UserID != user):
		problem(w, 404, "not-found", "no such order")
	case err != nil:
		slog.Warn("textbook: order read failed", "order_id", id, "err", err)
		unavailable(w, "the order store cannot be read now")
	default:
		writeJSON(w, 200, toBody(o))
	}
}

func (s *server) listOrders(w http.ResponseWriter, r *http.Request) {
	user, ok := identify(w, r)
	if !ok {
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	limit, cursor := 20, int64(0)
	if err == nil && q.Has("limit") {
		if limit, err = strconv.Atoi(q.Get("limit")); err == nil && (limit < 1 || limit > maxListOrders) {
			err = errors.New("out of range")
		}
	}
	if err != nil {
		problem(w, 400, "invalid-request", "limit must be an integer from 1 to 100")
		return
	}
	if c := q.Get("cursor"); c != "" {
		if cursor, err = strconv.ParseInt(c, 10, 64); err != nil || cursor <= 0 {
			problem(w, 400, "invalid-request", "cursor must be the next_cursor of the previous page")
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	rows, err := listOrders(ctx, s.db, user, cursor, limit)
	if err != nil {
		slog.Warn("textbook: listing orders failed", "err", err)
		unavailable(w, "the order store cannot be read now")
		return
	}
	page := struct {
		Orders     []orderBody `json:"orders"`
		NextCursor string      `json:"next_cursor,omitempty"`
	}{Orders: make([]orderBody, 0, len(rows))}
	for _, o := range rows {
		page.Orders = append(page.Orders, toBody(o))
	}
	if len(rows) == limit {
		page.NextCursor = strconv.FormatInt(rows[len(rows)-1].ID, 10)
	}
	writeJSON(w, 200, page)
}

// cancelOrder: one UPDATE, then the units and the purchase go back in Redis.
func (s *server) cancelOrder(w http.ResponseWriter, r *http.Request) {
	user, ok := identify(w, r)
	if !ok {
		return
	}
	id, ok := orderID(w, r)
	if !ok {
		return
	}
	// Not cancelled with the client: a committed UPDATE must give its units back.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), backendTimeout)
	defer cancel()
	o, err := cancelOrder(ctx, s.db, id, user)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		problem(w, 404, "not-found", "no such order")
		return
	case errors.Is(err, errNotPending):
		problem(w, 409, "invalid-transition", fmt.Sprintf("order %d is %s; only an order awaiting payment can be cancelled", id, o.Status))
		return
	case err != nil:
		slog.Warn("textbook: cancel failed", "order_id", id, "err", err)
		unavailable(w, "the order store cannot be written now")
		return
	}
	if err := release(ctx, s.rdb, user, o.SKU, o.Qty, false, ""); err != nil {
		slog.Error("textbook: order cancelled but its units could not be given back (undersold)", "order_id", id, "sku", o.SKU, "qty", o.Qty, "err", err)
	}
	writeJSON(w, 200, toBody(o))
}

// skuRequest is the body of PUT /admin/v1/skus/{sku}.
type skuRequest struct {
	Stock        *int64 `json:"stock"`
	PriceCents   *int64 `json:"price_cents"`
	PerUserLimit int64  `json:"per_user_limit"`
	StartsAt     any    `json:"starts_at"`
	EndsAt       any    `json:"ends_at"`
}

// putSKU creates or replaces a sale item; replacing starts a new sale
// (purchase counts forgotten), as on flashgate.
func (s *server) putSKU(w http.ResponseWriter, r *http.Request) {
	sku := r.PathValue("sku")
	if !validName(sku, maxSKULen, true) {
		problem(w, 400, "invalid-request", "sku must be 1-64 bytes of [A-Za-z0-9_.-]")
		return
	}
	var req skuRequest
	if !decodeBody(w, r, &req) {
		return
	}
	switch {
	case req.Stock == nil || *req.Stock < 0:
		problem(w, 400, "invalid-request", "stock is required and must be >= 0")
		return
	case req.PriceCents == nil || *req.PriceCents < 0:
		problem(w, 400, "invalid-request", "price_cents is required and must be >= 0")
		return
	case req.PerUserLimit < 0:
		problem(w, 400, "invalid-request", "per_user_limit must be >= 0 (0 = no limit)")
		return
	case req.StartsAt != nil || req.EndsAt != nil:
		problem(w, 400, "invalid-request", "the textbook peer has no sale windows: leave out starts_at and ends_at")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, boughtKey(sku))
		p.HSet(ctx, skuKey(sku), "stock", *req.Stock, "remaining", *req.Stock, "accepted", 0,
			"limit", req.PerUserLimit, "price", *req.PriceCents)
		return nil
	})
	if err != nil {
		unavailable(w, "redis: "+err.Error())
		return
	}
	s.getSKU(w, r)
}

func (s *server) getSKU(w http.ResponseWriter, r *http.Request) {
	sku := r.PathValue("sku")
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	v, err := s.rdb.HMGet(ctx, skuKey(sku), "stock", "remaining", "accepted", "price", "limit").Result()
	if err != nil {
		unavailable(w, "redis: "+err.Error())
		return
	}
	if v[0] == nil {
		problem(w, 404, "unknown-sku", "no sale for this sku")
		return
	}
	n := make([]int64, len(v))
	for i := range v {
		n[i], _ = toInt(v[i])
	}
	writeJSON(w, 200, map[string]any{
		"sku": sku, "stock": n[0], "remaining": n[1], "accepted": n[2], "price_cents": n[3], "per_user_limit": n[4],
	})
}

// identify returns the caller's X-User-ID (flashgate's --auth dev).
func identify(w http.ResponseWriter, r *http.Request) (string, bool) {
	user := r.Header.Get("X-User-ID")
	if !validName(user, maxUserIDLen, false) {
		problem(w, 401, "unauthorized", "X-User-ID must be 1-64 bytes of [A-Za-z0-9_-]")
		return "", false
	}
	return user, true
}

// validName: 1-max bytes of [A-Za-z0-9_-], and '.' when dot.
func validName(s string, max int, dot bool) bool {
	if len(s) < 1 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || dot && c == '.') {
			return false
		}
	}
	return true
}

func orderID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		problem(w, 404, "not-found", "no such order")
		return 0, false
	}
	return id, true
}

// clientIP: from a loopback peer (a proxy, or the replay), the last
// X-Forwarded-For entry; else the socket address. flashgate's dev default.
func clientIP(r *http.Request) string {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			last := xff[len(xff)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			if last = strings.TrimSpace(last); last != "" {
				return last
			}
		}
	}
	return host
}

// decodeBody decodes one JSON object strictly (unknown fields refused,
// nothing after it), answering 400 or 413 itself when it cannot.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("unexpected data after the JSON object")
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		problem(w, 413, "invalid-request", "request body too large")
		return false
	case err != nil:
		problem(w, 400, "invalid-request", "malformed body: "+err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("BUG: response not encodable: %v", err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

func problem(w http.ResponseWriter, status int, name, detail string) {
	b, _ := json.Marshal(struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail,omitempty"`
	}{problemBase + name, http.StatusText(status), status, detail})
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	w.Write(b)
}

func unavailable(w http.ResponseWriter, detail string) {
	w.Header().Set("Retry-After", "1")
	problem(w, 503, "unavailable", detail)
}
