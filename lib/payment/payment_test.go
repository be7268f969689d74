package payment

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestHMACVerify(t *testing.T) {
	oldSecret, newSecret := []byte("old-secret-0123456789"), []byte("new-secret-0123456789")
	p, err := NewHMAC("acme", newSecret, oldSecret)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"id":"evt_1","type":"payment.succeeded","order_id":"251168050470977536","amount_cents":1999}`)
	want := Event{Provider: "acme", ID: "evt_1", Kind: KindSucceeded, OrderID: 251168050470977536, AmountCents: 1999}

	for name, sig := range map[string]string{
		"new secret":        Sign(newSecret, body, now),
		"old secret":        Sign(oldSecret, body, now),
		"4 minutes old":     Sign(newSecret, body, now.Add(-4*time.Minute)),
		"two v1, one right": Sign(oldSecret, body, now) + ",v1=" + strings.Repeat("00", 32),
	} {
		got, err := p.Verify([]byte(sig), body, now)
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v", name, got, err)
		}
	}

	tampered := []byte(strings.Replace(string(body), "1999", "1", 1))
	for name, c := range map[string]struct {
		sig, body []byte
		want      error
	}{
		"other secret":    {[]byte(Sign([]byte("someone-elses-secret"), body, now)), body, ErrBadSignature},
		"tampered body":   {[]byte(Sign(newSecret, body, now)), tampered, ErrBadSignature},
		"6 minutes old":   {[]byte(Sign(newSecret, body, now.Add(-6*time.Minute))), body, ErrStale},
		"from the future": {[]byte(Sign(newSecret, body, now.Add(6*time.Minute))), body, ErrStale},
		"no v1":           {[]byte("t=1800000000"), body, ErrMalformed},
		"no t":            {[]byte("v1=00"), body, ErrMalformed},
		"not hex":         {[]byte("t=1800000000,v1=zz"), body, ErrMalformed},
		"garbage":         {[]byte("hello"), body, ErrMalformed},
		"empty":           {nil, body, ErrMalformed},
	} {
		if _, err := p.Verify(c.sig, c.body, now); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}

	// A correctly signed body that is not a payment event is malformed.
	for _, b := range []string{
		`{"id":"e","type":"payment.succeeded","order_id":"12","amount_cents":0}`,
		`{"id":"e","type":"payment.maybe","order_id":"12","amount_cents":5}`,
		`{"id":"","type":"payment.succeeded","order_id":"12","amount_cents":5}`,
		`{"id":"e","type":"payment.succeeded","order_id":"-1","amount_cents":5}`,
		`{"id":"e","type":"payment.succeeded","order_id":12,"amount_cents":5}`,
		`{"id":"e","type":"payment.succeeded","order_id":"12","amount_cents":5,"extra":1}`,
		`not json`,
	} {
		if _, err := p.Verify([]byte(Sign(newSecret, []byte(b), now)), []byte(b), now); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", b, err)
		}
	}

	if _, err := NewHMAC("acme", []byte("short")); err == nil {
		t.Error("a 5-byte secret was accepted")
	}
}

func FuzzHMACVerify(f *testing.F) {
	p, _ := NewHMAC("acme", []byte("new-secret-0123456789"))
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"id":"evt_1","type":"payment.succeeded","order_id":"1","amount_cents":1}`)
	f.Add([]byte(Sign(p.Secrets[0], body, now)), body)
	f.Add([]byte("t=,v1=,v1"), []byte("{}"))
	f.Fuzz(func(t *testing.T, sig, body []byte) {
		ev, err := p.Verify(sig, body, now)
		if err == nil && (ev.OrderID <= 0 || ev.AmountCents <= 0 || ev.ID == "") {
			t.Fatalf("accepted an invalid event %+v", ev)
		}
	})
}
