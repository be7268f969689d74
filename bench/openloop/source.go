package openloop

import (
	"fmt"
	"strconv"
	"time"
)

// Request is one request of a run: when it is meant to leave, and its bytes.
type Request struct {
	// At is the intended send time, as an offset from the start of the run.
	// Latency is measured from it, not from the moment a connection was free
	// to take the request, so time spent waiting for a connection counts.
	At time.Duration
	// Raw is the complete HTTP/1.1 request: request line, headers, body.
	// A Source appends into Raw[:0] so that the array is reused: the Runner
	// hands the same Request back to Next once Raw has been copied out, so a
	// Source must not keep Raw (nor the Request) after Next returns.
	Raw []byte
	// Tag and Aux are handed back with the request's outcome to
	// Config.OnResponse, untouched: a Source says there which record a
	// request came from and what it was about. Aux is copied like Raw.
	Tag uint64
	Aux []byte
	// Lane picks the address, when Config.Addr lists several: Lane modulo
	// their number. Requests of one lane go to one server.
	Lane uint32
}

// Source yields the requests of a run in non-decreasing order of At.
//
// Next fills r with the next request and reports whether there was one; after
// false the run ends once the requests already due are answered. Next is
// called from one goroutine (the Runner's dispatcher), never concurrently, and
// must not block for long: a request produced late is sent late, and the
// delay counts as latency.
type Source interface {
	Next(r *Request) bool
}

// BuildFunc appends request number i (0, 1, 2, ...) to dst and returns it.
type BuildFunc func(i uint64, dst []byte) []byte

// RateSource sends requests at a fixed rate: request i is due at i/rate
// seconds, until end. It allocates nothing per request unless build does.
type RateSource struct {
	nsPerReq float64
	end      time.Duration
	build    BuildFunc
	i        uint64
}

// NewRateSource returns a Source of rate requests per second whose intended
// send times are below end (0: no end; the Runner's Config.Duration stops
// it). build makes the bytes of each request.
func NewRateSource(rate float64, end time.Duration, build BuildFunc) *RateSource {
	if !(rate > 0) || build == nil {
		panic(fmt.Sprintf("BUG: openloop.NewRateSource needs a positive rate and a build function (rate %v)", rate))
	}
	return &RateSource{nsPerReq: 1e9 / rate, end: end, build: build}
}

// Next implements Source. The time of request i is computed from i, not by
// adding intervals, so rounding does not drift over a long run.
func (s *RateSource) Next(r *Request) bool {
	at := time.Duration(float64(s.i) * s.nsPerReq)
	if s.end > 0 && at >= s.end {
		return false
	}
	r.At = at
	r.Raw = s.build(s.i, r.Raw[:0])
	s.i++
	return true
}

// Header is one header field for AppendRequest.
type Header struct {
	Name, Value string
}

// AppendRequest appends an HTTP/1.1 request to dst: the request line, Host,
// the given header fields, Content-Length when body is not empty (or the
// method is POST, PUT or PATCH), and body. It does not check that the fields
// are valid HTTP; that is the server's job, and testing how a server takes
// invalid requests is a fair use of this package.
func AppendRequest(dst []byte, method, host, path string, headers []Header, body []byte) []byte {
	dst = append(dst, method...)
	dst = append(dst, ' ')
	dst = append(dst, path...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, host...)
	dst = append(dst, "\r\n"...)
	for _, h := range headers {
		dst = append(dst, h.Name...)
		dst = append(dst, ": "...)
		dst = append(dst, h.Value...)
		dst = append(dst, "\r\n"...)
	}
	if len(body) > 0 || method == "POST" || method == "PUT" || method == "PATCH" {
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, int64(len(body)), 10)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	return append(dst, body...)
}
