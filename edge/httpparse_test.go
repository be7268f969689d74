package edge

import (
	"bytes"
	"strings"
	"testing"
)

var testLimits = parseLimits{requestLine: 256, headerBytes: 1024, headers: 16, body: 1024}

func TestParseRequestCases(t *testing.T) {
	cases := []struct {
		name, in string
		n        int // -1: whole input
		status   int
		check    func(*request) bool
	}{
		{"get", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", -1, 0, func(r *request) bool { return string(r.path) == "/healthz" && r.keepAlive }},
		{"query", "GET /v1/orders?cursor=5 HTTP/1.1\r\nHost: x\r\n\r\n", -1, 0, func(r *request) bool { return string(r.path) == "/v1/orders" && string(r.query) == "cursor=5" }},
		{"post body", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-User-ID: u1\r\nIdempotency-Key: k\r\n\r\nhello", -1, 0,
			func(r *request) bool {
				return string(r.body) == "hello" && string(r.userID) == "u1" && string(r.idemKey) == "k"
			}},
		{"ows trimmed", "GET / HTTP/1.1\r\nHost: x\r\nX-User-ID: \t u1 \t\r\n\r\n", -1, 0, func(r *request) bool { return string(r.userID) == "u1" }},
		{"pipelined first", "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n", 28, 0, func(r *request) bool { return string(r.path) == "/a" }},
		{"http/1.0 closes", "GET / HTTP/1.0\r\n\r\n", -1, 0, func(r *request) bool { return !r.keepAlive && r.minor == 0 }},
		{"http/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", -1, 0, func(r *request) bool { return r.keepAlive }},
		{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", -1, 0, func(r *request) bool { return !r.keepAlive }},
		{"incomplete line", "GET / HTTP/1.1", 0, 0, nil},
		{"leading empty lines skipped", "\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n", -1, 0, func(r *request) bool { return string(r.path) == "/a" }},
		{"only empty lines", "\r\n\r\n", 0, 0, nil},
		{"too many empty lines", strings.Repeat("\r\n", 5) + "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400, nil},
		{"incomplete headers", "GET / HTTP/1.1\r\nHost: x\r\n", 0, 0, nil},
		{"incomplete body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", 0, 0, nil},
		{"cl+te", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 0, 400, nil},
		{"te only", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 0, 501, nil},
		{"dup cl", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 0, 400, nil},
		{"signed cl", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 0, 400, nil},
		{"list cl", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 0, 400, nil},
		{"huge cl", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 0, 400, nil},
		{"body too big", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n", 0, 413, nil},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 0, 400, nil},
		{"bare lf", "GET / HTTP/1.1\nHost: x\r\n\r\n", 0, 400, nil},
		{"bare lf header", "GET / HTTP/1.1\r\nHost: x\n\r\n", 0, 400, nil},
		{"bare cr", "GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n", 0, 400, nil},
		{"bare cr incomplete", "GET / HTTP/1.1\r\nHost: x\rY", 0, 400, nil},
		{"nul in value", "GET / HTTP/1.1\r\nHost: x\x00\r\n\r\n", 0, 400, nil},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 0, 400, nil},
		{"bad name", "GET / HTTP/1.1\r\nHo(st: x\r\n\r\n", 0, 400, nil},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 0, 400, nil},
		{"dup host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0, 400, nil},
		{"bad method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400, nil},
		{"absolute form", "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400, nil},
		{"two spaces", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400, nil},
		{"http/2", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 0, 505, nil},
		{"http/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", 0, 505, nil},
		{"bad version", "GET / HTTX/1.1\r\nHost: x\r\n\r\n", 0, 400, nil},
		{"lower version", "GET / http/1.1\r\nHost: x\r\n\r\n", 0, 400, nil},
		{"uri too long", "GET /" + strings.Repeat("a", 300) + " HTTP/1.1\r\n", 0, 414, nil},
		{"uri too long incomplete", "GET /" + strings.Repeat("a", 300), 0, 414, nil},
		{"headers too big", "GET / HTTP/1.1\r\nHost: x\r\nX-A: " + strings.Repeat("a", 1100) + "\r\n\r\n", 0, 431, nil},
		{"headers too big incomplete", "GET / HTTP/1.1\r\nHost: x\r\nX-A: " + strings.Repeat("a", 1100), 0, 431, nil},
		{"too many headers", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: a\r\n", 16) + "\r\n", 0, 431, nil},
	}
	for _, c := range cases {
		var r request
		n, st := parseRequest([]byte(c.in), &r, &testLimits)
		want := c.n
		if want < 0 {
			want = len(c.in)
		}
		if n != want || st != c.status {
			t.Errorf("%s: parseRequest = (%d, %d), want (%d, %d)", c.name, n, st, want, c.status)
			continue
		}
		if c.check != nil && !c.check(&r) {
			t.Errorf("%s: wrong fields: %+v", c.name, r)
		}
	}
}

// parseStream parses every request in data fed in chunks of the given sizes
// (cycled), as the edge does: append to a buffer, parse what is complete.
// It returns one line per outcome.
func parseStream(data []byte, chunks []int) []string {
	var out []string
	var buf []byte
	var r request
	for off, k := 0, 0; off < len(data); k++ {
		size := max(1, chunks[k%len(chunks)])
		end := min(len(data), off+size)
		buf = append(buf, data[off:end]...)
		off = end
		for len(buf) > 0 {
			n, st := parseRequest(buf, &r, &testLimits)
			if st != 0 {
				return append(out, "error "+string(rune('0'+st/100))+string(rune('0'+st/10%10))+string(rune('0'+st%10)))
			}
			if n == 0 {
				break
			}
			out = append(out, string(r.method)+" "+string(r.path)+" "+string(r.body))
			buf = buf[n:]
		}
	}
	if len(buf) > 0 {
		out = append(out, "incomplete")
	}
	return out
}

func TestParseChunkingInvariance(t *testing.T) {
	stream := []byte("POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" +
		"GET /v1/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	whole := parseStream(stream, []int{len(stream)})
	if len(whole) != 3 {
		t.Fatalf("whole: %q", whole)
	}
	for size := 1; size < 40; size++ {
		if got := parseStream(stream, []int{size}); strings.Join(got, "|") != strings.Join(whole, "|") {
			t.Fatalf("chunks of %d: %q, want %q", size, got, whole)
		}
	}
}

func TestParseAllocs(t *testing.T) {
	in := []byte("POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\nX-User-ID: user-1\r\nIdempotency-Key: abc\r\n\r\n{\"sku\":\"SKU-1\",\"qty\":1}")
	var r request
	if n := testing.AllocsPerRun(1000, func() { parseRequest(in, &r, &testLimits) }); n != 0 {
		t.Fatalf("parseRequest allocates %v times per request", n)
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
	} {
		f.Add([]byte(s), byte(7))
	}
	for _, c := range smugglingCorpus {
		f.Add([]byte(c.req), byte(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk byte) {
		// A parse never reads past its input: parse a copy whose capacity
		// ends exactly at its length, so any overread would panic.
		exact := bytes.Clone(data)[:len(data):len(data)]
		var r request
		n, st := parseRequest(exact, &r, &testLimits)
		if n < 0 || n > len(data) || (st != 0 && n != 0) {
			t.Fatalf("parseRequest = (%d, %d) for %d bytes", n, st, len(data))
		}
		if n > 0 && (len(r.body) != r.contentLength || r.contentLength > testLimits.body) {
			t.Fatalf("body %d bytes, content-length %d", len(r.body), r.contentLength)
		}
		// Feeding the same bytes in any chunking gives the same result.
		whole := parseStream(data, []int{len(data) + 1})
		if got := parseStream(data, []int{int(chunk%16) + 1, 3, 1}); strings.Join(got, "|") != strings.Join(whole, "|") {
			t.Fatalf("chunked parse differs:\n got %q\nwant %q", got, whole)
		}
	})
}
