package edge

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/lib/testenv"
)

// dumpDashboard loads the admin plane's dashboard in headless Chromium and
// returns the DOM after the page's script has run for a few seconds of
// virtual time (it reads /metrics every second).
func dumpDashboard(t *testing.T, chromium, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--disable-background-networking", "--no-first-run", "--user-data-dir="+testenv.TempDir(t),
		"--virtual-time-budget=3500", "--dump-dom", url)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return string(out)
}

var (
	skuRowRE  = regexp.MustCompile(`(?s)<tr data-sku="DASH-1">(.*?)</tr>`)
	fieldRE   = regexp.MustCompile(`<td data-field="(\w+)">([^<]*)</td>`)
	updatesRE = regexp.MustCompile(`id="status" data-updates="(\d+)"`)
)

// dashboardSKU returns the fields the page shows for DASH-1 and how many
// times it read /metrics.
func dashboardSKU(t *testing.T, dom string) (map[string]int64, int) {
	t.Helper()
	u := updatesRE.FindStringSubmatch(dom)
	row := skuRowRE.FindStringSubmatch(dom)
	if u == nil || row == nil {
		t.Fatalf("the dashboard shows no row for DASH-1:\n%s", dom)
	}
	updates, _ := strconv.Atoi(u[1])
	fields := map[string]int64{}
	for _, f := range fieldRE.FindAllStringSubmatch(row[1], -1) {
		if n, err := strconv.ParseInt(strings.ReplaceAll(f[2], ",", ""), 10, 64); err == nil {
			fields[f[1]] = n
		}
	}
	return fields, updates
}

// The live dashboard, in a real browser: it reads /metrics (with the admin
// token from the URL fragment), its numbers move while orders come in, and
// once they stop they are /metrics' numbers.
func TestDashboardInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (tools/install-test-deps.sh installs it on Debian): the dashboard is not tested in a browser")
	}
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "DASH-1", 1000)
	const token = "dashboard-test-token-0123456789"
	a, err := StartAdminWithToken("127.0.0.1:0", token, s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop(context.Background())
	url := "http://" + a.Addr() + "/dashboard#token=" + token
	order := func(n int, from int) {
		for i := 0; i < n; i++ {
			if code, _, body := postOrder(t, s.cfg.Addr, fmt.Sprint("dash", from+i), "DASH-1"); code != 202 {
				t.Fatalf("order: %d %s", code, body)
			}
		}
	}

	order(40, 0)
	first, updates := dashboardSKU(t, dumpDashboard(t, chromium, url))
	if updates < 2 {
		t.Fatalf("the page read /metrics %d times in 3.5 s of its time, want every second", updates)
	}
	order(25, 40)
	second, _ := dashboardSKU(t, dumpDashboard(t, chromium, url))
	if second["accepted"] <= first["accepted"] || second["remaining"] >= first["remaining"] {
		t.Fatalf("the numbers did not move with 25 more orders: %v then %v", first, second)
	}

	// At rest, the page shows what /metrics says.
	req, _ := http.NewRequest("GET", "http://"+a.Addr()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	metric := func(name string) int64 {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\d+)$`).FindStringSubmatch(string(body))
		if m == nil {
			t.Fatalf("/metrics has no %s", name)
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		return n
	}
	shown, _ := dashboardSKU(t, dumpDashboard(t, chromium, url))
	for field, name := range map[string]string{
		"stock":     `flashgate_edge_sku_stock{sku="DASH-1"}`,
		"remaining": `flashgate_edge_sku_remaining{sku="DASH-1"}`,
		"accepted":  `flashgate_edge_sku_accepted_total{sku="DASH-1"}`,
	} {
		if want := metric(name); shown[field] != want {
			t.Errorf("the dashboard shows %s %d, /metrics %d", field, shown[field], want)
		}
	}
	if shown["accepted"] != 65 || shown["remaining"] != 935 {
		t.Errorf("the dashboard shows %v, want 65 accepted and 935 remaining", shown)
	}

	// Without the token the page loads (it holds no data) but cannot read.
	dom := dumpDashboard(t, chromium, "http://"+a.Addr()+"/dashboard")
	if !strings.Contains(dom, "cannot read /metrics: /metrics answered 401") {
		t.Errorf("without the token the page should say it cannot read /metrics:\n%s", dom)
	}
}

// flashgate ingest's -ingest.adminAddr: /healthz, /metrics and pprof.
func TestOpsServer(t *testing.T) {
	addr := freeAddr(t)
	o, err := StartOpsServer(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Shutdown()
	for path, want := range map[string]string{"/healthz": `{"status":"ok"}`, "/metrics": "go_goroutines", "/debug/pprof/": "goroutine"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d, want 200 with %q", path, resp.StatusCode, want)
		}
	}
}
