package edge

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/flashgate/flashgate/lib/orderid"
)

// recentOrders remembers the last accepted orders so that GET can answer
// "accepted" until ingest has written them to the ledger. It is a
// direct-mapped table of fixed-size entries allocated at start (144 bytes
// each): writing one is a CAS and an atomic store per 8 bytes used (4 for a
// short user id and SKU), with no lock and no allocation (the fastcache it
// replaces cost ~1 µs per order on the loop).
// A newer order may overwrite an older one in its entry; the table is a
// cache, the ledger is the record.
type recentOrders struct {
	entries []recentEntry
	shift   uint // 64 - log2(len(entries))
}

// recentEntry is one order. id is 0 when empty and -1 while a writer fills
// it; readers check it before and after copying, so a torn read is refused.
type recentEntry struct {
	id   atomic.Int64
	meta atomic.Uint64     // user length | sku length << 8 | qty << 16
	data [16]atomic.Uint64 // user, then sku right after it (at most 64 bytes each)
}

func newRecentOrders(entries int) *recentOrders {
	bits := uint(1)
	for 1<<bits < entries {
		bits++
	}
	return &recentOrders{entries: make([]recentEntry, 1<<bits), shift: 64 - bits}
}

// entry maps an id to its entry. An id's millisecond and generator are
// mixed (Fibonacci hashing) to a starting entry, and its sequence within the
// millisecond counts from there: the orders of one loop's millisecond go to
// consecutive entries, which the CPU prefetches (hashing whole ids put every
// order on a cold cache line of a table far bigger than the caches), while
// milliseconds still spread over the whole table.
func (r *recentOrders) entry(id int64) *recentEntry {
	run := uint64(id) >> orderid.SeqBits
	seq := uint64(id) & (1<<orderid.SeqBits - 1)
	return &r.entries[((run*0x9E3779B97F4A7C15)>>r.shift+seq)&uint64(len(r.entries)-1)]
}

// put records an accepted order. A writer that finds the entry being written
// by another gives up: the order is then only in the ledger, soon.
func (r *recentOrders) put(id int64, user, sku []byte, qty int64) {
	if len(user) > 64 || len(sku) > 64 || id <= 0 {
		panic("BUG: recent order out of bounds")
	}
	e := r.entry(id)
	old := e.id.Load()
	if old == -1 || !e.id.CompareAndSwap(old, -1) {
		return
	}
	e.meta.Store(uint64(len(user)) | uint64(len(sku))<<8 | uint64(qty)<<16)
	// Packed, so that short ones stay in the entry's first cache line or
	// two (the table is far bigger than the caches: every put misses).
	var text [128]byte
	copy(text[:], user)
	copy(text[len(user):], sku)
	storeWords(e.data[:], text[:len(user)+len(sku)])
	e.id.Store(id)
}

// get appends the user and sku of order id to buf and returns them with qty,
// or ok=false when the table does not hold the order (any more).
func (r *recentOrders) get(id int64, buf []byte) (user, sku []byte, qty int64, ok bool) {
	e := r.entry(id)
	if e.id.Load() != id {
		return nil, nil, 0, false
	}
	meta := e.meta.Load()
	ul, sl := int(meta&0xff), int(meta>>8&0xff)
	if ul > 64 || sl > 64 { // a meta from a writer we raced with: refused below anyway
		return nil, nil, 0, false
	}
	var text [128]byte
	loadWords(text[:], e.data[:], ul+sl)
	if e.id.Load() != id { // overwritten while we copied
		return nil, nil, 0, false
	}
	start := len(buf)
	buf = append(buf, text[:ul+sl]...)
	b := buf[start:]
	return b[:ul], b[ul:], int64(meta >> 16), true
}

// storeWords stores b (at most 128 bytes) in the words it needs; the bytes
// past len(b) in the last word are zero, the words after it are untouched.
func storeWords(dst []atomic.Uint64, b []byte) {
	var tmp [128]byte
	copy(tmp[:], b)
	for i := 0; i*8 < len(b); i++ {
		dst[i].Store(binary.LittleEndian.Uint64(tmp[i*8:]))
	}
}

// loadWords copies the words holding n bytes into dst.
func loadWords(dst []byte, src []atomic.Uint64, n int) {
	for i := 0; i*8 < n; i++ {
		binary.LittleEndian.PutUint64(dst[i*8:], src[i].Load())
	}
}
