package report

import (
	"html/template"
	"math"
	"strconv"
	"strings"
)

// SVG charts over time, drawn in Go so the page needs no script library.
// Every chart has the same width and x axis (seconds since the start), so
// charts stacked on the page line up. Coordinates go through num, which
// never prints NaN or Inf.

const (
	chartW   = 960.0 // viewBox width; CSS scales the chart to the page
	chartH   = 250.0
	padLeft  = 58.0 // room for the y tick labels
	padRight = 12.0
	padTop   = 10.0
	padBot   = 26.0 // room for the x tick labels

	// maxPoints bounds the points per series: a longer run is drawn with
	// one point per k seconds (rates averaged, latencies the worst of the
	// k seconds). 300 points on a ~900-unit-wide plot is 3 units apart,
	// finer than the eye separates, and keeps a 10-minute page small.
	maxPoints = 300

	// maxHover bounds the tooltip columns per chart: each carries text, and
	// a column a few pixels wide is too thin to aim at anyway.
	maxHover = 120
)

// chart is one SVG being drawn: x is seconds in [0, xMax], y is linear in
// [0, yMax] or, for log charts, logarithmic in [yMin, yMax].
type chart struct {
	b          strings.Builder
	xMax       float64
	yMin, yMax float64
	log        bool
}

// newChart starts a linear chart whose y axis goes from 0 to at least yMax,
// rounded up to a tick.
func newChart(xMax, yMax float64) *chart {
	c := &chart{xMax: math.Max(xMax, 1)}
	step := niceStep(yMax, 5)
	c.yMax = step * math.Max(math.Ceil(yMax/step-1e-9), 1)
	c.begin()
	for v := 0.0; v <= c.yMax+step/2; v += step {
		c.yTick(v, fmtSI(v), true)
	}
	c.xAxis()
	return c
}

// newLogChart starts a chart of latencies (µs) on a log axis spanning whole
// decades around [lo, hi].
func newLogChart(xMax, lo, hi float64) *chart {
	c := &chart{xMax: math.Max(xMax, 1), log: true}
	lo, hi = math.Max(lo, 1), math.Max(hi, 1)
	dLo, dHi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dHi <= dLo {
		dHi = dLo + 1
	}
	c.yMin, c.yMax = math.Pow(10, dLo), math.Pow(10, dHi)
	c.begin()
	for d := dLo; d <= dHi; d++ {
		v := math.Pow(10, d)
		c.yTick(v, fmtUsAxis(v), true)
		if d == dHi {
			break
		}
		// Few decades: label 2x and 5x too; many: faint lines only.
		for _, m := range []float64{2, 5} {
			label := ""
			if dHi-dLo <= 3 {
				label = fmtUsAxis(m * v)
			}
			c.yTick(m*v, label, false)
		}
	}
	c.xAxis()
	return c
}

func (c *chart) begin() {
	c.b.WriteString(`<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 `)
	c.b.WriteString(num(chartW) + " " + num(chartH) + `">`)
}

// px and py map data to viewBox coordinates.
func (c *chart) px(sec float64) float64 {
	return padLeft + sec/c.xMax*(chartW-padLeft-padRight)
}

func (c *chart) py(v float64) float64 {
	h := chartH - padTop - padBot
	if c.log {
		v = math.Min(math.Max(v, c.yMin), c.yMax)
		f := (math.Log10(v) - math.Log10(c.yMin)) / (math.Log10(c.yMax) - math.Log10(c.yMin))
		return padTop + h*(1-f)
	}
	v = math.Min(math.Max(v, 0), c.yMax)
	return padTop + h*(1-v/c.yMax)
}

// yTick draws a horizontal grid line at v with its label (if any).
func (c *chart) yTick(v float64, label string, major bool) {
	y := num(c.py(v))
	cls := "grid"
	if !major {
		cls = "grid minor"
	}
	c.b.WriteString(`<line class="` + cls + `" x1="` + num(padLeft) + `" x2="` + num(chartW-padRight) +
		`" y1="` + y + `" y2="` + y + `"/>`)
	if label != "" {
		c.b.WriteString(`<text class="yl" x="` + num(padLeft-6) + `" y="` + y + `" dy="0.32em">` +
			template.HTMLEscapeString(label) + `</text>`)
	}
}

// xAxis draws the base line and the time ticks.
func (c *chart) xAxis() {
	base := num(chartH - padBot)
	c.b.WriteString(`<line class="axis" x1="` + num(padLeft) + `" x2="` + num(chartW-padRight) +
		`" y1="` + base + `" y2="` + base + `"/>`)
	step := timeStep(c.xMax)
	for s := 0; float64(s) <= c.xMax+1e-9; s += step {
		x := num(c.px(float64(s)))
		c.b.WriteString(`<line class="axis" x1="` + x + `" x2="` + x + `" y1="` + base + `" y2="` +
			num(chartH-padBot+4) + `"/><text class="xl" x="` + x + `" y="` + num(chartH-padBot+16) + `">` +
			fmtSec(s) + `</text>`)
	}
}

// line draws ys (one per point, at xs) as a polyline; NaN is a gap. A point
// with no neighbour to join gets a dot so that it still shows.
func (c *chart) line(xs, ys []float64, color string, width float64, dashed bool) {
	var p path
	prev := false
	for i, y := range ys {
		if !finite(y) || !finite(xs[i]) {
			prev = false
			continue
		}
		x, y := c.px(xs[i]), c.py(y)
		if prev {
			p.lineTo(x, y)
		} else {
			p.moveTo(x, y)
		}
		if !prev && (i+1 == len(ys) || !finite(ys[i+1])) {
			c.b.WriteString(`<circle cx="` + num(x) + `" cy="` + num(y) + `" r="3" fill="` + color + `"/>`)
		}
		prev = true
	}
	if p.b.Len() == 0 {
		return
	}
	c.b.WriteString(`<path fill="none" stroke="` + color + `" stroke-width="` + num(width) +
		`" stroke-linejoin="round" stroke-linecap="round"`)
	if dashed {
		c.b.WriteString(` stroke-dasharray="5 4"`)
	}
	c.b.WriteString(` d="` + p.b.String() + `"/>`)
}

// steps fills the area under a step function: ys[i] holds over [edges[i],
// edges[i+1]).
func (c *chart) steps(edges, ys []float64, color string) {
	var p path
	base := c.py(0)
	p.moveTo(c.px(edges[0]), base)
	for i, y := range ys {
		if !finite(y) {
			y = 0
		}
		p.vTo(c.py(y))
		p.hTo(c.px(edges[i+1]))
	}
	p.vTo(base)
	p.b.WriteString("Z")
	c.b.WriteString(`<path fill="` + color + `" d="` + p.b.String() + `"/>`)
}

// bars draws one bar per interval [edges[i], edges[i+1]) up to ys[i].
func (c *chart) bars(edges, ys []float64, color string) {
	var p path
	base := c.py(0)
	for i, y := range ys {
		if !finite(y) || y <= 0 {
			continue
		}
		x0, x1 := c.px(edges[i]), c.px(edges[i+1])
		gap := math.Min((x1-x0)*0.15, 2)
		p.moveTo(x0+gap, base)
		p.vTo(c.py(y))
		p.hTo(x1 - gap)
		p.vTo(base)
		p.b.WriteString("Z")
	}
	if p.b.Len() > 0 {
		c.b.WriteString(`<path fill="` + color + `" d="` + p.b.String() + `"/>`)
	}
}

// path writes SVG path data with relative commands on coordinates rounded
// to tenths, which keeps a long run's page small ("l3.1-0.4" rather than
// "L412.3 118.9"). The deltas are between rounded positions, so they add up
// exactly and the path does not drift.
type path struct {
	b    strings.Builder
	x, y int64 // the current point, in tenths
}

func tenths(v float64) int64 {
	if !finite(v) {
		return 0
	}
	return int64(math.Round(v * 10))
}

func fmtTenths(n int64) string { return strconv.FormatFloat(float64(n)/10, 'f', -1, 64) }

func (p *path) moveTo(x, y float64) {
	p.x, p.y = tenths(x), tenths(y)
	p.b.WriteString("M" + fmtTenths(p.x) + " " + fmtTenths(p.y))
}

func (p *path) lineTo(x, y float64) {
	nx, ny := tenths(x), tenths(y)
	dy := fmtTenths(ny - p.y)
	if dy[0] != '-' {
		dy = " " + dy
	}
	p.b.WriteString("l" + fmtTenths(nx-p.x) + dy)
	p.x, p.y = nx, ny
}

func (p *path) vTo(y float64) {
	ny := tenths(y)
	if ny != p.y {
		p.b.WriteString("v" + fmtTenths(ny-p.y))
	}
	p.y = ny
}

func (p *path) hTo(x float64) {
	nx := tenths(x)
	if nx != p.x {
		p.b.WriteString("h" + fmtTenths(nx-p.x))
	}
	p.x = nx
}

// hover adds an invisible column per interval whose tooltip (the browser's
// own, from <title>) gives the figures of that point.
func (c *chart) hover(edges []float64, titles []string) {
	c.b.WriteString(`<g class="hov">`)
	h := num(chartH - padTop - padBot)
	for i, t := range titles {
		x0, x1 := c.px(edges[i]), c.px(edges[i+1])
		c.b.WriteString(`<rect x="` + num(x0) + `" y="` + num(padTop) + `" width="` + num(x1-x0) +
			`" height="` + h + `"><title>` + template.HTMLEscapeString(t) + `</title></rect>`)
	}
	c.b.WriteString(`</g>`)
}

func (c *chart) svg() template.HTML {
	c.b.WriteString(`</svg>`)
	return template.HTML(c.b.String()) // built from escaped text and numbers only
}

// num prints a coordinate to 0.1 unit; NaN and Inf print as 0, so that a
// bug upstream draws a wrong point rather than a broken document.
func num(v float64) string {
	if !finite(v) {
		return "0"
	}
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}

// niceStep is a round step (1, 2, 2.5 or 5 times a power of ten) that cuts
// [0, v] into at most about n intervals.
func niceStep(v float64, n int) float64 {
	if !finite(v) || v <= 0 {
		return 1
	}
	raw := v / float64(n)
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= raw {
			if p < 1 && m == 2.5 {
				continue // no "0.25" ticks on counts
			}
			return math.Max(m*p, 1)
		}
	}
	return 10 * p
}

// timeStep is a round step in seconds giving at most about 12 time ticks.
func timeStep(xMax float64) int {
	for _, s := range []int{1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400} {
		if xMax/float64(s) <= 12 {
			return s
		}
	}
	return int(math.Ceil(xMax/12/86400)) * 86400
}
