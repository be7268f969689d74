package replay

import (
	"fmt"
	"strconv"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/flashgate/flashgate/bench/report"
)

func percentiles(h *hdrhistogram.Histogram) report.Percentiles {
	if h == nil || h.TotalCount() == 0 {
		return report.Percentiles{}
	}
	return report.Percentiles{
		Count: h.TotalCount(),
		P50:   h.ValueAtQuantile(50),
		P90:   h.ValueAtQuantile(90),
		P99:   h.ValueAtQuantile(99),
		P999:  h.ValueAtQuantile(99.9),
		Max:   h.Max(),
	}
}

// buildRun fills the report's data from what the run recorded.
func buildRun(out *Outcome, rec *recorder, scan *traceScan, hot []report.SKUSeries, admin *adminClient) *report.Run {
	cfg := &out.Config
	run := &report.Run{
		Title:   fmt.Sprintf("%s replay of %s", cfg.Target, cfg.Trace),
		Target:  cfg.Target,
		Addr:    cfg.EdgeAddr,
		Trace:   cfg.Trace,
		Started: out.Started,
	}
	for _, n := range outcomeNames {
		run.Outcomes = append(run.Outcomes, n)
	}
	timing := "trace × speed " + strconv.FormatFloat(cfg.Speed, 'g', -1, 64)
	if cfg.Rate > 0 {
		timing = "fixed rate " + strconv.FormatFloat(cfg.Rate, 'f', 0, 64) + "/s"
	}
	run.Params = []report.Param{
		{Name: "timing", Value: timing},
		{Name: "connections", Value: strconv.Itoa(cfg.Conns)},
		{Name: "pipeline", Value: strconv.Itoa(cfg.Pipeline)},
		{Name: "run id", Value: cfg.RunID},
		{Name: "trace records", Value: strconv.FormatUint(scan.records, 10)},
		{Name: "sale items", Value: strconv.Itoa(len(out.Header.Items))},
		{Name: "total stock", Value: strconv.FormatInt(out.Header.TotalStock(), 10)},
	}
	for _, kv := range out.Header.Meta {
		run.Params = append(run.Params, report.Param{Name: "trace " + kv.Key, Value: kv.Value})
	}

	last := min(rec.lastSec, maxSeconds-1)
	for s := 0; s <= last; s++ {
		sec := &rec.secs[s]
		row := report.Second{T: s, Sent: sec.sent.Load(), Due: sec.due.Load(), Responses: sec.done.Load(),
			Outcomes: make([]uint64, numOutcomes), Latency: percentiles(rec.perSec[s])}
		for o := range row.Outcomes {
			row.Outcomes[o] = sec.outcomes[o].Load()
		}
		run.Seconds = append(run.Seconds, row)
	}

	t := &run.Totals
	t.Requests = scan.records
	t.Skipped = out.Skipped
	t.Unsent = out.Result.Unsent
	t.Outcomes = make([]uint64, numOutcomes)
	t.Latency = map[string]report.Percentiles{"all": percentiles(rec.all)}
	var responses uint64
	for o := range numOutcomes {
		t.Outcomes[o] = rec.outcomeCount(o)
		responses += t.Outcomes[o]
		if rec.byOut[o].TotalCount() > 0 {
			t.Latency[outcomeNames[o]] = percentiles(rec.byOut[o])
		}
	}
	t.Sent = out.Result.Sent
	t.Duration = rec.lastDone()
	if s := t.Duration.Seconds(); s > 0 {
		t.ResponseRate = float64(responses) / s
	}
	// Orders are accepted while the stock lasts, then only now and then as
	// cancelled units are resold: the rate is over the time it took to
	// accept 99% of them.
	if h := rec.acceptedAt; h.TotalCount() > 0 {
		t99 := time.Duration(h.ValueAtQuantile(99)) * time.Millisecond
		t.AcceptedRate = 0.99 * float64(h.TotalCount()) / t99.Seconds()
		t.AcceptedT99 = t99
	}

	if admin != nil {
		admin.mu.Lock()
		for _, h := range hot {
			r := admin.remain[h.SKU]
			h.Remain = make([]int64, len(run.Seconds))
			for i := range h.Remain {
				h.Remain[i] = -1
				if i < len(r) {
					h.Remain[i] = r[i]
				}
			}
			// The poll after the end belongs to the last second.
			if n := len(r); n > len(run.Seconds) && len(h.Remain) > 0 {
				h.Remain[len(h.Remain)-1] = r[n-1]
			}
			run.HotSKUs = append(run.HotSKUs, h)
		}
		admin.mu.Unlock()
	}
	return run
}
