package edge

import (
	"context"
	"errors"
	"log/slog"
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
