package trace

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func importCSV(t *testing.T, text string, cfg ImportConfig) (*Header, []testRecord, Stats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := ImportCSV(context.Background(), strings.NewReader(text), cfg, &buf, Plain())
	if err != nil {
		t.Fatal(err)
	}
	h, recs := readAll(t, buf.Bytes())
	return h, recs, st
}

func TestImportCSV(t *testing.T) {
	const text = "\ufefftime,customer,item,quantity\n" +
		"2024-11-29T10:00:00.5Z,alice@example.com,WIDGET-1,1\n" +
		"2024-11-29T10:00:01Z,bob,\"Gadget, large\",3\n" +
		"2024-11-29T10:00:01.25Z,alice@example.com,WIDGET-1,2\n" +
		"2024-11-29T10:00:10.5Z,carol,WIDGET-1,1\n"
	cfg := DefaultImportConfig()
	cfg.Duration = 20 * time.Second
	cfg.StockFactor = 0.5
	cfg.PerUserLimit = 4
	h, recs, st := importCSV(t, text, cfg)

	gadget := skuName("Gadget, large")
	if !strings.HasPrefix(gadget, "i") || len(gadget) != 17 {
		t.Fatalf("an item with a space and a comma became sku %q", gadget)
	}
	want := []Item{{SKU: "WIDGET-1", Stock: 2, PerUserLimit: 4, PriceCents: 1999}, {SKU: gadget, Stock: 2, PerUserLimit: 4, PriceCents: 1999}}
	if gadget < "WIDGET-1" {
		want[0], want[1] = want[1], want[0]
	}
	if len(h.Items) != 2 || h.Items[0] != want[0] || h.Items[1] != want[1] {
		t.Fatalf("items %+v, want %+v (sorted, stock half the units: 4*0.5, round(3*0.5))", h.Items, want)
	}
	if h.MetaValue("rows") != "4" || h.MetaValue("from") != "2024-11-29T10:00:00.5Z" || h.MetaValue("spread") != "false" {
		t.Errorf("meta %+v", h.Meta)
	}
	if st.Users != 3 || st.Records[KindOrder] != 4 || st.Total() != 4 {
		t.Errorf("stats %+v", st)
	}
	// [10:00:00.5, 10:00:10.5] onto [0, 20s]: 2x slower.
	wantAt := []time.Duration{0, time.Second, 1500 * time.Millisecond, 20 * time.Second}
	wantQty := []int64{1, 3, 2, 1}
	for i, r := range recs {
		if r.At != wantAt[i] || r.Qty != wantQty[i] || r.Kind != KindOrder {
			t.Errorf("record %d: %+v, want at %v qty %d", i, r, wantAt[i], wantQty[i])
		}
		if !strings.HasPrefix(r.User, "c") || len(r.User) != 17 || !strings.HasPrefix(r.IP, "10.") {
			t.Errorf("record %d: user %q ip %q: want a hashed customer and a 10/8 IP", i, r.User, r.IP)
		}
		if wantKey := "k" + string(rune('2'+i)); r.Key != wantKey {
			t.Errorf("record %d: key %q, want %q (its line)", i, r.Key, wantKey)
		}
	}
	if recs[0].User != recs[2].User || recs[0].IP != recs[2].IP || recs[0].User == recs[1].User {
		t.Errorf("the same customer must map to the same user and IP, others not: %+v", recs)
	}
	if recs[1].SKU != gadget {
		t.Errorf("sku %q, want %q", recs[1].SKU, gadget)
	}
}

func TestImportCSVSpread(t *testing.T) {
	// No header, "2006-01-02 15:04:05", whole seconds: the rows of one
	// second spread evenly across it.
	text := "2024-01-01 00:00:00,u1,a,1\n" +
		"2024-01-01 00:00:00,u2,a,1\n" +
		"2024-01-01 00:00:00,u3,b,1\n" +
		"2024-01-01 00:00:00,u4,b,1\n" +
		"2024-01-01 00:00:02,u1,a,1\n" +
		"\n" +
		"2024-01-01 00:00:03,u2,b,1\n"
	cfg := DefaultImportConfig()
	cfg.Duration = 0 // the file's own timing
	cfg.KeepCustomerIDs = true
	h, recs, _ := importCSV(t, text, cfg)
	want := []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, 750 * time.Millisecond, 2 * time.Second, 3 * time.Second}
	for i, r := range recs {
		if r.At != want[i] {
			t.Errorf("record %d at %v, want %v", i, r.At, want[i])
		}
	}
	if recs[0].User != "u1" || recs[5].Key != "k7" {
		t.Errorf("kept ids: %+v", recs)
	}
	if h.MetaValue("spread") != "true" {
		t.Errorf("meta %+v", h.Meta)
	}

	// Compressed: [0s, 4s) onto [0, 1s].
	cfg.Duration = time.Second
	_, recs, _ = importCSV(t, text, cfg)
	if recs[1].At != 62500*time.Microsecond || recs[4].At != 500*time.Millisecond || recs[5].At != 750*time.Millisecond {
		t.Errorf("compressed: %+v", recs)
	}

	// Not spread: the four rows of the first second at 0.
	cfg.Spread = false
	_, recs, _ = importCSV(t, text, cfg)
	if recs[3].At != 0 || recs[4].At != (2*time.Second/3).Truncate(time.Microsecond) || recs[5].At != time.Second {
		t.Errorf("not spread: %+v", recs)
	}
}

func TestImportCSVColumns(t *testing.T) {
	// A header naming the columns in another order, with extra ones; unix
	// seconds with a fraction; a fixed stock; ids kept when valid.
	text := "order_id,Qty,SKU,user id,Created-At\n" +
		"1,2,sku-1,u_1,1700000000\n" +
		"2,1,sku-2,not valid!,1700000000.25\n" +
		"3,1,sku-1,u_1,1700000001\n"
	cfg := DefaultImportConfig()
	cfg.Duration = 0
	cfg.StockPerSKU = 7
	cfg.KeepCustomerIDs = true
	h, recs, st := importCSV(t, text, cfg)
	if len(h.Items) != 2 || h.Items[0] != (Item{"sku-1", 7, 0, 1999}) || h.Items[1].Stock != 7 {
		t.Fatalf("items %+v", h.Items)
	}
	if st.Users != 2 || recs[0].User != "u_1" || recs[0].Qty != 2 || recs[1].At != 250*time.Millisecond || recs[2].At != time.Second {
		t.Fatalf("records %+v", recs)
	}
	if !strings.HasPrefix(recs[1].User, "c") || len(recs[1].User) != 17 {
		t.Fatalf("an invalid customer id kept: %q", recs[1].User)
	}
}

func TestImportCSVDeterministic(t *testing.T) {
	var text strings.Builder
	text.WriteString("time,customer,item,quantity\n")
	for i := range 5000 {
		text.WriteString(time.Unix(1700000000+int64(i/7), 0).UTC().Format(time.RFC3339))
		text.WriteString(",cust")
		text.WriteString(string(rune('a' + i%26)))
		text.WriteString(",item")
		text.WriteString(string(rune('a' + i%5)))
		text.WriteString(",1\n")
	}
	var a, b bytes.Buffer
	for _, buf := range []*bytes.Buffer{&a, &b} {
		if _, err := ImportCSV(context.Background(), strings.NewReader(text.String()), DefaultImportConfig(), buf); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two imports of the same file differ")
	}
	h, recs := readAll(t, a.Bytes())
	if len(recs) != 5000 || h.TotalStock() != 5000 || recs[len(recs)-1].At >= 30*time.Second {
		t.Fatalf("%d records, stock %d, last at %v", len(recs), h.TotalStock(), recs[len(recs)-1].At)
	}
}

func TestImportCSVErrors(t *testing.T) {
	const head = "time,customer,item,quantity\n"
	const ok = "2024-01-01T00:00:05Z,c1,i1,1\n"
	for _, tc := range []struct {
		name, text string
		cfg        func(*ImportConfig)
		want       string
	}{
		{"empty", "", nil, "no orders in the file"},
		{"header only", head, nil, "no orders in the file"},
		{"decreasing", head + ok + "2024-01-01T00:00:04Z,c1,i1,1\n", nil, "line 3: time 2024-01-01T00:00:04Z is before line 2's 2024-01-01T00:00:05Z: rows must be in time order; sort the file by its time column first, e.g. sort -t, -k1,1"},
		{"bad time", head + ok + "2024-01-01T25:00:00Z,c1,i1,1\n", nil, "line 3: time \"2024-01-01T25:00:00Z\": want RFC 3339"},
		{"qty 0", head + ok + "2024-01-01T00:00:06Z,c1,i1,0\n", nil, "line 3: quantity \"0\": want a whole number of units"},
		{"qty negative", head + "2024-01-01T00:00:06Z,c1,i1,-2\n", nil, "line 2: quantity \"-2\""},
		{"qty text", head + "2024-01-01T00:00:06Z,c1,i1,two\n", nil, "line 2: quantity \"two\""},
		{"empty customer", head + ok + "2024-01-01T00:00:06Z, ,i1,1\n", nil, "line 3: the customer is empty"},
		{"empty item", head + ok + "2024-01-01T00:00:06Z,c1,,1\n", nil, "line 3: the item is empty"},
		{"few columns", head + ok + "2024-01-01T00:00:06Z,c1,i1\n", nil, "line 3: 3 columns, want at least 4"},
		{"header without qty", "time,customer,item,price\n" + ok, nil, "line 1: header row \"time,customer,item,price\" has no quantity column"},
		{"header twice", "time,customer,item,qty,quantity\n" + ok, nil, "line 1: header row: columns 4 and 5 are both the quantity"},
		{"bad quote", head + ok + "2024-01-01T00:00:06Z,\"c\"1,i1,1\n", nil, "line 3"},
		{"bad duration", head + ok, func(c *ImportConfig) { c.Duration = -1 }, "-tracegen.duration"},
		{"bad factor", head + ok, func(c *ImportConfig) { c.StockFactor = -1 }, "-tracegen.csvStockFactor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultImportConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			var buf bytes.Buffer
			_, err := ImportCSV(context.Background(), strings.NewReader(tc.text), cfg, &buf, Plain())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// changingReader serves one text, then another after the first rewind.
type changingReader struct {
	*strings.Reader
	next string
}

func (c *changingReader) Seek(off int64, whence int) (int64, error) {
	if c.next != "" {
		c.Reader, c.next = strings.NewReader(c.next), ""
	}
	return c.Reader.Seek(off, whence)
}

func TestImportCSVFileChanged(t *testing.T) {
	const a = "2024-01-01T00:00:05Z,c1,i1,1\n"
	for _, b := range []string{a + a, "2024-01-01T00:00:05Z,c1,i2,1\n", ""} {
		r := &changingReader{strings.NewReader(a), b}
		if b == "" {
			r.next = " " // empty
		}
		var buf bytes.Buffer
		_, err := ImportCSV(context.Background(), r, DefaultImportConfig(), &buf, Plain())
		if err == nil || !strings.Contains(err.Error(), "did the file change") {
			t.Errorf("second pass %q: got %v", b, err)
		}
	}
}

func TestParseCSVTime(t *testing.T) {
	for s, want := range map[string]int64{
		"1700000000":                1700000000e9,
		"1700000000.5":              1700000000e9 + 5e8,
		"1700000000.123456789123":   1700000000e9 + 123456789,
		"2023-11-14T22:13:20Z":      1700000000e9,
		"2023-11-14T23:13:20+01:00": 1700000000e9,
		"2023-11-14 22:13:20":       1700000000e9,
		"2023-11-14 22:13:20.25":    1700000000e9 + 25e7,
		"2023-11-14T22:13:20":       1700000000e9,
	} {
		if got, ok := parseCSVTime(s); !ok || got != want {
			t.Errorf("parseCSVTime(%q) = %d, %v; want %d", s, got, ok, want)
		}
	}
	for _, s := range []string{"", "time", "1700000000.x", "-5", "2023-11-14", "1e9", "99999999999999999999"} {
		if _, ok := parseCSVTime(s); ok {
			t.Errorf("parseCSVTime(%q) succeeded", s)
		}
	}
}
