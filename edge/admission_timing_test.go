package edge

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/ledger"
)

// BenchmarkAdmit is the per-order cost of admission (idempotency key +
// per-user limit + striped stock), from parallel goroutines standing for
// event loops, against the obvious design: one mutex over maps.
func BenchmarkAdmit(b *testing.B) {
	const users = 100_000
	userIDs := make([][]byte, users)
	for i := range userIDs {
		userIDs[i] = []byte("user-" + strconv.Itoa(i))
	}
	b.Run("flashgate", func(b *testing.B) {
		s := testAdmission(2)
		s.purchases = newPurchaseTable(1 << 18) // 100K users at < 40% load
		s.items.put(ledger.SaleItem{SKU: "SKU-1", Stock: 1 << 50, PerUserLimit: 1 << 30}, -1)
		var shards atomic.Int32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			shard := int(shards.Add(1)-1) % 2
			var sc admitScratch
			key := []byte("00000000-0000-0000-0000-000000000000")
			key[len(key)-1] = byte('a' + shard) // each goroutine its own keys
			sku := []byte("SKU-1")
			i := 0
			for pb.Next() {
				i++
				u := userIDs[i%users]
				putCounter(key, uint64(i))
				d := s.admit(shard, &sc, u, sku, 1, key, time.Now().UnixNano())
				if d.status != 0 {
					b.Fatalf("refused: %d %s", d.status, d.detail)
				}
			}
		})
	})
	b.Run("peer-mutexmaps", func(b *testing.B) {
		p := &mutexAdmission{stock: 1 << 50, bought: map[string]int64{}, keys: map[string]int64{}}
		b.ReportAllocs()
		var shards atomic.Int32
		b.RunParallel(func(pb *testing.PB) {
			key := []byte("00000000-0000-0000-0000-000000000000")
			i := int(shards.Add(1)) * 7919
			for pb.Next() {
				i++
				putCounter(key, uint64(i))
				if !p.admit(string(userIDs[i%users]), "SKU-1", 1, string(key)) {
					b.Fatal("refused")
				}
			}
		})
	})
}

// putCounter writes n in hex into the first 16 bytes of key.
func putCounter(key []byte, n uint64) {
	const hex = "0123456789abcdef"
	for j := 15; j >= 0; j-- {
		key[j] = hex[n&15]
		n >>= 4
	}
}

// mutexAdmission is the textbook single-process design: one lock, Go maps.
type mutexAdmission struct {
	mu     sync.Mutex
	stock  int64
	bought map[string]int64
	keys   map[string]int64
	seq    int64
}

func (p *mutexAdmission) admit(user, sku string, qty int64, key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.keys[user+"/"+key]; ok {
		return true
	}
	if p.stock < qty {
		return false
	}
	p.stock -= qty
	p.bought[user+"/"+sku] += qty
	p.seq++
	p.keys[user+"/"+key] = p.seq
	return true
}
