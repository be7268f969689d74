// Package trace reads and writes flash-sale traces: one record per request
// (when it is sent, by whom, from where, for what), streamed, so that a
// trace of a hundred million requests never has to fit in memory.
//
// # Format (version 1)
//
// A trace is UTF-8 text, one line per entry, normally zstd-compressed
// (files ending in .zst; a reader detects the compression by its magic
// number, so plain text works too). Read one with `zstdcat t.trace.zst | less`.
//
//	#flashgate-trace v1
//	#meta seed=42 generator=tracegen users=100000
//	#sku sku-0001 stock=500 limit=2 price=1999
//	0 order u17 10.0.3.9 sku-0001 1 k17-1
//	35 retry u17 10.0.3.9 sku-0001 1 k17-1
//	1200 poll u17 10.0.3.9 - 0 k17-1
//	1900 order u90 10.0.8.1 sku-0412 2 -
//
// The first line names the format and version. Then any number of header
// lines: "#meta" lines carry key=value pairs about how the trace was made
// (informational), and each "#sku" line declares a sale item the replay puts
// on sale before the first request: its stock, per-user limit (0 = none) and
// price in cents. Other lines starting with "#" are comments.
//
// Every other line is one request, seven fields separated by one space:
//
//	offset_us kind user ip sku qty key
//
// where:
//
//   - offset_us: when the request is due, in microseconds from the start of
//     the replay; non-decreasing down the file.
//   - kind: "order" (POST /v1/orders), "retry" (the same order again, same
//     Idempotency-Key and body: a client that timed out or a double click),
//     "poll" (the buyer checking an order's status), "cancel" (the buyer
//     cancelling an order).
//   - user: the buyer's id (X-User-ID), 1-64 bytes of [A-Za-z0-9_-].
//   - ip: the client address the request comes from (sent as
//     X-Forwarded-For), IPv4 or IPv6.
//   - sku and qty: what is ordered; "-" and 0 for poll and cancel.
//   - key: the Idempotency-Key, or "-" for none. A poll or cancel names the
//     order it is about by the key of the order request that made it; the
//     replay looks up the order id that request was given.
//
// No field may be empty or contain white space; "-" stands for "none".
package trace

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Version is the format version this package writes and reads.
const Version = 1

const magicLine = "#flashgate-trace v1"

// Limits, to catch a corrupt file before it costs memory.
const (
	maxLineBytes  = 1024
	maxFieldBytes = 255
	maxHeaderSKUs = 1 << 20
)

// Kind is what a request does.
type Kind uint8

const (
	KindOrder  Kind = iota + 1 // POST /v1/orders
	KindRetry                  // POST /v1/orders again, same key and body
	KindPoll                   // GET the order named by Key
	KindCancel                 // POST /v1/orders/{id}/cancel for the order named by Key
)

var kindNames = [...]string{KindOrder: "order", KindRetry: "retry", KindPoll: "poll", KindCancel: "cancel"}

func (k Kind) String() string {
	if k >= KindOrder && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, bool) {
	for k, name := range kindNames {
		if name != "" && name == s {
			return Kind(k), true
		}
	}
	return 0, false
}

// Record is one request. The byte slices returned by Reader.Next are valid
// until the next call to Next; copy what you keep.
type Record struct {
	At   time.Duration // due time from the start of the replay, microsecond resolution
	Kind Kind
	User []byte
	IP   []byte
	SKU  []byte // nil for poll and cancel
	Qty  int64  // 0 for poll and cancel
	Key  []byte // nil: no Idempotency-Key
}

// Item is a sale item declared in the header.
type Item struct {
	SKU          string
	Stock        int64
	PerUserLimit int64 // 0: no limit
	PriceCents   int64
}

// Header is everything before the first request.
type Header struct {
	// Meta is how the trace was made, in order (key=value pairs of "#meta"
	// lines). Informational: the replay prints it, nothing depends on it.
	Meta []KV
	// Items are the sale items the replay puts on sale before the first request.
	Items []Item
}

// KV is one key=value pair of a "#meta" line.
type KV struct{ Key, Value string }

// MetaValue returns the value of key in Meta, or "".
func (h *Header) MetaValue(key string) string {
	for _, kv := range h.Meta {
		if kv.Key == key {
			return kv.Value
		}
	}
	return ""
}

// TotalStock is the sum of every item's stock.
func (h *Header) TotalStock() int64 {
	var n int64
	for _, it := range h.Items {
		n += it.Stock
	}
	return n
}

// validField reports why b cannot be a field, or "".
func validField(b []byte) string {
	switch {
	case len(b) == 0:
		return "is empty"
	case len(b) > maxFieldBytes:
		return fmt.Sprintf("is longer than %d bytes", maxFieldBytes)
	}
	for _, c := range b {
		if c <= ' ' || c == 0x7f {
			return "contains white space or a control character"
		}
	}
	return ""
}

// check validates a record for writing or after reading.
func (r *Record) check() error {
	if r.At < 0 {
		return fmt.Errorf("offset %v is negative", r.At)
	}
	if r.Kind < KindOrder || r.Kind > KindCancel {
		return fmt.Errorf("kind %d is not one of order, retry, poll, cancel", r.Kind)
	}
	for _, f := range [...]struct {
		name string
		b    []byte
	}{{"user", r.User}, {"ip", r.IP}} {
		if why := validField(f.b); why != "" {
			return fmt.Errorf("%s %q %s", f.name, f.b, why)
		}
	}
	if len(r.User) > 64 {
		return fmt.Errorf("user %q is longer than 64 bytes", r.User)
	}
	switch r.Kind {
	case KindOrder, KindRetry:
		if why := validField(r.SKU); why != "" || string(r.SKU) == "-" {
			return fmt.Errorf("%s without a sku", r.Kind)
		}
		if r.Qty < 1 {
			return fmt.Errorf("%s with qty %d (want >= 1)", r.Kind, r.Qty)
		}
		if r.Kind == KindRetry && len(r.Key) == 0 {
			return errors.New("retry without an idempotency key (a retry repeats an order by its key)")
		}
	case KindPoll, KindCancel:
		if len(r.SKU) > 0 || r.Qty != 0 {
			return fmt.Errorf("%s with a sku or qty (want - and 0)", r.Kind)
		}
		if len(r.Key) == 0 {
			return fmt.Errorf("%s without the key of the order it is about", r.Kind)
		}
	}
	if len(r.Key) > 0 {
		if why := validField(r.Key); why != "" || string(r.Key) == "-" {
			return fmt.Errorf("key %q %s", r.Key, why)
		}
	}
	return nil
}

func (it *Item) check() error {
	if why := validField([]byte(it.SKU)); why != "" || it.SKU == "-" {
		return fmt.Errorf("sku %q: %s", it.SKU, why)
	}
	if it.Stock < 0 || it.PerUserLimit < 0 || it.PriceCents < 0 {
		return fmt.Errorf("sku %s: stock, limit and price must not be negative", it.SKU)
	}
	return nil
}

func (it *Item) line() string {
	return fmt.Sprintf("#sku %s stock=%d limit=%d price=%d", it.SKU, it.Stock, it.PerUserLimit, it.PriceCents)
}

func parseItem(line string) (Item, error) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return Item{}, errors.New(`"#sku" line without a sku`)
	}
	it := Item{SKU: f[1]}
	for _, kv := range f[2:] {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			return Item{}, fmt.Errorf("%q is not key=integer", kv)
		}
		switch k {
		case "stock":
			it.Stock = n
		case "limit":
			it.PerUserLimit = n
		case "price":
			it.PriceCents = n
		default:
			return Item{}, fmt.Errorf("unknown sku attribute %q (want stock, limit, price)", k)
		}
	}
	return it, it.check()
}

func parseMeta(line string) ([]KV, error) {
	var kvs []KV
	for _, kv := range strings.Fields(line)[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		kvs = append(kvs, KV{k, v})
	}
	return kvs, nil
}
