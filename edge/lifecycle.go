package edge

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strconv"
	"time"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/payment"
)

// cancelOrder answers POST /v1/orders/{id}/cancel: the owner cancels an order
// awaiting payment; its units come back to the sale through the stock
// release the ledger publishes.
func (s *Server) cancelOrder(cs *connState, r *request, id int64, closeAfter bool) {
	user := s.identify(cs, r, closeAfter)
	if user == nil || !s.rateLimit(cs, user, s.clientIP(cs, r), r.apiKey, time.Now().UnixNano(), closeAfter) {
		return
	}
	owner := string(user)
	s.ledgerCall(cs, closeAfter, func(ctx context.Context, buf []byte) (int, []byte) {
		rec, err := ledger.Cancel(ctx, s.pool, id, owner)
		var illegal *ledger.IllegalTransitionError
		switch {
		case err == nil:
			return 200, appendOrder(buf, &rec)
		case errors.As(err, &illegal):
			return 409, appendProblem(buf, 409, probInvalidTransition, err.Error())
		case errors.Is(err, ledger.ErrNotFound):
			if _, ok := s.recentFor(id, owner, buf); ok {
				return 409, appendProblem(buf, 409, probNotYet, "the order is accepted but not in the ledger yet; retry in a moment")
			}
			return 404, appendProblem(buf, 404, probNotFound, "no such order")
		default:
			slog.Warn("edge: cancel failed", "order_id", id, "err", err)
			return 503, appendProblem(buf, 503, probUnavailable, "the ledger cannot be written now")
		}
	})
}

// webhook answers POST /v1/payments/{provider}/webhook: a payment provider
// reports a payment or a refund. The signature is checked off the event loop
// (with the ledger write); each refusal is its own 4xx and changes nothing.
func (s *Server) webhook(cs *connState, r *request, name []byte, closeAfter bool) {
	p := s.payments[string(name)]
	if p == nil {
		cs.problem(404, probNotFound, "no payment provider of that name is configured; see -payments.provider", respHeader{close: closeAfter})
		return
	}
	sig := append([]byte(nil), r.signature...)
	body := append([]byte(nil), r.body...)
	s.ledgerCall(cs, closeAfter, func(ctx context.Context, buf []byte) (int, []byte) {
		ev, err := p.Verify(sig, body, time.Now())
		switch {
		case errors.Is(err, payment.ErrBadSignature) || errors.Is(err, payment.ErrStale):
			webhooksRefusedTotal.Inc()
			return 401, appendProblem(buf, 401, probUnauthorized, err.Error())
		case err != nil:
			webhooksRefusedTotal.Inc()
			return 400, appendProblem(buf, 400, probInvalidRequest, err.Error())
		}
		kind := ledger.PaymentSucceeded
		if ev.Kind == payment.KindRefunded {
			kind = ledger.PaymentRefunded
		}
		rec, applied, err := ledger.ApplyPayment(ctx, s.pool, ledger.PaymentEvent{
			Provider: ev.Provider, EventID: ev.ID, OrderID: ev.OrderID, Kind: kind, AmountCents: ev.AmountCents,
		})
		var illegal *ledger.IllegalTransitionError
		switch {
		case err == nil && !applied:
			return 409, appendProblem(buf, 409, probDuplicateEvent, "event "+strconv.Quote(ev.ID)+" was applied already; nothing changed")
		case err == nil:
			webhooksAppliedTotal.Inc()
			return 200, appendOrder(buf, &rec)
		case errors.Is(err, ledger.ErrNotFound):
			var tmp [128]byte
			if _, _, _, ok := s.recent.get(ev.OrderID, tmp[:0]); ok { // accepted, still on its way to the ledger
				return 503, appendProblem(buf, 503, probUnavailable, "the order is not in the ledger yet; retry")
			}
			return 404, appendProblem(buf, 404, probNotFound, "no such order")
		case errors.As(err, &illegal):
			return 409, appendProblem(buf, 409, probInvalidTransition, err.Error())
		case errors.Is(err, ledger.ErrInvalidPayment):
			return 422, appendProblem(buf, 422, probInvalidRequest, err.Error())
		default:
			slog.Warn("edge: payment event not applied", "provider", ev.Provider, "event", ev.ID, "err", err)
			return 503, appendProblem(buf, 503, probUnavailable, "the ledger cannot be written now; the provider should retry")
		}
	})
}

// listOrders answers GET /v1/orders?limit=N&cursor=C: the caller's orders,
// newest first, limit per page (default 20, at most 100); a page that may
// have more says so with "next_cursor", to pass as cursor for the next one.
// Orders still on their way to the ledger are not listed yet.
func (s *Server) listOrders(cs *connState, r *request, closeAfter bool) {
	user := s.identify(cs, r, closeAfter)
	if user == nil || !s.rateLimit(cs, user, s.clientIP(cs, r), r.apiKey, time.Now().UnixNano(), closeAfter) {
		return
	}
	q, err := url.ParseQuery(string(r.query))
	limit, cursor := 20, int64(0)
	if err == nil && q.Has("limit") {
		limit, err = strconv.Atoi(q.Get("limit"))
		if err == nil && (limit < 1 || limit > ledger.MaxListOrders) {
			err = errors.New("out of range")
		}
	}
	if err != nil {
		cs.problem(400, probInvalidRequest, "limit must be an integer from 1 to 100", respHeader{close: closeAfter})
		return
	}
	if c := q.Get("cursor"); c != "" {
		var ok bool
		if cursor, ok = parseOrderID([]byte(c)); !ok {
			cs.problem(400, probInvalidRequest, "cursor must be the next_cursor of the previous page", respHeader{close: closeAfter})
			return
		}
	}
	owner := string(user)
	s.ledgerCall(cs, closeAfter, func(ctx context.Context, buf []byte) (int, []byte) {
		recs, err := ledger.ListOrders(ctx, s.reads, owner, cursor, limit)
		if err != nil {
			slog.Warn("edge: listing orders failed", "err", err)
			return 503, appendProblem(buf, 503, probUnavailable, "the ledger cannot be read now")
		}
		buf = append(buf, `{"orders":[`...)
		for i := range recs {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendOrder(buf, &recs[i])
		}
		buf = append(buf, ']')
		if len(recs) == limit {
			buf = append(buf, `,"next_cursor":"`...)
			buf = strconv.AppendInt(buf, recs[len(recs)-1].ID, 10)
			buf = append(buf, '"')
		}
		return 200, append(buf, '}')
	})
}
