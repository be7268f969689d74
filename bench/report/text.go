package report

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// WriteText writes a compact summary of r for the terminal (some 20 to 40
// lines): what was replayed, the totals, the outcome mix, latency by
// outcome, ingest and the verification, one line per check, ending with
// "verify: PASS (6/6)" or "verify: FAIL (1 of 6 failed)" when r was
// verified.
func WriteText(w io.Writer, r *Run) error {
	if r == nil {
		return errors.New("report: WriteText of a nil Run")
	}
	var b strings.Builder
	title := r.Title
	if title == "" {
		title = "flashgate replay"
	}
	b.WriteString(oneLine(title) + "\n")
	if s := describeTarget(r); s != "" {
		b.WriteString(s + "\n")
	}
	writeParams(&b, r.Params)

	t := &r.Totals
	fmt.Fprintf(&b, "\nrequests %s  sent %s  skipped %s  unsent %s\n",
		fmtCount(t.Requests), fmtCount(t.Sent), fmtCount(t.Skipped), fmtCount(t.Unsent))
	fmt.Fprintf(&b, "duration %s  accepted %s/s  responses %s/s\n",
		fmtDur(t.Duration), fmtRate(t.AcceptedRate), fmtRate(t.ResponseRate))

	writeMix(&b, r)
	writeLatency(&b, r)

	if in := r.Ingest; in != nil {
		fmt.Fprintf(&b, "\ningest   %s accepted, %s landed (%s)", fmtCount(in.Accepted), fmtCount(in.Landed),
			fmtPct(in.Landed, in.Accepted))
		if in.Drained > 0 {
			fmt.Fprintf(&b, ", drained after %s", fmtDur(in.Drained))
		} else {
			b.WriteString(", not drained")
		}
		b.WriteString("\n")
	}

	if r.Checks != nil {
		b.WriteString("\n")
		width := 0
		for _, c := range r.Checks {
			width = max(width, len(c.Name))
		}
		for _, c := range r.Checks {
			fmt.Fprintf(&b, "%s %-*s  %s\n", passFail(c.Pass), width, oneLine(c.Name), oneLine(c.Detail))
		}
		b.WriteString(verifyLine(r.Checks) + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// describeTarget is the line under the title: target, address, trace and
// start time, those that are known.
func describeTarget(r *Run) string {
	var parts []string
	switch {
	case r.Target != "" && r.Addr != "":
		parts = append(parts, "target "+r.Target+" at "+r.Addr)
	case r.Target != "":
		parts = append(parts, "target "+r.Target)
	case r.Addr != "":
		parts = append(parts, "target "+r.Addr)
	}
	if r.Trace != "" {
		parts = append(parts, "trace "+r.Trace)
	}
	if !r.Started.IsZero() {
		parts = append(parts, "started "+fmtStarted(r.Started))
	}
	for i := range parts {
		parts[i] = oneLine(parts[i])
	}
	return strings.Join(parts, "  ")
}

func fmtStarted(t time.Time) string { return t.Format("2006-01-02 15:04:05 MST") }

// writeParams prints the params as name=value pairs, wrapped at about 100
// columns.
func writeParams(b *strings.Builder, ps []Param) {
	const width = 100
	line := "params  "
	n := 0
	for _, p := range ps {
		kv := oneLine(p.Name) + "=" + oneLine(p.Value)
		if n > 0 && len(line)+1+len(kv) > width {
			b.WriteString(line + "\n")
			line, n = "        ", 0
		}
		if n > 0 {
			line += " "
		}
		line += kv
		n++
	}
	if n > 0 {
		b.WriteString(line + "\n")
	}
}

// writeMix prints each outcome seen with its count and share of all
// responses. Outcomes that never happened are left out: the page lists
// them all, the terminal has no room.
func writeMix(b *strings.Builder, r *Run) {
	total := outcomeTotal(r.Outcomes, r.Totals.Outcomes)
	if total == 0 {
		b.WriteString("\nno responses\n")
		return
	}
	width := len("outcome")
	for i, name := range r.Outcomes {
		if at(r.Totals.Outcomes, i) > 0 {
			width = max(width, len(name))
		}
	}
	fmt.Fprintf(b, "\n%-*s %12s %7s\n", width, "outcome", "count", "%")
	for i, name := range r.Outcomes {
		if n := at(r.Totals.Outcomes, i); n > 0 {
			fmt.Fprintf(b, "%-*s %12s %7s\n", width, oneLine(name), fmtCount(n), fmtPct(n, total))
		}
	}
}

func writeLatency(b *strings.Builder, r *Run) {
	names := latencyOrder(r)
	if len(names) == 0 {
		return
	}
	width := len("latency")
	for _, name := range names {
		width = max(width, len(name))
	}
	fmt.Fprintf(b, "\n%-*s %12s %8s %8s %8s %8s %8s\n", width, "latency", "count", "p50", "p90", "p99", "p99.9", "max")
	for _, name := range names {
		p := r.Totals.Latency[name]
		fmt.Fprintf(b, "%-*s %12s %8s %8s %8s %8s %8s\n", width, oneLine(name), fmtInt(p.Count),
			fmtUs(float64(p.P50)), fmtUs(float64(p.P90)), fmtUs(float64(p.P99)), fmtUs(float64(p.P999)), fmtUs(float64(p.Max)))
	}
}

// latencyOrder lists the keys of Totals.Latency that have a count: "all"
// first, then the outcomes in display order, then any other key sorted, so
// that the output does not depend on map order.
func latencyOrder(r *Run) []string {
	var names []string
	seen := make(map[string]bool)
	add := func(name string) {
		if p, ok := r.Totals.Latency[name]; ok && p.Count > 0 && !seen[name] {
			names = append(names, name)
			seen[name] = true
		}
	}
	add("all")
	for _, name := range r.Outcomes {
		add(name)
	}
	var rest []string
	for name := range r.Totals.Latency {
		if !seen[name] {
			rest = append(rest, name)
		}
	}
	slices.Sort(rest)
	for _, name := range rest {
		add(name)
	}
	return names
}

func passFail(pass bool) string {
	if pass {
		return "PASS"
	}
	return "FAIL"
}

// verifyLine is the verdict over all checks: "verify: PASS (6/6)" or
// "verify: FAIL (1 of 6 failed)"; a verification with no checks passes
// nothing: "verify: no checks".
func verifyLine(checks []Check) string {
	if len(checks) == 0 {
		return "verify: no checks"
	}
	if failed := len(checks) - passed(checks); failed > 0 {
		return fmt.Sprintf("verify: FAIL (%d of %d failed)", failed, len(checks))
	}
	return fmt.Sprintf("verify: PASS (%d/%d)", len(checks), len(checks))
}

func passed(checks []Check) int {
	n := 0
	for _, c := range checks {
		if c.Pass {
			n++
		}
	}
	return n
}

// oneLine keeps a value from breaking the summary's layout or sending
// control sequences to the terminal.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) && !unicode.IsSpace(r) {
			return utf8.RuneError
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

// at is xs[i], or 0 past its end: a row with fewer outcome counts than
// Run.Outcomes (a hand-edited or older run.json) renders, with zeros.
func at(xs []uint64, i int) uint64 {
	if i < len(xs) {
		return xs[i]
	}
	return 0
}

// outcomeTotal sums the counts of the named outcomes.
func outcomeTotal(names []string, counts []uint64) uint64 {
	var s uint64
	for i := range names {
		s += at(counts, i)
	}
	return s
}

// indexOf is the position of name in names, -1 if absent.
func indexOf(names []string, name string) int {
	for i, n := range names {
		if n == name {
			return i
		}
	}
	return -1
}
