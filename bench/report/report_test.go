package report

import (
	"bytes"
	"encoding/xml"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/example.html and example.txt from exampleRun")

// renders are the runs every rendering test goes through.
func renders() map[string]*Run {
	oneSecond := &Run{Outcomes: []string{"accepted"}, Seconds: []Second{{T: 0, Sent: 3, Due: 3, Responses: 3,
		Outcomes: []uint64{3}, Latency: Percentiles{Count: 3, P50: 120, P90: 130, P99: 140, P999: 140, Max: 140}}},
		HotSKUs: []SKUSeries{{SKU: "a", Stock: 10, Remain: []int64{7}}}, Checks: []Check{{Name: "x", Pass: true}}}
	zeros := &Run{Outcomes: saleOutcomes, Seconds: make([]Second, 5), Ingest: &Ingest{LandedPerSecond: make([]uint64, 3)},
		HotSKUs: []SKUSeries{{SKU: "never-polled", Remain: []int64{-1, -1}}, {SKU: "zero", Remain: []int64{0, 0, 0, 0, 0}}},
		Checks:  []Check{}}
	for i := range zeros.Seconds {
		zeros.Seconds[i].T = i
	}
	// Rows that do not match Outcomes, a gap in T, a negative T: rendered
	// as well as they can be, never a panic.
	ragged := &Run{Outcomes: []string{"accepted", "sold-out"}, Seconds: []Second{
		{T: 0, Outcomes: []uint64{1}}, {T: 3, Outcomes: []uint64{1, 2, 3}}, {T: -1, Outcomes: []uint64{5, 5}}},
		Totals:  Totals{Outcomes: []uint64{9}, Latency: map[string]Percentiles{"zzz": {Count: 1, P50: -5}}},
		HotSKUs: []SKUSeries{{SKU: "short", Stock: -3, Remain: []int64{4}}}}
	return map[string]*Run{
		"example": exampleRun(), "empty": {}, "one-second": oneSecond, "zeros": zeros, "ragged": ragged,
		"long": longRun(600), "hostile": hostileRun(),
	}
}

// hostileRun puts markup everywhere the Run carries text.
func hostileRun() *Run {
	r := exampleRun()
	const x = `<script>alert(1)</script>`
	r.Title, r.Target, r.Addr, r.Trace = x, x, `"><img src=x onerror=alert(1)>`, x
	r.Params = append(r.Params, Param{x, x}, Param{"style", `</style><script>alert(1)</script>`})
	r.Outcomes = append([]string(nil), r.Outcomes...)
	r.Outcomes[len(r.Outcomes)-1] = x
	r.HotSKUs[0].SKU = x
	r.Checks[0].Name, r.Checks[0].Detail = x, x+` & "quotes" 'too'`
	r.Totals.Latency[x] = Percentiles{Count: 1, P50: 1}
	return r
}

func TestWriteHTML(t *testing.T) {
	for name, r := range renders() {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteHTML(&b, r); err != nil {
				t.Fatal(err)
			}
			page := b.String()
			checkWellFormed(t, page)
			checkSelfContained(t, page)
			svgs := svgFragments(page)
			for _, s := range svgs {
				checkWellFormed(t, s)
				for _, bad := range []string{"NaN", "Inf"} {
					if strings.Contains(s, bad) {
						t.Errorf("an SVG holds %q", bad)
					}
				}
			}
			if strings.Contains(page, "NaN") {
				t.Error("the page holds NaN")
			}
			if b.Len() > 300<<10 {
				t.Errorf("the page is %d KB; want < 300 KB", b.Len()>>10)
			}
			wantCharts := map[string]int{"example": 5, "empty": 0, "one-second": 4, "zeros": 4, "ragged": 4, "long": 5, "hostile": 5}
			if got := len(svgs); got != wantCharts[name] {
				t.Errorf("%d charts; want %d", got, wantCharts[name])
			}
			t.Logf("%d bytes, %d charts", b.Len(), len(svgs))
		})
	}
}

func TestWriteHTMLEscapes(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, hostileRun()); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, bad := range []string{"<script", "<img", "</style><"} {
		if strings.Contains(page, bad) {
			t.Errorf("the page holds %q: markup from the run got through", bad)
		}
	}
	if !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Error("the SKU name is not on the page, escaped")
	}
}

func TestWriteHTMLSections(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, exampleRun()); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{
		`id="throughput"`, `id="status"`, `id="latency"`, `id="stock"`, `id="ingest"`,
		`id="verify"`, `id="mix"`, `id="latency-table"`, `id="totals"`, `id="params"`,
		`<span class="badge fail">FAIL</span>`, `<span class="badge pass">PASS</span>`,
		"verify: FAIL (1 of 6 failed)", "sku-0417", "sold out at 12s", "accepted-in-ledger",
		"#2f9e44", // accepted is green
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}

	b.Reset()
	if err := WriteHTML(&b, &Run{Title: "nothing"}); err != nil {
		t.Fatal(err)
	}
	for _, absent := range []string{`id="verify"`, `id="stock"`, `id="ingest"`, `id="params"`, "<svg"} {
		if strings.Contains(b.String(), absent) {
			t.Errorf("an empty run's page has %q", absent)
		}
	}
}

// checkWellFormed parses s as XML: every element closed, attributes quoted,
// no stray '<' or '&'.
func checkWellFormed(t *testing.T, s string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	d.Strict = true
	for {
		_, err := d.Token()
		if err == io.EOF {
			return
		}
		if err != nil {
			line, col := d.InputPos()
			lines := strings.Split(s, "\n")
			ctx := ""
			if line-1 < len(lines) {
				ctx = lines[line-1]
				if len(ctx) > 200 {
					ctx = ctx[max(col-100, 0):min(col+100, len(ctx))]
				}
			}
			t.Fatalf("not well-formed: %v near %q", err, ctx)
		}
	}
}

// checkSelfContained: nothing on the page points outside it.
func checkSelfContained(t *testing.T, page string) {
	t.Helper()
	const xmlns = `xmlns="http://www.w3.org/2000/svg"`
	rest := strings.ReplaceAll(page, xmlns, "")
	for _, bad := range []string{"http://", "https://", "url(", "@import", "<link", `src="`, `href="`, "//cdn"} {
		if strings.Contains(rest, bad) {
			i := strings.Index(rest, bad)
			t.Errorf("the page refers outside itself: %q near %q", bad, rest[max(i-60, 0):min(i+60, len(rest))])
		}
	}
}

func svgFragments(page string) []string {
	var out []string
	for {
		i := strings.Index(page, "<svg")
		if i < 0 {
			return out
		}
		j := strings.Index(page[i:], "</svg>")
		if j < 0 {
			return append(out, page[i:])
		}
		out = append(out, page[i:i+j+len("</svg>")])
		page = page[i+j:]
	}
}

func TestWriteText(t *testing.T) {
	r := exampleRun()
	var b bytes.Buffer
	if err := WriteText(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		r.Title,
		"target flashgate at 127.0.0.1:8080",
		"requests " + fmtCount(r.Totals.Requests),
		"accepted " + fmtRate(r.Totals.AcceptedRate) + "/s",
		"duration 30.4s",
		"sold-out",
		"PASS no-oversell         1000 SKUs, 0 oversold",
		"FAIL accepted-in-ledger  19432 accepted, 19430 in the ledger",
		"verify: FAIL (1 of 6 failed)",
		"drained after 31.9s",
		"1.21s", // the max latency of all
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the summary lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n < 20 || n > 45 {
		t.Errorf("%d lines; want 20 to 45:\n%s", n, out)
	}
	if !strings.HasSuffix(out, "verify: FAIL (1 of 6 failed)\n") {
		t.Errorf("the summary does not end with the verdict:\n%s", out)
	}

	for i := range r.Checks {
		r.Checks[i].Pass = true
	}
	b.Reset()
	if err := WriteText(&b, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "verify: PASS (6/6)\n") {
		t.Errorf("all checks passed, but:\n%s", b.String())
	}
}

func TestWriteTextDegenerate(t *testing.T) {
	for name, r := range renders() {
		var b bytes.Buffer
		if err := WriteText(&b, r); err != nil {
			t.Fatal(name, err)
		}
		if r.Checks == nil && strings.Contains(b.String(), "verify:") {
			t.Errorf("%s: a verdict without checks:\n%s", name, b.String())
		}
	}
	var b bytes.Buffer
	if err := WriteText(&b, &Run{}); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); !strings.Contains(got, "no responses") || strings.Contains(got, "ingest") {
		t.Errorf("an empty run:\n%s", got)
	}
	if WriteText(&b, nil) == nil || WriteHTML(&b, nil) == nil || WriteJSON(&b, nil) == nil {
		t.Error("a nil Run rendered without an error")
	}
}

func TestJSONRoundTrip(t *testing.T) {
	for name, r := range renders() {
		t.Run(name, func(t *testing.T) {
			if name == "zeros" {
				r.Checks = nil // omitempty: an empty list reads back as nil
			}
			var b bytes.Buffer
			if err := WriteJSON(&b, r); err != nil {
				t.Fatal(err)
			}
			got, err := ReadJSON(bytes.NewReader(b.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Errorf("the run read back differs:\n got %+v\nwant %+v", got, r)
			}
		})
	}
}

func TestJSONLayout(t *testing.T) {
	r := &Run{Title: `a [1, 2] "[3,\n 4]"`, Seconds: []Second{{T: 1, Outcomes: []uint64{1, 2, 3}}},
		Totals: Totals{Duration: 1500 * time.Millisecond}}
	var b bytes.Buffer
	if err := WriteJSON(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{`"outcomes": [1,2,3]`, `"title": "a [1, 2] \"[3,\\n 4]\""`, `"duration_ns": 1500000000`} {
		if !strings.Contains(out, want) {
			t.Errorf("the JSON lacks %s:\n%s", want, out)
		}
	}
	if _, err := ReadJSON(strings.NewReader(`{"title": 3}`)); err == nil {
		t.Error("a malformed run read without an error")
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{fmtCount(0), "0"}, {fmtCount(999), "999"}, {fmtCount(1000), "1,000"}, {fmtCount(1234567), "1,234,567"},
		{fmtInt(-1234), "-1,234"},
		{fmtUs(0), "-"}, {fmtUs(812), "812µs"}, {fmtUs(999.6), "1.00ms"}, {fmtUs(1234), "1.23ms"},
		{fmtUs(45670), "45.7ms"}, {fmtUs(2e6), "2.00s"}, {fmtUs(99.96e6), "1m40s"}, {fmtUs(3723e6), "1h02m03s"},
		{fmtDur(30*time.Second + 412*time.Millisecond), "30.4s"}, {fmtDur(500), "500ns"},
		{fmtRate(0.5), "0.50"}, {fmtRate(12.34), "12.3"}, {fmtRate(6620.4), "6,620"},
		{fmtPct(1, 3), "33.3%"}, {fmtPct(1, 100000), "<0.1%"}, {fmtPct(0, 5), "0%"}, {fmtPct(3, 0), "-"},
		{fmtSI(1500), "1.5k"}, {fmtSI(2e6), "2M"}, {fmtSI(250), "250"},
		{fmtUsAxis(1), "1µs"}, {fmtUsAxis(2000), "2ms"}, {fmtUsAxis(1e6), "1s"},
		{fmtSec(45), "45s"}, {fmtSec(120), "2m"}, {fmtSec(90), "1m30s"}, {fmtSec(3600), "1h"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

// TestWriteExample keeps testdata/example.html (open it in a browser) and
// example.txt in step with the code; -update rewrites them.
func TestWriteExample(t *testing.T) {
	var page, text bytes.Buffer
	if err := WriteHTML(&page, exampleRun()); err != nil {
		t.Fatal(err)
	}
	if err := WriteText(&text, exampleRun()); err != nil {
		t.Fatal(err)
	}
	for file, b := range map[string][]byte{"example.html": page.Bytes(), "example.txt": text.Bytes()} {
		path := filepath.Join("testdata", file)
		if *update {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		old, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(old, b) {
			t.Errorf("%s is out of date: run go test ./bench/report -run TestWriteExample -update", path)
		}
	}
}

// FuzzRender: whatever a run.json holds, rendering it does not panic and
// the page stays well-formed, with no NaN.
func FuzzRender(f *testing.F) {
	var b bytes.Buffer
	if err := WriteJSON(&b, exampleRun()); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add([]byte(`{"outcomes":["accepted"],"seconds":[{"t":5,"outcomes":[1,2]},{"t":0,"latency":{"p50_us":-3}}]}`))
	f.Add([]byte(`{"hot_skus":[{"sku":"<b>","stock":-1,"remaining":[5,-1,0]}],"seconds":[{"t":2}],"checks":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ReadJSON(bytes.NewReader(data))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteText(&out, r); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		if err := WriteHTML(&out, r); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(out.Bytes(), []byte("NaN")) {
			t.Fatal("NaN on the page")
		}
		checkWellFormed(t, out.String())
	})
}
