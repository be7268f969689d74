// Package report renders what a replay measured: a text summary for the
// terminal and a self-contained HTML page (inline SVG charts, no scripts or
// files fetched from anywhere) that can be opened offline or attached to an
// issue. A Run is also written as JSON next to the report, so reports can be
// re-rendered and runs compared later.
package report

import "time"

// Run is everything a replay measured, as the report shows it.
type Run struct {
	Title   string    `json:"title"`   // e.g. "flashgate dev, trace sale-1m.trace.zst, speed 1"
	Target  string    `json:"target"`  // what was replayed against: "flashgate" or a peer's name
	Addr    string    `json:"addr"`    // host:port of the target
	Trace   string    `json:"trace"`   // path of the trace file
	Started time.Time `json:"started"` // wall clock at the replay's start
	// Params are the replay's settings and the trace's meta, in order
	// (speed, connections, pipeline, seed, users, ...), shown as a table.
	Params []Param `json:"params"`

	// Outcomes names the outcome columns of Seconds[i].Outcomes and
	// Totals.Outcomes, in display order: "accepted" (202), "replayed" (a
	// retry answered with the first order), then the problem types
	// ("sold-out", "purchase-limit", "rate-limited", "unavailable", ...),
	// then "other-2xx", "other-4xx", "other-5xx", "error" (no response).
	Outcomes []string `json:"outcomes"`

	Seconds []Second `json:"seconds"` // one per second of the replay, from its start
	Totals  Totals   `json:"totals"`

	// HotSKUs are the most requested SKUs, with the stock the edge reported
	// remaining once a second (polled from the admin plane).
	HotSKUs []SKUSeries `json:"hot_skus"`

	// Ingest: how long the accepted orders took to land in PostgreSQL.
	Ingest *Ingest `json:"ingest,omitempty"`

	// Checks are the verification's invariants, in order (nil: not verified).
	Checks []Check `json:"checks,omitempty"`
}

// Param is one name/value row of the settings table.
type Param struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Second is what happened in one second of the replay, by the time the
// responses arrived (a request due at 1.9 s answered at 2.3 s counts in
// second 2).
type Second struct {
	T         int      `json:"t"`         // seconds since the start: this row covers [T, T+1)
	Sent      uint64   `json:"sent"`      // requests written in this second
	Due       uint64   `json:"due"`       // requests whose intended send time fell in this second
	Responses uint64   `json:"responses"` // responses and errors finished in this second
	Outcomes  []uint64 `json:"outcomes"`  // counts per Run.Outcomes, same order
	// Latency from the intended send time of the requests finished in this
	// second (0 when none finished).
	Latency Percentiles `json:"latency"`
}

// Percentiles of a latency distribution, in microseconds.
type Percentiles struct {
	Count int64 `json:"count"`
	P50   int64 `json:"p50_us"`
	P90   int64 `json:"p90_us"`
	P99   int64 `json:"p99_us"`
	P999  int64 `json:"p999_us"`
	Max   int64 `json:"max_us"`
}

// Totals are the whole replay's figures.
type Totals struct {
	Requests     uint64        `json:"requests"` // records in the trace that were due
	Sent         uint64        `json:"sent"`
	Skipped      uint64        `json:"skipped"` // polls and cancels of orders that got no id
	Unsent       uint64        `json:"unsent"`  // due, never written (no free connection before the end)
	Outcomes     []uint64      `json:"outcomes"`
	Duration     time.Duration `json:"duration_ns"`     // first request due to last response
	AcceptedRate float64       `json:"accepted_per_s"`  // new orders (202) per second while 99% of them were accepted
	AcceptedT99  time.Duration `json:"accepted_t99_ns"` // when 99% of the new orders had been accepted
	ResponseRate float64       `json:"responses_per_s"` // responses per second of Duration
	// Latency by outcome name ("all" plus every Outcomes entry seen).
	Latency map[string]Percentiles `json:"latency"`
}

// SKUSeries is one SKU's remaining stock over time.
type SKUSeries struct {
	SKU      string  `json:"sku"`
	Stock    int64   `json:"stock"`
	Requests uint64  `json:"requests"`  // order requests for it in the trace
	Remain   []int64 `json:"remaining"` // per Seconds[i]; -1: not polled that second
}

// Ingest is how fast the accepted orders reached PostgreSQL.
type Ingest struct {
	Accepted uint64        `json:"accepted"`   // distinct order ids answered 202
	Landed   uint64        `json:"landed"`     // of those, found in the ledger
	Drained  time.Duration `json:"drained_ns"` // from the replay's start until ingest had caught up
	// LandedPerSecond counts the accepted orders by the second (since the
	// replay's start) their row was written, from the orders' updated_at
	// (empty when not measured).
	LandedPerSecond []uint64 `json:"landed_per_second,omitempty"`
}

// Check is one verified invariant.
type Check struct {
	Name   string `json:"name"` // e.g. "no-oversell"
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"` // counts behind the verdict: "1000 SKUs, 0 oversold; 200000 of 200000 units sold"
}
