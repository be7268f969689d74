//go:build !linux

package openloop

import "time"

// sleeper waits for the next request's intended time. Elsewhere than Linux it
// is time.Sleep, whose resolution may be a millisecond or worse: requests are
// then released in bunches and measured latencies include up to that much
// lateness (it shows as the send delay in the Result).
type sleeper struct{}

func newSleeper() *sleeper { return &sleeper{} }

func (s *sleeper) sleep(d time.Duration) {
	if d > 0 {
		time.Sleep(d)
	}
}

func (s *sleeper) close() {}
