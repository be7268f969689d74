package trace

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// smallGenConfig is the default scenario scaled down to 50K orders, so that
// the tests run in a moment under -race.
func smallGenConfig(seed uint64) GenConfig {
	c := DefaultGenConfig()
	c.Seed = seed
	c.Orders = 50_000
	c.Users = 5_000
	c.SKUs = 200
	c.TotalStock = 10_000
	return c
}

func generate(t testing.TB, cfg GenConfig) ([]byte, Stats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := Generate(context.Background(), cfg, &buf, Plain())
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), st
}

func TestGenerateDeterministic(t *testing.T) {
	a, sa := generate(t, smallGenConfig(7))
	b, sb := generate(t, smallGenConfig(7))
	if !bytes.Equal(a, b) {
		t.Fatal("the same seed wrote different traces")
	}
	if sa != sb {
		t.Fatalf("the same seed gave different stats: %+v, %+v", sa, sb)
	}
	c, _ := generate(t, smallGenConfig(8))
	if bytes.Equal(a, c) {
		t.Fatal("seeds 7 and 8 wrote the same trace")
	}
	// Compressed output is deterministic too.
	var za, zb bytes.Buffer
	for _, buf := range []*bytes.Buffer{&za, &zb} {
		if _, err := Generate(context.Background(), smallGenConfig(7), buf); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(za.Bytes(), zb.Bytes()) {
		t.Fatal("the same seed wrote different compressed traces")
	}
}

// TestGenerateInvariants reads a generated trace back and checks what the
// replay relies on.
func TestGenerateInvariants(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		cfg := smallGenConfig(seed)
		out, st := generate(t, cfg)
		h, recs := readAll(t, out) // the reader enforces time order and the format

		if h.TotalStock() != cfg.TotalStock || len(h.Items) != cfg.SKUs {
			t.Fatalf("seed %d: header has %d items, %d units; want %d, %d", seed, len(h.Items), h.TotalStock(), cfg.SKUs, cfg.TotalStock)
		}
		for _, it := range h.Items {
			if it.Stock < 1 || it.PerUserLimit != cfg.PerUserLimit || it.PriceCents != cfg.PriceCents {
				t.Fatalf("seed %d: item %+v", seed, it)
			}
		}
		if h.MetaValue("seed") != strconv.FormatUint(seed, 10) || h.MetaValue("generator") != "flashgate-tracegen" {
			t.Errorf("seed %d: meta %+v", seed, h.Meta)
		}

		type orderKey struct{ user, key string }
		orders := map[orderKey]testRecord{} // every keyed order, by user and key
		lastAttempt := map[orderKey]time.Duration{}
		var counts [KindCancel + 1]uint64
		perSKU := map[string]int{}
		userIPs := map[string]map[string]bool{}
		ipUsers := map[string]string{}
		botIPs := map[string]int{}
		users := map[string]bool{}
		var last time.Duration
		for i, r := range recs {
			if r.At < last {
				t.Fatalf("seed %d: record %d at %v before %v", seed, i, r.At, last)
			}
			last = r.At
			counts[r.Kind]++
			users[r.User] = true
			k := orderKey{r.User, r.Key}
			bot := strings.HasPrefix(r.IP, "10.255.")
			switch r.Kind {
			case KindOrder:
				perSKU[r.SKU]++
				if r.Key != "" {
					if _, dup := orders[k]; dup {
						t.Fatalf("seed %d: record %d: key %s of user %s used by two orders", seed, i, r.Key, r.User)
					}
					orders[k] = r
					lastAttempt[k] = r.At
				}
				if r.Qty < 1 || r.Qty > cfg.MaxQty {
					t.Fatalf("seed %d: record %d: qty %d", seed, i, r.Qty)
				}
			case KindRetry:
				o, ok := orders[k]
				if !ok {
					t.Fatalf("seed %d: record %d: retry %+v of no earlier order", seed, i, r)
				}
				if o.SKU != r.SKU || o.Qty != r.Qty || o.IP != r.IP {
					t.Fatalf("seed %d: record %d: retry %+v differs from its order %+v", seed, i, r, o)
				}
				if d := r.At - lastAttempt[k]; d < cfg.RetryDelayMin-time.Microsecond || d > cfg.RetryDelayMax {
					t.Fatalf("seed %d: record %d: retry %v after the previous attempt", seed, i, d)
				}
				lastAttempt[k] = r.At
			case KindPoll, KindCancel:
				o, ok := orders[k]
				if !ok {
					t.Fatalf("seed %d: record %d: %s %+v of no earlier order of the same user", seed, i, r.Kind, r)
				}
				if r.Kind == KindCancel {
					if d := r.At - o.At; d < cfg.CancelDelayMin-time.Microsecond || d > cfg.CancelDelayMax {
						t.Fatalf("seed %d: record %d: cancel %v after its order", seed, i, d)
					}
				}
			}
			if bot {
				botIPs[r.IP]++
				if r.Kind != KindOrder {
					t.Fatalf("seed %d: record %d: a bot sent a %s", seed, i, r.Kind)
				}
				continue
			}
			if userIPs[r.User] == nil {
				userIPs[r.User] = map[string]bool{}
			}
			userIPs[r.User][r.IP] = true
			if u, ok := ipUsers[r.IP]; ok && u != r.User {
				t.Fatalf("seed %d: users %s and %s share the IP %s", seed, u, r.User, r.IP)
			}
			ipUsers[r.IP] = r.User
			if _, err := netip.ParseAddr(r.IP); err != nil {
				t.Fatalf("seed %d: record %d: %v", seed, i, err)
			}
		}
		if counts != st.Records || st.Users != len(users) || st.Last != last || st.Dropped != 0 {
			t.Errorf("seed %d: stats %+v, counted %v, %d users, last %v", seed, st, counts, len(users), last)
		}
		if counts[KindOrder] != uint64(cfg.Orders) {
			t.Errorf("seed %d: %d orders, want %d", seed, counts[KindOrder], cfg.Orders)
		}
		for kind, share := range map[Kind]float64{KindRetry: cfg.RetryShare, KindPoll: cfg.PollShare, KindCancel: cfg.CancelShare} {
			if share > 0 && counts[kind] == 0 {
				t.Errorf("seed %d: no %s", seed, kind)
			}
		}
		for u, ips := range userIPs {
			if len(ips) > cfg.MaxDevices {
				t.Errorf("seed %d: user %s sent from %d IPs, more than %d devices", seed, u, len(ips), cfg.MaxDevices)
			}
		}

		// Zipf: the top SKU gets far more orders than the median one.
		counts2 := make([]int, 0, len(perSKU))
		for _, n := range perSKU {
			counts2 = append(counts2, n)
		}
		slices.Sort(counts2)
		top, median := counts2[len(counts2)-1], counts2[len(counts2)/2]
		if perSKU["sku-0001"] != top || top < 20*median {
			t.Errorf("seed %d: sku-0001 got %d orders, the top %d, the median %d: no Zipf skew", seed, perSKU["sku-0001"], top, median)
		}

		// Bots: at most cfg.Bots IPs with about BotShare of the orders,
		// each far above any human's rate.
		var botOrders int
		for _, n := range botIPs {
			botOrders += n
		}
		if len(botIPs) == 0 || len(botIPs) > cfg.Bots {
			t.Errorf("seed %d: %d bot IPs, want 1..%d", seed, len(botIPs), cfg.Bots)
		}
		if share := float64(botOrders) / float64(cfg.Orders); share < cfg.BotShare*0.8 || share > cfg.BotShare*1.2 {
			t.Errorf("seed %d: bots sent %.3f of the orders, want about %v", seed, share, cfg.BotShare)
		}

		// The herd: a large share of the orders in the first second.
		first := 0
		for _, r := range recs {
			if r.Kind == KindOrder && r.At < time.Second {
				first++
			}
		}
		if share := float64(first) / float64(cfg.Orders); share < 0.3 {
			t.Errorf("seed %d: %.2f of the orders in the first second, want a herd", seed, share)
		}
	}
}

// A knob of one concern leaves the others' draws alone: more polls do not
// move the orders.
func TestGenerateStreams(t *testing.T) {
	ordersOf := func(cfg GenConfig) []testRecord {
		out, _ := generate(t, cfg)
		_, recs := readAll(t, out)
		return slices.DeleteFunc(recs, func(r testRecord) bool { return r.Kind != KindOrder })
	}
	a := smallGenConfig(5)
	b := a
	b.PollShare, b.MaxPolls, b.CancelShare = 0.9, 10, 0.5
	b.RetryDelayMax = time.Second
	if !slices.Equal(ordersOf(a), ordersOf(b)) {
		t.Fatal("changing the follow-ups moved the orders")
	}
}

func TestGenerateMaxPending(t *testing.T) {
	cfg := smallGenConfig(1)
	cfg.MaxPending = 10
	out, st := generate(t, cfg)
	if st.Dropped == 0 {
		t.Fatal("no follow-up dropped with MaxPending 10")
	}
	_, recs := readAll(t, out)
	if uint64(len(recs)) != st.Total() || st.Records[KindOrder] != uint64(cfg.Orders) {
		t.Fatalf("%d records, stats %+v", len(recs), st)
	}
}

func TestGenerateCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Generate(ctx, smallGenConfig(1), io.Discard, Plain())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestGenerateEdges(t *testing.T) {
	for name, mod := range map[string]func(*GenConfig){
		"one of everything": func(c *GenConfig) {
			c.Orders, c.Users, c.SKUs, c.TotalStock, c.Bots, c.BotShare, c.Bursts, c.BurstShare = 1, 1, 1, 1, 0, 0, 0, 0
		},
		"no follow-ups or herd": func(c *GenConfig) {
			c.HerdShare, c.RetryShare, c.PollShare, c.CancelShare = 0, 0, 0, 0
		},
		"all herd, uniform, no limit": func(c *GenConfig) {
			c.HerdShare, c.BurstShare, c.BotShare, c.Zipf, c.PerUserLimit, c.MaxQty = 1, 0, 0, 0, 0, 5
		},
		"all bots": func(c *GenConfig) { c.HerdShare, c.BurstShare, c.BotShare = 0, 0, 1 },
		"short":    func(c *GenConfig) { c.Duration = time.Millisecond },
		"long":     func(c *GenConfig) { c.Duration = 48 * time.Hour; c.Orders = 5000 },
		"keyless":  func(c *GenConfig) { c.KeylessShare = 1 },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := smallGenConfig(3)
			mod(&cfg)
			out, st := generate(t, cfg)
			_, recs := readAll(t, out)
			if st.Records[KindOrder] != uint64(cfg.Orders) || uint64(len(recs)) != st.Total() {
				t.Fatalf("%d records, stats %+v", len(recs), st)
			}
			if last := recs[len(recs)-1].At; cfg.RetryShare+cfg.PollShare+cfg.CancelShare == 0 && last >= cfg.Duration {
				t.Fatalf("last order at %v, past the duration %v", last, cfg.Duration)
			}
		})
	}
}

// Past 16.7M devices, IPs are IPv6 and still one per device.
func TestGenerateIPv6(t *testing.T) {
	cfg := smallGenConfig(1)
	cfg.Users, cfg.MaxDevices, cfg.Orders = 6_000_000, 3, 2000
	out, _ := generate(t, cfg)
	_, recs := readAll(t, out)
	for _, r := range recs {
		a, err := netip.ParseAddr(r.IP)
		if err != nil || (!a.Is6() && !strings.HasPrefix(r.IP, "10.255.")) {
			t.Fatalf("%+v: %v", r, err)
		}
	}
}

func TestPermute24(t *testing.T) {
	seen := make([]uint64, 1<<24/64)
	for x := uint32(0); x < 1<<24; x++ {
		y := permute24(x, 12345)
		if y >= 1<<24 || seen[y/64]&(1<<(y%64)) != 0 {
			t.Fatalf("permute24(%d) = %d: not a bijection of [0, 2^24)", x, y)
		}
		seen[y/64] |= 1 << (y % 64)
	}
}

func TestSplitStock(t *testing.T) {
	pop := []float64{0.5, 0.25, 0.125, 0.0625, 0.0625}
	for _, tc := range []struct {
		total int64
		skew  float64
	}{{5, 1}, {6, 1}, {1000, 1}, {1000, 0}, {1001, 0.5}, {200_000, 0.3}} {
		s := splitStock(tc.total, tc.skew, pop)
		var sum int64
		for _, v := range s {
			if v < 1 {
				t.Errorf("%+v: %v has an SKU without stock", tc, s)
			}
			sum += v
		}
		if sum != tc.total {
			t.Errorf("%+v: %v sums to %d", tc, s, sum)
		}
		if tc.skew == 0 && slices.Max(s)-slices.Min(s) > 1 {
			t.Errorf("%+v: %v is not even", tc, s)
		}
		if tc.skew == 1 && tc.total == 1000 && (s[0] < 490 || s[0] > 510) {
			t.Errorf("%+v: %v is not proportional", tc, s)
		}
	}
}

func TestGenConfigValidate(t *testing.T) {
	d := DefaultGenConfig()
	if err := d.validate(); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	if d.Orders != 1_000_000 || d.Users != 100_000 || d.SKUs != 1000 || d.TotalStock != 200_000 || d.Bots == 0 || d.RetryShare == 0 {
		t.Fatalf("the defaults are not the 1M-order acceptance scenario: %+v", d)
	}
	for _, tc := range []struct {
		mod  func(*GenConfig)
		want string
	}{
		{func(c *GenConfig) { c.Orders = 0 }, "-tracegen.orders"},
		{func(c *GenConfig) { c.Duration = 0 }, "-tracegen.duration"},
		{func(c *GenConfig) { c.Users = 0 }, "-tracegen.users"},
		{func(c *GenConfig) { c.MaxDevices = 0 }, "-tracegen.devices"},
		{func(c *GenConfig) { c.SKUs = 0 }, "-tracegen.skus"},
		{func(c *GenConfig) { c.Zipf = -1 }, "-tracegen.zipf"},
		{func(c *GenConfig) { c.TotalStock = 999 }, "raise -tracegen.stock to at least 1000"},
		{func(c *GenConfig) { c.StockSkew = 2 }, "-tracegen.stockSkew"},
		{func(c *GenConfig) { c.MaxQty = 3 }, "lower -tracegen.maxQty or raise -tracegen.limit"},
		{func(c *GenConfig) { c.HerdShare = 0.9 }, "cannot add up to more than 1"},
		{func(c *GenConfig) { c.HerdDecay = 0 }, "-tracegen.herdDecay"},
		{func(c *GenConfig) { c.Bursts = 0 }, "set -tracegen.bursts or -tracegen.burstShare=0"},
		{func(c *GenConfig) { c.BurstLength = 0 }, "-tracegen.burstLength"},
		{func(c *GenConfig) { c.Bots = 0 }, "set -tracegen.bots or -tracegen.botShare=0"},
		{func(c *GenConfig) { c.BotAccounts = 5000 }, "must leave some humans"},
		{func(c *GenConfig) { c.RetryShare = 1.5 }, "-tracegen.retries"},
		{func(c *GenConfig) { c.MaxRetries = 0 }, "-tracegen.maxRetries"},
		{func(c *GenConfig) { c.MaxPolls = 256 }, "-tracegen.maxPolls"},
		{func(c *GenConfig) { c.PollDelayMin = 4 * time.Second }, "-tracegen.pollDelayMin"},
		{func(c *GenConfig) { c.MaxPending = 0 }, "-tracegen.maxPending"},
		{func(c *GenConfig) { c.KeylessShare = -0.1 }, "-tracegen.keyless"},
	} {
		c := DefaultGenConfig()
		tc.mod(&c)
		err := c.validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
		if _, err := NewGenerator(c); err == nil {
			t.Errorf("NewGenerator took a config that validate refuses (%s)", tc.want)
		}
	}
}

// BenchmarkGenerate is the default scenario's speed, per order request
// (zstd, as tracegen writes it).
func BenchmarkGenerate(b *testing.B) {
	cfg := DefaultGenConfig()
	cfg.Orders = int64(b.N)
	cfg.Users = max(100, min(100_000, b.N/10))
	cfg.Bots = min(cfg.Bots, cfg.Users/(2*cfg.BotAccounts))
	if cfg.Bots == 0 {
		cfg.BotShare = 0
	}
	b.ResetTimer()
	if _, err := Generate(context.Background(), cfg, io.Discard); err != nil {
		b.Fatal(err)
	}
}
