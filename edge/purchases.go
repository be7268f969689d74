package edge

import (
	"hash/maphash"
	"runtime"
	"sync/atomic"
)

// purchaseTable counts the units each user bought of each SKU with a
// per-user limit: exactly (each (user, SKU) has its own counter, found by a
// 128-bit fingerprint — two independent 64-bit hashes — so two pairs share a
// counter only with probability ~n²/2^129), in fixed memory allocated at
// start (24 bytes a slot), without locks.
//
// Slots are claimed with CAS and never freed while the process runs; a sale's
// pairs must fit. When the probe window of a new pair is full the order is
// refused (503): a full table never lets anyone exceed a limit.
type purchaseTable struct {
	slots        []purchaseSlot
	mask         uint64
	seed1, seed2 maphash.Seed
	used         atomic.Int64
}

type purchaseSlot struct {
	fp1   atomic.Uint64 // 0 = free, claiming = being claimed, else fingerprint (never 0 or 1)
	fp2   atomic.Uint64 // written before fp1 is published
	units atomic.Int64
}

const (
	claiming      = 1
	maxProbeSlots = 64 // linear probing window
)

// purchaseOutcome is what reserve decided.
type purchaseOutcome int

const (
	purchaseOK purchaseOutcome = iota
	purchaseOverLimit
	purchaseTableFull
)

func newPurchaseTable(slots int) *purchaseTable {
	n := 1
	for n < slots {
		n <<= 1
	}
	return &purchaseTable{slots: make([]purchaseSlot, n), mask: uint64(n - 1), seed1: maphash.MakeSeed(), seed2: maphash.MakeSeed()}
}

func (t *purchaseTable) fingerprint(user, sku []byte) (uint64, uint64) {
	var h maphash.Hash
	h.SetSeed(t.seed1)
	h.Write(user)
	h.WriteByte(0) // user ids cannot hold NUL: "ab"+"c" and "a"+"bc" differ
	h.Write(sku)
	fp1 := h.Sum64()
	h.SetSeed(t.seed2)
	h.Write(user)
	h.WriteByte(0)
	h.Write(sku)
	return max(fp1, 2), h.Sum64()
}

// slot finds the counter of (user, sku), claiming one if create is set. It
// returns nil when the pair has none (and create is unset or the window is full).
func (t *purchaseTable) slot(user, sku []byte, create bool) *purchaseSlot {
	fp1, fp2 := t.fingerprint(user, sku)
	for i := uint64(0); i < maxProbeSlots; i++ {
		s := &t.slots[(fp1+i)&t.mask]
		for {
			cur := s.fp1.Load()
			if cur == claiming {
				runtime.Gosched() // another loop is publishing this slot
				continue
			}
			if cur == fp1 && s.fp2.Load() == fp2 {
				return s
			}
			if cur != 0 {
				break // someone else's: probe on
			}
			if !create {
				return nil // a free slot ends the probe sequence: the pair has none
			}
			if s.fp1.CompareAndSwap(0, claiming) {
				s.fp2.Store(fp2)
				s.fp1.Store(fp1)
				t.used.Add(1)
				return s
			}
		}
	}
	return nil
}

// reserve counts qty more units for (user, sku) if that keeps the pair at or
// below limit, and returns the pair's counter for a later release.
func (t *purchaseTable) reserve(user, sku []byte, qty, limit int64) (*purchaseSlot, purchaseOutcome) {
	if qty > limit {
		return nil, purchaseOverLimit
	}
	s := t.slot(user, sku, true)
	if s == nil {
		return nil, purchaseTableFull
	}
	for {
		u := s.units.Load()
		if u+qty > limit {
			return nil, purchaseOverLimit
		}
		if s.units.CompareAndSwap(u, u+qty) {
			return s, purchaseOK
		}
	}
}

// release gives back units reserved for an order that definitely failed (or
// was refused after the reservation).
func (s *purchaseSlot) release(qty int64) {
	if s.units.Add(-qty) < 0 {
		panic("BUG: released purchase units that were not reserved")
	}
}

// forgive takes back qty units of user's count of sku (their order was
// cancelled or expired), never below zero; a pair without a counter has
// nothing to take back.
func (t *purchaseTable) forgive(user, sku []byte, qty int64) {
	s := t.slot(user, sku, false)
	if s == nil {
		return
	}
	for {
		u := s.units.Load()
		if s.units.CompareAndSwap(u, max(0, u-qty)) {
			return
		}
	}
}

// set records units already bought (rebuilding from the ledger at start).
func (t *purchaseTable) set(user, sku []byte, units int64) bool {
	s := t.slot(user, sku, true)
	if s == nil {
		return false
	}
	s.units.Store(units)
	return true
}

func (t *purchaseTable) units(user, sku []byte) int64 {
	if s := t.slot(user, sku, false); s != nil {
		return s.units.Load()
	}
	return 0
}
