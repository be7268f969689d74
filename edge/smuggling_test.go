package edge

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/lib/testenv"
)

// smugglingCorpus are requests that a front proxy and the edge could read
// differently (request smuggling, CL.TE / TE.CL desync), or that are simply
// malformed. Each must be refused with a 4xx (501 for a transfer coding the
// edge does not decode, 505 for another HTTP version) and the connection
// closed, so that nothing written after it on the connection is ever taken
// as a request. They also seed FuzzParseRequest.
var smugglingCorpus = []struct{ name, req string }{
	{"CL.TE", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"},
	{"TE.CL", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"},
	{"TE alone", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	{"TE obfuscated value", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\nabcd"},
	{"TE list", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"},
	{"TE with tab", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n"},
	{"TE twice", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"},
	{"space before colon", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nabcd"},
	{"space in header name", "GET /healthz HTTP/1.1\r\nHost: x\r\nX Y: z\r\n\r\n"},
	{"empty header name", "GET /healthz HTTP/1.1\r\nHost: x\r\n: z\r\n\r\n"},
	{"two Content-Lengths", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"},
	{"two equal Content-Lengths", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"},
	{"Content-Length list", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nabcd"},
	{"Content-Length plus sign", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd"},
	{"Content-Length negative", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"},
	{"Content-Length hex", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 0x4\r\n\r\nabcd"},
	{"Content-Length empty", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n"},
	{"Content-Length overflow", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551621\r\n\r\n"},
	{"Content-Length huge", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"},
	{"obs-fold", "GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"},
	{"obs-fold hides TE", "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\nabcd"},
	{"bare LF line ends", "GET /healthz HTTP/1.1\nHost: x\n\n"},
	{"bare CR in header", "GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n"},
	{"LF inside request line", "GET /healthz\n HTTP/1.1\r\nHost: x\r\n\r\n"},
	{"NUL in header value", "GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n"},
	{"control char in target", "GET /heal\x01thz HTTP/1.1\r\nHost: x\r\n\r\n"},
	{"space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"},
	{"two spaces after method", "GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n"},
	{"tab as separator", "GET\t/healthz HTTP/1.1\r\nHost: x\r\n\r\n"},
	{"no Host in 1.1", "GET /healthz HTTP/1.1\r\n\r\n"},
	{"two Hosts", "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"},
	{"HTTP/0.9", "GET /healthz\r\n\r\n"},
	{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
	{"version 1.2", "GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n"},
	{"lowercase version", "GET /healthz http/1.1\r\nHost: x\r\n\r\n"},
	{"long request line", "GET /" + strings.Repeat("a", 5000) + " HTTP/1.1\r\nHost: x\r\n\r\n"},
	{"long header", "GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 9000) + "\r\n\r\n"},
	{"too many headers", "GET /healthz HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X: y\r\n", 200) + "\r\n"},
	{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n"},
}

func TestSmugglingCorpusIsRefused(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "S-1", 10)
	const smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, c := range smugglingCorpus {
		conn, err := net.Dial("tcp", s.cfg.Addr)
		if err != nil {
			t.Fatal(err)
		}
		// A valid request behind the bad one must never be answered.
		conn.Write([]byte(c.req + smuggled))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Errorf("%s: no response: %v", c.name, err)
			conn.Close()
			continue
		}
		io.Copy(io.Discard, resp.Body)
		code := resp.StatusCode
		if !(code >= 400 && code < 500 || code == 501 || code == 505) || !resp.Close {
			t.Errorf("%s: %d (close %v), want a 4xx, 501 or 505 and close", c.name, code, resp.Close)
		}
		if rest, _ := io.ReadAll(br); len(rest) > 0 {
			t.Errorf("%s: the connection carried on after the refusal: %q", c.name, rest)
		}
		conn.Close()
	}
	// The edge still serves.
	resp, err := http.Get("http://" + s.cfg.Addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /healthz after the corpus: %d", resp.StatusCode)
	}
}
