package openloop

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// maxResponseHeaderBytes bounds a response's status line and header section;
// it is the size of each connection's read buffer.
const maxResponseHeaderBytes = 64 << 10

// errProtocol marks a response this reader does not take: the connection's
// framing is lost, so the connection is closed.
var errProtocol = errors.New("openloop: unsupported or malformed response")

type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "openloop: " + e.msg }
func (e *protocolError) Unwrap() error { return errProtocol }

// Errors are preallocated: a server answering every request badly must not
// make the load generator allocate per request.
var (
	errHeaderTooLarge = &protocolError{fmt.Sprintf("response header section larger than %d bytes", maxResponseHeaderBytes)}
	errStatusLine     = &protocolError{`malformed status line (want "HTTP/1.x NNN ...")`}
	errHeaderLine     = &protocolError{"malformed response header line"}
	errChunked        = &protocolError{"the server answered with Transfer-Encoding (chunked): only Content-Length bodies are supported"}
	errNoLength       = &protocolError{"response without Content-Length: bodies delimited by closing the connection are not supported"}
	errBadLength      = &protocolError{"malformed or conflicting Content-Length in response"}
	errCutResponse    = errors.New("openloop: connection closed in the middle of a response")
)

// respReader reads HTTP/1.1 responses from one connection: the status line,
// Content-Length, Connection: close, and skips the body. Pipelined responses
// arriving in one read stay buffered for the next call. It allocates nothing.
type respReader struct {
	r        io.Reader
	buf      []byte
	pos, end int // unread bytes are buf[pos:end]
}

func newRespReader(r io.Reader) *respReader {
	return &respReader{r: r, buf: make([]byte, maxResponseHeaderBytes)}
}

// reset drops buffered bytes and reads from r from now on (a new connection).
func (rr *respReader) reset(r io.Reader) {
	rr.r, rr.pos, rr.end = r, 0, 0
}

// fill reads more bytes, moving the unread ones to the front when the buffer
// is full at the end.
func (rr *respReader) fill() error {
	if rr.pos == rr.end {
		rr.pos, rr.end = 0, 0
	} else if rr.end == len(rr.buf) {
		if rr.pos == 0 {
			return errHeaderTooLarge
		}
		rr.end = copy(rr.buf, rr.buf[rr.pos:rr.end])
		rr.pos = 0
	}
	n, err := rr.r.Read(rr.buf[rr.end:])
	rr.end += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

var (
	crlfcrlf            = []byte("\r\n\r\n")
	hdrContentLength    = []byte("Content-Length")
	hdrTransferEncoding = []byte("Transfer-Encoding")
	hdrConnection       = []byte("Connection")
	tokClose            = []byte("close")
)

// read reads one response (skipping 1xx interim ones) and returns its status
// code and whether the server will close the connection after it. head says
// the request was HEAD: its response has no body whatever Content-Length says.
// After an error the connection's framing is lost; close it.
func (rr *respReader) read(head bool) (status int, closeAfter bool, err error) {
	status, _, closeAfter, err = rr.readBody(head, false)
	return status, closeAfter, err
}

// readBody is read that, with wantBody, also returns the body when it fits
// the read buffer (maxResponseHeaderBytes; a larger one is skipped and body
// is nil). body is valid until the next call.
func (rr *respReader) readBody(head, wantBody bool) (status int, body []byte, closeAfter bool, err error) {
	for {
		i := bytes.Index(rr.buf[rr.pos:rr.end], crlfcrlf)
		if i < 0 {
			if err := rr.fill(); err != nil {
				if err == io.EOF && rr.end > rr.pos {
					return 0, nil, false, errCutResponse
				}
				return 0, nil, false, err
			}
			continue
		}
		hdr := rr.buf[rr.pos : rr.pos+i+2] // status line and fields, each ending in CRLF
		rr.pos += i + 4
		status, closeAfter, length, err := parseHead(hdr)
		if err != nil {
			return 0, nil, false, err
		}
		if status < 200 {
			continue // 100 Continue and friends: the real response follows
		}
		if head || status == 204 || status == 304 {
			length = 0
		} else if length < 0 {
			return 0, nil, false, errNoLength
		}
		if wantBody && length <= int64(len(rr.buf)) {
			body, err := rr.take(int(length))
			return status, body, closeAfter, err
		}
		if err := rr.skip(length); err != nil {
			return 0, nil, false, err
		}
		return status, nil, closeAfter, nil
	}
}

// take returns the next n bytes (n <= len(buf)), reading as needed.
func (rr *respReader) take(n int) ([]byte, error) {
	for rr.end-rr.pos < n {
		if err := rr.fill(); err != nil {
			if err == io.EOF {
				return nil, errCutResponse
			}
			return nil, err
		}
	}
	b := rr.buf[rr.pos : rr.pos+n]
	rr.pos += n
	return b, nil
}

// skip discards n body bytes, reading as needed.
func (rr *respReader) skip(n int64) error {
	for {
		avail := int64(rr.end - rr.pos)
		if avail >= n {
			rr.pos += int(n)
			return nil
		}
		n -= avail
		rr.pos, rr.end = 0, 0
		if err := rr.fill(); err != nil {
			if err == io.EOF {
				return errCutResponse
			}
			return err
		}
	}
}

// parseHead parses a status line and header fields, each line ending in CRLF.
// length is -1 without Content-Length.
func parseHead(hdr []byte) (status int, closeAfter bool, length int64, err error) {
	// "HTTP/1.1 202 Accepted": the reason phrase may be empty.
	if len(hdr) < 14 || !bytes.HasPrefix(hdr, []byte("HTTP/1.")) || hdr[8] != ' ' ||
		(len(hdr) > 12 && hdr[12] != ' ' && hdr[12] != '\r') {
		return 0, false, 0, errStatusLine
	}
	for _, c := range hdr[9:12] {
		if c < '0' || c > '9' {
			return 0, false, 0, errStatusLine
		}
		status = status*10 + int(c-'0')
	}
	if status < 100 || status > 599 {
		return 0, false, 0, errStatusLine
	}
	closeAfter = hdr[7] == '0' // HTTP/1.0 closes unless it says keep-alive
	length = -1
	nl := bytes.IndexByte(hdr, '\n')
	for rest := hdr[nl+1:]; len(rest) > 0; {
		nl := bytes.IndexByte(rest, '\n')
		if nl < 1 || rest[nl-1] != '\r' {
			return 0, false, 0, errHeaderLine
		}
		line := rest[:nl-1]
		rest = rest[nl+1:]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return 0, false, 0, errHeaderLine
		}
		name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case bytes.EqualFold(name, hdrContentLength):
			n, ok := parseLength(value)
			if !ok || (length >= 0 && n != length) {
				return 0, false, 0, errBadLength
			}
			length = n
		case bytes.EqualFold(name, hdrTransferEncoding):
			return 0, false, 0, errChunked
		case bytes.EqualFold(name, hdrConnection):
			if bytes.EqualFold(value, tokClose) {
				closeAfter = true
			} else if bytes.EqualFold(value, []byte("keep-alive")) {
				closeAfter = false
			}
		}
	}
	return status, closeAfter, length, nil
}

func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
