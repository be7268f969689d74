// Package ratelimit is token-bucket rate limiting for the edge's hot path: no
// locks, no allocations after construction, fixed memory, and safe for
// concurrent use by every event loop.
//
// A Bucket is one limit: the global one, as one Bucket per shard with the rate
// split between them. A Table is a fixed array of buckets for per-key limits
// (client IP, user, API key). It never grows: a flood of new keys costs
// collisions, never memory, and a collision only ever limits more.
//
// # The bucket word
//
// Each bucket is a single uint64, updated with a CAS loop. With L =
// bits.Len(burst), 1 to 20 bits:
//
//	top L bits       deficit: whole tokens missing from a full bucket
//	low 64-L bits    last: time of the last refill, in ticks of 2^shift ns, mod 2^(64-L)
//
// Storing the deficit rather than the tokens makes the zero word a full
// bucket, so a never-used slot needs no initialisation and costs nothing.
//
// Tokens are fixed point with the fraction kept in the timestamp: a refill
// credits the whole tokens earned since last and moves last on only by what
// those tokens cost (rounded up), so the part of the next token already earned
// is (now-last)/cost. Nothing is lost between frequent refills and no rounding
// ever favours the caller. The tick is a power of two nanoseconds, from 1/16 ns
// (at 10M/s) upwards, chosen per limit so that a token costs at least 1024
// ticks: rounding costs under 0.1% of the rate. When a token costs a whole
// number of nanoseconds the tick also divides that cost, so integer-friendly
// rates are exact.
//
// Limits: rates from MinRate (0.01/s) to MaxRate (10M/s), bursts from 1 to
// MaxBurst (1,048,575). Over any interval a bucket admits at most
// burst + rate×interval. Times are compared modulo the field (serial-number
// arithmetic), so the caller's clock needs no epoch and may wrap, int64
// overflow included. The field wraps after 2^(64-L) ticks: 584 years for
// per-key limits like 100/s with a burst of 20, 13 days at 10M/s with a burst
// of 1000, and 18 minutes at the corner of 10M/s with a burst of 1M.
//
// nowNs must come from a monotonic clock. Callers may disagree by up to 2^34
// ns (17 s; each event loop reads its own clock, and may be descheduled
// between reading it and calling Allow): a time behind a bucket's last refill
// earns nothing and never moves it back. A time further behind reads as far
// ahead and refills the bucket. A partly drained bucket left idle for a whole
// multiple of the wrap, give or take 17 s, reads as having fewer tokens than it
// has (for at most 17 s plus the refill time), which limits more, never less.
package ratelimit

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

const (
	// MinRate and MaxRate bound the rate in tokens per second.
	MinRate = 0.01
	MaxRate = 10e6
	// MaxBurst is the largest burst: a deficit of at most 20 bits leaves at
	// least 44 for the time.
	MaxBurst = 1<<20 - 1
	// MaxSlots bounds a Table (8 GiB).
	MaxSlots = 1 << 30

	minShift     = -4 // tick ≥ 1/16 ns: a token is ≥ 1024 ticks up to MaxRate
	minCostTicks = 1024
	fracBits     = 16      // fraction bits of the token cost in ticks
	maxFill      = 1 << 46 // ticks to fill a bucket, so that ticks<<fracBits fits
	skewNs       = 1 << 34 // how far behind a bucket's last refill a caller's clock may be
)

// Decision is the outcome of one Allow call and what the edge needs for its
// Retry-After and RateLimit headers.
type Decision struct {
	Allowed bool
	// Remaining is the whole tokens left after this request.
	Remaining int
	// RetryAfter is, when refused, the time until a token is available
	// (rounded up to the tick); 0 when allowed.
	RetryAfter time.Duration
	// Reset is the time until the bucket is full again.
	Reset time.Duration
}

// RetryAfterSeconds is RetryAfter in whole seconds, rounded up and at least 1
// for a refused request: the value of a Retry-After header.
func (d Decision) RetryAfterSeconds() int {
	if d.Allowed {
		return 0
	}
	return int(max(1, ceilSeconds(d.RetryAfter)))
}

// limit is the read-only part of a bucket: its parameters and word layout.
type limit struct {
	burst    uint64
	timeBits uint   // 64 - bits.Len(burst)
	timeMask uint64 // 1<<timeBits - 1
	shift    int    // a tick is 2^shift ns (shift may be negative)
	costQ    uint64 // ticks per token, fixed point with fracBits, rounded up
	fill     uint64 // ticks to fill an empty bucket, rounded up; < maxFill
	skew     uint64 // skewNs in ticks

	costTicks, tickNs float64 // costQ and 2^shift, for Decision times
}

func newLimit(rate float64, burst int) (limit, error) {
	if !(rate >= MinRate && rate <= MaxRate) { // also rejects NaN
		return limit{}, fmt.Errorf("ratelimit: rate %g/s is outside [%g, %g]; possible fix: state the limit per second within that range (a slower limit is a small burst with a rate of at least %g/s)", rate, MinRate, MaxRate, MinRate)
	}
	if burst < 1 || burst > MaxBurst {
		return limit{}, fmt.Errorf("ratelimit: burst %d is outside [1, %d]; possible fix: a burst of at least 1 and at most %d tokens", burst, MaxBurst, MaxBurst)
	}
	l := limit{burst: uint64(burst), timeBits: uint(64 - bits.Len(uint(burst)))}
	l.timeMask = 1<<l.timeBits - 1
	// The tick: a token of at least minCostTicks ticks, and at most 2^L ns
	// so that 2^(64-shift) is a multiple of the field and the int64 clock
	// wraps seamlessly (the field is then 2^64 ns, 584 years, anyway).
	costNs := 1e9 / rate
	l.shift = minShift
	for l.shift < 64-int(l.timeBits) && math.Ldexp(costNs, -l.shift-1) >= minCostTicks {
		l.shift++
	}
	if costNs == math.Trunc(costNs) { // a whole number of ns: make it whole ticks if that fits
		if tz := bits.TrailingZeros64(uint64(costNs)); tz < l.shift && math.Ldexp(costNs*float64(burst), -tz) < maxFill/2 {
			l.shift = tz
		}
	}
	l.costQ = uint64(math.Ceil(math.Ldexp(costNs, fracBits-l.shift)))
	l.fill = uint64(math.Ceil(float64(burst)*float64(l.costQ)/(1<<fracBits))) + 1
	l.skew = uint64(math.Ldexp(skewNs, -l.shift))
	l.costTicks, l.tickNs = math.Ldexp(float64(l.costQ), -fracBits), math.Ldexp(1, l.shift)
	return l, nil
}

// ticks converts a caller's time to ticks, rounded down and up.
func (l *limit) ticks(nowNs int64) (now, up uint64) {
	if l.shift <= 0 {
		now = uint64(nowNs) << -l.shift & l.timeMask
		return now, now
	}
	now = uint64(nowNs) >> l.shift & l.timeMask
	if uint64(nowNs)&(1<<l.shift-1) != 0 {
		return now, (now + 1) & l.timeMask
	}
	return now, now
}

// refill returns the deficit and last time of word w brought forward to now.
// A bucket that is (or becomes) full restarts its clock at up, the tick after
// the real time, so the part of a tick before a full bucket earns nothing.
func (l *limit) refill(w, now, up uint64) (deficit, last uint64) {
	if w == 0 {
		return 0, up // never used: full, with no clock yet
	}
	deficit, last = w>>l.timeBits, w&l.timeMask
	d := (now - last) & l.timeMask
	if d > l.timeMask-l.skew { // now is a little behind last: another loop's clock is ahead
		return deficit, last
	}
	if deficit == 0 || d >= l.fill {
		return 0, up // full: the time until now earned nothing more
	}
	earned := d << fracBits / l.costQ
	if earned >= deficit {
		return 0, up
	}
	spent := (earned*l.costQ + 1<<fracBits - 1) >> fracBits // ≤ d
	return deficit - earned, (last + spent) & l.timeMask
}

// take takes one token from *w if it has one. It returns whether it did and
// the word after the call (refilled to now even when nothing was taken; a
// refusal does not write, so a flood of refused requests does not bounce the
// cache line between cores).
func (l *limit) take(w *atomic.Uint64, now, up uint64) (bool, uint64) {
	for {
		old := w.Load()
		deficit, last := l.refill(old, now, up)
		if deficit >= l.burst {
			return false, deficit<<l.timeBits | last
		}
		next := (deficit+1)<<l.timeBits | last
		if w.CompareAndSwap(old, next) {
			return true, next
		}
	}
}

// state reads a refilled word: whole tokens left, and the time until the
// first token and until a full bucket.
func (l *limit) state(w, now uint64) (tokens int, untilToken, untilFull time.Duration) {
	deficit, last := w>>l.timeBits, w&l.timeMask
	d := (now - last) & l.timeMask
	progress := float64(d) // ticks of the next token already earned
	if d > l.timeMask-l.skew {
		progress = -float64(l.timeMask + 1 - d)
	}
	tokens = int(l.burst - deficit)
	if tokens == 0 {
		untilToken = l.wait(1, progress)
	}
	return tokens, untilToken, l.wait(deficit, progress)
}

// wait is the time until n more tokens, rounded up to whole ticks.
func (l *limit) wait(n uint64, progress float64) time.Duration {
	t := math.Ceil(float64(n)*l.costTicks - progress)
	if t <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(t * l.tickNs))
}

// decision reads the bucket word a request left.
func (l *limit) decision(allowed bool, w, now uint64) Decision {
	tokens, untilToken, untilFull := l.state(w, now)
	d := Decision{Allowed: allowed, Remaining: tokens, Reset: untilFull}
	if !allowed {
		d.RetryAfter = max(untilToken, 1)
	}
	return d
}

// Bucket is one token bucket. It takes 144 bytes, padded so that the buckets
// of different shards never share a cache line.
type Bucket struct {
	w atomic.Uint64
	limit
	_ [64]byte
}

// NewBucket returns a full bucket that refills at ratePerSec tokens per
// second up to burst tokens.
func NewBucket(ratePerSec float64, burst int) (*Bucket, error) {
	l, err := newLimit(ratePerSec, burst)
	if err != nil {
		return nil, err
	}
	return &Bucket{limit: l}, nil
}

// MustNewBucket is NewBucket for start-up code whose arguments were validated already.
func MustNewBucket(ratePerSec float64, burst int) *Bucket {
	b, err := NewBucket(ratePerSec, burst)
	if err != nil {
		panic(err)
	}
	return b
}

// Allow takes a token at time nowNs (monotonic nanoseconds) if there is one.
func (b *Bucket) Allow(nowNs int64) Decision {
	now, up := b.ticks(nowNs)
	ok, w := b.take(&b.w, now, up)
	return b.decision(ok, w, now)
}

// Table is a fixed-size table of token buckets for per-key limits. It uses 8
// bytes per slot plus a 104-byte header (1<<16 slots take 512 KiB, 1<<20
// slots 8 MiB) and never allocates after NewTable, however many keys it sees.
//
// A key hashes to one slot, and every admission of the key is a token taken
// from that slot, so a key is never allowed more than its own bucket allows,
// however the requests of all loops interleave. Keys sharing a slot share its
// tokens, which only limits them more: a key is refused when a busier key
// drains its slot. (An earlier version gave each key a slot in each of two
// rows, as count-min does, and admitted only when both had a token: for the
// same memory that refused an innocent key about four times as often as one
// slot in a row twice as long, and cost a second cache miss per request.)
type Table struct {
	limit
	mask  uint64 // len(slots) - 1
	slots []atomic.Uint64
}

// NewTable returns a table of slots buckets (rounded up to a power of two, at
// least 2), each refilling at ratePerSec tokens per second up to burst.
func NewTable(slots int, ratePerSec float64, burst int) (*Table, error) {
	if slots < 2 || slots > MaxSlots {
		return nil, fmt.Errorf("ratelimit: table of %d slots is outside [2, %d]; possible fix: size it at a few times the number of keys active within the refill time (8 bytes a slot)", slots, MaxSlots)
	}
	l, err := newLimit(ratePerSec, burst)
	if err != nil {
		return nil, err
	}
	n := 1 << bits.Len(uint(slots-1))
	return &Table{limit: l, mask: uint64(n - 1), slots: make([]atomic.Uint64, n)}, nil
}

// MustNewTable is NewTable for start-up code whose arguments were validated already.
func MustNewTable(slots int, ratePerSec float64, burst int) *Table {
	t, err := NewTable(slots, ratePerSec, burst)
	if err != nil {
		panic(err)
	}
	return t
}

// Slots returns the number of slots, after rounding up.
func (t *Table) Slots() int { return len(t.slots) }

// Bytes returns the memory the slots take.
func (t *Table) Bytes() int { return 8 * len(t.slots) }

// AllowKey is Allow for a key hashed with xxhash.
func (t *Table) AllowKey(key []byte, nowNs int64) Decision {
	return t.Allow(xxhash.Sum64(key), nowNs)
}

// Allow takes a token for the key with hash keyHash at time nowNs (monotonic
// nanoseconds) if the key has one. The hash is remixed, so a weak one (an
// IPv4 address as a number) is fine.
func (t *Table) Allow(keyHash uint64, nowNs int64) Decision {
	now, up := t.ticks(nowNs)
	ok, w := t.take(&t.slots[t.index(keyHash)], now, up)
	return t.decision(ok, w, now)
}

// index returns the key's slot.
func (t *Table) index(keyHash uint64) uint64 { return mix(keyHash) & t.mask }

// mix is the splitmix64 finalizer: a bijection that spreads weak hashes (an
// IPv4 address as a number) over the low bits.
func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// AppendHeaders appends the RateLimit-Policy and RateLimit header lines of
// draft-ietf-httpapi-ratelimit-headers, each ending in "\r\n":
//
//	RateLimit-Policy: "name";q=<burst>;w=<windowSec>
//	RateLimit: "name";r=<remaining>;t=<seconds until full, rounded up>
//
// name should be printable ASCII; quotes and backslashes are escaped. It does
// not allocate when dst has room.
func AppendHeaders(dst []byte, name string, d Decision, burst int, windowSec int) []byte {
	dst = append(dst, "RateLimit-Policy: "...)
	dst = appendQuoted(dst, name)
	dst = append(dst, ";q="...)
	dst = strconv.AppendInt(dst, int64(burst), 10)
	dst = append(dst, ";w="...)
	dst = strconv.AppendInt(dst, int64(windowSec), 10)
	dst = append(dst, "\r\nRateLimit: "...)
	dst = appendQuoted(dst, name)
	dst = append(dst, ";r="...)
	dst = strconv.AppendInt(dst, int64(d.Remaining), 10)
	dst = append(dst, ";t="...)
	dst = strconv.AppendInt(dst, ceilSeconds(d.Reset), 10)
	return append(dst, "\r\n"...)
}

// appendQuoted appends s as a structured-field string (RFC 8941).
func appendQuoted(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			dst = append(dst, '\\')
		}
		dst = append(dst, s[i])
	}
	return append(dst, '"')
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
