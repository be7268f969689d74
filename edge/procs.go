package edge

import (
	"log/slog"
	"os"
	"runtime"
	"sync"
)

// gnet's event loops wait for traffic in epoll_wait, a system call that keeps
// the Go scheduler's P (processor) it was made on. With one loop per P, every
// P can be parked in epoll_wait while the Kafka promise, the producer's and
// the broker's goroutines are runnable; they then wait for the runtime's
// sysmon to take a P back, which sleeps up to 10 ms when the process looks
// idle. Measured (tuning.md, "Every 202 takes a millisecond or more"): at 100
// orders/s, p99 9.9 ms with GOMAXPROCS=2 and 2 loops, 1.4 ms with 4.
//
// So the edge gives the runtime one P per event loop on top of the ones it
// had: the loops' Ps are mostly parked, and the rest of the process always
// finds a free one. A GOMAXPROCS set in the environment is left as it is.
var procs struct {
	sync.Mutex
	base int // GOMAXPROCS before the first edge started
}

// baseProcs is GOMAXPROCS as it was before any edge raised it: the default
// number of event loops.
func baseProcs() int {
	procs.Lock()
	defer procs.Unlock()
	return baseProcsLocked()
}

func baseProcsLocked() int {
	if procs.base == 0 {
		procs.base = runtime.GOMAXPROCS(0)
	}
	return procs.base
}

// reserveProcs raises GOMAXPROCS to the base plus loops (several edges in one
// process, as in tests, take the largest).
func reserveProcs(loops int) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	procs.Lock()
	defer procs.Unlock()
	if want := baseProcsLocked() + loops; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
		slog.Debug("edge: GOMAXPROCS raised to keep a P free of the event loops", "gomaxprocs", want, "loops", loops)
	}
}
