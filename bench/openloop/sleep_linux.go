package openloop

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// sleeper waits for the next request's intended time. On Linux it parks on a
// timerfd through the runtime's poller: time.Sleep below 1 ms is about 1 ms
// late when the process is otherwise idle (the runtime's epoll_wait timeout
// has millisecond resolution), which at 10K req/s would release requests in
// bunches of ten and add ~0.5 ms to every latency measured from the intended
// time. The timerfd wakes the poller itself: ~20-50 µs late on this machine.
type sleeper struct {
	fd  int
	f   *os.File
	buf [8]byte
}

func newSleeper() *sleeper {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return &sleeper{fd: -1} // time.Sleep instead: coarser, still correct
	}
	// A non-blocking descriptor is registered with the runtime's poller, so
	// Read parks the goroutine, not the thread.
	return &sleeper{fd: fd, f: os.NewFile(uintptr(fd), "openloop-timerfd")}
}

func (s *sleeper) sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	if s.f == nil {
		time.Sleep(d)
		return
	}
	its := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(s.fd, 0, &its, nil); err != nil {
		time.Sleep(d)
		return
	}
	if _, err := s.f.Read(s.buf[:]); err != nil {
		time.Sleep(d)
	}
}

func (s *sleeper) close() {
	if s.f != nil {
		s.f.Close()
	}
}
