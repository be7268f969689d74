package trace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// GenConfig describes the flash sale a Generator writes.
//
// The model: Orders order requests (kind "order", the bots' included)
// arrive over Duration as a non-homogeneous Poisson process conditioned on
// its count, whose rate is a mixture of a thundering herd at the sale's start
// (decaying exponentially), a few short bursts, the bots' flood over the
// first BotWindow and a flat background. Humans pick a SKU by Zipf
// popularity, bots the hottest SKUs. Retries, polls and cancels come on top
// of the orders: they follow a share of the keyed human orders, in time.
//
// Every field's default (DefaultGenConfig) is given in its comment.
type GenConfig struct {
	// Seed makes the trace: the same seed and config give the same bytes.
	// Default 1.
	Seed uint64
	// Orders is the number of order requests (kind "order"), bots' included;
	// retries, polls and cancels come on top. Default 1,000,000.
	Orders int64
	// Duration is the window the orders arrive in. Follow-ups of the last
	// orders trail it by up to their longest delay. Default 30s.
	Duration time.Duration

	// Users is the number of buyers, u1..uN; the last Bots*BotAccounts of
	// them are the bots' accounts. Default 100,000.
	Users int
	// MaxDevices: each user has 1..MaxDevices devices (the number fixed by
	// the seed), each with its own IP in 10.0.0.0-10.254.255.255 (IPv6
	// fd00::/16 past 16.7M devices). Default 3.
	MaxDevices int

	// SKUs is the number of sale items, sku-0001..; sku-0001 is the most
	// popular. Default 1000.
	SKUs int
	// Zipf is the popularity exponent: the SKU of rank r is ordered in
	// proportion to 1/r^Zipf (0: uniform). Default 1.
	Zipf float64
	// TotalStock is the units on sale, split over the SKUs (each gets at
	// least one). Default 200,000.
	TotalStock int64
	// StockSkew splits TotalStock: 1 in proportion to popularity (every SKU
	// gets about the same orders per unit), 0 evenly (hot SKUs sell out at
	// once, the tail never), in between a mix. Default 1.
	StockSkew float64
	// PerUserLimit is every SKU's per-user purchase limit (0: none). Default 2.
	PerUserLimit int64
	// PriceCents is every SKU's price. Default 1999.
	PriceCents int64
	// MaxQty and MultiQtyShare: an order is for one unit, or with
	// probability MultiQtyShare for 2..MaxQty units. Defaults 2 and 0.2.
	MaxQty        int64
	MultiQtyShare float64

	// HerdShare of the orders arrive in the herd, at a rate decaying as
	// exp(-t/HerdDecay) from the sale's start. Defaults 0.5 and 1s.
	HerdShare float64
	HerdDecay time.Duration
	// Bursts: BurstShare of the orders arrive in Bursts bursts of
	// BurstLength each, at times fixed by the seed. Defaults 3, 0.05, 250ms.
	Bursts      int
	BurstShare  float64
	BurstLength time.Duration

	// Bots: BotShare of the orders come from Bots bot IPs (10.255.x.y), each
	// bot ordering for its own BotAccounts accounts, spread evenly over the
	// first BotWindow of the sale, for the 10 most popular SKUs at the
	// largest quantity. Bots always send a key and never retry, poll or
	// cancel. Defaults 20, 0.1, 5, 3s.
	Bots        int
	BotShare    float64
	BotAccounts int
	BotWindow   time.Duration

	// KeylessShare of the human orders carry no Idempotency-Key (and so are
	// never retried, polled or cancelled). Default 0.02.
	KeylessShare float64
	// RetryShare of the keyed human orders are sent again 1..MaxRetries
	// times, each RetryDelayMin..RetryDelayMax after the previous attempt,
	// from the same device. Defaults 0.1, 3, 50ms, 500ms.
	RetryShare    float64
	MaxRetries    int
	RetryDelayMin time.Duration
	RetryDelayMax time.Duration
	// PollShare of the keyed human orders are polled 1..MaxPolls times, each
	// PollDelayMin..PollDelayMax after the order or the previous poll, from
	// any of the user's devices. Defaults 0.2, 3, 500ms, 3s.
	PollShare    float64
	MaxPolls     int
	PollDelayMin time.Duration
	PollDelayMax time.Duration
	// CancelShare of the keyed human orders are cancelled
	// CancelDelayMin..CancelDelayMax after the order. Defaults 0.01, 2s, 10s.
	CancelShare    float64
	CancelDelayMin time.Duration
	CancelDelayMax time.Duration

	// MaxPending bounds the follow-ups (retries, polls, cancels) scheduled
	// but not yet due, 32 bytes each: it bounds the generator's memory. A
	// follow-up that finds it full is not written, and counted in
	// Stats.Dropped. The default scenario peaks near 300K. Default 1<<21.
	MaxPending int
}

// DefaultGenConfig is the project's acceptance scenario: a 1,000,000-order
// flash sale of 100K users for 1K SKUs with 200K units, retries and bots
// included, over 30 s with the herd in the first seconds.
func DefaultGenConfig() GenConfig {
	return GenConfig{
		Seed:     1,                // any fixed value: a default run is reproducible
		Orders:   1_000_000,        // the acceptance scenario's "1M-order flash sale"
		Duration: 30 * time.Second, // the herd decays to the background well within it; short to replay

		Users:      100_000, // the acceptance scenario: ~10 orders per user, so per-user limits bite
		MaxDevices: 3,       // phone, laptop, tablet: a buyer's requests come from more than one IP

		SKUs:          1000,    // the acceptance scenario
		Zipf:          1,       // web-like popularity: the top SKU gets ~13% of the orders, the median ~0.03%
		TotalStock:    200_000, // the acceptance scenario: ~6 units asked for every unit on sale
		StockSkew:     1,       // every SKU is oversubscribed about as much, so each one sells out at some point
		PerUserLimit:  2,       // the usual "2 per customer" of a flash sale
		PriceCents:    1999,    // informational; one price keeps the replay's revenue arithmetic obvious
		MaxQty:        2,       // never above PerUserLimit: such orders would only test the 409
		MultiQtyShare: 0.2,     // most buyers take one, some take the limit

		HerdShare:   0.5,                    // half the orders in the herd: ~35% of them in the first second
		HerdDecay:   time.Second,            // 95% of the herd within 3 s
		Bursts:      3,                      // a link shared on social media, a push notification, a restock rumour
		BurstShare:  0.05,                   // each burst several times the background rate
		BurstLength: 250 * time.Millisecond, // short enough to be a spike, long enough to fill queues

		Bots:        20,              // few IPs: per-IP rate limits should catch them
		BotShare:    0.1,             // 100K orders at ~1700/s per bot IP in the default scenario
		BotAccounts: 5,               // scalpers spread over a few accounts to dodge per-user limits
		BotWindow:   3 * time.Second, // bots fire as fast as they can when the sale opens

		KeylessShare:  0.02,                   // old or careless clients send no key
		RetryShare:    0.1,                    // a client timeout or double click on one order in ten
		MaxRetries:    3,                      // a retry storm, not an endless loop
		RetryDelayMin: 50 * time.Millisecond,  // a double click
		RetryDelayMax: 500 * time.Millisecond, // a client timeout under load

		PollShare:    0.2,                    // buyers watching their order's status
		MaxPolls:     3,                      // a few reloads of the page
		PollDelayMin: 500 * time.Millisecond, // the order page's first refresh
		PollDelayMax: 3 * time.Second,        // a human reload

		CancelShare:    0.01,             // a few buyers change their mind
		CancelDelayMin: 2 * time.Second,  // after seeing the order accepted
		CancelDelayMax: 10 * time.Second, // still during the sale, so the units can sell again

		MaxPending: 1 << 21, // 64 MB; ~7x the default scenario's peak
	}
}

// Limits of the generator, to catch a typo before it costs memory.
const (
	genMaxOrders   = 4e9 // a uint32 of key numbers per user
	genMaxUsers    = 1e8 // 4 bytes of key counter + 1 bit each
	genMaxDevices  = 16
	genMaxDuration = 30 * 24 * time.Hour
	genMaxBursts   = 1000
	genMaxBots     = 1 << 16 // 10.255.0.0/16
	genMaxFollow   = 255     // retries or polls of one order (a uint8)
	genBotHotSKUs  = 10      // the SKUs bots go for
	genMaxBins     = 1 << 20 // of the arrival rate table
	genMaxPending  = 1 << 27
	ipv4Devices    = 255 << 16 // 10.0.0.0-10.254.255.255; 10.255/16 is the bots'
)

func (c *GenConfig) validate() error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	share := func(name, flag string, v float64) {
		if !(v >= 0 && v <= 1) {
			bad("%s is %v: want a share between 0 and 1 (-tracegen.%s)", name, v, flag)
		}
	}
	delays := func(name, flag string, lo, hi time.Duration) {
		if lo < 0 || hi < lo {
			bad("%s delays %v..%v: want 0 <= min <= max (-tracegen.%sMin, -tracegen.%sMax)", name, lo, hi, flag, flag)
		}
	}
	if c.Orders < 1 || c.Orders > genMaxOrders {
		bad("Orders is %d: want 1..%d order requests (-tracegen.orders)", c.Orders, int64(genMaxOrders))
	}
	if c.Duration < time.Millisecond || c.Duration > genMaxDuration {
		bad("Duration is %v: want 1ms..%v (-tracegen.duration)", c.Duration, genMaxDuration)
	}
	if c.Users < 1 || c.Users > genMaxUsers {
		bad("Users is %d: want 1..%d (-tracegen.users)", c.Users, int(genMaxUsers))
	}
	if c.MaxDevices < 1 || c.MaxDevices > genMaxDevices {
		bad("MaxDevices is %d: want 1..%d devices per user (-tracegen.devices)", c.MaxDevices, genMaxDevices)
	}
	if c.SKUs < 1 || c.SKUs > maxHeaderSKUs {
		bad("SKUs is %d: want 1..%d (-tracegen.skus)", c.SKUs, maxHeaderSKUs)
	}
	if !(c.Zipf >= 0 && c.Zipf <= 10) {
		bad("Zipf is %v: want an exponent in 0..10, 0 for uniform popularity (-tracegen.zipf)", c.Zipf)
	}
	if c.TotalStock < int64(c.SKUs) {
		bad("TotalStock is %d: every SKU needs at least 1 unit; raise -tracegen.stock to at least %d or lower -tracegen.skus", c.TotalStock, c.SKUs)
	}
	share("StockSkew", "stockSkew", c.StockSkew)
	if c.PerUserLimit < 0 {
		bad("PerUserLimit is %d: want 0 (none) or more (-tracegen.limit)", c.PerUserLimit)
	}
	if c.PriceCents < 0 {
		bad("PriceCents is %d: want 0 or more (-tracegen.price)", c.PriceCents)
	}
	if c.MaxQty < 1 || c.MaxQty > 1e6 {
		bad("MaxQty is %d: want 1..1000000 units (-tracegen.maxQty)", c.MaxQty)
	} else if c.PerUserLimit > 0 && c.MaxQty > c.PerUserLimit {
		bad("MaxQty %d is above PerUserLimit %d: such orders could only be refused; lower -tracegen.maxQty or raise -tracegen.limit", c.MaxQty, c.PerUserLimit)
	}
	share("MultiQtyShare", "multiQty", c.MultiQtyShare)

	share("HerdShare", "herd", c.HerdShare)
	share("BurstShare", "burstShare", c.BurstShare)
	share("BotShare", "botShare", c.BotShare)
	if s := c.HerdShare + c.BurstShare + c.BotShare; s > 1+1e-9 {
		bad("HerdShare + BurstShare + BotShare is %v: the shares of the orders cannot add up to more than 1; lower -tracegen.herd, -tracegen.burstShare or -tracegen.botShare", s)
	}
	if c.HerdShare > 0 && c.HerdDecay <= 0 {
		bad("HerdDecay is %v: want a positive time constant with a herd (-tracegen.herdDecay)", c.HerdDecay)
	}
	if c.Bursts < 0 || c.Bursts > genMaxBursts {
		bad("Bursts is %d: want 0..%d (-tracegen.bursts)", c.Bursts, genMaxBursts)
	}
	if c.BurstShare > 0 && c.Bursts == 0 {
		bad("BurstShare is %v without bursts: set -tracegen.bursts or -tracegen.burstShare=0", c.BurstShare)
	}
	if c.Bursts > 0 && c.BurstShare > 0 && c.BurstLength < time.Microsecond {
		bad("BurstLength is %v: want at least 1µs (-tracegen.burstLength)", c.BurstLength)
	}
	if c.Bots < 0 || c.Bots > genMaxBots {
		bad("Bots is %d: want 0..%d bot IPs (-tracegen.bots)", c.Bots, genMaxBots)
	}
	if c.BotShare > 0 && c.Bots == 0 {
		bad("BotShare is %v without bots: set -tracegen.bots or -tracegen.botShare=0", c.BotShare)
	}
	if c.Bots > 0 {
		if c.BotAccounts < 1 {
			bad("BotAccounts is %d: want at least 1 account per bot (-tracegen.botAccounts)", c.BotAccounts)
		} else if int64(c.Bots)*int64(c.BotAccounts) >= int64(c.Users) {
			bad("Bots*BotAccounts is %d: the bots' accounts are taken from the users and must leave some humans; raise -tracegen.users or lower -tracegen.bots or -tracegen.botAccounts", c.Bots*c.BotAccounts)
		}
		if c.BotShare > 0 && c.BotWindow < time.Microsecond {
			bad("BotWindow is %v: want at least 1µs (-tracegen.botWindow)", c.BotWindow)
		}
	}
	share("KeylessShare", "keyless", c.KeylessShare)
	share("RetryShare", "retries", c.RetryShare)
	share("PollShare", "polls", c.PollShare)
	share("CancelShare", "cancels", c.CancelShare)
	if c.RetryShare > 0 && (c.MaxRetries < 1 || c.MaxRetries > genMaxFollow) {
		bad("MaxRetries is %d: want 1..%d (-tracegen.maxRetries)", c.MaxRetries, genMaxFollow)
	}
	if c.PollShare > 0 && (c.MaxPolls < 1 || c.MaxPolls > genMaxFollow) {
		bad("MaxPolls is %d: want 1..%d (-tracegen.maxPolls)", c.MaxPolls, genMaxFollow)
	}
	delays("retry", "retryDelay", c.RetryDelayMin, c.RetryDelayMax)
	delays("poll", "pollDelay", c.PollDelayMin, c.PollDelayMax)
	delays("cancel", "cancelDelay", c.CancelDelayMin, c.CancelDelayMax)
	for _, d := range []time.Duration{c.RetryDelayMax, c.PollDelayMax, c.CancelDelayMax} {
		if d > genMaxDuration {
			bad("follow-up delay %v is above %v; lower it", d, genMaxDuration)
			break
		}
	}
	if c.MaxPending < 1 || c.MaxPending > genMaxPending {
		bad("MaxPending is %d: want 1..%d follow-ups (-tracegen.maxPending)", c.MaxPending, genMaxPending)
	}
	if len(errs) > 0 {
		return errors.New("tracegen: " + strings.Join(errs, "; "))
	}
	return nil
}

// Stats counts what a generator or an import wrote.
type Stats struct {
	Records [KindCancel + 1]uint64 // by Kind ([0] unused)
	Users   int                    // distinct users with at least one request
	Last    time.Duration          // offset of the last record
	// Dropped counts the follow-ups (retries, polls, cancels) left out
	// because MaxPending were already waiting; raise MaxPending or Duration.
	Dropped uint64
}

// Total is the number of records.
func (s *Stats) Total() uint64 {
	var n uint64
	for _, c := range s.Records {
		n += c
	}
	return n
}

// Generator writes a synthetic flash sale. Its memory is bounded by the
// users, the SKUs, the arrival rate table and MaxPending, never by Orders.
type Generator struct {
	cfg    GenConfig
	header Header
	skus   [][]byte  // names, by rank (0 = most popular)
	skuCDF []float64 // Zipf popularity, cumulative
	rate   rateTable
	humans int      // users 0..humans-1 are human, the rest the bots' accounts
	keys   []uint32 // last key number given out, per user
	seen   []uint64 // users seen, a bit each
}

// NewGenerator checks cfg and prepares the sale: SKUs, stock, popularity
// and arrival rate table.
func NewGenerator(cfg GenConfig) (*Generator, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	g := &Generator{cfg: cfg, humans: cfg.Users - cfg.Bots*cfg.BotAccounts}
	width := max(4, len(strconv.Itoa(cfg.SKUs)))
	weights := make([]float64, cfg.SKUs)
	var sum float64
	for r := range weights {
		weights[r] = math.Pow(float64(r+1), -cfg.Zipf)
		sum += weights[r]
	}
	g.skuCDF = make([]float64, cfg.SKUs)
	var acc float64
	for r, w := range weights {
		weights[r] = w / sum
		acc += weights[r]
		g.skuCDF[r] = acc
	}
	g.skuCDF[cfg.SKUs-1] = 1
	stock := splitStock(cfg.TotalStock, cfg.StockSkew, weights)
	g.header.Items = make([]Item, cfg.SKUs)
	g.skus = make([][]byte, cfg.SKUs)
	for r := range g.skus {
		name := fmt.Sprintf("sku-%0*d", width, r+1)
		g.skus[r] = []byte(name)
		g.header.Items[r] = Item{SKU: name, Stock: stock[r], PerUserLimit: cfg.PerUserLimit, PriceCents: cfg.PriceCents}
	}
	g.header.Meta = cfg.meta()
	g.rate = newRateTable(&cfg)
	return g, nil
}

// Header is the trace's header: the generator's parameters as meta and
// every SKU.
func (g *Generator) Header() Header { return g.header }

// splitStock gives each SKU one unit and splits the rest by
// (1-skew)/n + skew*popularity, by largest remainder so the sum is exact.
func splitStock(total int64, skew float64, pop []float64) []int64 {
	n := len(pop)
	stock := make([]int64, n)
	rest := total - int64(n)
	rem := make([]float64, n)
	var given int64
	for i, p := range pop {
		exact := float64(rest) * ((1-skew)/float64(n) + skew*p)
		fl := math.Floor(exact)
		stock[i] = 1 + int64(fl)
		rem[i] = exact - fl
		given += int64(fl)
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case rem[a] > rem[b]:
			return -1
		case rem[a] < rem[b]:
			return 1
		}
		return 0
	})
	for i := 0; given < rest; i = (i + 1) % n {
		stock[order[i]]++
		given++
	}
	for i := n - 1; given > rest; i = (i + n - 1) % n { // float rounding gave one too many
		if stock[order[i]] > 1 {
			stock[order[i]]--
			given--
		}
	}
	return stock
}

func (c *GenConfig) meta() []KV {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	d := func(v time.Duration) string { return v.String() }
	r := func(lo, hi time.Duration) string { return lo.String() + ".." + hi.String() }
	return []KV{
		{"generator", "flashgate-tracegen"},
		{"seed", strconv.FormatUint(c.Seed, 10)},
		{"orders", strconv.FormatInt(c.Orders, 10)},
		{"duration", d(c.Duration)},
		{"users", strconv.Itoa(c.Users)},
		{"devices", strconv.Itoa(c.MaxDevices)},
		{"skus", strconv.Itoa(c.SKUs)},
		{"zipf", f(c.Zipf)},
		{"stock", strconv.FormatInt(c.TotalStock, 10)},
		{"stockSkew", f(c.StockSkew)},
		{"limit", strconv.FormatInt(c.PerUserLimit, 10)},
		{"price", strconv.FormatInt(c.PriceCents, 10)},
		{"maxQty", strconv.FormatInt(c.MaxQty, 10)},
		{"multiQty", f(c.MultiQtyShare)},
		{"herd", f(c.HerdShare)},
		{"herdDecay", d(c.HerdDecay)},
		{"bursts", strconv.Itoa(c.Bursts)},
		{"burstShare", f(c.BurstShare)},
		{"burstLength", d(c.BurstLength)},
		{"bots", strconv.Itoa(c.Bots)},
		{"botShare", f(c.BotShare)},
		{"botAccounts", strconv.Itoa(c.BotAccounts)},
		{"botWindow", d(c.BotWindow)},
		{"keyless", f(c.KeylessShare)},
		{"retries", f(c.RetryShare)},
		{"maxRetries", strconv.Itoa(c.MaxRetries)},
		{"retryDelay", r(c.RetryDelayMin, c.RetryDelayMax)},
		{"polls", f(c.PollShare)},
		{"maxPolls", strconv.Itoa(c.MaxPolls)},
		{"pollDelay", r(c.PollDelayMin, c.PollDelayMax)},
		{"cancels", f(c.CancelShare)},
		{"cancelDelay", r(c.CancelDelayMin, c.CancelDelayMax)},
		{"maxPending", strconv.Itoa(c.MaxPending)},
	}
}

// rateTable is the orders' arrival rate as piecewise-constant bins: the
// cumulative share of the orders up to the end of each bin, and the bots'
// share of each bin.
type rateTable struct {
	cdf  []float64
	bots []float32
	binW float64 // ns
}

func newRateTable(c *GenConfig) rateTable {
	bins := int(min(int64(genMaxBins), max(1, int64(c.Duration/time.Millisecond))))
	D := float64(c.Duration)
	t := rateTable{cdf: make([]float64, bins), bots: make([]float32, bins), binW: D / float64(bins)}
	type window struct{ from, to, share float64 }
	var flat []window // components of constant rate over a window
	if bg := 1 - c.HerdShare - c.BurstShare - c.BotShare; bg > 0 {
		flat = append(flat, window{0, D, bg})
	}
	if c.Bursts > 0 && c.BurstShare > 0 {
		// Burst times have their own stream: changing another knob does
		// not move them.
		rng := rand.New(rand.NewPCG(c.Seed, streamBursts))
		l := min(float64(c.BurstLength), D)
		for range c.Bursts {
			from := rng.Float64() * (D - l)
			flat = append(flat, window{from, from + l, c.BurstShare / float64(c.Bursts)})
		}
	}
	var botW float64
	if c.BotShare > 0 {
		botW = min(float64(c.BotWindow), D)
	}
	tau := float64(c.HerdDecay)
	var herdNorm float64
	if c.HerdShare > 0 {
		herdNorm = -math.Expm1(-D / tau)
	}
	overlap := func(a, b, from, to float64) float64 { return max(0, min(b, to)-max(a, from)) }
	var acc float64
	for i := range bins {
		a, b := float64(i)*t.binW, float64(i+1)*t.binW
		var m float64
		for _, w := range flat {
			m += w.share * overlap(a, b, w.from, w.to) / (w.to - w.from)
		}
		if c.HerdShare > 0 {
			m += c.HerdShare * (math.Exp(-a/tau) - math.Exp(-b/tau)) / herdNorm
		}
		var bm float64
		if botW > 0 {
			bm = c.BotShare * overlap(a, b, 0, botW) / botW
		}
		if m+bm > 0 {
			t.bots[i] = float32(bm / (m + bm))
		}
		acc += m + bm
		t.cdf[i] = acc
	}
	for i := range t.cdf {
		t.cdf[i] /= acc
	}
	t.cdf[bins-1] = 1
	return t
}

// Streams of the generator's random numbers, one per concern, so that a
// knob of one concern leaves the others' draws as they were.
const (
	streamArrivals = 0x61727269 // "arri"
	streamOrders   = 0x6f726472 // "ordr"
	streamFollow   = 0x666f6c6c // "foll"
	streamBursts   = 0x62757273 // "burs"
)

// pending is a follow-up not yet due.
type pending struct {
	at   time.Duration
	user int32
	sku  int32
	keyN uint32
	qty  uint32
	kind Kind
	left uint8 // more of the same kind after this one
	dev  uint8
}

// pendingHeap is a min-heap by time. Equal times pop in an order fixed by
// the pushes and pops before, so the output stays deterministic.
type pendingHeap []pending

func (h *pendingHeap) push(p pending) {
	*h = append(*h, p)
	s := *h
	for i := len(s) - 1; i > 0; {
		parent := (i - 1) / 2
		if s[parent].at <= s[i].at {
			break
		}
		s[parent], s[i] = s[i], s[parent]
		i = parent
	}
}

func (h *pendingHeap) pop() pending {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	for i := 0; ; {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && s[r].at < s[l].at {
			c = r
		}
		if s[i].at <= s[c].at {
			break
		}
		s[i], s[c] = s[c], s[i]
		i = c
	}
	*h = s
	return top
}

// run is the state of one Run.
type run struct {
	g        *Generator
	w        *Writer
	orders   *rand.Rand
	follow   *rand.Rand
	heap     pendingHeap
	rec      Record
	user     []byte
	ip       []byte
	key      []byte
	stats    Stats
	ipOffset uint32
}

// Run writes the records to w, whose header must be g.Header(). It checks
// ctx now and then and returns its error when it is done. Run may be called
// once per Generator.
func (g *Generator) Run(ctx context.Context, w *Writer) (Stats, error) {
	if g.keys != nil {
		panic("BUG: trace.Generator.Run called twice")
	}
	cfg := &g.cfg
	g.keys = make([]uint32, cfg.Users)
	g.seen = make([]uint64, (cfg.Users+63)/64)
	r := &run{
		g:        g,
		w:        w,
		orders:   rand.New(rand.NewPCG(cfg.Seed, streamOrders)),
		follow:   rand.New(rand.NewPCG(cfg.Seed, streamFollow)),
		heap:     make(pendingHeap, 0, min(cfg.MaxPending, 1<<16)),
		user:     make([]byte, 0, 32),
		ip:       make([]byte, 0, 48),
		key:      make([]byte, 0, 48),
		ipOffset: uint32(mix64(cfg.Seed)),
	}
	arr := rand.New(rand.NewPCG(cfg.Seed, streamArrivals))
	n := float64(cfg.Orders)
	var logRest float64 // -log(1-u) of the last arrival's order statistic u
	bin := 0
	for k := range cfg.Orders {
		if k&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				return r.stats, err
			}
		}
		// The k-th smallest of n uniforms, from the (k-1)-th: the rest are
		// uniform above it, so 1-u shrinks by the minimum of n-k of them.
		logRest += arr.ExpFloat64() / (n - float64(k))
		u := -math.Expm1(-logRest)
		at, botP := g.rate.at(u, &bin)
		for len(r.heap) > 0 && r.heap[0].at <= at {
			if err := r.followUp(r.heap.pop()); err != nil {
				return r.stats, err
			}
		}
		if err := r.order(at, botP); err != nil {
			return r.stats, err
		}
	}
	for i := 0; len(r.heap) > 0; i++ {
		if i&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				return r.stats, err
			}
		}
		if err := r.followUp(r.heap.pop()); err != nil {
			return r.stats, err
		}
	}
	for _, b := range g.seen {
		r.stats.Users += bits.OnesCount64(b)
	}
	return r.stats, nil
}

// at maps u in [0,1] to a time by the inverse of the cumulative rate,
// uniform within a bin; *bin only moves forward, as u does.
func (t *rateTable) at(u float64, bin *int) (time.Duration, float32) {
	i := *bin
	for i < len(t.cdf)-1 && t.cdf[i] <= u {
		i++
	}
	*bin = i
	lo := 0.0
	if i > 0 {
		lo = t.cdf[i-1]
	}
	frac := 0.0
	if m := t.cdf[i] - lo; m > 0 {
		frac = min(1, max(0, (u-lo)/m))
	}
	ns := (float64(i) + frac) * t.binW
	return time.Duration(ns).Truncate(time.Microsecond), t.bots[i]
}

func (r *run) order(at time.Duration, botP float32) error {
	cfg := &r.g.cfg
	rng := r.orders
	var p pending
	p.at, p.kind = at, KindOrder
	bot := botP > 0 && rng.Float32() < botP
	if bot {
		b := rng.IntN(cfg.Bots)
		p.user = int32(r.g.humans + b*cfg.BotAccounts + rng.IntN(cfg.BotAccounts))
		p.sku = int32(rng.IntN(min(genBotHotSKUs, cfg.SKUs)))
		p.qty = uint32(cfg.MaxQty)
		p.dev = 0
		r.ip = appendBotIP(r.ip[:0], b)
	} else {
		p.user = int32(rng.IntN(r.g.humans))
		p.dev = uint8(rng.IntN(r.g.devices(int(p.user))))
		p.sku = int32(r.g.pickSKU(rng.Float64()))
		p.qty = 1
		if u := rng.Float64(); u < cfg.MultiQtyShare && cfg.MaxQty > 1 {
			p.qty = uint32(2 + min(cfg.MaxQty-2, int64(u/cfg.MultiQtyShare*float64(cfg.MaxQty-1))))
		}
		r.ip = r.g.appendIP(r.ip[:0], int(p.user), int(p.dev), r.ipOffset)
	}
	keyed := bot || rng.Float64() >= cfg.KeylessShare
	if keyed {
		r.g.keys[p.user]++
		p.keyN = r.g.keys[p.user]
	}
	if err := r.write(&p); err != nil {
		return err
	}
	if bot || !keyed {
		return nil
	}
	// Which follow-ups: one draw each, whatever the shares, so that
	// changing one leaves the next orders as they were. Below the share,
	// u/share is uniform again and picks how many.
	if u := rng.Float64(); u < cfg.RetryShare {
		r.schedule(p, KindRetry, uint8(min(cfg.MaxRetries-1, int(u/cfg.RetryShare*float64(cfg.MaxRetries)))), cfg.RetryDelayMin, cfg.RetryDelayMax)
	}
	if u := rng.Float64(); u < cfg.PollShare {
		r.schedule(p, KindPoll, uint8(min(cfg.MaxPolls-1, int(u/cfg.PollShare*float64(cfg.MaxPolls)))), cfg.PollDelayMin, cfg.PollDelayMax)
	}
	if u := rng.Float64(); u < cfg.CancelShare {
		r.schedule(p, KindCancel, 0, cfg.CancelDelayMin, cfg.CancelDelayMax)
	}
	return nil
}

// schedule pushes the next follow-up of kind after p, unless MaxPending are
// waiting.
func (r *run) schedule(p pending, kind Kind, left uint8, lo, hi time.Duration) {
	if len(r.heap) >= r.g.cfg.MaxPending {
		r.stats.Dropped += uint64(left) + 1
		return
	}
	d := lo
	if hi > lo {
		d += time.Duration(r.follow.Int64N(int64(hi - lo + 1)))
	}
	p.at = (p.at + d).Truncate(time.Microsecond)
	p.kind, p.left = kind, left
	r.heap.push(p)
}

func (r *run) followUp(p pending) error {
	cfg := &r.g.cfg
	if p.kind != KindRetry {
		// Polls and cancels come from any of the user's devices; a retry
		// from the device that sent the order.
		p.dev = uint8(r.follow.IntN(r.g.devices(int(p.user))))
	}
	r.ip = r.g.appendIP(r.ip[:0], int(p.user), int(p.dev), r.ipOffset)
	if err := r.write(&p); err != nil {
		return err
	}
	if p.left > 0 {
		switch p.kind {
		case KindRetry:
			r.schedule(p, KindRetry, p.left-1, cfg.RetryDelayMin, cfg.RetryDelayMax)
		case KindPoll:
			r.schedule(p, KindPoll, p.left-1, cfg.PollDelayMin, cfg.PollDelayMax)
		}
	}
	return nil
}

// write writes p; r.ip is its IP.
func (r *run) write(p *pending) error {
	g := r.g
	r.user = appendUserID(r.user[:0], int(p.user))
	rec := &r.rec
	rec.At, rec.Kind, rec.User, rec.IP = p.at, p.kind, r.user, r.ip
	rec.SKU, rec.Qty, rec.Key = nil, 0, nil
	if p.kind == KindOrder || p.kind == KindRetry {
		rec.SKU, rec.Qty = g.skus[p.sku], int64(p.qty)
	}
	if p.keyN > 0 {
		r.key = appendKey(r.key[:0], int(p.user), p.keyN)
		rec.Key = r.key
	}
	if err := r.w.Write(rec); err != nil {
		return err
	}
	r.stats.Records[p.kind]++
	r.stats.Last = p.at
	g.seen[p.user/64] |= 1 << (p.user % 64)
	return nil
}

func (g *Generator) pickSKU(u float64) int {
	i, _ := slices.BinarySearch(g.skuCDF, u)
	return min(i, len(g.skuCDF)-1)
}

// devices is how many devices user u has, 1..MaxDevices, fixed by the seed.
func (g *Generator) devices(u int) int {
	return 1 + int(mix64(g.cfg.Seed^uint64(u)*0x9e3779b97f4a7c15)%uint64(g.cfg.MaxDevices))
}

// appendUserID appends the id of user index u: u1, u2, ...
func appendUserID(dst []byte, u int) []byte {
	dst = append(dst, 'u')
	return strconv.AppendInt(dst, int64(u)+1, 10)
}

// appendKey appends the n-th idempotency key of user index u: k<user>-<n>,
// unique per user (and across the trace).
func appendKey(dst []byte, u int, n uint32) []byte {
	dst = append(dst, 'k')
	dst = strconv.AppendInt(dst, int64(u)+1, 10)
	dst = append(dst, '-')
	return strconv.AppendUint(dst, uint64(n), 10)
}

// appendIP appends the address of device d of user u: a bijection of the
// device's index onto 10.0.0.0-10.254.255.255, shuffled by the seed so that
// neighbours in user id are not neighbours in address; IPv6 past that.
func (g *Generator) appendIP(dst []byte, u, d int, offset uint32) []byte {
	idx := uint64(u)*uint64(g.cfg.MaxDevices) + uint64(d)
	if uint64(g.cfg.Users)*uint64(g.cfg.MaxDevices) > ipv4Devices {
		dst = append(dst, "fd00::"...)
		dst = strconv.AppendUint(dst, idx>>32&0xffff, 16)
		dst = append(dst, ':')
		dst = strconv.AppendUint(dst, idx>>16&0xffff, 16)
		dst = append(dst, ':')
		return strconv.AppendUint(dst, idx&0xffff, 16)
	}
	x := uint32(idx)
	for { // cycle-walk the 2^24 permutation until it lands below 10.255/16
		x = permute24(x, offset)
		if x < ipv4Devices {
			break
		}
	}
	return appendIPv4(dst, 10, byte(x>>16), byte(x>>8), byte(x))
}

func appendBotIP(dst []byte, b int) []byte {
	return appendIPv4(dst, 10, 255, byte(b>>8), byte(b))
}

func appendIPv4(dst []byte, a, b, c, d byte) []byte {
	dst = strconv.AppendUint(dst, uint64(a), 10)
	dst = append(dst, '.')
	dst = strconv.AppendUint(dst, uint64(b), 10)
	dst = append(dst, '.')
	dst = strconv.AppendUint(dst, uint64(c), 10)
	dst = append(dst, '.')
	return strconv.AppendUint(dst, uint64(d), 10)
}

// permute24 is a bijection of [0, 2^24): every step (xor-shift, odd
// multiply, add) is invertible modulo 2^24.
func permute24(x, offset uint32) uint32 {
	const mask = 1<<24 - 1
	x = (x + offset) & mask
	x ^= x >> 12
	x = (x * 0x9e3779) & mask // odd
	x ^= x >> 11
	x = (x * 0x85ebcb) & mask // odd
	x ^= x >> 13
	return x
}

// mix64 is SplitMix64's finalizer.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// Generate writes the trace of cfg to out (zstd-compressed unless Plain).
func Generate(ctx context.Context, cfg GenConfig, out io.Writer, opts ...WriterOption) (Stats, error) {
	g, err := NewGenerator(cfg)
	if err != nil {
		return Stats{}, err
	}
	w, err := NewWriter(out, g.Header(), opts...)
	if err != nil {
		return Stats{}, err
	}
	st, err := g.Run(ctx, w)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return st, err
}
