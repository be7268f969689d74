package report

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Runs for the tests: a realistic flash sale, a long run and empty ones.

var saleOutcomes = []string{"accepted", "replayed", "sold-out", "purchase-limit", "rate-limited",
	"unavailable", "other-4xx", "other-5xx", "error"}

// exampleRun is a 30-second flash sale: a herd of 80k requests/s at the
// start that the replay cannot send at once (a backlog that drains in a few
// seconds), the three hot SKUs selling out at 1, 4 and 12 s, sold-out
// answers dominating after, an outage at 14-15 s (unavailable answers,
// errors and a latency spike), ingest landing the accepted orders with a
// lag, and 6 checks of which one fails.
func exampleRun() *Run {
	rng := rand.New(rand.NewPCG(42, 1))
	const n = 30
	idx := func(name string) int { return indexOf(saleOutcomes, name) }
	r := &Run{
		Title:   "flashgate dev, trace sale-30s.trace.zst, speed 1",
		Target:  "flashgate",
		Addr:    "127.0.0.1:8080",
		Trace:   "bench/out/sale-30s.trace.zst",
		Started: time.Date(2025, 11, 25, 6, 50, 0, 0, time.UTC),
		Params: []Param{
			{"speed", "1"}, {"connections", "512"}, {"pipeline", "1"}, {"seed", "42"},
			{"users", "200000"}, {"skus", "1000"}, {"hot skus", "3"}, {"generator", "tracegen v1"},
		},
		Outcomes: saleOutcomes,
	}
	stocks := []int64{500, 2000, 12000}
	soldOutAt := []int{1, 4, 12}
	hot := []SKUSeries{{SKU: "sku-0001"}, {SKU: "sku-0002"}, {SKU: "sku-0417"}}
	for j := range hot {
		hot[j].Stock = stocks[j]
		hot[j].Remain = make([]int64, n)
	}
	var backlog, prevSent float64
	var acceptedPerSecond []uint64
	for t := range n {
		// The herd: 80k/s decaying to a steady 4k/s.
		due := math.Round(4000 + 76000*math.Exp(-float64(t)/2.2) + 300*rng.NormFloat64())
		backlog += due
		sent := math.Min(backlog, 55000)
		backlog -= sent
		resp := math.Round(0.96*sent + 0.04*prevSent)
		prevSent = sent
		s := Second{T: t, Due: uint64(due), Sent: uint64(sent), Responses: uint64(resp),
			Outcomes: make([]uint64, len(saleOutcomes))}

		accepted := 9000 * math.Exp(-float64(t)/1.6)
		if t > 12 {
			accepted = 3 + 4*rng.Float64() // only cold SKUs left
		}
		share := func(f float64) uint64 { return uint64(resp * f) }
		s.Outcomes[idx("accepted")] = uint64(accepted)
		s.Outcomes[idx("replayed")] = share(0.01)
		s.Outcomes[idx("purchase-limit")] = share(0.004)
		if t < 4 {
			s.Outcomes[idx("rate-limited")] = share(0.03)
		} else {
			s.Outcomes[idx("rate-limited")] = share(0.004)
		}
		s.Outcomes[idx("other-4xx")] = uint64(rng.IntN(3))
		switch t {
		case 14:
			s.Outcomes[idx("unavailable")] = share(0.07)
			s.Outcomes[idx("other-5xx")] = 41
			s.Outcomes[idx("error")] = 12
		case 15:
			s.Outcomes[idx("unavailable")] = share(0.02)
		}
		var rest uint64
		for _, c := range s.Outcomes {
			rest += c
		}
		s.Outcomes[idx("sold-out")] = s.Responses - min(rest, s.Responses)

		p50 := 260 + 40*rng.Float64()
		scale := 1.0
		if t < 3 {
			p50, scale = 9000/float64(t+1), 3
		}
		if t == 14 || t == 15 {
			p50, scale = 2100, 12
		}
		s.Latency = Percentiles{Count: int64(s.Responses), P50: int64(p50), P90: int64(p50 * 2.4 * scale),
			P99: int64(p50 * 6 * scale), P999: int64(p50 * 15 * scale), Max: int64(p50 * 40 * scale)}
		r.Seconds = append(r.Seconds, s)
		acceptedPerSecond = append(acceptedPerSecond, s.Outcomes[idx("accepted")])

		for j := range hot {
			left := float64(stocks[j]) * (1 - float64(t+1)/float64(soldOutAt[j]+1))
			hot[j].Remain[t] = max(int64(left), 0)
		}
	}
	hot[1].Remain[2] = -1 // a poll that failed
	hot[0].Requests, hot[1].Requests, hot[2].Requests = 61204, 48770, 40112
	r.HotSKUs = hot

	sumTotals(r, 30*time.Second+412*time.Millisecond)
	t := &r.Totals
	t.Skipped = 1873
	responses := outcomeTotal(saleOutcomes, t.Outcomes)
	t.Latency = map[string]Percentiles{
		"all":            {Count: int64(responses), P50: 291, P90: 812, P99: 14630, P999: 61200, Max: 1211000},
		"accepted":       {Count: int64(t.Outcomes[0]), P50: 2410, P90: 9870, P99: 27900, P999: 58300, Max: 96400},
		"replayed":       {Count: int64(t.Outcomes[1]), P50: 301, P90: 790, P99: 9620, P999: 30100, Max: 88200},
		"sold-out":       {Count: int64(t.Outcomes[2]), P50: 274, P90: 700, P99: 12800, P999: 59800, Max: 1190000},
		"purchase-limit": {Count: int64(t.Outcomes[3]), P50: 288, P90: 760, P99: 11100, P999: 40900, Max: 101000},
		"rate-limited":   {Count: int64(t.Outcomes[4]), P50: 3020, P90: 11900, P99: 27400, P999: 60100, Max: 99800},
		"unavailable":    {Count: int64(t.Outcomes[5]), P50: 2260, P90: 61000, P99: 402000, P999: 998000, Max: 1211000},
		"other-4xx":      {Count: int64(t.Outcomes[6]), P50: 240, P90: 410, P99: 530, P999: 530, Max: 530},
		"other-5xx":      {Count: int64(t.Outcomes[7]), P50: 404000, P90: 981000, P99: 1200000, P999: 1200000, Max: 1200000},
		"error":          {Count: int64(t.Outcomes[8]), P50: 1000000, P90: 1000000, P99: 1000000, P999: 1000000, Max: 1000000},
	}

	// Ingest lands at most 6,000 orders a second, a second behind.
	in := &Ingest{Accepted: t.Outcomes[0], Landed: t.Outcomes[0] - 2}
	var pending uint64
	for sec := 0; sec < n+10; sec++ {
		landed := min(pending, 6000)
		pending -= landed
		in.LandedPerSecond = append(in.LandedPerSecond, landed)
		if sec < len(acceptedPerSecond) {
			pending += acceptedPerSecond[sec]
		}
	}
	in.Drained = 31*time.Second + 870*time.Millisecond
	r.Ingest = in

	units := stocks[0] + stocks[1] + stocks[2]
	r.Checks = []Check{
		{"no-oversell", true, fmt.Sprintf("1000 SKUs, 0 oversold; %d of %d hot units sold", units, units)},
		{"no-undersell", true, "3 SKUs sold out, 0 with units left after sold-out answers"},
		{"accepted-in-ledger", false, fmt.Sprintf("%d accepted, %d in the ledger; missing 0190a1f4c2e8, 0190a1f4d013",
			in.Accepted, in.Landed)},
		{"purchase-limit", true, "0 users over their limit of 2"},
		{"idempotency", true, fmt.Sprintf("%d retries, all answered with the first order", t.Outcomes[1])},
		{"ledger-reconciled", true, "edge and ledger agree on 1000 SKUs"},
	}
	return r
}

// sumTotals fills r.Totals' counts and rates from its rows.
func sumTotals(r *Run, d time.Duration) {
	t := &r.Totals
	t.Outcomes = make([]uint64, len(r.Outcomes))
	for _, s := range r.Seconds {
		t.Requests += s.Due
		t.Sent += s.Sent
		for i, c := range s.Outcomes {
			t.Outcomes[i] += c
		}
	}
	t.Duration = d
	t.AcceptedRate = float64(t.Outcomes[0]) / d.Seconds()
	t.ResponseRate = float64(outcomeTotal(r.Outcomes, t.Outcomes)) / d.Seconds()
}

// longRun is n seconds of steady load with every kind of outcome, ten hot
// SKUs and ingest: the largest page the tests render.
func longRun(n int) *Run {
	rng := rand.New(rand.NewPCG(7, 7))
	outcomes := []string{"accepted", "replayed", "sold-out", "purchase-limit", "rate-limited", "unavailable",
		"sale-not-active", "unknown-sku", "idempotency-in-flight", "idempotency-mismatch", "invalid-request",
		"unauthorized", "other-2xx", "other-4xx", "other-5xx", "error", "teapot"}
	r := &Run{Title: "long", Outcomes: outcomes, Ingest: &Ingest{}}
	for j := range 10 {
		r.HotSKUs = append(r.HotSKUs, SKUSeries{SKU: fmt.Sprintf("sku-%04d", j), Stock: int64(1000 * (j + 1))})
	}
	for t := range n {
		s := Second{T: t, Sent: 20000 + uint64(rng.IntN(5000)), Outcomes: make([]uint64, len(outcomes))}
		s.Due, s.Responses = s.Sent, s.Sent
		for i := range outcomes {
			s.Outcomes[i] = uint64(rng.IntN(2000))
		}
		s.Latency = Percentiles{Count: 1, P50: 200 + rng.Int64N(100), P90: 900, P99: 2000 + rng.Int64N(9000),
			P999: 30000, Max: 50000 + rng.Int64N(900000)}
		r.Seconds = append(r.Seconds, s)
		for j := range r.HotSKUs {
			h := &r.HotSKUs[j]
			h.Remain = append(h.Remain, max(h.Stock-int64(t*(j+3)), 0))
		}
		r.Ingest.LandedPerSecond = append(r.Ingest.LandedPerSecond, uint64(rng.IntN(3000)))
	}
	sumTotals(r, time.Duration(n)*time.Second)
	r.Totals.Latency = map[string]Percentiles{"all": {Count: int64(r.Totals.Sent), P50: 250, P90: 900, P99: 7000,
		P999: 30000, Max: 990000}}
	return r
}
