package trace

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
)

// ImportConfig is how ImportCSV turns a CSV of real orders into a trace.
type ImportConfig struct {
	// Duration is the trace's length: the file's time span maps linearly
	// onto [0, Duration]. 0 keeps the file's own timing. Default 30s.
	Duration time.Duration
	// StockFactor: each SKU's stock is this many times the units ordered
	// of it in the file, rounded (1: exactly enough for every order that
	// is not refused for other reasons; below 1: it sells out). Default 1.
	StockFactor float64
	// StockPerSKU, when above 0, is every SKU's stock instead. Default 0.
	StockPerSKU int64
	// PerUserLimit is every SKU's per-user limit (0: none, since real
	// orders may be for more than any limit you pick). Default 0.
	PerUserLimit int64
	// PriceCents is every SKU's price. Default 1999.
	PriceCents int64
	// KeepCustomerIDs keeps a customer id that is a valid user id (1-64
	// bytes of [A-Za-z0-9_-]) as it is. Otherwise every customer becomes
	// "c" and 16 hex digits of a hash of its id, so a trace made from real
	// data does not carry real ids. Default false.
	KeepCustomerIDs bool
	// Spread: when every time in the file is a whole second, the rows of
	// one second are spread evenly across it (in file order) instead of
	// all landing on the same microsecond. Default true.
	Spread bool
}

// DefaultImportConfig returns the defaults of ImportConfig.
func DefaultImportConfig() ImportConfig {
	return ImportConfig{
		Duration:    30 * time.Second, // as long as a generated sale, so the two replay alike
		StockFactor: 1,                // every order can be served: the replay measures the service, not a sell-out
		PriceCents:  1999,             // informational
		Spread:      true,             // exports usually have whole seconds; one instant per second is an artificial burst
	}
}

// Limits of the importer.
const (
	csvMaxGroupRows = 1 << 20 // rows of one second held in memory to spread them
	csvMaxQty       = 1e9
	maxOffset       = 999_999_999_999_999 * time.Microsecond // 15 digits, what the reader takes
)

func (c *ImportConfig) validate() error {
	var errs []string
	if c.Duration < 0 || c.Duration > maxOffset {
		errs = append(errs, fmt.Sprintf("Duration is %v: want 0 (the file's own timing) up to %v (-tracegen.duration)", c.Duration, maxOffset))
	}
	if !(c.StockFactor >= 0 && c.StockFactor <= 1e6) {
		errs = append(errs, fmt.Sprintf("StockFactor is %v: want 0..1000000 times the units ordered (-tracegen.csvStockFactor)", c.StockFactor))
	}
	if c.StockPerSKU < 0 {
		errs = append(errs, fmt.Sprintf("StockPerSKU is %d: want 0 (use the factor) or more (-tracegen.csvStock)", c.StockPerSKU))
	}
	if c.PerUserLimit < 0 {
		errs = append(errs, fmt.Sprintf("PerUserLimit is %d: want 0 (none) or more (-tracegen.limit)", c.PerUserLimit))
	}
	if c.PriceCents < 0 {
		errs = append(errs, fmt.Sprintf("PriceCents is %d: want 0 or more (-tracegen.price)", c.PriceCents))
	}
	if len(errs) > 0 {
		return errors.New("trace: import: " + strings.Join(errs, "; "))
	}
	return nil
}

// Import is a CSV file of orders, scanned once for its header (time span,
// items and the units ordered of each) and ready to be written as a trace
// by Run, which reads it a second time. Its memory is bounded by the items
// and customers in the file (and, with Spread, the rows of one second),
// not by the rows.
//
// The file has the columns time, customer, item and quantity, in that order
// unless a header row names them (time, timestamp, ts, created_at, date;
// customer, customer_id, user, user_id, buyer; item, item_id, sku, product,
// product_id; quantity, qty, units; other columns are ignored). A first row
// where no field is a time is a header. Times are RFC 3339
// (2024-11-29T10:00:00Z), "2006-01-02 15:04:05" or "2006-01-02T15:04:05"
// (UTC), or unix seconds (with an optional fraction), and must not
// decrease down the file. Every row becomes one order with the
// idempotency key k<line>, from an IP in 10.0.0.0/8 derived from the
// customer.
type Import struct {
	r      io.ReadSeeker
	cfg    ImportConfig
	header Header
	skus   map[string]int // item -> index in header.Items
	first  int64          // unix ns of the first and last rows
	last   int64
	res    int64 // ns of a source second when spreading, else 0
	rows   int64
	users  int
}

// NewImport reads the whole of r once, to make the trace's header.
func NewImport(r io.ReadSeeker, cfg ImportConfig) (*Import, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	im := &Import{r: r, cfg: cfg}
	type acc struct{ units int64 }
	units := map[string]*acc{}
	customers := map[uint64]struct{}{}
	allWhole := true
	var prev csvRow
	var run, maxRun, maxRunLine int
	sc := newCSVScanner(r)
	for {
		row, err := sc.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if im.rows > 0 && row.t < prev.t {
			return nil, fmt.Errorf("trace: csv line %d: time %s is before line %d's %s: rows must be in time order; sort the file by its time column first, e.g. sort -t, -k1,1 orders.csv > sorted.csv (unix seconds: -k1,1n; keep a header row on top)",
				row.line, row.rawTime, prev.line, prev.rawTime)
		}
		if im.rows > 0 && row.t == prev.t {
			run++
		} else {
			run = 1
		}
		if run > maxRun {
			maxRun, maxRunLine = run, row.line
		}
		if im.rows == 0 {
			im.first = row.t
		}
		im.last = row.t
		allWhole = allWhole && row.t%int64(time.Second) == 0
		a := units[row.item]
		if a == nil {
			if len(units) == maxHeaderSKUs {
				return nil, fmt.Errorf("trace: csv line %d: more than %d distinct items", row.line, maxHeaderSKUs)
			}
			a = &acc{}
			units[row.item] = a
		}
		a.units = min(a.units+row.qty, math.MaxInt64/2)
		customers[xxhash.Sum64String(row.customer)] = struct{}{}
		im.rows++
		prev = row
		prev.rawTime = strings.Clone(row.rawTime)
	}
	if im.rows == 0 {
		return nil, errors.New("trace: csv: no orders in the file (want rows of time, customer, item, quantity)")
	}
	im.users = len(customers)
	if cfg.Spread && allWhole {
		im.res = int64(time.Second)
		if maxRun > csvMaxGroupRows {
			return nil, fmt.Errorf("trace: csv line %d: %d rows have the same time, more than the %d the importer holds in memory to spread a second's rows across it; possible fix: -tracegen.csvNoSpread", maxRunLine, maxRun, csvMaxGroupRows)
		}
	}
	if cfg.Duration == 0 && time.Duration(im.last-im.first+im.res) > maxOffset {
		return nil, fmt.Errorf("trace: csv: the file spans %v, longer than a trace can (%v); set -tracegen.duration to compress it", time.Duration(im.last-im.first), maxOffset)
	}

	items := make([]Item, 0, len(units))
	names := make(map[string]string, len(units))
	for item, a := range units {
		sku := skuName(item)
		stock := cfg.StockPerSKU
		if stock == 0 {
			stock = int64(math.Round(cfg.StockFactor * float64(a.units)))
		}
		names[item] = sku
		items = append(items, Item{SKU: sku, Stock: stock, PerUserLimit: cfg.PerUserLimit, PriceCents: cfg.PriceCents})
	}
	slices.SortFunc(items, func(a, b Item) int { return strings.Compare(a.SKU, b.SKU) })
	for i := 1; i < len(items); i++ {
		if items[i].SKU == items[i-1].SKU {
			return nil, fmt.Errorf("trace: csv: two items map to sku %s (an item named like a hashed one); rename one in the file", items[i].SKU)
		}
	}
	im.skus = make(map[string]int, len(units))
	for item, sku := range names {
		i, _ := slices.BinarySearchFunc(items, sku, func(it Item, s string) int { return strings.Compare(it.SKU, s) })
		im.skus[item] = i
	}
	im.header.Items = items
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	im.header.Meta = []KV{
		{"generator", "flashgate-tracegen-csv"},
		{"rows", strconv.FormatInt(im.rows, 10)},
		{"customers", strconv.Itoa(im.users)},
		{"items", strconv.Itoa(len(items))},
		{"from", time.Unix(0, im.first).UTC().Format(time.RFC3339Nano)},
		{"to", time.Unix(0, im.last).UTC().Format(time.RFC3339Nano)},
		{"duration", cfg.Duration.String()},
		{"stockFactor", f(cfg.StockFactor)},
		{"stockPerSku", strconv.FormatInt(cfg.StockPerSKU, 10)},
		{"limit", strconv.FormatInt(cfg.PerUserLimit, 10)},
		{"spread", strconv.FormatBool(im.res > 0)},
	}
	return im, nil
}

// Header is the trace's header: the import's parameters as meta and an
// item for every distinct item of the file, sorted by sku.
func (im *Import) Header() Header { return im.header }

// Run reads the file again from its start and writes a record for each row
// to w, whose header must be im.Header().
func (im *Import) Run(ctx context.Context, w *Writer) (Stats, error) {
	var st Stats
	st.Users = im.users
	if _, err := im.r.Seek(0, io.SeekStart); err != nil {
		return st, fmt.Errorf("trace: csv: rewinding for the second pass: %w", err)
	}
	sc := newCSVScanner(im.r)
	var (
		rec   Record
		user  []byte
		ip    []byte
		key   []byte
		group []csvRow // rows of the current second, when spreading
		n     int64
	)
	skus := make([][]byte, len(im.header.Items))
	for i := range skus {
		skus[i] = []byte(im.header.Items[i].SKU)
	}
	emit := func(row *csvRow, at time.Duration) error {
		i, ok := im.skus[row.item]
		if !ok {
			return fmt.Errorf("trace: csv line %d: item %q was not in the file's first pass: did the file change while importing?", row.line, row.item)
		}
		h := xxhash.Sum64String(row.customer)
		user = im.appendUser(user[:0], row.customer, h)
		ip = appendIPv4(ip[:0], 10, byte(h>>40), byte(h>>48), byte(h>>56))
		key = strconv.AppendInt(append(key[:0], 'k'), int64(row.line), 10)
		rec = Record{At: at, Kind: KindOrder, User: user, IP: ip, SKU: skus[i], Qty: row.qty, Key: key}
		if err := w.Write(&rec); err != nil {
			return err
		}
		st.Records[KindOrder]++
		st.Last = at
		return nil
	}
	flush := func() error {
		if len(group) == 0 {
			return nil
		}
		from, to := im.offset(group[0].t), im.offset(group[0].t+im.res)
		for j := range group {
			at := from + time.Duration(float64(to-from)*float64(j)/float64(len(group)))
			if err := emit(&group[j], at.Truncate(time.Microsecond)); err != nil {
				return err
			}
		}
		group = group[:0]
		return nil
	}
	for {
		row, err := sc.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		if n&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		n++
		if n > im.rows {
			return st, fmt.Errorf("trace: csv line %d: more rows than in the first pass: did the file change while importing?", row.line)
		}
		if im.res == 0 {
			if err := emit(&row, im.offset(row.t).Truncate(time.Microsecond)); err != nil {
				return st, err
			}
			continue
		}
		if len(group) > 0 && row.t != group[0].t {
			if err := flush(); err != nil {
				return st, err
			}
		}
		if len(group) == csvMaxGroupRows {
			return st, fmt.Errorf("trace: csv line %d: more rows of the same second than in the first pass: did the file change while importing?", row.line)
		}
		row.rawTime = ""
		group = append(group, row)
	}
	if err := flush(); err != nil {
		return st, err
	}
	if n != im.rows {
		return st, fmt.Errorf("trace: csv: %d rows in the second pass, %d in the first: did the file change while importing?", n, im.rows)
	}
	return st, nil
}

// offset maps a time of the file to the trace: linearly from
// [first, last+res] onto [0, Duration].
func (im *Import) offset(t int64) time.Duration {
	d := t - im.first
	if im.cfg.Duration == 0 {
		return time.Duration(d)
	}
	span := im.last + im.res - im.first
	if span <= 0 {
		return 0
	}
	return min(im.cfg.Duration, time.Duration(float64(d)/float64(span)*float64(im.cfg.Duration)))
}

func (im *Import) appendUser(dst []byte, customer string, h uint64) []byte {
	if im.cfg.KeepCustomerIDs && validUserID(customer) {
		return append(dst, customer...)
	}
	return appendHashID(append(dst, 'c'), h)
}

// ImportCSV writes the orders of the CSV r as a trace to out (zstd unless
// Plain); see Import.
func ImportCSV(ctx context.Context, r io.ReadSeeker, cfg ImportConfig, out io.Writer, opts ...WriterOption) (Stats, error) {
	im, err := NewImport(r, cfg)
	if err != nil {
		return Stats{}, err
	}
	w, err := NewWriter(out, im.Header(), opts...)
	if err != nil {
		return Stats{}, err
	}
	st, err := im.Run(ctx, w)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return st, err
}

// skuName is item if it is a valid sku for the edge (1-64 bytes of
// [A-Za-z0-9_.-], not "-"), else "i" and 16 hex digits of its hash.
func skuName(item string) string {
	ok := len(item) <= 64 && item != "-"
	for i := 0; ok && i < len(item); i++ {
		c := item[i]
		ok = c == '.' || c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
	}
	if ok {
		return item
	}
	return string(appendHashID([]byte{'i'}, xxhash.Sum64String(item)))
}

func validUserID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

func appendHashID(dst []byte, h uint64) []byte {
	const hex = "0123456789abcdef"
	for i := 60; i >= 0; i -= 4 {
		dst = append(dst, hex[h>>i&0xf])
	}
	return dst
}

// csvRow is one order of the file.
type csvRow struct {
	line     int
	t        int64 // unix ns
	rawTime  string
	customer string
	item     string
	qty      int64
}

// csvScanner reads the rows of a CSV, finding the columns from the header
// row if there is one.
type csvScanner struct {
	cr      *csv.Reader
	started bool
	cols    [4]int // of time, customer, item, quantity
	need    int    // columns a row must have
}

func newCSVScanner(r io.Reader) *csvScanner {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = true
	return &csvScanner{cr: cr, cols: [4]int{0, 1, 2, 3}, need: 4}
}

var csvColumnNames = [4][]string{
	{"time", "timestamp", "ts", "created_at", "date", "datetime"},
	{"customer", "customer_id", "user", "user_id", "buyer"},
	{"item", "item_id", "sku", "product", "product_id"},
	{"quantity", "qty", "units"},
}

func (s *csvScanner) next() (csvRow, error) {
	for {
		fields, err := s.cr.Read()
		if err == io.EOF {
			return csvRow{}, io.EOF
		}
		if err != nil {
			return csvRow{}, fmt.Errorf("trace: csv: %w", err)
		}
		line, _ := s.cr.FieldPos(0)
		if len(fields) == 1 && strings.TrimSpace(fields[0]) == "" {
			continue // a line of blanks
		}
		if !s.started {
			s.started = true
			if len(fields) > 0 { // Excel's byte order mark
				fields[0] = strings.TrimPrefix(fields[0], "\ufeff")
			}
			if isHeader(fields) {
				if err := s.header(fields, line); err != nil {
					return csvRow{}, err
				}
				continue
			}
		}
		return s.row(fields, line)
	}
}

// isHeader: a data row has a time somewhere, a header row nowhere.
func isHeader(fields []string) bool {
	for _, f := range fields {
		if _, ok := parseCSVTime(strings.TrimSpace(f)); ok {
			return false
		}
	}
	return true
}

func (s *csvScanner) header(fields []string, line int) error {
	s.need = 0
	for c, names := range csvColumnNames {
		s.cols[c] = -1
		for i, f := range fields {
			f = strings.NewReplacer(" ", "_", "-", "_").Replace(strings.ToLower(strings.TrimSpace(f)))
			if slices.Contains(names, f) {
				if s.cols[c] >= 0 {
					return fmt.Errorf("trace: csv line %d: header row: columns %d and %d are both the %s", line, s.cols[c]+1, i+1, names[0])
				}
				s.cols[c] = i
			}
		}
		if s.cols[c] < 0 {
			return fmt.Errorf("trace: csv line %d: header row %q has no %s column (name one %s; or drop the header row and put time, customer, item, quantity first, in that order)",
				line, strings.Join(fields, ","), names[0], strings.Join(names, ", "))
		}
		s.need = max(s.need, s.cols[c]+1)
	}
	return nil
}

func (s *csvScanner) row(fields []string, line int) (csvRow, error) {
	if len(fields) < s.need {
		return csvRow{}, fmt.Errorf("trace: csv line %d: %d columns, want at least %d (time, customer, item, quantity)", line, len(fields), s.need)
	}
	get := func(c int) string { return strings.TrimSpace(fields[s.cols[c]]) }
	row := csvRow{line: line, rawTime: get(0), customer: get(1), item: get(2)}
	t, ok := parseCSVTime(row.rawTime)
	if !ok {
		return csvRow{}, fmt.Errorf("trace: csv line %d: time %q: want RFC 3339 (2024-11-29T10:00:00Z), 2024-11-29 10:00:00 (UTC) or unix seconds", line, row.rawTime)
	}
	row.t = t
	if row.customer == "" {
		return csvRow{}, fmt.Errorf("trace: csv line %d: the customer is empty", line)
	}
	if row.item == "" {
		return csvRow{}, fmt.Errorf("trace: csv line %d: the item is empty", line)
	}
	q, err := strconv.ParseInt(get(3), 10, 64)
	if err != nil || q < 1 || q > csvMaxQty {
		return csvRow{}, fmt.Errorf("trace: csv line %d: quantity %q: want a whole number of units, 1..%d", line, get(3), int64(csvMaxQty))
	}
	row.qty = q
	return row, nil
}

var csvTimeLayouts = [...]string{time.RFC3339, "2006-01-02 15:04:05", "2006-01-02T15:04:05"}

// parseCSVTime parses a time of the file as unix nanoseconds.
func parseCSVTime(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	if c := s[0]; c >= '0' && c <= '9' && !strings.ContainsAny(s, "-:") {
		sec, frac, _ := strings.Cut(s, ".")
		n, err := strconv.ParseInt(sec, 10, 64)
		if err != nil || n > math.MaxInt64/int64(time.Second)-1 {
			return 0, false
		}
		ns := n * int64(time.Second)
		if frac != "" {
			if len(frac) > 9 {
				frac = frac[:9]
			}
			f, err := strconv.ParseUint(frac, 10, 64)
			if err != nil {
				return 0, false
			}
			for range 9 - len(frac) {
				f *= 10
			}
			ns += int64(f)
		}
		return ns, true
	}
	for _, layout := range csvTimeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UnixNano(), true
		}
	}
	return 0, false
}
