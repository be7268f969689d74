package ratelimit

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

const ms = int64(time.Millisecond)

// seed returns RATELIMIT_SEED if set (to replay a failure), else a fresh one,
// and logs it.
func seed(t testing.TB) uint64 {
	s := uint64(time.Now().UnixNano())
	if env := os.Getenv("RATELIMIT_SEED"); env != "" {
		v, err := strconv.ParseUint(env, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		s = v
	}
	t.Logf("seed %d (replay with RATELIMIT_SEED=%d)", s, s)
	return s
}

func TestSingleKeyExact(t *testing.T) {
	// 100/s is a token every 10 ms; burst 10.
	tab := MustNewTable(1<<10, 100, 10)
	bkt := MustNewBucket(100, 10)
	allows := map[string]func(now int64) Decision{
		"table":  func(now int64) Decision { return tab.AllowKey([]byte("alice"), now) },
		"bucket": bkt.Allow,
	}
	for name, allow := range allows {
		t.Run(name, func(t *testing.T) {
			for i := 0; i < 10; i++ {
				d := allow(0)
				if !d.Allowed || d.Remaining != 9-i {
					t.Fatalf("request %d at t=0: %+v, want allowed with %d left", i, d, 9-i)
				}
			}
			d := allow(0)
			want := Decision{Allowed: false, Remaining: 0, RetryAfter: 10 * time.Millisecond, Reset: 100 * time.Millisecond}
			if d != want {
				t.Fatalf("11th request at t=0: %+v, want %+v", d, want)
			}
			if got := d.RetryAfterSeconds(); got != 1 {
				t.Fatalf("RetryAfterSeconds = %d, want 1", got)
			}
			// Hammer every 100 µs for 1 s: exactly one admission per 10 ms.
			allowed := 0
			for now := int64(100_000); now <= 1000*ms; now += 100_000 {
				if d := allow(now); d.Allowed {
					allowed++
					if now%(10*ms) != 0 {
						t.Fatalf("admitted at %d ns, not on a 10 ms boundary", now)
					}
				}
			}
			if allowed != 100 {
				t.Fatalf("admitted %d in (0, 1 s], want exactly 100", allowed)
			}
			// Idle long enough to fill up: exactly burst again, not more.
			allowed = 0
			for i := 0; i < 50; i++ {
				if allow(60_000 * ms).Allowed {
					allowed++
				}
			}
			if allowed != 10 {
				t.Fatalf("after a long idle admitted %d, want the burst of 10", allowed)
			}
		})
	}
}

func TestDecisionTimes(t *testing.T) {
	tab := MustNewTable(1<<10, 100, 10) // a token every 10 ms
	key := []byte("bob")
	for i := 0; i < 10; i++ {
		tab.AllowKey(key, 0)
	}
	// At 15 ms one token has come (at 10 ms) and half the next.
	d := tab.AllowKey(key, 15*ms)
	want := Decision{Allowed: true, Remaining: 0, Reset: 95 * time.Millisecond}
	if d != want {
		t.Fatalf("at 15 ms: %+v, want %+v", d, want)
	}
	d = tab.AllowKey(key, 15*ms)
	want = Decision{Allowed: false, Remaining: 0, RetryAfter: 5 * time.Millisecond, Reset: 95 * time.Millisecond}
	if d != want {
		t.Fatalf("again at 15 ms: %+v, want %+v", d, want)
	}
	if d := tab.AllowKey(key, 20*ms); !d.Allowed || d.Reset != 100*time.Millisecond {
		t.Fatalf("at 20 ms: %+v, want allowed with Reset 100ms", d)
	}
	if d := tab.AllowKey(key, 200*ms); !d.Allowed || d.Remaining != 9 || d.Reset != 10*time.Millisecond {
		t.Fatalf("at 200 ms (full again): %+v, want allowed, 9 left, Reset 10ms", d)
	}
	if a, b := tab.AllowKey(key, 300*ms), tab.Allow(xxhash.Sum64(key), 300*ms); a.Remaining != b.Remaining+1 {
		t.Fatalf("AllowKey and Allow(xxhash) disagree: %+v then %+v", a, b)
	}
}

// TestRateAccuracy compares against an ideal (real-valued) token bucket under
// random parameters and call patterns: never more than burst + rate×elapsed,
// and at most 0.1% (plus one token) less than the ideal bucket.
func TestRateAccuracy(t *testing.T) {
	rng := rand.New(rand.NewPCG(seed(t), 1))
	for round := 0; round < 200; round++ {
		rate := math.Exp(rng.Float64()*math.Log(MaxRate/MinRate)) * MinRate
		burst := 1 + rng.IntN(1000)
		b := MustNewBucket(rate, burst)
		cost := 1e9 / rate
		// Mean gap between calls from cost/100 (hammering) to 2×cost (sparse).
		gap := cost * math.Exp(rng.Float64()*math.Log(200)) / 100
		start := rng.Int64() // anywhere on the clock, including wrap points
		ideal, tokens, last := 0, float64(burst), float64(0)
		got := 0
		calls := 2000 + rng.IntN(20000)
		var elapsed int64
		for i := 0; i < calls; i++ {
			elapsed += int64(1 + rng.Float64()*2*gap)
			tokens = math.Min(float64(burst), tokens+(float64(elapsed)-last)/cost)
			last = float64(elapsed)
			if tokens >= 1 {
				tokens--
				ideal++
			}
			if b.Allow(start + elapsed).Allowed {
				got++
			}
		}
		limit := float64(burst) + float64(elapsed)/cost
		if float64(got) > limit {
			t.Fatalf("rate %g burst %d: admitted %d in %d ns, more than burst + rate×elapsed = %.3f", rate, burst, got, elapsed, limit)
		}
		if floor := float64(ideal)*0.999 - 1; float64(got) < floor {
			t.Fatalf("rate %g burst %d gap %.0f ns: admitted %d, ideal bucket %d", rate, burst, gap, got, ideal)
		}
	}
}

// TestNeverEarly probes a drained bucket 1 ns before each token is due: the
// count admitted must never run ahead of the ideal bucket, not even by a
// tick, from clock starts that are not on a tick. A probe a little after each
// token keeps it honest the other way.
func TestNeverEarly(t *testing.T) {
	rng := rand.New(rand.NewPCG(seed(t), 2))
	for _, rate := range []float64{MinRate, 0.7, 3, 12.3, 100, 1000, 1e6, 3e6, 9.99e6, MaxRate} {
		for _, burst := range []int{1, 20, 5000} {
			b := MustNewBucket(rate, burst)
			cost := 1e9 / rate
			t0 := rng.Int64()
			for i := 0; i < burst; i++ {
				if !b.Allow(t0).Allowed {
					t.Fatalf("rate %g burst %d: refused within the burst", rate, burst)
				}
			}
			admitted := 0
			const tokens = 300
			for k := 1; k <= tokens; k++ {
				due := t0 + int64(math.Ceil(float64(k)*cost))
				if b.Allow(due - 1).Allowed {
					admitted++
				}
				if admitted > k-1 {
					t.Fatalf("rate %g burst %d start %d: token %d admitted before it was due", rate, burst, t0, k)
				}
				if b.Allow(due + int64(cost/8)).Allowed {
					admitted++
				}
			}
			// With a burst of 1 the bucket is full (and stops earning)
			// from a token's arrival to its late probe: no liveness check.
			if burst > 1 && admitted < tokens-1 {
				t.Fatalf("rate %g burst %d: %d of %d tokens admitted", rate, burst, admitted, tokens)
			}
		}
	}
}

// TestFullRestartsAfterNow: whichever way a bucket is full (never used,
// stored full, or refilled to full), its clock restarts at the
// tick after the real time, so the rest of the current tick earns nothing.
func TestFullRestartsAfterNow(t *testing.T) {
	l := MustNewBucket(100, 20).limit // a tick of 32 ns
	if l.shift != 5 {
		t.Fatalf("tick 2^%d ns, the test wants 2^5", l.shift)
	}
	nowNs := int64(1_000_000_007) // not on a tick
	now, up := l.ticks(nowNs)
	if up != now+1 {
		t.Fatalf("ticks(%d) = %d, %d", nowNs, now, up)
	}
	for name, w := range map[string]uint64{
		"never used":    0,
		"stored full":   now - 1000,
		"refilled full": 3<<l.timeBits | (now - 3*l.costQ>>fracBits),
	} {
		if d, last := l.refill(w, now, up); d != 0 || last != up {
			t.Errorf("%s: refilled to deficit %d at tick %d, want 0 at %d", name, d, last, up)
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	tab := MustNewTable(1<<16, 100, 10)
	bkt := MustNewBucket(1000, 100)
	key := []byte("203.0.113.7")
	buf := make([]byte, 0, 256)
	var now int64
	checks := map[string]func(){
		"Table.AllowKey": func() { now += 1000; tab.AllowKey(key, now) },
		"Table.Allow":    func() { now += 1000; tab.Allow(uint64(now), now) },
		"Bucket.Allow":   func() { now += 1000; bkt.Allow(now) },
		"AppendHeaders":  func() { buf = AppendHeaders(buf[:0], "per-ip", tab.AllowKey(key, now), 10, 1) },
	}
	for name, f := range checks {
		if n := testing.AllocsPerRun(10000, f); n != 0 {
			t.Errorf("%s: %v allocs per call, want 0", name, n)
		}
	}
}

// TestHotKeyUnderFlood: 8 loops send a hot key interleaved with millions of
// fresh random keys into a small table. The hot key never gets more than its
// own bucket allows, the table as a whole never more than its buckets allow,
// and the flood allocates nothing. "light" leaves most flood requests
// admitted; "saturating" refuses most of them, and the hot key's slot is
// drained by strangers.
func TestHotKeyUnderFlood(t *testing.T) {
	for _, c := range []struct {
		name        string
		rate, burst int64
	}{{"light", 100, 20}, {"saturating", 10, 5}} {
		t.Run(c.name, func(t *testing.T) { flood(t, c.rate, c.burst) })
	}
}

func flood(t *testing.T, rate, burst int64) {
	const (
		loops    = 8
		total    = 10_240_000
		hotEvery = 16
		duration = 4 * int64(time.Second)
		step     = duration / total // simulated ns per request
	)
	tab := MustNewTable(1<<16, float64(rate), int(burst))
	s := seed(t)
	hot := []byte("user-4242")
	var clock atomic.Int64
	var hotAllowed, hotSent, floodAllowed atomic.Int64

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	for g := 0; g < loops; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(s, uint64(g)))
			var key [8]byte
			var ha, hs, fa int64
			for i := 0; i < total/loops; i++ {
				now := clock.Add(step)
				if i%hotEvery == 0 {
					hs++
					if tab.AllowKey(hot, now).Allowed {
						ha++
					}
					continue
				}
				binary.LittleEndian.PutUint64(key[:], rng.Uint64())
				if tab.AllowKey(key[:], now).Allowed {
					fa++
				}
			}
			hotAllowed.Add(ha)
			hotSent.Add(hs)
			floodAllowed.Add(fa)
		}()
	}
	wg.Wait()
	runtime.ReadMemStats(&after)

	elapsed := clock.Load()
	limit := burst + rate*elapsed/int64(time.Second)
	ha, fa, fs := hotAllowed.Load(), floodAllowed.Load(), total-hotSent.Load()
	t.Logf("hot key: %d of %d admitted (limit %d); flood: %d of %d admitted; %.1f s simulated",
		ha, hotSent.Load(), limit, fa, fs, float64(elapsed)/1e9)
	if ha > limit {
		t.Fatalf("hot key admitted %d times, more than burst + rate×elapsed = %d", ha, limit)
	}
	if slots := int64(tab.Slots()); ha+fa > slots*limit {
		t.Fatalf("table admitted %d in all, more than its %d buckets allow (%d)", ha+fa, slots, slots*limit)
	}
	if ha == 0 || fa == 0 {
		t.Fatalf("starved: hot %d, flood %d", ha, fa)
	}
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	mallocs := after.Mallocs - before.Mallocs
	t.Logf("heap grew %d bytes, %d mallocs during %d requests", grew, mallocs, total)
	if grew > 1<<20 || mallocs > 10_000 {
		t.Fatalf("the flood allocated: heap grew %d bytes, %d mallocs", grew, mallocs)
	}
}

// findPair returns two keys "k<i>" in the same slot, or in different
// slots when same is false.
func findPair(tab *Table, same bool) (string, string) {
	first := tab.index(xxhash.Sum64String("k0"))
	for i := 1; ; i++ {
		k := fmt.Sprint("k", i)
		if (tab.index(xxhash.Sum64String(k)) == first) == same {
			return "k0", k
		}
	}
}

// TestCollisionsLimitMore: keys in one slot share one bucket; a key in
// another slot keeps its own whatever its neighbours do.
func TestCollisionsLimitMore(t *testing.T) {
	const rate, burst = 100, 10
	// Sharing: a 2-slot table where the pair collides, and a real pair found
	// in a 256-slot table.
	tab := MustNewTable(256, rate, burst)
	k1, k2 := findPair(tab, true)
	small := MustNewTable(2, rate, burst)
	s1, s2 := findPair(small, true)
	for _, p := range []struct {
		tab    *Table
		k1, k2 string
	}{{small, s1, s2}, {tab, k1, k2}} {
		allowed := 0
		for now := int64(0); now <= 1000*ms; now += ms {
			for _, k := range []string{p.k1, p.k2} {
				if p.tab.AllowKey([]byte(k), now).Allowed {
					allowed++
				}
			}
		}
		if allowed != burst+rate {
			t.Fatalf("%q and %q (table of %d) together admitted %d in 1 s, want one bucket's %d", p.k1, p.k2, p.tab.Slots(), allowed, burst+rate)
		}
	}

	// Apart: one key drained to refusal does not touch the other.
	tab = MustNewTable(256, rate, burst)
	k1, k2 = findPair(tab, false)
	for i := 0; i < 1000; i++ {
		tab.AllowKey([]byte(k1), 0)
	}
	if tab.AllowKey([]byte(k1), 0).Allowed {
		t.Fatal("a drained key admitted")
	}
	for i := 0; i < burst; i++ {
		if !tab.AllowKey([]byte(k2), 0).Allowed {
			t.Fatalf("%q refused after %d: a key in another slot drained its bucket", k2, i)
		}
	}
}

// TestBucketConcurrent: goroutines share one global bucket on a shared
// simulated clock; the total never exceeds burst + rate×elapsed.
func TestBucketConcurrent(t *testing.T) {
	const (
		loops, perLoop = 8, 250_000
		rate, burst    = 1000, 50
		step           = 1000 // ns: 2 s simulated in all
	)
	b := MustNewBucket(rate, burst)
	var clock, allowed atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < loops; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(0)
			for i := 0; i < perLoop; i++ {
				if b.Allow(clock.Add(step)).Allowed {
					n++
				}
			}
			allowed.Add(n)
		}()
	}
	wg.Wait()
	limit := burst + rate*clock.Load()/int64(time.Second)
	t.Logf("admitted %d, limit %d", allowed.Load(), limit)
	if allowed.Load() > limit {
		t.Fatalf("admitted %d, more than burst + rate×elapsed = %d", allowed.Load(), limit)
	}
	if allowed.Load() < limit*95/100 {
		t.Fatalf("admitted %d, far below the limit %d", allowed.Load(), limit)
	}
}

// TestClockWrap crosses zero, the 44-bit field wrap and the int64 wrap, and
// checks that a clock slightly behind (another event loop) earns nothing.
func TestClockWrap(t *testing.T) {
	for _, rate := range []float64{MinRate, 0.7, 3, 12.3, 100, 1e6, 3e6, 9.99e6, MaxRate} {
		l := MustNewBucket(rate, 1000).limit
		wraps := []int64{0, math.MinInt64}
		if field := int(l.timeBits) + l.shift; field < 63 {
			wraps = append(wraps, 1<<field)
		}
		for _, wrap := range wraps {
			b := MustNewBucket(rate, 1000)
			cost := int64(math.Ceil(1e9 / rate))
			t0 := wrap - 5*cost // int64 overflow wraps, as a clock would
			for i := 0; i < 1000; i++ {
				b.Allow(t0)
			}
			for _, behind := range []int64{1, 500 * ms, 10_000 * ms} {
				if b.Allow(t0 - behind).Allowed {
					t.Fatalf("rate %g wrap %d: a clock %d ns behind earned a token", rate, wrap, behind)
				}
			}
			later := t0 + 10*cost + cost/2 // across the wrap, 10.5 tokens later
			n := 0
			for b.Allow(later).Allowed {
				n++
			}
			if n != 10 {
				t.Fatalf("rate %g wrap %d: %d tokens 10.5 token-times later, want 10", rate, wrap, n)
			}
			if !b.Allow(later + cost).Allowed {
				t.Fatalf("rate %g wrap %d: no token one token-time later", rate, wrap)
			}
		}
	}
}

func TestBadParameters(t *testing.T) {
	bad := []struct {
		slots int
		rate  float64
		burst int
		want  string
	}{
		{1024, 0, 10, "rate"},
		{1024, -5, 10, "rate"},
		{1024, 0.001, 10, "rate"},
		{1024, 2e7, 10, "rate"},
		{1024, math.NaN(), 10, "rate"},
		{1024, math.Inf(1), 10, "rate"},
		{1024, 100, 0, "burst"},
		{1024, 100, -1, "burst"},
		{1024, 100, MaxBurst + 1, "burst"},
		{1, 100, 10, "slots"},
		{0, 100, 10, "slots"},
		{MaxSlots + 1, 100, 10, "slots"},
	}
	for _, c := range bad {
		_, err := NewTable(c.slots, c.rate, c.burst)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "possible fix:") {
			t.Errorf("NewTable(%d, %g, %d) = %v, want an error about %s with a possible fix", c.slots, c.rate, c.burst, err, c.want)
		}
		if c.want != "slots" {
			if _, err := NewBucket(c.rate, c.burst); err == nil {
				t.Errorf("NewBucket(%g, %d) accepted", c.rate, c.burst)
			}
		}
	}
	for _, c := range []struct {
		slots int
		rate  float64
		burst int
	}{{2, MinRate, 1}, {3, MaxRate, MaxBurst}, {1 << 16, 100, 20}} {
		if _, err := NewTable(c.slots, c.rate, c.burst); err != nil {
			t.Errorf("NewTable(%d, %g, %d): %v", c.slots, c.rate, c.burst, err)
		}
	}
	if tab := MustNewTable(1000, 1, 1); tab.Slots() != 1024 || tab.Bytes() != 8192 {
		t.Errorf("1000 slots rounded to %d (%d bytes), want 1024 (8192 bytes)", tab.Slots(), tab.Bytes())
	}
}

func TestAppendHeaders(t *testing.T) {
	d := Decision{Allowed: true, Remaining: 7, Reset: 2500 * time.Millisecond}
	got := string(AppendHeaders([]byte("X: y\r\n"), "per-ip", d, 20, 10))
	want := "X: y\r\nRateLimit-Policy: \"per-ip\";q=20;w=10\r\nRateLimit: \"per-ip\";r=7;t=3\r\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	got = string(AppendHeaders(nil, `a"b\c`, Decision{}, 1, 1))
	want = "RateLimit-Policy: \"a\\\"b\\\\c\";q=1;w=1\r\nRateLimit: \"a\\\"b\\\\c\";r=0;t=0\r\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
