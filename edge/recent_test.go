package edge

import (
	"fmt"
	"github.com/flashgate/flashgate/lib/orderid"
	"sync"
	"testing"
)

func TestRecentOrdersRoundTrip(t *testing.T) {
	r := newRecentOrders(8)
	r.put(12345, []byte("alice"), []byte("SKU-1"), 3)
	user, sku, qty, ok := r.get(12345, nil)
	if !ok || string(user) != "alice" || string(sku) != "SKU-1" || qty != 3 {
		t.Fatalf("get = %q %q %d %v", user, sku, qty, ok)
	}
	if _, _, _, ok := r.get(999, nil); ok {
		t.Fatal("an order never put was found")
	}
	long := []byte("0123456789012345678901234567890123456789012345678901234567890123")
	r.put(777, long, long, 1_000_000)
	if user, sku, qty, ok := r.get(777, nil); !ok || string(user) != string(long) || string(sku) != string(long) || qty != 1_000_000 {
		t.Fatalf("64-byte fields: %q %q %d %v", user, sku, qty, ok)
	}
	// A shorter order in the same entry: the longer one's bytes do not show.
	r.put(777, []byte("bob"), []byte("X"), 1)
	if user, sku, qty, ok := r.get(777, nil); !ok || string(user) != "bob" || string(sku) != "X" || qty != 1 {
		t.Fatalf("after a longer order: %q %q %d %v", user, sku, qty, ok)
	}
	if n := testing.AllocsPerRun(100, func() { r.put(12345, []byte("alice"), []byte("SKU-1"), 3) }); n != 0 {
		t.Fatalf("put allocates %v", n)
	}
}

// Writers overwriting a small table while readers read: a read that
// succeeds always returns the fields of the order it asked for.
func TestRecentOrdersNoTornReads(t *testing.T) {
	r := newRecentOrders(16)
	const writers, perWriter = 4, 20000
	fields := func(id int64) (string, string, int64) {
		return fmt.Sprint("user-", id), fmt.Sprint("sku-", id*7), id % 1000
	}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(2)
		go func(w int) {
			defer wg.Done()
			for i := 1; i <= perWriter; i++ {
				id := int64(i*writers + w)
				u, s, q := fields(id)
				r.put(id, []byte(u), []byte(s), q)
			}
		}(w)
		go func(w int) {
			defer wg.Done()
			buf := make([]byte, 0, 128)
			for i := 1; i <= perWriter; i++ {
				id := int64(i*writers + (w+1)%writers)
				user, sku, qty, ok := r.get(id, buf[:0])
				if !ok {
					continue
				}
				u, s, q := fields(id)
				if string(user) != u || string(sku) != s || qty != q {
					t.Errorf("order %d read as %q %q %d", id, user, sku, qty)
					return
				}
			}
		}(w)
	}
	wg.Wait()
}

// BenchmarkRecentPut: one accepted order recorded, on a table of the default
// size, ids as an edge makes them (time-ordered, so spread over the table).
func BenchmarkRecentPut(b *testing.B) {
	r := newRecentOrders(DefaultConfig().RecentOrders)
	gen := orderid.MustNew(1, 0)
	user, sku := []byte("u123456"), []byte("SKU-00042")
	b.ReportAllocs()
	for b.Loop() {
		r.put(gen.Next(), user, sku, 1)
	}
}
