package edge

import (
	"github.com/flashgate/flashgate/lib/order"
)

// parseOrderBody parses `{"sku": "...", "qty": N}` strictly: both fields
// required, no other or repeated fields, qty an integer in [1, MaxQty], sku
// 1-64 bytes of [A-Za-z0-9_.-] (so no escapes), nothing after the object. It
// returns a detail for the problem response on error. sku points into body.
// It does not allocate.
func parseOrderBody(body []byte) (sku []byte, qty int64, detail string) {
	p := jsonScanner{b: body}
	if !p.consume('{') {
		return nil, 0, "body must be a JSON object {\"sku\": \"...\", \"qty\": N}"
	}
	var haveSKU, haveQty bool
	for first := true; ; first = false {
		if p.consume('}') {
			if first {
				return nil, 0, "sku and qty are required"
			}
			break
		}
		if !first && !p.consume(',') {
			return nil, 0, "expected ',' or '}' after a field"
		}
		key, ok := p.plainString()
		if !ok || !p.consume(':') {
			return nil, 0, "malformed field name"
		}
		switch string(key) {
		case "sku":
			if haveSKU {
				return nil, 0, "duplicate field sku"
			}
			haveSKU = true
			if sku, ok = p.plainString(); !ok || !order.ValidSKU(sku) {
				return nil, 0, "sku must be a string of 1-64 bytes of [A-Za-z0-9_.-]"
			}
		case "qty":
			if haveQty {
				return nil, 0, "duplicate field qty"
			}
			haveQty = true
			if qty, ok = p.integer(); !ok || qty < 1 || qty > order.MaxQty {
				return nil, 0, "qty must be an integer from 1 to 1000000"
			}
		default:
			return nil, 0, "unknown field; only sku and qty are allowed"
		}
	}
	p.skipSpace()
	if p.i != len(p.b) {
		return nil, 0, "unexpected data after the JSON object"
	}
	if !haveSKU || !haveQty {
		return nil, 0, "sku and qty are required"
	}
	return sku, qty, ""
}

type jsonScanner struct {
	b []byte
	i int
}

func (p *jsonScanner) skipSpace() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonScanner) consume(c byte) bool {
	p.skipSpace()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// plainString reads a string without escapes or control bytes.
func (p *jsonScanner) plainString() ([]byte, bool) {
	if !p.consume('"') {
		return nil, false
	}
	start := p.i
	for ; p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			return s, true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// integer reads a JSON number that is an integer of at most 15 digits
// (fractions, exponents and leading zeros are refused).
func (p *jsonScanner) integer() (int64, bool) {
	p.skipSpace()
	neg := p.i < len(p.b) && p.b[p.i] == '-'
	if neg {
		p.i++
	}
	start := p.i
	var n int64
	for p.i < len(p.b) && isDigit(p.b[p.i]) {
		if p.i-start >= 15 {
			return 0, false
		}
		n = n*10 + int64(p.b[p.i]-'0')
		p.i++
	}
	digits := p.i - start
	if digits == 0 || digits > 1 && p.b[start] == '0' {
		return 0, false
	}
	if p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		return 0, false
	}
	if neg {
		n = -n
	}
	return n, true
}
