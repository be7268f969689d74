package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// Redis keys. One instance, no cluster, so no hash tags.
//
//	sku:{SKU}            hash: stock (loaded), remaining, accepted (orders answered 202), limit, price
//	bought:{SKU}         hash: user -> units bought of the SKU
//	idem:{user}:{key}    string "ms:seq:sku:qty" of the order made with that Idempotency-Key
//	orders:seq           the order id counter
func skuKey(sku string) string                 { return "sku:" + sku }
func boughtKey(sku string) string              { return "bought:" + sku }
func idemKey(user, key string) string          { return "idem:" + user + ":" + key }
func fingerprint(sku string, qty int64) string { return sku + ":" + strconv.FormatInt(qty, 10) }

const seqKey = "orders:seq"

// idemTTL is how long an Idempotency-Key is remembered. The unique index on
// (user_id, idempotency_key) in PostgreSQL catches a retry after that.
const idemTTL = 24 * time.Hour

// orderScript admits one order atomically. Lua numbers are doubles, so the
// 64-bit order id is put together in Go from the millisecond (ARGV[3], the
// caller's clock) and the counter's low 22 bits.
//
// It returns {code, ms, seq, price}: code 0 = admitted, 1 = a replay of the
// key's order (ms and seq are the stored order's), 2 = unknown SKU,
// 3 = purchase limit, 4 = sold out, 5 = key used with another body. An order
// both over the limit and without stock is sold out, as on flashgate's edge.
var orderScript = redis.NewScript(`
-- KEYS: 1 sku hash, 2 bought hash, 3 order id counter, 4 idempotency key (optional)
-- ARGV: 1 user, 2 qty, 3 now ms, 4 fingerprint "sku:qty", 5 idempotency TTL s
local qty = tonumber(ARGV[2])
if #KEYS == 4 then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local ms, seq, fp = string.match(seen, '^(%d+):(%d+):(.*)$')
    if fp ~= ARGV[4] then return {5} end
    return {1, ms, seq}
  end
end
local item = redis.call('HMGET', KEYS[1], 'remaining', 'limit', 'price')
if not item[1] then return {2} end
if tonumber(item[1]) < qty then return {4} end
local limit = tonumber(item[2])
local bought = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if limit > 0 and bought + qty > limit then return {3} end
redis.call('HINCRBY', KEYS[1], 'remaining', -qty)
redis.call('HINCRBY', KEYS[1], 'accepted', 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
local seq = tostring(redis.call('INCR', KEYS[3]) % 4194304)
if #KEYS == 4 then
  redis.call('SET', KEYS[4], ARGV[3] .. ':' .. seq .. ':' .. ARGV[4], 'EX', ARGV[5])
end
return {0, ARGV[3], seq, item[3]}
`)

// releaseScript gives an order's units back: the stock, the user's purchase
// count and, when the order is undone (its INSERT failed), its acceptance and
// its idempotency key.
var releaseScript = redis.NewScript(`
-- KEYS: 1 sku hash, 2 bought hash, 3 idempotency key (optional)
-- ARGV: 1 user, 2 qty, 3 undo (1 = the order never happened)
local qty = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'remaining', qty)
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'accepted', -1) end
if tonumber(redis.call('HINCRBY', KEYS[2], ARGV[1], -qty)) <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
if #KEYS == 3 then redis.call('DEL', KEYS[3]) end
return 1
`)

// loadScripts loads the scripts once at start, so each order is one EVALSHA
// (Script.Run falls back to EVAL if Redis lost them).
func loadScripts(ctx context.Context, rdb *redis.Client) error {
	for _, s := range []*redis.Script{orderScript, releaseScript} {
		if err := s.Load(ctx, rdb).Err(); err != nil {
			return fmt.Errorf("loading a Lua script into Redis: %w", err)
		}
	}
	return nil
}

// Outcomes of orderScript.
const (
	admitted = iota
	replayed
	unknownSKU
	purchaseLimit
	soldOut
	idemMismatch
)

// idBits is how many low bits of an order id the counter takes: ids are
// unix_ms << 22 | seq, unique while fewer than 4M orders share a millisecond,
// positive in a bigint until 2039, and the creation time is id >> 22.
const idBits = 22

type admission struct {
	outcome    int
	id         int64
	ms         int64
	priceCents int64
}

// admit runs orderScript for one order.
func admit(ctx context.Context, rdb *redis.Client, user, sku string, qty int64, key string) (admission, error) {
	now := time.Now().UnixMilli()
	keys := []string{skuKey(sku), boughtKey(sku), seqKey}
	if key != "" {
		keys = append(keys, idemKey(user, key))
	}
	res, err := orderScript.Run(ctx, rdb, keys, user, qty, now, fingerprint(sku, qty), int64(idemTTL/time.Second)).Slice()
	if err != nil {
		return admission{}, err
	}
	var a admission
	var code int64
	if code, err = toInt(res[0]); err != nil {
		return a, err
	}
	a.outcome = int(code)
	if a.outcome != admitted && a.outcome != replayed {
		return a, nil
	}
	var seq int64
	if a.ms, err = toInt(res[1]); err == nil {
		seq, err = toInt(res[2])
	}
	if err == nil && a.outcome == admitted {
		a.priceCents, err = toInt(res[3])
	}
	a.id = a.ms<<idBits | seq
	return a, err
}

// toInt reads an integer that a script returned as a number or a string.
func toInt(v any) (int64, error) {
	switch v := v.(type) {
	case int64:
		return v, nil
	case string:
		return strconv.ParseInt(v, 10, 64)
	}
	return 0, fmt.Errorf("BUG: unexpected script result %T %v", v, v)
}

// release runs releaseScript; key is the idempotency key to forget ("" for none).
func release(ctx context.Context, rdb *redis.Client, user, sku string, qty int64, undo bool, key string) error {
	keys := []string{skuKey(sku), boughtKey(sku)}
	if key != "" {
		keys = append(keys, idemKey(user, key))
	}
	flag := "0"
	if undo {
		flag = "1"
	}
	return releaseScript.Run(ctx, rdb, keys, user, qty, flag).Err()
}

// schema is the textbook table: plain (no partitioning), with flashgate's
// ledger column names so the same verification queries work on both.
const schema = `
CREATE TABLE IF NOT EXISTS orders (
    order_id        bigint      PRIMARY KEY,
    user_id         text        NOT NULL,
    sku             text        NOT NULL,
    qty             integer     NOT NULL CHECK (qty > 0),
    price_cents     bigint      NOT NULL CHECK (price_cents >= 0),
    status          text        NOT NULL DEFAULT 'pending_payment',
    idempotency_key text,
    client_ip       text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS orders_user_idem_idx ON orders (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_user_idx ON orders (user_id, order_id DESC);
`

func migrate(ctx context.Context, db *pgxpool.Pool) error {
	// One statement at a time under an advisory lock: CREATE ... IF NOT EXISTS
	// races with itself when two peers start on one database.
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(727274)"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schema)
		return err
	})
}

const insertSQL = `INSERT INTO orders (order_id, user_id, sku, qty, price_cents, idempotency_key, client_ip, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`

// orderRow is an order as the API shows it.
type orderRow struct {
	ID         int64
	UserID     string
	SKU        string
	Qty        int64
	PriceCents int64
	Status     string
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

const rowColumns = `order_id, user_id, sku, qty, price_cents, status, created_at, updated_at`

func scanRow(row pgx.Row) (orderRow, error) {
	var o orderRow
	var qty int32
	err := row.Scan(&o.ID, &o.UserID, &o.SKU, &qty, &o.PriceCents, &o.Status, &o.CreatedAt, &o.UpdatedAt)
	o.Qty = int64(qty)
	return o, err
}

func getOrder(ctx context.Context, db *pgxpool.Pool, id int64) (orderRow, error) {
	return scanRow(db.QueryRow(ctx, `SELECT `+rowColumns+` FROM orders WHERE order_id = $1`, id))
}

func orderByKey(ctx context.Context, db *pgxpool.Pool, user, key string) (orderRow, error) {
	return scanRow(db.QueryRow(ctx, `SELECT `+rowColumns+` FROM orders WHERE user_id = $1 AND idempotency_key = $2`, user, key))
}

// listOrders returns the user's orders older than before (0 = newest), newest first.
func listOrders(ctx context.Context, db *pgxpool.Pool, user string, before int64, limit int) ([]orderRow, error) {
	if before == 0 {
		before = 1<<63 - 1
	}
	rows, err := db.Query(ctx, `SELECT `+rowColumns+` FROM orders WHERE user_id = $1 AND order_id < $2 ORDER BY order_id DESC LIMIT $3`, user, before, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (orderRow, error) { return scanRow(r) })
}

// cancelOrder moves the user's order from pending_payment to cancelled.
// errNotPending: it exists but is in another state; pgx.ErrNoRows: no such
// order of this user.
func cancelOrder(ctx context.Context, db *pgxpool.Pool, id int64, user string) (orderRow, error) {
	o, err := scanRow(db.QueryRow(ctx, `UPDATE orders SET status = 'cancelled', updated_at = now()
		WHERE order_id = $1 AND user_id = $2 AND status = 'pending_payment' RETURNING `+rowColumns, id, user))
	if !errors.Is(err, pgx.ErrNoRows) {
		return o, err
	}
	o, err = getOrder(ctx, db, id)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || (err == nil && o.UserID != user):
		return orderRow{}, pgx.ErrNoRows // another user's order does not exist for this one
	case err != nil:
		return o, err
	}
	return o, errNotPending
}

var errNotPending = errors.New("the order is not awaiting payment")

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}
