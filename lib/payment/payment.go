// Package payment receives payment providers' webhooks. A Provider verifies
// a webhook request and turns it into an Event; the built-in adapter, HMAC,
// checks Stripe-style signatures. Adapters for real providers implement the
// same interface.
package payment

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Event is a verified payment event.
type Event struct {
	Provider    string
	ID          string // the provider's event id: a replay carries the same
	Kind        string // KindSucceeded or KindRefunded
	OrderID     int64
	AmountCents int64
}

// Event kinds.
const (
	KindSucceeded = "payment.succeeded"
	KindRefunded  = "payment.refunded"
)

// Provider verifies webhooks of one payment provider.
type Provider interface {
	// Name is the {provider} of POST /v1/payments/{provider}/webhook.
	Name() string
	// SignatureHeader is the request header carrying the signature.
	SignatureHeader() string
	// Verify checks the signature of body at time now and decodes it.
	Verify(signature, body []byte, now time.Time) (Event, error)
}

// Errors of Verify; each is answered with its own 4xx.
var (
	ErrBadSignature = errors.New("the signature does not match the body with any current secret")
	ErrStale        = errors.New("the signature's timestamp is outside the tolerance")
	ErrMalformed    = errors.New("malformed webhook")
)

// HMAC is the built-in adapter: the header is "t=<unix seconds>,v1=<hex>"
// (several v1 entries allowed), v1 = HMAC-SHA256(secret, "<t>.<body>") under
// any of the current secrets (several during a rotation), and t must be
// within Tolerance of now (replays of old deliveries are refused). The body
// is {"id": "...", "type": "payment.succeeded"|"payment.refunded",
// "order_id": "<decimal>", "amount_cents": N}.
type HMAC struct {
	ProviderName string
	Header       string
	Secrets      [][]byte
	Tolerance    time.Duration
}

// NewHMAC returns the adapter for provider name with the given secrets (the
// newest first) and the usual 5-minute tolerance.
func NewHMAC(name string, secrets ...[]byte) (*HMAC, error) {
	if name == "" || len(secrets) == 0 {
		return nil, fmt.Errorf("payment: provider %q needs a name and at least one webhook secret", name)
	}
	for _, s := range secrets {
		if len(s) < 16 {
			return nil, fmt.Errorf("payment: a webhook secret of provider %q is %d bytes; possible fix: use at least 16 random bytes", name, len(s))
		}
	}
	return &HMAC{ProviderName: name, Header: "Flashgate-Signature", Secrets: secrets, Tolerance: 5 * time.Minute}, nil
}

// Name implements Provider.
func (h *HMAC) Name() string { return h.ProviderName }

// SignatureHeader implements Provider.
func (h *HMAC) SignatureHeader() string { return h.Header }

// Sign returns the signature header value for body at t under secret: what
// the provider sends (and what tests and tools use).
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify implements Provider.
func (h *HMAC) Verify(signature, body []byte, now time.Time) (Event, error) {
	var ts []byte
	var sigs [][]byte
	for _, part := range bytes.Split(signature, []byte(",")) {
		k, v, ok := bytes.Cut(bytes.TrimSpace(part), []byte("="))
		switch {
		case !ok:
			return Event{}, fmt.Errorf("%w: signature header %q is not \"t=<unix seconds>,v1=<hex>\"", ErrMalformed, signature)
		case string(k) == "t":
			ts = v
		case string(k) == "v1":
			sig := make([]byte, hex.DecodedLen(len(v)))
			if _, err := hex.Decode(sig, v); err != nil {
				return Event{}, fmt.Errorf("%w: v1 is not hex", ErrMalformed)
			}
			sigs = append(sigs, sig)
		}
	}
	sec, err := strconv.ParseInt(string(ts), 10, 64)
	if err != nil || len(sigs) == 0 {
		return Event{}, fmt.Errorf("%w: the signature header needs t=<unix seconds> and v1=<hex>", ErrMalformed)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > h.Tolerance || d < -h.Tolerance {
		return Event{}, fmt.Errorf("%w (%v off, tolerance %v)", ErrStale, d.Round(time.Second), h.Tolerance)
	}
	if !h.anyMatch(string(ts), body, sigs) {
		return Event{}, ErrBadSignature
	}
	return decode(h.ProviderName, body)
}

// anyMatch compares every signature with every secret in constant time.
func (h *HMAC) anyMatch(ts string, body []byte, sigs [][]byte) bool {
	ok := false
	for _, secret := range h.Secrets {
		want := mac(secret, ts, body)
		for _, sig := range sigs {
			if hmac.Equal(sig, want) {
				ok = true
			}
		}
	}
	return ok
}

func decode(provider string, body []byte) (Event, error) {
	var w struct {
		ID          string `json:"id"`
		Type        string `json:"type"`
		OrderID     string `json:"order_id"`
		AmountCents *int64 `json:"amount_cents"`
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(&w); err != nil {
		return Event{}, fmt.Errorf("%w: body: %v", ErrMalformed, err)
	}
	id, err := strconv.ParseInt(w.OrderID, 10, 64)
	switch {
	case w.ID == "" || len(w.ID) > 255:
		return Event{}, fmt.Errorf("%w: id must be 1-255 bytes", ErrMalformed)
	case w.Type != KindSucceeded && w.Type != KindRefunded:
		return Event{}, fmt.Errorf("%w: type %q; want %s or %s", ErrMalformed, w.Type, KindSucceeded, KindRefunded)
	case err != nil || id <= 0:
		return Event{}, fmt.Errorf("%w: order_id must be a positive decimal string", ErrMalformed)
	case w.AmountCents == nil || *w.AmountCents <= 0:
		return Event{}, fmt.Errorf("%w: amount_cents must be a positive integer", ErrMalformed)
	}
	return Event{Provider: provider, ID: w.ID, Kind: w.Type, OrderID: id, AmountCents: *w.AmountCents}, nil
}
