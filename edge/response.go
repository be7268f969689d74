package edge

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/flashgate/flashgate/lib/order"
)

// ProblemBase prefixes every problem type (RFC 9457); the type ends with the
// problem's name, e.g. ".../sold-out".
const ProblemBase = "https://flashgate.dev/problems/"

// Problem names of the contract.
const (
	probInvalidRequest = "invalid-request"
	probUnauthorized   = "unauthorized"
	probUnknownSKU     = "unknown-sku"
	probSoldOut        = "sold-out"
	probPurchaseLimit  = "purchase-limit"
	probRateLimited    = "rate-limited"
	probIdemMismatch   = "idempotency-mismatch"
	probIdemInFlight   = "idempotency-in-flight"
	probSaleNotActive  = "sale-not-active"
	probUnavailable    = "unavailable"
	probNotFound       = "not-found"
	probMethod         = "method-not-allowed"
	probProtocol       = "protocol-error"
	// The order lifecycle.
	probInvalidTransition = "invalid-transition"
	probNotYet            = "not-in-ledger-yet"
	probDuplicateEvent    = "duplicate-event"
)

var statusText = map[int]string{
	200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
	405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
	413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content", 429: "Too Many Requests",
	431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
	503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

// statusLines holds "HTTP/1.1 <code> <text>\r\n" per status, built once.
var statusLines = func() (t [600][]byte) {
	for code, text := range statusText {
		t[code] = []byte("HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n")
	}
	return t
}()

// dateHeader holds "Date: <IMF-fixdate>\r\n", refreshed every second by a ticker
// so responses never format a time.
var dateHeader atomic.Pointer[[]byte]

func init() {
	refreshDate(time.Now())
	go func() {
		for now := range time.Tick(time.Second) {
			refreshDate(now)
		}
	}()
}

func refreshDate(now time.Time) {
	b := now.UTC().AppendFormat([]byte("Date: "), "Mon, 02 Jan 2006 15:04:05 GMT")
	b = append(b, "\r\n"...)
	dateHeader.Store(&b)
}

// respHeader describes a response's optional header fields.
type respHeader struct {
	contentType string // default application/json
	location    []byte // Location value
	locationID  int64  // appended to location when > 0
	retryAfter  int    // seconds, when > 0
	close       bool   // Connection: close
	extra       []byte // whole header lines, each ending in CRLF
}

// appendResponse appends a whole HTTP/1.1 response to dst. It allocates
// nothing when dst has room.
func appendResponse(dst []byte, status int, h *respHeader, body []byte) []byte {
	if status <= 0 || status >= len(statusLines) || statusLines[status] == nil {
		panic("BUG: response status " + strconv.Itoa(status) + " has no status line")
	}
	dst = append(dst, statusLines[status]...)
	dst = append(dst, "Server: flashgate\r\n"...)
	dst = append(dst, *dateHeader.Load()...)
	dst = append(dst, "Content-Type: "...)
	if h.contentType != "" {
		dst = append(dst, h.contentType...)
	} else {
		dst = append(dst, "application/json"...)
	}
	dst = append(dst, "\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\n"...)
	if h.location != nil {
		dst = append(dst, "Location: "...)
		dst = append(dst, h.location...)
		if h.locationID > 0 {
			dst = strconv.AppendInt(dst, h.locationID, 10)
		}
		dst = append(dst, "\r\n"...)
	}
	if h.retryAfter > 0 {
		dst = append(dst, "Retry-After: "...)
		dst = strconv.AppendInt(dst, int64(h.retryAfter), 10)
		dst = append(dst, "\r\n"...)
	}
	if h.close {
		dst = append(dst, "Connection: close\r\n"...)
	}
	dst = append(dst, h.extra...)
	dst = append(dst, "\r\n"...)
	return append(dst, body...)
}

// appendProblem appends an application/problem+json body.
func appendProblem(dst []byte, status int, name, detail string) []byte {
	dst = append(dst, `{"type":"`+ProblemBase...)
	dst = append(dst, name...)
	dst = append(dst, `","title":`...)
	dst = order.AppendJSONString(dst, statusText[status])
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	if detail != "" {
		dst = append(dst, `,"detail":`...)
		dst = order.AppendJSONString(dst, detail)
	}
	return append(dst, '}')
}

// protocolDetail explains a protocol-level refusal and names the flag to change.
func protocolDetail(status int) string {
	switch status {
	case 400:
		return "malformed HTTP request"
	case 408:
		return "request not received in time"
	case 413:
		return "request body too large; see -edge.maxBodyBytes"
	case 414:
		return "request line too long; see -edge.maxRequestLineBytes"
	case 431:
		return "request header section too large or too many fields; see -edge.maxHeaderBytes and -edge.maxHeaders"
	case 501:
		return "Transfer-Encoding is not supported: send the body with Content-Length"
	case 505:
		return "only HTTP/1.0 and HTTP/1.1 are supported"
	}
	return ""
}
