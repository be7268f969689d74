package report

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"unicode/utf8"
)

// WriteHTML writes r as one self-contained HTML page: inline CSS, charts as
// inline SVG (tooltips are the browser's own, from SVG <title>), no script
// and nothing fetched from anywhere, so it opens offline and can be attached
// to an issue. The page is also well-formed XML, which the tests check.
//
// A run of any length renders: long runs are drawn with at most maxPoints
// points per series (10 minutes with 17 outcomes and 10 hot SKUs make a
// page of about 250 KB), and missing sections (no rows, no hot SKUs, no
// ingest, no checks) are left out.
func WriteHTML(w io.Writer, r *Run) error {
	if r == nil {
		return errors.New("report: WriteHTML of a nil Run")
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, buildPage(r)); err != nil {
		return fmt.Errorf("report: rendering the page: %w", err)
	}
	_, err := io.WriteString(w, strings.Map(xmlChar, buf.String()))
	return err
}

// xmlChar replaces what XML does not allow in a document (control
// characters from a Run's strings, invalid UTF-8) with U+FFFD.
func xmlChar(r rune) rune {
	if r == '\t' || r == '\n' || r == '\r' || r >= 0x20 && r <= 0xD7FF || r >= 0xE000 && r <= 0xFFFD || r >= 0x10000 && r <= 0x10FFFF {
		return r
	}
	return utf8.RuneError
}

type page struct {
	Title   string
	Meta    []kv
	Verdict *verdict
	Cards   []card
	Checks  []Check
	Charts  []chartView
	NoData  bool
	Mix     []mixRow
	Latency []latRow
	Totals  []kv
	Ingest  []kv
	Params  []Param
}

type kv struct{ K, V string }

type verdict struct{ Class, Text string } // class: pass, fail or none

type card struct{ Label, Value, Sub string }

type mixRow struct {
	Name, Count, Pct string
	Color            template.CSS // from outcomeColor
	Bar              template.CSS // "width:N%", from a number
	Zero             bool
}

type latRow struct{ Name, Count, P50, P90, P99, P999, Max string }

func buildPage(r *Run) *page {
	p := &page{Title: r.Title, Params: r.Params, Checks: r.Checks}
	if p.Title == "" {
		p.Title = "flashgate replay"
	}
	for _, m := range []kv{{"target", r.Target}, {"at", r.Addr}, {"trace", r.Trace}} {
		if m.V != "" {
			p.Meta = append(p.Meta, m)
		}
	}
	if !r.Started.IsZero() {
		p.Meta = append(p.Meta, kv{"started", fmtStarted(r.Started)})
	}
	if r.Checks != nil {
		p.Verdict = &verdict{Class: "none", Text: verifyLine(r.Checks)}
		switch {
		case len(r.Checks) == 0:
		case passed(r.Checks) == len(r.Checks):
			p.Verdict.Class = "pass"
		default:
			p.Verdict.Class = "fail"
		}
	}

	t := &r.Totals
	total := outcomeTotal(r.Outcomes, t.Outcomes)
	acc := indexOf(r.Outcomes, "accepted")
	var accepted uint64
	if acc >= 0 {
		accepted = at(t.Outcomes, acc)
	}
	all := t.Latency["all"]
	p.Cards = []card{
		{"Requests", fmtCount(t.Requests), "sent " + fmtCount(t.Sent) + " · unsent " + fmtCount(t.Unsent)},
		{"Duration", fmtDur(t.Duration), "first due to last response"},
		{"Responses/s", fmtRate(t.ResponseRate), fmtCount(total) + " responses"},
		{"Accepted/s", fmtRate(t.AcceptedRate), fmtCount(accepted) + " accepted (" + fmtPct(accepted, total) + ")"},
		{"p99 latency", fmtUs(float64(all.P99)), "p50 " + fmtUs(float64(all.P50)) + " · max " + fmtUs(float64(all.Max))},
	}
	if in := r.Ingest; in != nil {
		c := card{"Ingest drained", "not yet", fmtCount(in.Landed) + " of " + fmtCount(in.Accepted) + " landed"}
		if in.Drained > 0 {
			c.Value = fmtDur(in.Drained)
		}
		p.Cards = append(p.Cards, c)
	}

	tl := newTimeline(r)
	if tl.n == 0 {
		p.NoData = true
	} else {
		p.Charts = append(p.Charts, throughputChart(r, tl), statusChart(r, tl), latencyChart(tl))
		if len(r.HotSKUs) > 0 {
			if v, ok := stockChart(r, tl); ok {
				p.Charts = append(p.Charts, v)
			}
		}
	}
	if r.Ingest != nil && len(r.Ingest.LandedPerSecond) > 0 {
		p.Charts = append(p.Charts, ingestChart(r, tl))
	}

	for i, name := range r.Outcomes {
		n := at(t.Outcomes, i)
		share := 0.0
		if total > 0 {
			share = 100 * float64(n) / float64(total)
		}
		p.Mix = append(p.Mix, mixRow{Name: name, Count: fmtCount(n), Pct: fmtPct(n, total), Zero: n == 0,
			Color: template.CSS(outcomeColor(name, i)),
			Bar:   template.CSS("width:" + num(math.Max(share, 0)) + "%")})
	}
	for _, name := range latencyOrder(r) {
		l := t.Latency[name]
		p.Latency = append(p.Latency, latRow{name, fmtInt(l.Count), fmtUs(float64(l.P50)), fmtUs(float64(l.P90)),
			fmtUs(float64(l.P99)), fmtUs(float64(l.P999)), fmtUs(float64(l.Max))})
	}
	p.Totals = []kv{
		{"requests due", fmtCount(t.Requests)},
		{"sent", fmtCount(t.Sent)},
		{"skipped (no order id)", fmtCount(t.Skipped)},
		{"unsent (no free connection)", fmtCount(t.Unsent)},
		{"responses", fmtCount(total)},
		{"duration", fmtDur(t.Duration)},
		{"accepted/s", fmtRate(t.AcceptedRate)},
		{"responses/s", fmtRate(t.ResponseRate)},
	}
	if in := r.Ingest; in != nil {
		drained := "not drained"
		if in.Drained > 0 {
			drained = fmtDur(in.Drained)
		}
		p.Ingest = []kv{
			{"accepted orders", fmtCount(in.Accepted)},
			{"landed in the ledger", fmtCount(in.Landed) + " (" + fmtPct(in.Landed, in.Accepted) + ")"},
			{"drained after", drained},
		}
	}
	return p
}

var pageTemplate = template.Must(template.New("page").Parse(pageHTML))

// pageHTML is written as XHTML-compatible HTML (void elements closed, no
// named entities but the XML ones) so that the tests can check the whole
// page with encoding/xml.
const pageHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{{.Title}}</title>
<style>
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--soft:#f6f8fa;--pass:#1a7f37;--fail:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:#fff}
main{max-width:1120px;margin:0 auto;padding:24px 28px 40px}
header{display:flex;justify-content:space-between;align-items:flex-start;gap:16px;border-bottom:1px solid var(--line);padding-bottom:14px}
h1{font-size:22px;margin:0 0 4px;overflow-wrap:anywhere}
h2{font-size:15px;margin:0 0 6px}
.meta{color:var(--muted);margin:0;overflow-wrap:anywhere}
.meta b{font-weight:600;color:var(--fg)}
.verdict{font-weight:700;padding:6px 14px;border-radius:6px;white-space:nowrap}
.verdict.pass{background:#dafbe1;color:var(--pass);border:1px solid #4ac26b}
.verdict.fail{background:#ffebe9;color:var(--fail);border:1px solid #ff8182}
.verdict.none{background:var(--soft);color:var(--muted);border:1px solid var(--line)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:18px 0 8px}
.card{border:1px solid var(--line);border-radius:8px;padding:9px 14px;background:var(--soft)}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.card .sub{color:var(--muted);font-size:12px}
section{margin:26px 0}
.legend{display:flex;flex-wrap:wrap;gap:2px 18px;font-size:13px;margin-bottom:2px}
.legend small{color:var(--muted)}
.sw{display:inline-block;width:18px;border-top:3px solid;vertical-align:middle;margin-right:6px}
.sw.dash{border-top-style:dashed}
.sw.box{width:11px;height:11px;border:0;border-radius:2px;vertical-align:-1px}
svg.chart{width:100%;height:auto;display:block}
svg.chart text{font-size:11px;fill:#57606a}
svg.chart .yl{text-anchor:end}
svg.chart .xl{text-anchor:middle}
svg.chart .grid{stroke:#e3e7eb}
svg.chart .minor{stroke:#f1f3f5}
svg.chart .axis{stroke:#8c959f}
svg.chart .hov rect{fill:transparent}
svg.chart .hov rect:hover{fill:rgba(31,35,40,.07)}
.note{color:var(--muted);font-size:12px;margin:2px 0 0}
.tables{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:0 36px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:12px}
.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.zero td{color:#8c959f}
td.barc{width:30%}
.bar{height:9px;border-radius:2px}
.badge{display:inline-block;font-weight:700;font-size:12px;padding:1px 8px;border-radius:4px;color:#fff}
.badge.pass{background:var(--pass)}
.badge.fail{background:var(--fail)}
tr.fail td{background:#fff5f5}
.checks td.name{font-weight:600;white-space:nowrap}
.nw{white-space:nowrap}
footer{color:var(--muted);font-size:12px;margin-top:30px;border-top:1px solid var(--line);padding-top:10px}
</style>
</head>
<body>
<main>
<header>
<div>
<h1>{{.Title}}</h1>
{{if .Meta}}<p class="meta">{{range $i, $m := .Meta}}{{if $i}} · {{end}}{{$m.K}} <b>{{$m.V}}</b>{{end}}</p>{{end}}
</div>
{{with .Verdict}}<div class="verdict {{.Class}}">{{.Text}}</div>{{end}}
</header>
<div class="cards">{{range .Cards}}
<div class="card"><div class="label">{{.Label}}</div><div class="value">{{.Value}}</div><div class="sub">{{.Sub}}</div></div>{{end}}
</div>
{{if .Checks}}<section id="verify">
<h2>Verification</h2>
<table class="checks"><tbody>{{range .Checks}}
<tr{{if not .Pass}} class="fail"{{end}}><td>{{if .Pass}}<span class="badge pass">PASS</span>{{else}}<span class="badge fail">FAIL</span>{{end}}</td><td class="name">{{.Name}}</td><td>{{.Detail}}</td></tr>{{end}}
</tbody></table>
</section>{{end}}
{{if .NoData}}<p class="note">No per-second data: nothing to chart.</p>{{end}}
{{range .Charts}}<section id="{{.ID}}">
<h2>{{.Title}}</h2>
<div class="legend">{{range .Legend}}<span>{{if .Box}}<i class="sw box" style="background:{{.Color}}"></i>{{else if .Dashed}}<i class="sw dash" style="border-color:{{.Color}}"></i>{{else}}<i class="sw" style="border-color:{{.Color}}"></i>{{end}}{{.Name}}{{with .Detail}} <small>{{.}}</small>{{end}}</span>{{end}}</div>
{{.SVG}}
{{with .Note}}<p class="note">{{.}}</p>{{end}}
</section>
{{end}}
<div class="tables">
<section id="mix">
<h2>Outcome mix</h2>
<table><thead><tr><th>outcome</th><th class="n">count</th><th class="n">share</th><th></th></tr></thead><tbody>{{range .Mix}}
<tr{{if .Zero}} class="zero"{{end}}><td class="nw"><i class="sw box" style="background:{{.Color}}"></i>{{.Name}}</td><td class="n">{{.Count}}</td><td class="n">{{.Pct}}</td><td class="barc"><div class="bar" style="{{.Bar}};background:{{.Color}}"></div></td></tr>{{else}}
<tr><td colspan="4">no outcomes</td></tr>{{end}}
</tbody></table>
</section>
<section id="latency-table">
<h2>Latency by outcome</h2>
<table><thead><tr><th>outcome</th><th class="n">count</th><th class="n">p50</th><th class="n">p90</th><th class="n">p99</th><th class="n">p99.9</th><th class="n">max</th></tr></thead><tbody>{{range .Latency}}
<tr><td class="nw">{{.Name}}</td><td class="n">{{.Count}}</td><td class="n">{{.P50}}</td><td class="n">{{.P90}}</td><td class="n">{{.P99}}</td><td class="n">{{.P999}}</td><td class="n">{{.Max}}</td></tr>{{else}}
<tr><td colspan="7">no latencies measured</td></tr>{{end}}
</tbody></table>
</section>
<section id="totals">
<h2>Totals</h2>
<table><tbody>{{range .Totals}}
<tr><td>{{.K}}</td><td class="n">{{.V}}</td></tr>{{end}}
</tbody></table>
{{if .Ingest}}<h2 style="margin-top:18px">Ingest</h2>
<table><tbody>{{range .Ingest}}
<tr><td>{{.K}}</td><td class="n">{{.V}}</td></tr>{{end}}
</tbody></table>{{end}}
</section>
{{if .Params}}<section id="params">
<h2>Parameters</h2>
<table><tbody>{{range .Params}}
<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>{{end}}
</tbody></table>
</section>{{end}}
</div>
<footer>flashgate replay report. Hover a chart for the figures of each second.</footer>
</main>
</body>
</html>
`
