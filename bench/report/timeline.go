package report

import (
	"math"
	"strings"
)

// The replay's seconds as the charts see them.

// maxSeconds bounds the time axis (a week): rows further out are left out
// rather than allocating for a corrupt T.
const maxSeconds = 7 * 24 * 3600

// timeline is the replay's rows by second since the start: rows[t] is the
// row for second t (nil: none) and idx[t] its index in Run.Seconds (-1).
type timeline struct {
	n    int
	rows []*Second
	idx  []int
}

func newTimeline(r *Run) *timeline {
	n := 0
	for i := range r.Seconds {
		if t := r.Seconds[i].T; t >= 0 && t < maxSeconds {
			n = max(n, t+1)
		}
	}
	tl := &timeline{n: n, rows: make([]*Second, n), idx: make([]int, n)}
	for t := range tl.idx {
		tl.idx[t] = -1
	}
	for i := range r.Seconds {
		if t := r.Seconds[i].T; t >= 0 && t < n {
			tl.rows[t], tl.idx[t] = &r.Seconds[i], i
		}
	}
	return tl
}

// grid is n seconds cut into nb points of k seconds each (the last may be
// shorter). A chart draws on one grid (at most maxPoints points) and puts
// its tooltips on a coarser one (at most maxHover).
type grid struct{ n, k, nb int }

func newGrid(n, most int) grid {
	k := max((n+most-1)/most, 1)
	return grid{n: n, k: k, nb: (n + k - 1) / k}
}

// span is the seconds [lo, hi) of point b.
func (g grid) span(b int) (lo, hi int) { return b * g.k, min((b+1)*g.k, g.n) }

func (g grid) edges() []float64 {
	e := make([]float64, g.nb+1)
	for b := range g.nb {
		lo, _ := g.span(b)
		e[b] = float64(lo)
	}
	e[g.nb] = float64(g.n)
	return e
}

func (g grid) centers() []float64 {
	c := make([]float64, g.nb)
	for b := range g.nb {
		lo, hi := g.span(b)
		c[b] = float64(lo+hi) / 2
	}
	return c
}

// label names point b for a tooltip: "t=12s", or "t=2m-2m06s".
func (g grid) label(b int) string {
	lo, hi := g.span(b)
	if hi-lo <= 1 {
		return "t=" + fmtSec(lo)
	}
	return "t=" + fmtSec(lo) + "–" + fmtSec(hi)
}

// note tells the reader how a long run was thinned out.
func (g grid) note(how string) string {
	if g.k == 1 {
		return ""
	}
	return "one point per " + fmtSec(g.k) + " (" + how + ")"
}

// titles are the tooltips of g's points: the label, then one line per part.
func (g grid) titles(parts func(b int) []string) []string {
	t := make([]string, g.nb)
	for b := range t {
		t[b] = g.label(b) + "\n" + strings.Join(parts(b), "\n")
	}
	return t
}

// mean is the per-second average of f over each point of g, missing rows
// counting as 0.
func (tl *timeline) mean(g grid, f func(*Second) float64) []float64 {
	ys := make([]float64, g.nb)
	for b := range g.nb {
		lo, hi := g.span(b)
		s := 0.0
		for t := lo; t < min(hi, tl.n); t++ {
			if row := tl.rows[t]; row != nil {
				s += f(row)
			}
		}
		ys[b] = s / float64(hi-lo)
	}
	return ys
}

// worst is the largest positive f over each point of g; NaN (a gap) where
// there is none.
func (tl *timeline) worst(g grid, f func(*Second) int64) []float64 {
	ys := make([]float64, g.nb)
	for b := range g.nb {
		lo, hi := g.span(b)
		w := int64(0)
		for t := lo; t < min(hi, tl.n); t++ {
			if row := tl.rows[t]; row != nil {
				w = max(w, f(row))
			}
		}
		ys[b] = math.NaN()
		if w > 0 {
			ys[b] = float64(w)
		}
	}
	return ys
}

func maxOf(ys ...[]float64) float64 {
	m := 0.0
	for _, s := range ys {
		for _, y := range s {
			if finite(y) {
				m = math.Max(m, y)
			}
		}
	}
	return m
}
