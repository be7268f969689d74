package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

const (
	benchKeys  = 1 << 20 // distinct keys ("user-0000000" …), about a million
	keyLen     = 12
	benchRate  = 100
	benchBurst = 20
	benchStep  = 100 // simulated ns between two requests of one goroutine
)

var benchData struct {
	once    sync.Once
	keys    []byte   // benchKeys keys of keyLen bytes, back to back
	zipf    []uint32 // a Zipf (s=1.1) sequence of key indexes: a few hot keys, a long tail
	uniform []uint32 // a uniform sequence of key indexes
}

func benchInit() {
	benchData.once.Do(func() {
		keys := make([]byte, 0, benchKeys*keyLen)
		for i := 0; i < benchKeys; i++ {
			keys = fmt.Appendf(keys, "user-%07d", i)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		z := rand.NewZipf(rng, 1.1, 1, benchKeys-1)
		zipf, uniform := make([]uint32, 1<<22), make([]uint32, 1<<22)
		for i := range zipf {
			zipf[i] = uint32(z.Uint64())
			uniform[i] = uint32(rng.IntN(benchKeys))
		}
		benchData.keys, benchData.zipf, benchData.uniform = keys, zipf, uniform
	})
}

// peerLimiter is the straightforward baseline: a map of buckets behind one
// mutex, a new allocation for each new key, float64 tokens.
type peerLimiter struct {
	mu          sync.Mutex
	m           map[string]*peerBucket
	rate, burst float64
}

type peerBucket struct {
	tokens float64
	last   int64
}

func (p *peerLimiter) allow(key []byte, now int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.m[string(key)]
	if b == nil {
		b = &peerBucket{tokens: p.burst, last: now}
		p.m[string(key)] = b
	}
	if now > b.last {
		b.tokens = min(p.burst, b.tokens+float64(now-b.last)*p.rate/1e9)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// benchAllow runs allow in parallel over the key sequence seq, each goroutine
// from its own offset and on its own simulated clock.
func benchAllow(b *testing.B, seq []uint32, allow func(key []byte, now int64) bool) {
	var goroutines atomic.Uint32
	var allowed atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(goroutines.Add(1)) * 7919 * 131
		var now int64
		n := int64(0)
		for pb.Next() {
			k := int(seq[i&(len(seq)-1)]) * keyLen
			now += benchStep
			if allow(benchData.keys[k:k+keyLen], now) {
				n++
			}
			i++
		}
		allowed.Add(n)
	})
	b.ReportMetric(100*float64(allowed.Load())/float64(b.N), "%admitted")
}

func benchPair(b *testing.B, seq []uint32) {
	b.Run("flashgate", func(b *testing.B) {
		tab := MustNewTable(2*benchKeys, benchRate, benchBurst) // 16 MiB
		benchAllow(b, seq, func(key []byte, now int64) bool { return tab.AllowKey(key, now).Allowed })
	})
	b.Run("peer-mutexmap", func(b *testing.B) {
		p := &peerLimiter{m: map[string]*peerBucket{}, rate: benchRate, burst: benchBurst}
		benchAllow(b, seq, p.allow)
	})
}

// BenchmarkAllow: per-key limits over a million keys with a Zipf mix (the
// hottest key gets about 9% of the requests), from every P at once.
func BenchmarkAllow(b *testing.B) {
	benchInit()
	benchPair(b, benchData.zipf)
}

// BenchmarkAllowUniform: the same over a uniform mix, where most requests
// come from keys seen rarely (the baseline's map keeps growing).
func BenchmarkAllowUniform(b *testing.B) {
	benchInit()
	benchPair(b, benchData.uniform)
}
