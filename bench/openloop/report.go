package openloop

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// String is a one-line live view, for a line per second on a terminal.
func (p Progress) String() string {
	phase := ""
	if p.Warmup {
		phase = " (warm-up)"
	}
	return fmt.Sprintf("%6.1fs%s sent %d  %.0f/s  non-2xx %d (errors %d)  p50 %v  p99 %v  max %v  queued %d",
		p.Elapsed.Seconds(), phase, p.Sent, p.Rate, p.Non2xx, p.Errors, round(p.P50), round(p.P99), round(p.Max), p.Queued)
}

// round keeps three significant digits, as the histograms do.
func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// WriteText writes the result as a few human-readable lines.
func (r *Result) WriteText(w io.Writer) {
	fmt.Fprintf(w, "%s: %d connections, pipeline %d, window %.1fs\n", r.Addr, r.Conns, r.Pipeline, r.WindowSeconds)
	fmt.Fprintf(w, "achieved %.0f requests/s, %.0f responses/s\n", r.SentRate, r.Rate)
	fmt.Fprintf(w, "of the requests due in the window: intended %d  sent %d  responses %d  errors %d  unanswered %d  unsent %d\n",
		r.Intended, r.Sent, r.Responses, r.Errors, r.Unanswered, r.Unsent)
	codes := make([]int, 0, len(r.Status))
	for c := range r.Status {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	var sb strings.Builder
	for _, c := range codes {
		fmt.Fprintf(&sb, " %d=%d", c, r.Status[c])
	}
	fmt.Fprintf(w, "status:%s\n", sb.String())
	if r.Errors > 0 {
		for _, k := range errKindNames {
			if n := r.ErrorKinds[k]; n > 0 {
				fmt.Fprintf(w, "errors %s=%d (first: %s)\n", k, n, r.FirstErrors[k])
			}
		}
	}
	if r.Unsent > 0 {
		fmt.Fprintf(w, "unsent: %d requests were due but no connection was free before the end; raise the connections or lower the rate\n", r.Unsent)
	}
	fmt.Fprintf(w, "latency from the intended send time:\n%-12s %10s %10s %10s %10s %10s %10s\n", "", "count", "p50", "p90", "p99", "p99.9", "max")
	row := func(name string, l Latency) {
		fmt.Fprintf(w, "%-12s %10d %10v %10v %10v %10v %10v\n", name, l.Count, round(l.P50), round(l.P90), round(l.P99), round(l.P999), round(l.Max))
	}
	row("all", r.Latency["all"])
	for _, c := range classNames {
		if l, ok := r.Latency[c]; ok {
			row(c, l)
		}
	}
	row("send delay", r.SendDelay)
}
