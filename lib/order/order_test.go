package order

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/lib/orderid"
)

func TestRoundTrip(t *testing.T) {
	id := orderid.MustNew(1, 2).Next()
	in := Order{ID: id, UserID: "user_1", SKU: "SKU-1.a", Qty: 3, PriceCents: 1999, IdemKey: `k"\1`, ClientIP: "10.0.0.1", CreatedAt: orderid.Time(id)}
	b := AppendJSON(nil, &in)
	if !json.Valid(b) {
		t.Fatalf("not valid JSON: %s", b)
	}
	var out Order
	if err := Decode(b, &out); err != nil {
		t.Fatalf("Decode(%s): %v", b, err)
	}
	if out != in {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
}

func TestAppendJSONAllocs(t *testing.T) {
	id := orderid.MustNew(1, 2).Next()
	o := Order{ID: id, UserID: "u", SKU: "s", Qty: 1, CreatedAt: orderid.Time(id)}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { buf = AppendJSON(buf[:0], &o) }); n != 0 {
		t.Fatalf("AppendJSON allocates %v times", n)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := `{"v":1,"order_id":"42","user_id":"u","sku":"s","qty":1,"price_cents":5,"created_at":"x"}`
	cases := map[string]string{
		"not json":       `{`,
		"no version":     strings.Replace(good, `"v":1,`, ``, 1),
		"bad version":    strings.Replace(good, `"v":1`, `"v":2`, 1),
		"bad id":         strings.Replace(good, `"42"`, `"-4"`, 1),
		"zero qty":       strings.Replace(good, `"qty":1`, `"qty":0`, 1),
		"bad user":       strings.Replace(good, `"user_id":"u"`, `"user_id":"u u"`, 1),
		"empty sku":      strings.Replace(good, `"sku":"s"`, `"sku":""`, 1),
		"neg price":      strings.Replace(good, `"price_cents":5`, `"price_cents":-5`, 1),
		"no price":       strings.Replace(good, `,"price_cents":5`, ``, 1),
		"bad idem key":   strings.Replace(good, `"qty"`, `"idempotency_key":"a b","qty"`, 1),
		"qty wrong type": strings.Replace(good, `"qty":1`, `"qty":"1"`, 1),
	}
	var o Order
	if err := Decode([]byte(good), &o); err != nil {
		t.Fatalf("good record refused: %v", err)
	}
	for name, in := range cases {
		if err := Decode([]byte(in), &o); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Decode(%s) = %v, want ErrInvalid", name, in, err)
		}
	}
}

func TestAppendTimeMatchesFormat(t *testing.T) {
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := int64(0); i < 20000; i++ {
		tm := base.Add(time.Duration(i*i*7919) * time.Microsecond).Truncate(time.Millisecond)
		if got, want := string(AppendTime(nil, tm)), tm.Format(TimeFormat); got != want {
			t.Fatalf("AppendTime(%v) = %s, want %s", tm, got, want)
		}
	}
}
