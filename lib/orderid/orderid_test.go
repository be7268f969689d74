package orderid

import (
	"sync"
	"testing"
	"time"
)

func TestTimeRoundTrip(t *testing.T) {
	g := MustNew(5, 3)
	fixed := time.Date(2026, 11, 25, 12, 34, 56, 789_000_000, time.UTC)
	g.now = func() time.Time { return fixed }
	id := g.Next()
	if got := Time(id); !got.Equal(fixed) {
		t.Fatalf("Time(%d) = %v, want %v", id, got, fixed)
	}
	if !Valid(id) {
		t.Fatalf("id %d not valid", id)
	}
}

func TestUniqueAndOrderedAcrossGenerators(t *testing.T) {
	const perGen = 20000 // > 4096 per ms forces borrowing of the next millisecond
	fixed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	seen := make(map[int64]bool)
	var wg sync.WaitGroup
	for node := 0; node < 2; node++ {
		for shard := 0; shard < 3; shard++ {
			g := MustNew(node, shard)
			g.now = func() time.Time { return fixed }
			// Two goroutines share one generator to exercise the CAS path.
			for w := 0; w < 2; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ids := make([]int64, 0, perGen)
					for i := 0; i < perGen; i++ {
						ids = append(ids, g.Next())
					}
					for i := 1; i < len(ids); i++ {
						if ids[i] <= ids[i-1] {
							t.Errorf("ids not increasing: %d then %d", ids[i-1], ids[i])
							return
						}
					}
					mu.Lock()
					defer mu.Unlock()
					for _, id := range ids {
						if seen[id] {
							t.Errorf("duplicate id %d", id)
							return
						}
						seen[id] = true
					}
				}()
			}
		}
	}
	wg.Wait()
	if len(seen) != 2*3*2*perGen {
		t.Fatalf("got %d ids, want %d", len(seen), 2*3*2*perGen)
	}
}

func TestNewRejectsOutOfRange(t *testing.T) {
	for _, c := range []struct{ node, shard int }{{-1, 0}, {MaxNode + 1, 0}, {0, -1}, {0, MaxShard + 1}} {
		if _, err := New(c.node, c.shard); err == nil {
			t.Errorf("New(%d, %d) accepted", c.node, c.shard)
		}
	}
}

func BenchmarkNext(b *testing.B) {
	g := MustNew(1, 1)
	b.ReportAllocs()
	for b.Loop() {
		g.Next()
	}
}
