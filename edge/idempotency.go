package edge

import (
	"encoding/binary"
	"hash/maphash"
	"sync"

	"github.com/VictoriaMetrics/fastcache"
)

// idemStore remembers, per user and Idempotency-Key, the first request's
// order and its 202, in fastcache (bounded, GC-free; the oldest entries are
// evicted first — the ledger is the backstop for keys evicted before a retry).
//
// Entry value: [0] state, [1:9] hash of (sku, qty), [9:17] order id, then the
// 202 body once the order is accepted.
type idemStore struct {
	cache *fastcache.Cache
	seed  maphash.Seed
	// fastcache has no compare-and-set: claiming a key is a Get then a Set
	// under one of these striped locks (held for ~100 ns; fastcache locks its
	// own buckets anyway). Two requests with the same key on two event loops
	// are serialised here, and only one takes stock.
	locks [256]sync.Mutex
}

const (
	idemInFlight byte = 1 + iota // the first request waits for Kafka
	idemDone                     // accepted: the 202 body follows
	idemUnknown                  // Kafka's answer was lost: reconciliation decides
)

const idemHeader = 17

type idemOutcome int

const (
	idemFresh    idemOutcome = iota // claimed: go on with the order
	idemReplay                      // done before: answer the stored 202
	idemMismatch                    // same key, different order: 422
	idemBusy                        // the first is still in flight (or unresolved): 409
)

func newIdemStore(bytes int) *idemStore {
	return &idemStore{cache: fastcache.New(bytes), seed: maphash.MakeSeed()}
}

// orderHash identifies what an order asks for: retries must ask the same.
func (s *idemStore) orderHash(sku []byte, qty int64) uint64 {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.Write(sku)
	var q [8]byte
	binary.LittleEndian.PutUint64(q[:], uint64(qty))
	h.Write(q[:])
	return h.Sum64()
}

// appendKey appends the cache key of (user, idempotency key) to dst.
func appendIdemKey(dst, user, key []byte) []byte {
	dst = append(dst, user...)
	dst = append(dst, 0) // user ids hold no NUL
	return append(dst, key...)
}

// begin claims k for a new order (orderID, asking hash) unless it was seen.
// For idemReplay it returns the stored order id and 202 body, appended to
// buf. k is appendIdemKey's output.
func (s *idemStore) begin(k []byte, hash uint64, orderID int64, buf []byte) (idemOutcome, int64, []byte) {
	mu := &s.locks[maphash.Bytes(s.seed, k)%uint64(len(s.locks))]
	mu.Lock()
	defer mu.Unlock()
	v, ok := s.cache.HasGet(buf[:0], k)
	if ok && len(v) >= idemHeader {
		switch {
		case binary.LittleEndian.Uint64(v[1:9]) != hash:
			return idemMismatch, 0, v
		case v[0] == idemDone:
			return idemReplay, int64(binary.LittleEndian.Uint64(v[9:17])), v[idemHeader:]
		default:
			return idemBusy, 0, v
		}
	}
	v = idemEntry(buf[:0], idemInFlight, hash, orderID)
	s.cache.Set(k, v)
	return idemFresh, 0, v
}

// finish records the accepted order's 202 body under k.
func (s *idemStore) finish(k []byte, hash uint64, orderID int64, body, buf []byte) {
	s.cache.Set(k, append(idemEntry(buf[:0], idemDone, hash, orderID), body...))
}

// unresolved marks k as waiting for reconciliation: retries get 409, and no
// second order is taken for the key until then.
func (s *idemStore) unresolved(k []byte, hash uint64, orderID int64, buf []byte) {
	s.cache.Set(k, idemEntry(buf[:0], idemUnknown, hash, orderID))
}

// abandon forgets k: the order was refused or definitely failed, so a retry
// is a new attempt.
func (s *idemStore) abandon(k []byte) { s.cache.Del(k) }

func idemEntry(dst []byte, state byte, hash uint64, orderID int64) []byte {
	dst = append(dst, state)
	dst = binary.LittleEndian.AppendUint64(dst, hash)
	return binary.LittleEndian.AppendUint64(dst, uint64(orderID))
}
