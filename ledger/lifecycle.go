package ledger

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flashgate/flashgate/lib/orderid"
)

// The states of an order. Ingest writes pending_payment; from there:
//
//	pending_payment → paid → fulfilled
//	pending_payment → cancelled (by its user) | expired (payment window elapsed)
//	paid | fulfilled → refunded (in full or in part: refunded_cents says how much)
const (
	StatusPendingPayment = "pending_payment"
	StatusPaid           = "paid"
	StatusFulfilled      = "fulfilled"
	StatusCancelled      = "cancelled"
	StatusExpired        = "expired"
	StatusRefunded       = "refunded"
)

// nextStates lists what each state may become.
var nextStates = map[string][]string{
	StatusPendingPayment: {StatusPaid, StatusCancelled, StatusExpired},
	StatusPaid:           {StatusFulfilled, StatusRefunded},
	StatusFulfilled:      {StatusRefunded},
}

// Why an event happened (order_events.reason, "reason" in the records).
const (
	ReasonCancelled    = "cancelled"     // by its user
	ReasonExpired      = "expired"       // not paid within the payment window
	ReasonDuplicate    = "duplicate"     // ingest: a second order under one Idempotency-Key
	ReasonPaid         = "paid"          // a payment succeeded
	ReasonFulfilled    = "fulfilled"     // shipped, handed over
	ReasonRefunded     = "refunded"      // the provider refunded (part of) the payments
	ReasonLatePayment  = "late_payment"  // a payment on a cancelled, expired or refunded order: refund due
	ReasonExtraPayment = "extra_payment" // another payment on a paid or fulfilled order: refund due
	ReasonUnderpaid    = "underpaid"     // a payment below the order's total: not paid, refund due
)

// Who made an event happen (order_events.actor, "actor" in the records);
// payments are by "provider:<name>".
const (
	ActorUser        = "user"
	ActorExpirer     = "expirer"
	ActorIngest      = "ingest"
	ActorFulfillment = "fulfillment"
)

// IllegalTransitionError refuses a change the state machine does not allow.
type IllegalTransitionError struct {
	OrderID  int64
	From, To string
}

func (e *IllegalTransitionError) Error() string {
	can := "nothing else (final)"
	if n := nextStates[e.From]; len(n) > 0 {
		can = strings.Join(n, ", ")
	}
	return fmt.Sprintf("order %d is %s and cannot become %s; from %s an order can become: %s", e.OrderID, e.From, e.To, e.From, can)
}

// ErrInvalidPayment wraps payment events that cannot apply: malformed, or a
// refund of more than was paid. Nothing of such an event is recorded.
var ErrInvalidPayment = errors.New("invalid payment event")

var (
	transitionsTotal = map[string]*metrics.Counter{}
	releasesTotal    = metrics.NewCounter(`flashgate_ledger_stock_releases_total`)
	releasedUnits    = metrics.NewCounter(`flashgate_ledger_stock_released_units_total`)
	refundDueTotal   = metrics.NewCounter(`flashgate_ledger_refund_due_total`)
	paymentsTotal    = metrics.NewCounter(`flashgate_ledger_payment_events_total`)
	paymentReplays   = metrics.NewCounter(`flashgate_ledger_payment_event_replays_total`)
	expiredTotal     = metrics.NewCounter(`flashgate_ledger_expired_total`)
)

func init() {
	for _, s := range []string{StatusPaid, StatusFulfilled, StatusCancelled, StatusExpired, StatusRefunded} {
		transitionsTotal[s] = metrics.NewCounter(`flashgate_ledger_transitions_total{to="` + s + `"}`)
	}
}

// change is what one event does to an order.
type change struct {
	to        string
	reason    string
	actor     string
	amount    int64  // cents the event is about (payments, refunds), for the history
	paid      int64  // added to paid_cents
	refunded  int64  // added to refunded_cents
	paymentID string // sets payment_id when not empty
	refundDue *bool  // sets refund_due when not nil
	release   bool   // gives the order's units back to its sale
}

// step is one change applied to one order locked by the transaction.
type step struct {
	rec        Record // before applySteps: as locked; after: as changed
	from       string
	ch         change
	eventID    int64
	at         time.Time
	releaseSeq int64 // 0: released nothing
}

var (
	yes = true
	no  = false
)

// missingPartitionError: an order's day has no partition of order_events
// (the orders partition was made by a version that did not know it).
type missingPartitionError struct {
	lo, hi time.Time
	err    error
}

func (e *missingPartitionError) Error() string { return e.err.Error() }
func (e *missingPartitionError) Unwrap() error { return e.err }

// applySteps applies steps in tx, whose orders it has locked: for each, one
// UPDATE conditional on the expected status and version, its order_events
// row, its stock release (SKUs locked in name order, so concurrent
// transactions cannot deadlock on them) and its outbox rows. Releases are
// numbered before the outbox rows are inserted, so outbox ids follow
// release_seq per SKU.
func applySteps(ctx context.Context, tx pgx.Tx, steps []*step) error {
	if len(steps) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, s := range steps {
		r := &s.rec
		var pid, due any
		if s.ch.paymentID != "" {
			pid = s.ch.paymentID
		}
		if s.ch.refundDue != nil {
			due = *s.ch.refundDue
		}
		b.Queue(`UPDATE orders SET status = $5, version = version + 1, updated_at = now(),
				paid_cents = paid_cents + $6, refunded_cents = refunded_cents + $7,
				payment_id = COALESCE($8::text, payment_id), refund_due = COALESCE($9::boolean, refund_due)
			WHERE order_id = $1 AND created_at = $2 AND user_id = $3 AND status = $4 AND version = $10
			RETURNING version, updated_at, paid_cents, refunded_cents, payment_id, refund_due`,
			r.ID, r.CreatedAt, r.UserID, s.from, s.ch.to, s.ch.paid, s.ch.refunded, pid, due, r.Version)
		b.Queue(`INSERT INTO order_events (order_id, order_created_at, from_status, to_status, reason, actor, amount_cents, version)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING event_id, at`,
			r.ID, r.CreatedAt, s.from, s.ch.to, s.ch.reason, s.ch.actor, s.ch.amount, r.Version+1)
	}
	if err := readBatch(tx.SendBatch(ctx, b), func(br pgx.BatchResults) error {
		for _, s := range steps {
			r := &s.rec
			want := r.Version
			var pid *string
			err := br.QueryRow().Scan(&r.Version, &r.UpdatedAt, &r.PaidCents, &r.RefundedCents, &pid, &r.RefundDue)
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("BUG: order %d is no longer %s version %d under its row lock", r.ID, s.from, want)
			}
			if err != nil {
				return fmt.Errorf("updating order %d: %w", r.ID, err)
			}
			r.Status = s.ch.to
			if pid != nil {
				r.PaymentID = *pid
			}
			if err := br.QueryRow().Scan(&s.eventID, &s.at); err != nil {
				if IsNoPartition(err) {
					lo, hi := stepDays(steps)
					return &missingPartitionError{lo, hi, err}
				}
				return fmt.Errorf("recording the history of order %d: %w", r.ID, err)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := numberReleases(ctx, tx, steps); err != nil {
		return err
	}
	return writeOutbox(ctx, tx, steps)
}

func stepDays(steps []*step) (lo, hi time.Time) {
	lo, hi = steps[0].rec.CreatedAt, steps[0].rec.CreatedAt
	for _, s := range steps {
		if t := s.rec.CreatedAt; t.Before(lo) {
			lo = t
		} else if t.After(hi) {
			hi = t
		}
	}
	return lo, hi
}

// readBatch runs read on the batch's results and always closes them.
func readBatch(br pgx.BatchResults, read func(pgx.BatchResults) error) error {
	err := read(br)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// numberReleases gives each releasing step of an order of its SKU's current
// sale generation the next release_seq of the SKU. An order from before the
// generation (or of a SKU no longer on sale) releases nothing: its units
// were never part of this sale's stock.
func numberReleases(ctx context.Context, tx pgx.Tx, steps []*step) error {
	bySKU := map[string][]*step{}
	var skus []string
	for _, s := range steps {
		if !s.ch.release {
			continue
		}
		if bySKU[s.rec.SKU] == nil {
			skus = append(skus, s.rec.SKU)
		}
		bySKU[s.rec.SKU] = append(bySKU[s.rec.SKU], s)
	}
	if len(skus) == 0 {
		return nil
	}
	sort.Strings(skus)
	// Lock the items in name order, then number.
	started := make(map[string]time.Time, len(skus))
	rows, err := tx.Query(ctx, `SELECT sku, sale_started_at FROM sale_items WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`, skus)
	if err != nil {
		return fmt.Errorf("locking sale items: %w", err)
	}
	for rows.Next() {
		var sku string
		var t time.Time
		if err := rows.Scan(&sku, &t); err != nil {
			rows.Close()
			return err
		}
		started[sku] = t
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("locking sale items: %w", err)
	}
	b := &pgx.Batch{}
	var queued []string
	for _, sku := range skus {
		t, ok := started[sku]
		if !ok {
			continue
		}
		k := 0
		for _, s := range bySKU[sku] {
			if !s.rec.CreatedAt.Before(t) {
				k++
			}
		}
		if k > 0 {
			b.Queue(`UPDATE sale_items SET release_seq = release_seq + $2 WHERE sku = $1 RETURNING release_seq`, sku, k)
			queued = append(queued, sku)
		}
	}
	if len(queued) == 0 {
		return nil
	}
	return readBatch(tx.SendBatch(ctx, b), func(br pgx.BatchResults) error {
		for _, sku := range queued {
			var last int64
			if err := br.QueryRow().Scan(&last); err != nil {
				return fmt.Errorf("numbering the stock releases of %s: %w", sku, err)
			}
			var gen []*step
			for _, s := range bySKU[sku] {
				if !s.rec.CreatedAt.Before(started[sku]) {
					gen = append(gen, s)
				}
			}
			for i, s := range gen {
				s.releaseSeq = last - int64(len(gen)-1-i)
			}
		}
		return nil
	})
}

// inTx runs fn in a transaction with synchronous_commit=on (a provider or a
// user is told "done" after it commits), once more after making the
// partitions of order_events it lacked, and again after a deadlock.
func inTx(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	const maxAttempts = 4
	for attempt := 1; ; attempt++ {
		err := func() error {
			tx, err := beginSync(ctx, pool)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
			if err := fn(tx); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}()
		if err == nil || attempt == maxAttempts {
			return err
		}
		var mp *missingPartitionError
		switch {
		case errors.As(err, &mp):
			if _, perr := EnsurePartitions(ctx, pool, mp.lo, mp.hi); perr != nil {
				return fmt.Errorf("%w (making the missing partitions: %v)", err, perr)
			}
		case pgCode(err) == "40P01": // deadlock_detected: the other transaction went on
		default:
			return err
		}
	}
}

// lockOrder reads and locks an order. With user, only that user's order is
// found: another user's order is ErrNotFound, as a missing one.
func lockOrder(ctx context.Context, tx pgx.Tx, id int64, user *string) (Record, error) {
	if !orderid.Valid(id) {
		return Record{}, ErrNotFound
	}
	var row pgx.Row
	if user != nil {
		row = tx.QueryRow(ctx, `SELECT `+recordColumns+` FROM orders WHERE order_id = $1 AND created_at = $2 AND user_id = $3 FOR UPDATE`,
			id, orderid.Time(id), *user)
	} else {
		row = tx.QueryRow(ctx, `SELECT `+recordColumns+` FROM orders WHERE order_id = $1 AND created_at = $2 FOR UPDATE`,
			id, orderid.Time(id))
	}
	r, err := scanRecord(row)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, ErrNotFound
	}
	if err != nil {
		return r, fmt.Errorf("locking order %d: %w", id, err)
	}
	return r, nil
}

func counted(steps []*step) {
	for _, s := range steps {
		if s.from != s.ch.to {
			if c := transitionsTotal[s.ch.to]; c != nil {
				c.Inc()
			}
		}
		if s.releaseSeq > 0 {
			releasesTotal.Inc()
			releasedUnits.Add(int(s.rec.Qty))
		}
		if s.ch.refundDue != nil && *s.ch.refundDue {
			refundDueTotal.Inc()
		}
	}
}

// transition locks one order, checks that it may become to, and applies ch.
func transition(ctx context.Context, pool *pgxpool.Pool, id int64, user *string, ch change, allowedFrom ...string) (Record, error) {
	var out Record
	var s *step
	err := inTx(ctx, pool, func(tx pgx.Tx) error {
		r, err := lockOrder(ctx, tx, id, user)
		if err != nil {
			return err
		}
		ok := false
		for _, f := range allowedFrom {
			ok = ok || r.Status == f
		}
		if !ok {
			return &IllegalTransitionError{OrderID: id, From: r.Status, To: ch.to}
		}
		s = &step{rec: r, from: r.Status, ch: ch}
		if err := applySteps(ctx, tx, []*step{s}); err != nil {
			return err
		}
		out = s.rec
		return nil
	})
	if err == nil {
		counted([]*step{s})
	}
	return out, err
}

// Cancel cancels a pending order of userID and releases its units to its
// sale. An order of another user is ErrNotFound, as a missing one; an order
// that is no longer pending_payment is an *IllegalTransitionError (From
// says what it is: StatusCancelled for a repeated cancel).
func Cancel(ctx context.Context, pool *pgxpool.Pool, orderID int64, userID string) (Record, error) {
	return transition(ctx, pool, orderID, &userID,
		change{to: StatusCancelled, reason: ReasonCancelled, actor: ActorUser, release: true},
		StatusPendingPayment)
}

// Fulfill marks a paid order fulfilled (order.completed).
func Fulfill(ctx context.Context, pool *pgxpool.Pool, orderID int64) (Record, error) {
	return transition(ctx, pool, orderID, nil,
		change{to: StatusFulfilled, reason: ReasonFulfilled, actor: ActorFulfillment},
		StatusPaid)
}

// Payment event kinds.
const (
	PaymentSucceeded = "succeeded"
	PaymentRefunded  = "refunded"
)

// PaymentEvent is what a payment provider reported, already authenticated
// (the webhook's signature checked).
type PaymentEvent struct {
	Provider    string // 1-64 bytes, e.g. "stripe"
	EventID     string // 1-255 bytes, the provider's event id: with Provider, applied once
	OrderID     int64
	Kind        string // PaymentSucceeded or PaymentRefunded
	AmountCents int64  // > 0
	PaymentID   string // the provider's payment id, optional (at most 255 bytes)
}

func (ev *PaymentEvent) validate() error {
	switch {
	case len(ev.Provider) < 1 || len(ev.Provider) > 64:
		return fmt.Errorf("%w: provider must be 1-64 bytes", ErrInvalidPayment)
	case len(ev.EventID) < 1 || len(ev.EventID) > 255:
		return fmt.Errorf("%w: event id must be 1-255 bytes", ErrInvalidPayment)
	case len(ev.PaymentID) > 255:
		return fmt.Errorf("%w: payment id longer than 255 bytes", ErrInvalidPayment)
	case ev.Kind != PaymentSucceeded && ev.Kind != PaymentRefunded:
		return fmt.Errorf("%w: kind %q is neither %q nor %q", ErrInvalidPayment, ev.Kind, PaymentSucceeded, PaymentRefunded)
	case ev.AmountCents <= 0:
		return fmt.Errorf("%w: amount %d cents is not positive", ErrInvalidPayment, ev.AmountCents)
	}
	return nil
}

// ApplyPayment applies a provider's payment event to its order, once per
// (Provider, EventID): a replay returns the order as it is and applied =
// false. Nothing of an event that returns an error is recorded (the
// provider retries it): ErrNotFound for an unknown order, an
// *IllegalTransitionError (a refund of an order that was never paid), an
// ErrInvalidPayment (malformed; a refund of more than was paid).
//
//   - succeeded on pending_payment: paid (an amount below the order's total
//     leaves it pending and flags refund_due, reason underpaid);
//   - succeeded on any other state: the payment is not lost: paid_cents
//     counts it and refund_due is set (late_payment after cancel, expiry or
//     refund; extra_payment on a paid order); the status and the stock stay
//     as they are (an expired order's units were released and may be sold
//     again). A second event of the payment that paid the order (same
//     PaymentID) changes nothing.
//   - refunded on paid or fulfilled: refunded (also partial: refunded_cents
//     says how much); on refunded or on an order with refund_due: recorded,
//     status unchanged. refund_due clears once refunds cover the payments.
func ApplyPayment(ctx context.Context, pool *pgxpool.Pool, ev PaymentEvent) (Record, bool, error) {
	if err := ev.validate(); err != nil {
		return Record{}, false, err
	}
	var out Record
	var s *step
	applied := false
	err := inTx(ctx, pool, func(tx pgx.Tx) error {
		s, applied = nil, false
		r, err := lockOrder(ctx, tx, ev.OrderID, nil)
		if err != nil {
			return err
		}
		out = r
		tag, err := tx.Exec(ctx, `INSERT INTO payment_events (provider, event_id, order_id, kind, amount_cents)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, ev.Provider, ev.EventID, ev.OrderID, ev.Kind, ev.AmountCents)
		if err != nil {
			return fmt.Errorf("recording payment event %s/%s: %w", ev.Provider, ev.EventID, err)
		}
		if tag.RowsAffected() == 0 {
			return nil // a replay
		}
		ch, err := paymentChange(&r, &ev)
		if err != nil || ch == nil {
			return err
		}
		s = &step{rec: r, from: r.Status, ch: *ch}
		if err := applySteps(ctx, tx, []*step{s}); err != nil {
			return err
		}
		out, applied = s.rec, true
		return nil
	})
	if err != nil {
		return Record{}, false, err
	}
	paymentsTotal.Inc()
	if s == nil {
		paymentReplays.Inc()
	} else {
		counted([]*step{s})
	}
	return out, applied, nil
}

// paymentChange decides what ev does to r; nil: nothing.
func paymentChange(r *Record, ev *PaymentEvent) (*change, error) {
	actor := "provider:" + ev.Provider
	ch := &change{to: r.Status, actor: actor, amount: ev.AmountCents}
	if ev.Kind == PaymentSucceeded {
		if ev.PaymentID != "" && ev.PaymentID == r.PaymentID {
			return nil, nil // another event about the payment that paid it
		}
		ch.paid = ev.AmountCents
		switch r.Status {
		case StatusPendingPayment:
			if ev.AmountCents < int64(r.Qty)*r.PriceCents {
				ch.reason, ch.refundDue = ReasonUnderpaid, &yes
				return ch, nil
			}
			ch.to, ch.reason, ch.paymentID = StatusPaid, ReasonPaid, ev.PaymentID
		case StatusPaid, StatusFulfilled:
			ch.reason, ch.refundDue = ReasonExtraPayment, &yes
		default: // cancelled, expired, refunded
			ch.reason, ch.refundDue = ReasonLatePayment, &yes
		}
		return ch, nil
	}
	switch {
	case r.Status == StatusPaid || r.Status == StatusFulfilled:
		ch.to = StatusRefunded
	case r.Status == StatusRefunded || r.RefundDue:
	default:
		return nil, &IllegalTransitionError{OrderID: r.ID, From: r.Status, To: StatusRefunded}
	}
	if r.RefundedCents+ev.AmountCents > r.PaidCents {
		return nil, fmt.Errorf("%w: refund of %d cents on order %d, which was paid %d and refunded %d already",
			ErrInvalidPayment, ev.AmountCents, r.ID, r.PaidCents, r.RefundedCents)
	}
	ch.reason, ch.refunded = ReasonRefunded, ev.AmountCents
	if r.RefundDue && r.RefundedCents+ev.AmountCents >= r.PaidCents {
		ch.refundDue = &no
	}
	return ch, nil
}

// MaxExpireBatch bounds the orders one expiry transaction locks.
const MaxExpireBatch = 10_000

// ExpireDue expires the orders still pending_payment that were created more
// than window ago, and releases their units; see ExpireBefore.
func ExpireDue(ctx context.Context, pool *pgxpool.Pool, window time.Duration, batch int) (int, error) {
	if window <= 0 {
		return 0, fmt.Errorf("payment window %v is not positive", window)
	}
	return ExpireBefore(ctx, pool, time.Now().Add(-window), batch)
}

// ExpireBefore expires the orders still pending_payment created before
// cutoff, oldest first, batch orders per transaction (each expiry one
// transition with its event, outbox rows and release), until none is left.
// It locks them with FOR UPDATE SKIP LOCKED: several expirers may run, each
// order expires once, and an order a user or a payment holds at that moment
// is left to the next pass. It returns how many it expired.
func ExpireBefore(ctx context.Context, pool *pgxpool.Pool, cutoff time.Time, batch int) (int, error) {
	if batch < 1 || batch > MaxExpireBatch {
		return 0, fmt.Errorf("expiry batch %d outside [1, %d]", batch, MaxExpireBatch)
	}
	total := 0
	for {
		var steps []*step
		err := inTx(ctx, pool, func(tx pgx.Tx) error {
			steps = steps[:0]
			rows, err := tx.Query(ctx, `SELECT `+recordColumns+` FROM orders
				WHERE status = 'pending_payment' AND created_at < $1
				ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED`, cutoff, batch)
			if err != nil {
				return fmt.Errorf("finding orders to expire: %w", err)
			}
			recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) { return scanRecord(row) })
			if err != nil {
				return fmt.Errorf("finding orders to expire: %w", err)
			}
			for _, r := range recs {
				steps = append(steps, &step{rec: r, from: r.Status,
					ch: change{to: StatusExpired, reason: ReasonExpired, actor: ActorExpirer, release: true}})
			}
			return applySteps(ctx, tx, steps)
		})
		if err != nil {
			return total, err
		}
		counted(steps)
		expiredTotal.Add(len(steps))
		total += len(steps)
		if len(steps) < batch {
			return total, nil
		}
	}
}

// cancelDuplicates cancels, in ingest's transaction, the orders of os whose
// Idempotency-Key belongs to another order, and releases their units.
func cancelDuplicates(ctx context.Context, tx pgx.Tx, ids []int64, created []time.Time, users, keys []string) (int64, error) {
	rows, err := tx.Query(ctx, `SELECT `+prefixed("o.", recordColumns)+`
		FROM orders o
		JOIN unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[]) AS b(order_id, created_at, user_id, k)
			ON o.order_id = b.order_id AND o.created_at = b.created_at AND o.user_id = b.user_id
		JOIN idempotency_keys ik ON ik.user_id = b.user_id AND ik.idempotency_key = b.k
		WHERE ik.order_id <> b.order_id AND o.status = 'pending_payment'
		ORDER BY o.order_id
		FOR UPDATE OF o`, ids, created, users, keys)
	if err != nil {
		return 0, fmt.Errorf("finding duplicate orders: %w", err)
	}
	recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) { return scanRecord(row) })
	if err != nil || len(recs) == 0 {
		return 0, err
	}
	steps := make([]*step, len(recs))
	for i, r := range recs {
		steps[i] = &step{rec: r, from: r.Status,
			ch: change{to: StatusCancelled, reason: ReasonDuplicate, actor: ActorIngest, release: true}}
	}
	if err := applySteps(ctx, tx, steps); err != nil {
		return 0, fmt.Errorf("cancelling duplicate orders: %w", err)
	}
	counted(steps) // counted before the commit: a failed batch is retried and counted again
	return int64(len(steps)), nil
}

func prefixed(p, columns string) string {
	fs := strings.Split(columns, ",")
	for i, f := range fs {
		fs[i] = p + strings.TrimSpace(f)
	}
	return strings.Join(fs, ", ")
}

// Event is one entry of an order's history.
type Event struct {
	EventID     int64
	OrderID     int64
	At          time.Time
	From, To    string
	Reason      string
	Actor       string
	AmountCents int64
	Version     int32 // the order's version after the event
}

// MaxOrderEvents bounds the history OrderEvents returns.
const MaxOrderEvents = 1000

// OrderEvents returns an order's history, oldest first (at most
// MaxOrderEvents events).
func OrderEvents(ctx context.Context, q Querier, orderID int64) ([]Event, error) {
	rows, err := q.Query(ctx, `SELECT event_id, order_id, at, from_status, to_status, reason, actor, amount_cents, version
		FROM order_events WHERE order_id = $1 AND order_created_at = $2 ORDER BY event_id LIMIT $3`,
		orderID, orderid.Time(orderID), MaxOrderEvents)
	if err != nil {
		return nil, fmt.Errorf("reading the history of order %d: %w", orderID, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		err := r.Scan(&e.EventID, &e.OrderID, &e.At, &e.From, &e.To, &e.Reason, &e.Actor, &e.AmountCents, &e.Version)
		return e, err
	})
}

// PrunePaymentEvents forgets the payment events received before before (a
// replay older than that would apply again: keep more than the providers'
// retry period, days) and returns how many it deleted.
func PrunePaymentEvents(ctx context.Context, pool *pgxpool.Pool, before time.Time) (int64, error) {
	tag, err := pool.Exec(ctx, `DELETE FROM payment_events WHERE received_at < $1`, before)
	return tag.RowsAffected(), err
}
