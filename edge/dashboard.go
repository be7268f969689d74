package edge

import (
	_ "embed"

	"github.com/valyala/fasthttp"
)

// dashboardHTML is the live dashboard: one self-contained page (no outside
// scripts or styles, so it works offline and behind any firewall) that reads
// this admin plane's /metrics every second and shows per-SKU stock and sell
// rates, accepted and rejected orders by reason, latency percentiles and
// ingest lag. With an admin token, open it as /dashboard#token=<token>: the
// page itself holds no data, the token stays in the browser (a fragment is
// never sent) and goes only to /metrics.
//
//go:embed dashboard.html
var dashboardHTML []byte

func serveDashboard(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
	ctx.SetBody(dashboardHTML)
}
