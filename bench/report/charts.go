package report

import (
	"html/template"
	"math"
	"strings"
)

// The page's charts, from a Run's per-second rows.

// maxChartSKUs bounds the stock chart's lines to the colours of skuPalette:
// past ten, lines can no longer be told apart.
const maxChartSKUs = 10

type chartView struct {
	ID, Title, Note string
	Legend          []legendItem
	SVG             template.HTML
}

type legendItem struct {
	Name   string
	Color  template.CSS // from the palettes below, never from the Run
	Dashed bool         // a dashed line
	Box    bool         // an area or bars rather than a line
	Detail string
}

// grids are the drawing and tooltip grids of the replay's seconds.
func (tl *timeline) grids() (draw, hover grid) {
	return newGrid(tl.n, maxPoints), newGrid(tl.n, maxHover)
}

// lineSeries is one line of a chart, computed for any grid.
type lineSeries struct {
	name, color string
	dashed      bool
	ys          func(g grid) []float64
}

// drawLines draws ss with a legend and tooltips; fmtY prints a value in a
// tooltip.
func drawLines(c *chart, v *chartView, ss []lineSeries, vals [][]float64, gd, gh grid, fmtY func(float64) string) {
	xs := gd.centers()
	for j, s := range ss {
		w := 2.0
		if s.dashed {
			w = 1.5
		}
		c.line(xs, vals[j], s.color, w, s.dashed)
		v.Legend = append(v.Legend, legendItem{Name: s.name, Color: template.CSS(s.color), Dashed: s.dashed})
	}
	hv := make([][]float64, len(ss))
	for j, s := range ss {
		hv[j] = s.ys(gh)
	}
	c.hover(gh.edges(), gh.titles(func(b int) []string {
		p := make([]string, len(ss))
		for j, s := range ss {
			p[j] = s.name + " " + fmtY(hv[j][b])
		}
		return p
	}))
	v.SVG = c.svg()
}

func throughputChart(r *Run, tl *timeline) chartView {
	gd, gh := tl.grids()
	rate := func(f func(*Second) float64) func(grid) []float64 {
		return func(g grid) []float64 { return tl.mean(g, f) }
	}
	ss := []lineSeries{
		{"due/s", colDue, true, rate(func(s *Second) float64 { return float64(s.Due) })},
		{"sent/s", colSent, false, rate(func(s *Second) float64 { return float64(s.Sent) })},
		{"responses/s", colResponses, false, rate(func(s *Second) float64 { return float64(s.Responses) })},
	}
	if acc := indexOf(r.Outcomes, "accepted"); acc >= 0 {
		ss = append(ss, lineSeries{"accepted/s", outcomeColor("accepted", acc), false,
			rate(func(s *Second) float64 { return float64(at(s.Outcomes, acc)) })})
	}
	vals := make([][]float64, len(ss))
	for j, s := range ss {
		vals[j] = s.ys(gd)
	}
	v := chartView{ID: "throughput", Title: "Throughput (per second)", Note: gd.note("averaged")}
	drawLines(newChart(float64(tl.n), maxOf(vals...)), &v, ss, vals, gd, gh, fmtRate)
	return v
}

// statusChart stacks the outcomes of each second (those that occurred),
// the first outcome (accepted) at the bottom.
func statusChart(r *Run, tl *timeline) chartView {
	gd, gh := tl.grids()
	type layer struct {
		name, color string
		f           func(*Second) float64
		ys          []float64
	}
	var ls []layer
	for i, name := range r.Outcomes {
		f := func(s *Second) float64 { return float64(at(s.Outcomes, i)) }
		if ys := tl.mean(gd, f); maxOf(ys) > 0 {
			ls = append(ls, layer{name, outcomeColor(name, i), f, ys})
		}
	}
	top := make([]float64, gd.nb)
	cum := make([][]float64, len(ls))
	for j, l := range ls {
		for b, y := range l.ys {
			top[b] += y
		}
		cum[j] = append([]float64(nil), top...)
	}
	c := newChart(float64(tl.n), maxOf(top))
	v := chartView{ID: "status", Title: "Responses by outcome (per second, stacked)", Note: gd.note("averaged")}
	if len(ls) == 0 {
		v.Note = "no responses"
	}
	// Each layer is drawn from the axis up to its cumulative top, the
	// highest first, so the ones drawn later cover all but its own band.
	edges := gd.edges()
	for j := len(ls) - 1; j >= 0; j-- {
		c.steps(edges, cum[j], ls[j].color)
	}
	for _, l := range ls {
		v.Legend = append(v.Legend, legendItem{Name: l.name, Color: template.CSS(l.color), Box: true})
	}
	hv := make([][]float64, len(ls))
	hTop := make([]float64, gh.nb)
	for j, l := range ls {
		hv[j] = tl.mean(gh, l.f)
		for b, y := range hv[j] {
			hTop[b] += y
		}
	}
	c.hover(gh.edges(), gh.titles(func(b int) []string {
		var p []string
		for j := len(ls) - 1; j >= 0; j-- { // top to bottom, as drawn
			if y := hv[j][b]; y > 0 {
				p = append(p, ls[j].name+" "+fmtRate(y)+" ("+fmtShare(y, hTop[b])+")")
			}
		}
		return p
	}))
	v.SVG = c.svg()
	return v
}

func fmtShare(part, total float64) string {
	if total <= 0 {
		return "-"
	}
	return fmtPct(uint64(math.Round(part*1000)), uint64(math.Round(total*1000)))
}

// latencyChart draws per-second percentiles on a log axis; a second with no
// response is a gap.
func latencyChart(tl *timeline) chartView {
	gd, gh := tl.grids()
	pct := func(f func(*Percentiles) int64) func(grid) []float64 {
		return func(g grid) []float64 { return tl.worst(g, func(s *Second) int64 { return f(&s.Latency) }) }
	}
	ss := []lineSeries{
		{"p50", colP50, false, pct(func(p *Percentiles) int64 { return p.P50 })},
		{"p99", colP99, false, pct(func(p *Percentiles) int64 { return p.P99 })},
		{"p99.9", colP999, false, pct(func(p *Percentiles) int64 { return p.P999 })},
		{"max", colMax, true, pct(func(p *Percentiles) int64 { return p.Max })},
	}
	vals := make([][]float64, len(ss))
	lo, hi := math.Inf(1), 0.0
	for j, s := range ss {
		vals[j] = s.ys(gd)
		for _, y := range vals[j] {
			if finite(y) {
				lo, hi = math.Min(lo, y), math.Max(hi, y)
			}
		}
	}
	v := chartView{ID: "latency", Title: "Latency from the intended send time (log scale)",
		Note: gd.note("the worst second of each")}
	if hi == 0 {
		lo, hi = 100, 1000
		v.Note = "no latencies measured"
	}
	drawLines(newLogChart(float64(tl.n), lo, hi), &v, ss, vals, gd, gh, fmtUs)
	return v
}

// stockChart draws each hot SKU's remaining stock as a share of its
// initial stock, so that a SKU of 100 units and one of 10,000 are both
// readable; the tooltips and legend give units. It reports false when no
// SKU has a poll to draw.
func stockChart(r *Run, tl *timeline) (chartView, bool) {
	gd, gh := tl.grids()
	v := chartView{ID: "stock", Title: "Hot SKUs: stock remaining (% of initial stock)", Note: gd.note("the last poll of each")}
	skus := r.HotSKUs
	if len(skus) > maxChartSKUs {
		skus = skus[:maxChartSKUs]
		v.Note = strings.TrimPrefix(v.Note+"; the first "+fmtCount(maxChartSKUs)+" of "+
			fmtCount(uint64(len(r.HotSKUs)))+" hot SKUs", "; ")
	}
	// last is the last polled stock in each point of g, -1 for none.
	last := func(s *SKUSeries, g grid) []int64 {
		u := make([]int64, g.nb)
		for b := range g.nb {
			lo, hi := g.span(b)
			u[b] = -1
			for t := lo; t < hi; t++ {
				if i := tl.idx[t]; i >= 0 && i < len(s.Remain) && s.Remain[i] >= 0 {
					u[b] = s.Remain[i]
				}
			}
		}
		return u
	}
	c := newChart(float64(tl.n), 100)
	xs := gd.centers()
	drawn := false
	hv := make([][]int64, len(skus))
	for j := range skus {
		s := &skus[j]
		// 100% is the initial stock or, if that is unknown, the most
		// ever polled.
		full, polledMax, soldOut := float64(s.Stock), 0.0, -1
		for t, i := range tl.idx {
			if i < 0 || i >= len(s.Remain) {
				continue
			}
			if s.Remain[i] == 0 && soldOut < 0 {
				soldOut = t
			}
			polledMax = math.Max(polledMax, float64(s.Remain[i]))
		}
		if full <= 0 {
			full = polledMax
		}
		ys := make([]float64, gd.nb)
		for b, u := range last(s, gd) {
			ys[b] = math.NaN()
			if u >= 0 && full > 0 {
				ys[b], drawn = 100*float64(u)/full, true
			}
		}
		lx, ly := xs, ys
		if s.Stock > 0 && len(ys) > 0 && finite(ys[0]) {
			// The line starts from the full stock put on sale at 0 s.
			lx, ly = append([]float64{0}, xs...), append([]float64{100}, ys...)
		}
		color := skuPalette[j%len(skuPalette)]
		c.line(lx, ly, color, 2, false)
		detail := fmtInt(s.Stock) + " units, " + fmtCount(s.Requests) + " requests"
		if soldOut >= 0 {
			detail += ", sold out at " + fmtSec(soldOut)
		}
		v.Legend = append(v.Legend, legendItem{Name: s.SKU, Color: template.CSS(color), Detail: detail})
		hv[j] = last(s, gh)
	}
	c.hover(gh.edges(), gh.titles(func(b int) []string {
		var p []string
		for j, s := range skus {
			if hv[j][b] >= 0 {
				p = append(p, s.SKU+" "+fmtInt(hv[j][b])+" of "+fmtInt(s.Stock))
			}
		}
		return p
	}))
	v.SVG = c.svg()
	return v, drawn
}

// ingestChart draws the accepted orders landing in PostgreSQL per second
// (bars) against the rate they were accepted (line): the gap between them
// is ingest's lag. Its time axis runs until the last landing, which can be
// after the replay's end.
func ingestChart(r *Run, tl *timeline) chartView {
	landed := r.Ingest.LandedPerSecond
	if len(landed) > maxSeconds {
		landed = landed[:maxSeconds]
	}
	n := max(tl.n, len(landed))
	gd, gh := newGrid(n, maxPoints), newGrid(n, maxHover)
	acc := indexOf(r.Outcomes, "accepted")
	rates := func(g grid) (land, accepted []float64) {
		land, accepted = make([]float64, g.nb), make([]float64, g.nb)
		for b := range g.nb {
			lo, hi := g.span(b)
			for t := lo; t < hi; t++ {
				if t < len(landed) {
					land[b] += float64(landed[t])
				}
				if t < tl.n && tl.rows[t] != nil && acc >= 0 {
					accepted[b] += float64(at(tl.rows[t].Outcomes, acc))
				}
			}
			land[b] /= float64(hi - lo)
			accepted[b] /= float64(hi - lo)
			if lo >= tl.n {
				accepted[b] = math.NaN() // the replay had ended
			}
		}
		return land, accepted
	}
	land, accepted := rates(gd)
	c := newChart(float64(n), maxOf(land, accepted))
	c.bars(gd.edges(), land, colLanded)
	v := chartView{ID: "ingest", Title: "Ingest: accepted orders landed in PostgreSQL (per second)",
		Note: gd.note("averaged"), Legend: []legendItem{{Name: "landed/s", Color: colLanded, Box: true}}}
	if acc >= 0 {
		color := outcomeColor("accepted", acc)
		c.line(gd.centers(), accepted, color, 2, false)
		v.Legend = append(v.Legend, legendItem{Name: "accepted/s", Color: template.CSS(color)})
	}
	hl, ha := rates(gh)
	c.hover(gh.edges(), gh.titles(func(b int) []string {
		if !finite(ha[b]) {
			return []string{"landed/s " + fmtRate(hl[b])}
		}
		return []string{"landed/s " + fmtRate(hl[b]), "accepted/s " + fmtRate(ha[b])}
	}))
	v.SVG = c.svg()
	return v
}
