package openloop

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

func TestRespReader(t *testing.T) {
	big := strings.Repeat("x", 3*maxResponseHeaderBytes)
	type want struct {
		status     int
		closeAfter bool
	}
	for _, tc := range []struct {
		name string
		in   string
		head bool
		want []want
		err  error // after the wanted responses
	}{
		{name: "202", in: "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}", want: []want{{202, false}}},
		{name: "pipelined", in: "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 409 Conflict\r\ncontent-length: 3\r\n\r\nabcHTTP/1.1 503 \r\nContent-Length: 0\r\n\r\n",
			want: []want{{202, false}, {409, false}, {503, false}}},
		{name: "no reason phrase", in: "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", want: []want{{200, false}}},
		{name: "connection close", in: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", want: []want{{200, true}}},
		{name: "http/1.0 closes", in: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", want: []want{{200, true}}},
		{name: "http/1.0 keep-alive", in: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", want: []want{{200, false}}},
		{name: "100 continue first", in: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", want: []want{{201, false}}},
		{name: "204 without length", in: "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", want: []want{{204, false}, {200, false}}},
		{name: "head", head: true, in: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", want: []want{{200, false}, {200, false}}},
		{name: "body larger than the buffer", in: "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(big)) + "\r\n\r\n" + big + "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
			want: []want{{200, false}, {404, false}}},
		{name: "same length twice", in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", want: []want{{200, false}}},
		{name: "chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", err: errChunked},
		{name: "no length", in: "HTTP/1.1 200 OK\r\n\r\nbody", err: errNoLength},
		{name: "conflicting lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", err: errBadLength},
		{name: "bad length", in: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", err: errBadLength},
		{name: "bad status", in: "HTTP/1.1 2x2 OK\r\nContent-Length: 0\r\n\r\n", err: errStatusLine},
		{name: "status 999", in: "HTTP/1.1 999 OK\r\nContent-Length: 0\r\n\r\n", err: errStatusLine},
		{name: "not http", in: "SSH-2.0-OpenSSH\r\n\r\n", err: errStatusLine},
		{name: "bare LF", in: "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n\r\n", err: errHeaderLine},
		{name: "header too large", in: "HTTP/1.1 200 OK\r\nX: " + big + "\r\n\r\n", err: errHeaderTooLarge},
		{name: "cut in the headers", in: "HTTP/1.1 200 OK\r\nContent-Len", err: errCutResponse},
		{name: "cut in the body", in: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", err: errCutResponse},
		{name: "clean EOF", in: "", err: io.EOF},
	} {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.in)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			rr := newRespReader(r)
			for i, w := range tc.want {
				status, closeAfter, err := rr.read(tc.head)
				if err != nil || status != w.status || closeAfter != w.closeAfter {
					t.Fatalf("%s (one byte %v), response %d: got %d %v %v, want %d %v", tc.name, oneByte, i, status, closeAfter, err, w.status, w.closeAfter)
				}
			}
			wantErr := tc.err
			if wantErr == nil {
				wantErr = io.EOF
			}
			if _, _, err := rr.read(tc.head); !errors.Is(err, wantErr) {
				t.Fatalf("%s (one byte %v): got error %v, want %v", tc.name, oneByte, err, wantErr)
			}
		}
	}
}

func TestChunkedErrorSaysWhatToDo(t *testing.T) {
	if !strings.Contains(errChunked.Error(), "chunked") || !strings.Contains(errChunked.Error(), "Content-Length") {
		t.Fatalf("unclear error: %v", errChunked)
	}
}

// The reader is on the hot path: parsing pipelined responses allocates nothing.
func TestRespReaderAllocs(t *testing.T) {
	in := bytes.Repeat([]byte("HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 23\r\n\r\n{\"order_id\":\"1\",\"a\":12}"), 16)
	br := bytes.NewReader(in)
	rr := newRespReader(br)
	allocs := testing.AllocsPerRun(100, func() {
		br.Reset(in)
		rr.reset(br)
		for range 16 {
			if status, _, err := rr.read(false); err != nil || status != 202 {
				t.Fatalf("got %d %v", status, err)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per 16 responses, want 0", allocs)
	}
}
