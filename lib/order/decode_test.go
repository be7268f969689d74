package order

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// decodeSlow is Decode without the fast path.
func decodeSlow(value []byte, o *Order) error {
	saved := decodeFastEnabled
	decodeFastEnabled = false
	defer func() { decodeFastEnabled = saved }()
	return Decode(value, o)
}

// The fast path takes every record AppendJSON writes, and agrees with the
// general decoder on each.
func TestDecodeFastAgrees(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100_000; i++ {
		o := Order{ID: 1 + r.Int64N(1<<62), UserID: fmt.Sprintf("u%d", r.IntN(1e6)), SKU: fmt.Sprintf("S.%d-x", r.IntN(100)),
			Qty: int32(1 + r.IntN(MaxQty)), PriceCents: r.Int64N(1 << 40)}
		if r.IntN(2) == 0 {
			o.IdemKey = fmt.Sprintf("k%x", r.Uint64())
		}
		if r.IntN(2) == 0 {
			o.ClientIP = "10.0.0.1"
		}
		rec := AppendJSON(nil, &o)
		var fast, slow Order
		if !decodeFast(rec, &fast) {
			t.Fatalf("fast path refused %s", rec)
		}
		if err := decodeSlow(rec, &slow); err != nil || fast != slow {
			t.Fatalf("on %s: fast %+v, general %+v (%v)", rec, fast, slow, err)
		}
	}
}

// Whatever the fast path accepts, the general decoder accepts with the same
// result.
func FuzzDecodeFast(f *testing.F) {
	f.Add(AppendJSON(nil, &Order{ID: 251171040653213696, UserID: "u1", SKU: "S-1", Qty: 2, PriceCents: 1999, IdemKey: "k", ClientIP: "10.1.2.3"}))
	f.Add([]byte(`{"v":1,"order_id":"1","user_id":"u","sku":"s","qty":1,"price_cents":0,"created_at":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast, slow Order
		if !decodeFast(b, &fast) {
			return
		}
		if err := decodeSlow(b, &slow); err != nil || fast != slow {
			t.Fatalf("on %q: fast %+v, general %+v (%v)", b, fast, slow, err)
		}
	})
}

var benchRecord = AppendJSON(nil, &Order{ID: 251171040653213696, UserID: "u12345", SKU: "SALE-1", Qty: 1, PriceCents: 1999, ClientIP: "10.1.2.3"})

func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct {
		name string
		fast bool
	}{{"fast", true}, {"encoding-json", false}} {
		b.Run(c.name, func(b *testing.B) {
			saved := decodeFastEnabled
			decodeFastEnabled = c.fast
			defer func() { decodeFastEnabled = saved }()
			var o Order
			for b.Loop() {
				if err := Decode(benchRecord, &o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
