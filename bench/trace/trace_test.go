package trace

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testRecord is a Record that owns its bytes.
type testRecord struct {
	At                 time.Duration
	Kind               Kind
	User, IP, SKU, Key string
	Qty                int64
}

func (t testRecord) record() *Record {
	r := &Record{At: t.At, Kind: t.Kind, User: []byte(t.User), IP: []byte(t.IP), Qty: t.Qty}
	if t.SKU != "" {
		r.SKU = []byte(t.SKU)
	}
	if t.Key != "" {
		r.Key = []byte(t.Key)
	}
	return r
}

func owned(r *Record) testRecord {
	return testRecord{At: r.At, Kind: r.Kind, User: string(r.User), IP: string(r.IP), SKU: string(r.SKU), Key: string(r.Key), Qty: r.Qty}
}

// readAll reads a whole trace, failing the test on any error.
func readAll(t testing.TB, b []byte) (*Header, []testRecord) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []testRecord
	var rec Record
	for {
		err := r.Next(&rec)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, owned(&rec))
	}
	if r.Count() != uint64(len(out)) {
		t.Fatalf("Count %d after %d records", r.Count(), len(out))
	}
	return r.Header(), out
}

func TestRoundTrip(t *testing.T) {
	h := Header{
		Meta: []KV{{"seed", "42"}, {"generator", "test"}, {"empty", ""}, {"eq", "a=b"}},
		Items: []Item{
			{SKU: "sku-0001", Stock: 500, PerUserLimit: 2, PriceCents: 1999},
			{SKU: "sku.B_2", Stock: 0, PerUserLimit: 0, PriceCents: 0},
		},
	}
	long := strings.Repeat("x", 64)
	recs := []testRecord{
		{At: 0, Kind: KindOrder, User: "u17", IP: "10.0.3.9", SKU: "sku-0001", Qty: 1, Key: "k17-1"},
		{At: 35 * time.Microsecond, Kind: KindRetry, User: "u17", IP: "10.0.3.9", SKU: "sku-0001", Qty: 1, Key: "k17-1"},
		{At: 35 * time.Microsecond, Kind: KindOrder, User: long, IP: "2001:db8::1", SKU: "sku.B_2", Qty: 99, Key: strings.Repeat("k", maxFieldBytes)},
		{At: 1200 * time.Microsecond, Kind: KindPoll, User: "u17", IP: "10.0.3.10", Key: "k17-1"},
		{At: 1900 * time.Microsecond, Kind: KindOrder, User: "u90", IP: "10.0.8.1", SKU: "sku-0412", Qty: 2},
		{At: 3 * time.Hour, Kind: KindCancel, User: "u17", IP: "10.0.3.9", Key: "k17-1"},
	}
	for _, plain := range []bool{true, false} {
		t.Run(map[bool]string{true: "plain", false: "zstd"}[plain], func(t *testing.T) {
			var buf bytes.Buffer
			var opts []WriterOption
			if plain {
				opts = append(opts, Plain())
			}
			w, err := NewWriter(&buf, h, opts...)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				if err := w.Write(r.record()); err != nil {
					t.Fatal(err)
				}
			}
			if w.Count() != uint64(len(recs)) {
				t.Fatalf("Count %d, want %d", w.Count(), len(recs))
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if gotZstd := bytes.HasPrefix(buf.Bytes(), zstdMagic); gotZstd == plain {
				t.Fatalf("zstd magic present: %v, want %v", gotZstd, !plain)
			}
			gotH, got := readAll(t, buf.Bytes())
			if !reflect.DeepEqual(*gotH, h) {
				t.Errorf("header:\n got %+v\nwant %+v", *gotH, h)
			}
			if !reflect.DeepEqual(got, recs) {
				t.Errorf("records:\n got %+v\nwant %+v", got, recs)
			}
			if gotH.MetaValue("seed") != "42" || gotH.MetaValue("nope") != "" || gotH.TotalStock() != 500 {
				t.Errorf("MetaValue or TotalStock wrong: %q %d", gotH.MetaValue("seed"), gotH.TotalStock())
			}
		})
	}
}

func TestReadText(t *testing.T) {
	// The example of the package doc, with CRLF, comments and blank lines.
	text := "#flashgate-trace v1\r\n#meta seed=42 generator=tracegen users=100000\n# a comment\n" +
		"#sku sku-0001 stock=500 limit=2 price=1999\n" +
		"0 order u17 10.0.3.9 sku-0001 1 k17-1\r\n" +
		"\n# between records\n" +
		"35 retry u17 10.0.3.9 sku-0001 1 k17-1\n" +
		"1200 poll u17 10.0.3.9 - 0 k17-1\n" +
		"1900 order u90 10.0.8.1 sku-0412 2 -" // no final newline
	h, recs := readAll(t, []byte(text))
	if len(h.Meta) != 3 || h.MetaValue("users") != "100000" || len(h.Items) != 1 || h.Items[0] != (Item{"sku-0001", 500, 2, 1999}) {
		t.Errorf("header %+v", h)
	}
	want := []testRecord{
		{0, KindOrder, "u17", "10.0.3.9", "sku-0001", "k17-1", 1},
		{35 * time.Microsecond, KindRetry, "u17", "10.0.3.9", "sku-0001", "k17-1", 1},
		{1200 * time.Microsecond, KindPoll, "u17", "10.0.3.9", "", "k17-1", 0},
		{1900 * time.Microsecond, KindOrder, "u90", "10.0.8.1", "sku-0412", "", 2},
	}
	if !reflect.DeepEqual(recs, want) {
		t.Errorf("got %+v\nwant %+v", recs, want)
	}
}

func TestReadErrors(t *testing.T) {
	const head = "#flashgate-trace v1\n#sku s1 stock=1 limit=0 price=0\n"
	const ok = "5 order u1 10.0.0.1 s1 1 k1\n"
	for _, tc := range []struct {
		name, text, want string
	}{
		{"empty file", "", "empty file"},
		{"wrong magic", "#something-else v1\n" + ok, "first line is not"},
		{"newer version", "#flashgate-trace v2\n" + ok, "reads format v1"},
		{"bad sku line", head + "#sku s2 stock=x\n", "line 3: \"stock=x\" is not key=integer"},
		{"unknown sku attribute", head + "#sku s2 colour=1\n", "line 3: unknown sku attribute"},
		{"sku twice", head + "#sku s1 stock=2\n", "line 3: sku s1 declared twice"},
		{"bad meta", head + "#meta novalue\n", "line 3: \"novalue\" is not key=value"},
		{"6 fields", head + ok + "6 order u1 10.0.0.1 s1 1\n", "line 4: want 7 fields"},
		{"8 fields", head + ok + "6 order u1 10.0.0.1 s1 1 k2 extra\n", "line 4: want 7 fields"},
		{"bad kind", head + ok + "6 buy u1 10.0.0.1 s1 1 k2\n", "line 4: kind \"buy\""},
		{"bad offset", head + "-1 order u1 10.0.0.1 s1 1 k1\n", "line 3: offset \"-1\""},
		{"offset too long", head + "1234567890123456 order u1 10.0.0.1 s1 1 k1\n", "line 3: offset"},
		{"decreasing offsets", head + ok + "4 order u1 10.0.0.1 s1 1 k2\n", "line 4: offset 4 µs is before the previous record's 5 µs"},
		{"two spaces", head + ok + "6 poll u1 10.0.0.1  0 k1\n", "line 4: field 5 of 7 is empty"},
		{"trailing space", head + ok + "6 order u1 10.0.0.1 s1 1 \n", "line 4: field 7 of 7 is empty"},
		{"space after key", head + ok + "6 order u1 10.0.0.1 s1 1 k2 \n", "line 4: want 7 fields"},
		{"tab", head + ok + "6\torder u1 10.0.0.1 s1 1 k2\n", "line 4: want 7 fields"},
		{"control character", head + ok + "6 order u\x01 10.0.0.1 s1 1 k2\n", "line 4: user \"u\\x01\" contains white space"},
		{"retry without key", head + ok + "6 retry u1 10.0.0.1 s1 1 -\n", "line 4: retry without an idempotency key"},
		{"poll without key", head + ok + "6 poll u1 10.0.0.1 - 0 -\n", "line 4: poll without the key"},
		{"cancel with sku", head + ok + "6 cancel u1 10.0.0.1 s1 0 k1\n", "line 4: cancel with a sku or qty"},
		{"order without sku", head + ok + "6 order u1 10.0.0.1 - 1 k2\n", "line 4: order without a sku"},
		{"order qty 0", head + ok + "6 order u1 10.0.0.1 s1 0 k2\n", "line 4: order with qty 0"},
		{"bad qty", head + ok + "6 order u1 10.0.0.1 s1 x k2\n", "line 4: qty \"x\" is not a number"},
		{"long user", head + ok + "6 order " + strings.Repeat("u", 65) + " 10.0.0.1 s1 1 k2\n", "line 4: user"},
		{"long field", head + ok + "6 order u1 10.0.0.1 s1 1 " + strings.Repeat("k", 256) + "\n", "line 4: key"},
		{"long line", head + ok + "6 order u1 10.0.0.1 s1 1 " + strings.Repeat("k", 2000) + "\n", "line 4: longer than 1024 bytes"},
		{"very long line", head + ok + strings.Repeat("x", 100_000) + "\n", "line 4: longer than 1024 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := readErr(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// readErr reads text to the end and returns the first error other than EOF.
func readErr(text string) error {
	r, err := NewReader(strings.NewReader(text))
	if err != nil {
		return err
	}
	var rec Record
	for {
		if err := r.Next(&rec); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func TestWriteErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Header
		want string
	}{
		{"meta key with space", Header{Meta: []KV{{"a b", "1"}}}, "must not contain white space"},
		{"meta value with newline", Header{Meta: []KV{{"a", "1\n2"}}}, "must not contain white space"},
		{"meta key with =", Header{Meta: []KV{{"a=b", "1"}}}, "must not contain white space"},
		{"sku twice", Header{Items: []Item{{SKU: "a"}, {SKU: "a"}}}, "declared twice"},
		{"sku dash", Header{Items: []Item{{SKU: "-"}}}, "sku"},
		{"negative stock", Header{Items: []Item{{SKU: "a", Stock: -1}}}, "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewWriter(io.Discard, tc.h, Plain())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	w, err := NewWriter(io.Discard, Header{}, Plain())
	if err != nil {
		t.Fatal(err)
	}
	ok := testRecord{At: time.Second, Kind: KindOrder, User: "u1", IP: "10.0.0.1", SKU: "s", Qty: 1}
	if err := w.Write(ok.record()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		r    testRecord
		want string
	}{
		{"earlier", testRecord{At: time.Millisecond, Kind: KindOrder, User: "u1", IP: "10.0.0.1", SKU: "s", Qty: 1}, "record 2 at 1ms is before the previous one at 1s"},
		{"no kind", testRecord{At: time.Second, User: "u1", IP: "i", SKU: "s", Qty: 1}, "record 2: kind 0"},
		{"space in user", testRecord{At: time.Second, Kind: KindOrder, User: "u 1", IP: "i", SKU: "s", Qty: 1}, "white space"},
		{"retry without key", testRecord{At: time.Second, Kind: KindRetry, User: "u1", IP: "i", SKU: "s", Qty: 1}, "retry without an idempotency key"},
		{"negative", testRecord{At: -1, Kind: KindOrder, User: "u1", IP: "i", SKU: "s", Qty: 1}, "negative"},
	} {
		if err := w.Write(tc.r.record()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.trace.zst")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(f, Header{Items: []Item{{SKU: "s", Stock: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	rec := testRecord{At: time.Second, Kind: KindOrder, User: "u1", IP: "10.0.0.1", SKU: "s", Qty: 1, Key: "k1"}
	if err := w.Write(rec.record()); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(w.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var got Record
	if err := r.Next(&got); err != nil || owned(&got) != rec {
		t.Fatalf("got %+v, %v", owned(&got), err)
	}
	if err := r.Next(&got); err != io.EOF {
		t.Fatalf("got %v after the last record, want EOF", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("Open of a missing file succeeded")
	}
}

func TestKindString(t *testing.T) {
	for k := KindOrder; k <= KindCancel; k++ {
		if got, ok := ParseKind(k.String()); !ok || got != k {
			t.Errorf("ParseKind(%q) = %v, %v", k.String(), got, ok)
		}
	}
	if _, ok := ParseKind("kind(9)"); ok || Kind(9).String() != "kind(9)" {
		t.Error("unknown kinds")
	}
}

// FuzzParseRecord: whatever parses, AppendRecord writes back as a line that
// parses to the same record.
func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{
		"0 order u17 10.0.3.9 sku-0001 1 k17-1",
		"35 retry u17 10.0.3.9 sku-0001 1 k17-1",
		"1200 poll u17 10.0.3.9 - 0 k17-1",
		"1900 order u90 10.0.8.1 sku-0412 2 -",
		"99 cancel u1 2001:db8::1 - 000 k",
		"000000000000001 order a b c 999999999999999 d",
		"1 order u1  s 1 k",
		"1 order u1 ip s 1 k ",
		"1 retry u1 ip s 1 -",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var rec Record
		if parseRecord(line, &rec) != nil {
			return
		}
		first := owned(&rec)
		out := AppendRecord(nil, &rec)
		if len(out) == 0 || out[len(out)-1] != '\n' {
			t.Fatalf("AppendRecord(%q) = %q: no newline", line, out)
		}
		var again Record
		if err := parseRecord(out[:len(out)-1], &again); err != nil {
			t.Fatalf("%q parsed, its re-append %q does not: %v", line, out, err)
		}
		if got := owned(&again); got != first {
			t.Fatalf("%q parsed as %+v, its re-append %q as %+v", line, first, out, got)
		}
	})
}
