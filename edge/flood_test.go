package edge

import (
	"encoding/binary"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rssBytes reads this process's resident set size.
func rssBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Skip("no VmRSS")
	return 0
}

// A flood of 10M distinct users and client IPs through the edge's limiters
// (their tables are allocated at start, 8 MiB each): memory does not grow,
// and a hot user sending among them stays within its limit.
func TestKeyFloodStaysBounded(t *testing.T) {
	flood := 10_000_000
	if raceEnabled {
		flood = 1_000_000
	}
	cfg := DefaultConfig()
	cfg.Loops = 1
	cfg.RateGlobal = RateLimit{} // measure the per-key tables
	l, err := newLimiters(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	user := []byte("user-0000000000")
	hot := []byte("hot-user")
	var ip [16]byte
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapBefore, rssBefore := ms.HeapAlloc, rssBytes(t)

	// Simulated time: the flood spans 10 s, the hot user asks every 10th request.
	const span = 10 * time.Second
	start := time.Now().UnixNano()
	hotAllowed := 0
	for i := 0; i < flood; i++ {
		now := start + int64(span)*int64(i)/int64(flood)
		binary.BigEndian.PutUint64(user[7:], uint64(i)) // 10M distinct users...
		binary.BigEndian.PutUint32(ip[12:], uint32(i))  // ...from 10M distinct IPs
		l.check(0, user, ip, nil, now)
		if i%10 == 0 {
			if _, ok := l.check(0, hot, [16]byte{15: 1}, nil, now); ok {
				hotAllowed++
			}
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grew := int64(ms.HeapAlloc) - int64(heapBefore); grew > 1<<20 {
		t.Errorf("heap grew %d bytes over %d distinct keys", grew, flood)
	}
	// The race detector's shadow memory grows with every address touched:
	// RSS only means something without it.
	if grew := rssBytes(t) - rssBefore; !raceEnabled && grew > 2*int64(cfg.RatePerUser.Slots+cfg.RatePerIP.Slots)*8+(16<<20) {
		t.Errorf("RSS grew %d bytes: more than the two tables (%d bytes) can explain", grew, int64(cfg.RatePerUser.Slots+cfg.RatePerIP.Slots)*8)
	}
	limit := cfg.RatePerUser.Burst + int(cfg.RatePerUser.Rate*span.Seconds()) + 1
	if hotAllowed > limit {
		t.Errorf("hot user allowed %d times in %v; its limit allows %d", hotAllowed, span, limit)
	}
	if hotAllowed < limit/2 {
		t.Errorf("hot user allowed only %d times of %d: the flood's collisions starve it", hotAllowed, limit)
	}
	t.Logf("%d distinct keys; hot user allowed %d (limit %d)", flood, hotAllowed, limit)
}
