// Package order defines the order record that travels from the edge through
// Kafka (`order.created`) to the ledger, and its wire format.
//
// The record value is one JSON object per Kafka record, readable with kcat:
//
//	{"v":1,"order_id":"123","user_id":"u1","sku":"SKU-1","qty":1,"price_cents":1999,
//	 "idempotency_key":"k1","client_ip":"127.0.0.1","created_at":"2026-11-25T10:00:00.123Z"}
//
// order_id is a decimal string (JavaScript clients lose precision on 64-bit
// numbers); idempotency_key and client_ip are omitted when empty; created_at is
// the time recovered from order_id, in UTC with millisecond precision. The
// record key is the user id. See docs/records.md for the full description.
package order

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/flashgate/flashgate/lib/orderid"
)

// FormatVersion is the value of "v" in records this package writes.
const FormatVersion = 1

// Limits on the fields, shared by the edge (which refuses bad input) and
// ingest (which sends records breaking them to the DLQ).
const (
	MaxUserIDLen  = 64
	MaxSKULen     = 64
	MaxIdemKeyLen = 255
	MaxQty        = 1_000_000
)

// Order is one admitted order.
type Order struct {
	ID         int64
	UserID     string
	SKU        string
	Qty        int32
	PriceCents int64
	IdemKey    string
	ClientIP   string
	CreatedAt  time.Time // always orderid.Time(ID)
}

// AppendJSON appends the record value of o to dst and returns the extended
// buffer. It does not allocate when dst has room.
func AppendJSON(dst []byte, o *Order) []byte {
	return AppendRecord(dst, o.ID, o.UserID, o.SKU, o.Qty, o.PriceCents, o.IdemKey, o.ClientIP)
}

// AppendRecord appends the record value of an order given field by field, so
// the edge can encode straight from request bytes. created_at is derived
// from id. It does not allocate when dst has room.
func AppendRecord[S ~string | ~[]byte](dst []byte, id int64, userID, sku S, qty int32, priceCents int64, idemKey, clientIP S) []byte {
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, FormatVersion, 10)
	dst = append(dst, `,"order_id":"`...)
	dst = strconv.AppendInt(dst, id, 10)
	dst = append(dst, `","user_id":`...)
	dst = AppendJSONString(dst, userID)
	dst = append(dst, `,"sku":`...)
	dst = AppendJSONString(dst, sku)
	dst = append(dst, `,"qty":`...)
	dst = strconv.AppendInt(dst, int64(qty), 10)
	dst = append(dst, `,"price_cents":`...)
	dst = strconv.AppendInt(dst, priceCents, 10)
	if len(idemKey) > 0 {
		dst = append(dst, `,"idempotency_key":`...)
		dst = AppendJSONString(dst, idemKey)
	}
	if len(clientIP) > 0 {
		dst = append(dst, `,"client_ip":`...)
		dst = AppendJSONString(dst, clientIP)
	}
	dst = append(dst, `,"created_at":"`...)
	dst = AppendTime(dst, orderid.Time(id))
	return append(dst, `"}`...)
}

// secondText is one second formatted as "2006-01-02T15:04:05" (UTC).
type secondText struct {
	sec  int64
	text [19]byte
}

// lastSecond caches the formatting of the latest second: orders arrive in
// time order, so nearly every record reuses it.
var lastSecond atomic.Pointer[secondText]

// AppendTime appends t as TimeFormat (UTC, milliseconds), formatting the
// date and time of day once per second.
func AppendTime(dst []byte, t time.Time) []byte {
	ms := t.UnixMilli()
	sec, frac := ms/1000, ms%1000
	if frac < 0 {
		sec, frac = sec-1, frac+1000
	}
	st := lastSecond.Load()
	if st == nil || st.sec != sec {
		st = &secondText{sec: sec}
		time.Unix(sec, 0).UTC().AppendFormat(st.text[:0], "2006-01-02T15:04:05")
		lastSecond.Store(st)
	}
	dst = append(dst, st.text[:]...)
	return append(dst, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10), 'Z')
}

// TimeFormat is how record and API times are written: RFC 3339, UTC, milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// AppendJSONString appends s as a JSON string. Callers validate the fields'
// character sets; this still escapes quotes, backslashes and control bytes so
// the output is always valid JSON.
func AppendJSONString[S ~string | ~[]byte](dst []byte, s S) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

type wire struct {
	V          *int    `json:"v"`
	OrderID    string  `json:"order_id"`
	UserID     string  `json:"user_id"`
	SKU        string  `json:"sku"`
	Qty        *int64  `json:"qty"`
	PriceCents *int64  `json:"price_cents"`
	IdemKey    string  `json:"idempotency_key"`
	ClientIP   string  `json:"client_ip"`
	CreatedAt  *string `json:"created_at"`
}

// ErrInvalid wraps every decoding and validation error, so ingest can tell a
// poison record (to the DLQ) from an infrastructure error (retry).
var ErrInvalid = errors.New("invalid order record")

// Decode parses a record value written by AppendJSON and validates it.
func Decode(value []byte, o *Order) error {
	if decodeFastEnabled && decodeFast(value, o) {
		return nil
	}
	var w wire
	if err := json.Unmarshal(value, &w); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if w.V == nil || *w.V != FormatVersion {
		return fmt.Errorf("%w: unsupported or missing format version \"v\" (want %d)", ErrInvalid, FormatVersion)
	}
	id, err := strconv.ParseInt(w.OrderID, 10, 64)
	if err != nil || !orderid.Valid(id) {
		return fmt.Errorf("%w: order_id %q is not a positive 64-bit decimal", ErrInvalid, w.OrderID)
	}
	if w.Qty == nil || *w.Qty < 1 || *w.Qty > MaxQty {
		return fmt.Errorf("%w: qty missing or outside [1, %d]", ErrInvalid, MaxQty)
	}
	if w.PriceCents == nil || *w.PriceCents < 0 {
		return fmt.Errorf("%w: price_cents missing or negative", ErrInvalid)
	}
	*o = Order{
		ID:         id,
		UserID:     w.UserID,
		SKU:        w.SKU,
		Qty:        int32(*w.Qty),
		PriceCents: *w.PriceCents,
		IdemKey:    w.IdemKey,
		ClientIP:   w.ClientIP,
		CreatedAt:  orderid.Time(id),
	}
	if !ValidUserID(o.UserID) {
		return fmt.Errorf("%w: user_id %q must be 1-%d bytes of [A-Za-z0-9_-]", ErrInvalid, o.UserID, MaxUserIDLen)
	}
	if !ValidSKU(o.SKU) {
		return fmt.Errorf("%w: sku %q must be 1-%d bytes of [A-Za-z0-9_.-]", ErrInvalid, o.SKU, MaxSKULen)
	}
	if o.IdemKey != "" && !ValidIdemKey(o.IdemKey) {
		return fmt.Errorf("%w: idempotency_key must be 1-%d visible ASCII bytes", ErrInvalid, MaxIdemKeyLen)
	}
	return nil
}

// ValidUserID reports whether s is 1-64 bytes of [A-Za-z0-9_-].
func ValidUserID[S ~string | ~[]byte](s S) bool {
	return len(s) >= 1 && len(s) <= MaxUserIDLen && allIn(s, false)
}

// ValidSKU reports whether s is 1-64 bytes of [A-Za-z0-9_.-].
func ValidSKU[S ~string | ~[]byte](s S) bool {
	return len(s) >= 1 && len(s) <= MaxSKULen && allIn(s, true)
}

// ValidIdemKey reports whether s is 1-255 bytes of visible ASCII (0x21-0x7e).
func ValidIdemKey[S ~string | ~[]byte](s S) bool {
	if len(s) < 1 || len(s) > MaxIdemKeyLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func allIn[S ~string | ~[]byte](s S, dot bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || dot && c == '.'
		if !ok {
			return false
		}
	}
	return true
}
