package edge

import "bytes"

// request is one parsed HTTP/1.x request. Its slices point into the read
// buffer: valid until the bytes are discarded (end of OnTraffic); copy before
// handing any of them to another goroutine.
type request struct {
	method        []byte
	path          []byte // target without the query
	query         []byte
	minor         byte // HTTP/1.<minor>
	keepAlive     bool
	contentLength int
	body          []byte

	// The header fields the API reads; empty when absent.
	userID  []byte
	idemKey []byte
	xff     []byte
	auth    []byte
	apiKey  []byte
	// signature is a payment webhook's signature: the last header whose
	// name ends in "-signature" (Flashgate-Signature, Stripe-Signature, ...).
	signature []byte
}

// parseLimits are the protocol limits the parser enforces.
type parseLimits struct {
	requestLine, headerBytes, headers, body int
}

// parseRequest parses the request at the start of buf. It returns:
//   - n > 0: a whole request of n bytes was parsed into r;
//   - n == 0, status == 0: the request is incomplete, call again with more bytes;
//   - status != 0: the input is refused with that status; answer it and close.
//
// The parser is strict where request smuggling lives: CRLF line endings only,
// no obs-fold, no CTL bytes in names or values, exactly one well-formed
// Content-Length, Transfer-Encoding refused (chunked request bodies are not
// supported: 501; together with Content-Length: 400). It never reads past
// len(buf) and does not allocate.
func parseRequest(buf []byte, r *request, lim *parseLimits) (n int, status int) {
	*r = request{}
	// RFC 9112 §2.2: ignore empty lines before a request line (clients send a
	// stray CRLF after a body). A few are skipped, more are refused.
	skipped := 0
	for len(buf) >= 2 && buf[0] == '\r' && buf[1] == '\n' {
		if skipped == 2*maxLeadingEmptyLines {
			return 0, 400
		}
		buf = buf[2:]
		skipped += 2
	}
	if n, status = parseOne(buf, r, lim); n > 0 {
		n += skipped
	}
	return n, status
}

// maxLeadingEmptyLines bounds the empty lines skipped before a request line.
const maxLeadingEmptyLines = 4

func parseOne(buf []byte, r *request, lim *parseLimits) (n int, status int) {
	// Request line.
	// Every decision on an incomplete request looks only at bytes that any
	// chunking of the same input also sees (the window), so the outcome does
	// not depend on how the bytes arrived.
	window := buf[:min(len(buf), lim.requestLine+2)]
	lineEnd := bytes.IndexByte(window, '\n')
	if lineEnd < 0 {
		if hasBareCR(window) {
			return 0, 400
		}
		if len(buf) > lim.requestLine+1 {
			return 0, 414
		}
		return 0, 0
	}
	if lineEnd == 0 || buf[lineEnd-1] != '\r' {
		return 0, 400 // bare LF
	}
	if st := parseRequestLine(buf[:lineEnd-1], r); st != 0 {
		return 0, st
	}
	r.keepAlive = r.minor == 1

	// Header fields.
	pos := lineEnd + 1
	hdrStart := pos
	var haveCL, haveTE, haveHost bool
	for count := 0; ; count++ {
		budget := lim.headerBytes - (pos - hdrStart) // bytes the section may still use, CRLFs included
		if budget < 2 {
			return 0, 431
		}
		rest := buf[pos:]
		window := rest[:min(len(rest), budget)]
		i := bytes.IndexByte(window, '\n')
		if i < 0 {
			if count >= lim.headers && (len(window) > 1 || len(window) == 1 && window[0] != '\r') {
				return 0, 431 // one field too many, whatever it holds
			}
			if hasBareCR(window) {
				return 0, 400
			}
			if len(window) == budget {
				return 0, 431
			}
			return 0, 0
		}
		if count >= lim.headers && !(i == 1 && rest[0] == '\r') {
			return 0, 431 // one field too many, whatever it holds (as when it is incomplete)
		}
		if i == 0 || rest[i-1] != '\r' {
			return 0, 400 // bare LF
		}
		line := rest[:i-1]
		pos += i + 1
		if len(line) == 0 {
			break // end of the header section
		}
		name, value, st := splitField(line)
		if st != 0 {
			return 0, st
		}
		switch {
		case equalFold(name, "content-length"):
			if haveCL {
				return 0, 400 // duplicate, even if equal: smuggling territory
			}
			haveCL = true
			cl, ok := parseContentLength(value)
			if !ok {
				return 0, 400
			}
			r.contentLength = cl
		case equalFold(name, "transfer-encoding"):
			haveTE = true
		case equalFold(name, "host"):
			if haveHost {
				return 0, 400
			}
			haveHost = true
		case equalFold(name, "connection"):
			parseConnection(value, r)
		case equalFold(name, "x-user-id"):
			r.userID = value
		case equalFold(name, "idempotency-key"):
			r.idemKey = value
		case equalFold(name, "x-forwarded-for"):
			r.xff = value // the last field wins; entries are comma-separated
		case equalFold(name, "authorization"):
			r.auth = value
		case equalFold(name, "x-api-key"):
			r.apiKey = value
		case len(name) > len("-signature") && equalFold(name[len(name)-len("-signature"):], "-signature"):
			r.signature = value
		}
	}
	switch {
	case haveTE && haveCL:
		return 0, 400
	case haveTE:
		return 0, 501
	case r.minor == 1 && !haveHost:
		return 0, 400 // RFC 9112 §3.2
	case r.contentLength > lim.body:
		return 0, 413
	}
	if len(buf)-pos < r.contentLength {
		return 0, 0
	}
	r.body = buf[pos : pos+r.contentLength]
	return pos + r.contentLength, 0
}

func parseRequestLine(line []byte, r *request) int {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 || !isToken(line[:sp]) {
		return 400
	}
	r.method = line[:sp]
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return 400
	}
	target, version := line[:sp], line[sp+1:]
	if target[0] != '/' {
		return 400 // origin-form only
	}
	for _, c := range target {
		if c <= ' ' || c >= 0x7f {
			return 400
		}
	}
	if q := bytes.IndexByte(target, '?'); q >= 0 {
		r.path, r.query = target[:q], target[q+1:]
	} else {
		r.path = target
	}
	if len(version) != 8 || string(version[:7]) != "HTTP/1." {
		if len(version) == 8 && string(version[:5]) == "HTTP/" && isDigit(version[5]) && version[6] == '.' && isDigit(version[7]) {
			return 505
		}
		return 400
	}
	switch version[7] {
	case '0', '1':
		r.minor = version[7] - '0'
	case '2', '3', '4', '5', '6', '7', '8', '9':
		return 505
	default:
		return 400
	}
	return 0
}

// splitField splits "name: value", trimming optional whitespace around the value.
func splitField(line []byte) (name, value []byte, status int) {
	if line[0] == ' ' || line[0] == '\t' {
		return nil, nil, 400 // obs-fold
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !isToken(line[:colon]) {
		return nil, nil, 400 // also whitespace before the colon
	}
	name, value = line[:colon], line[colon+1:]
	for len(value) > 0 && (value[0] == ' ' || value[0] == '\t') {
		value = value[1:]
	}
	for len(value) > 0 && (value[len(value)-1] == ' ' || value[len(value)-1] == '\t') {
		value = value[:len(value)-1]
	}
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, 400 // NUL, CR and the other CTLs
		}
	}
	return name, value, 0
}

func parseContentLength(v []byte) (int, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func parseConnection(v []byte, r *request) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		tok = bytes.Trim(tok, " \t")
		switch {
		case equalFold(tok, "close"):
			r.keepAlive = false
			return // close wins over anything else listed
		case equalFold(tok, "keep-alive"):
			r.keepAlive = true
		}
	}
}

// equalFold reports whether b equals the lower-case ASCII string s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// hasBareCR reports whether b holds a CR followed by anything but LF.
func hasBareCR(b []byte) bool {
	for i := bytes.IndexByte(b, '\r'); i >= 0 && i+1 < len(b); {
		if b[i+1] != '\n' {
			return true
		}
		j := bytes.IndexByte(b[i+1:], '\r')
		if j < 0 {
			return false
		}
		i += 1 + j
	}
	return false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// tokenChars marks RFC 9110 tchar.
var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChars[c] {
			return false
		}
	}
	return true
}
