// Command stallwatch measures how long the machine itself stops CPUs: on each
// watched CPU a thread pinned there sleeps -period in a loop and records how
// late it wakes. A process on that CPU, however busy, delays such a wake-up by
// a few milliseconds (the kernel preempts it for a thread that slept; 11 ms
// at most, measured against a process spinning on that CPU);
// a wake-up tens of milliseconds late means the CPU did not run at all: on
// this VM the host takes a vCPU away for ~100 ms a few times a minute, idle
// or not (tuning.md, "p99 of tens of milliseconds in some runs and not
// others: host stalls"). The benchmarks run it beside their
// measured runs so that a p99 made by such a stall can be told from one made
// by the server.
//
//	stallwatch -cpus 0,1 -duration 12s -json
//
// It costs each watched CPU one wake-up per -period (~0.5% of a CPU at 1 ms).
package main

import (
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	cpusFlag = flag.String("cpus", "", "comma-separated CPUs to watch; default: every CPU this process may run on")
	duration = flag.Duration("duration", 0, "how long to watch; 0 = until SIGINT or SIGTERM")
	period   = flag.Duration("period", time.Millisecond, "how long each thread sleeps between wake-ups")
	jsonOut  = flag.Bool("json", false, "print the report as JSON on stdout instead of a line per CPU")
)

// Thresholds of the report's counts. lateLong is what the benchmarks call a
// host stall: far above any scheduling delay a process can cause another.
const (
	lateShort = 5 * time.Millisecond
	lateLong  = 20 * time.Millisecond
	keepTop   = 5
)

// cpuReport is what one CPU's thread saw.
type cpuReport struct {
	CPU       int       `json:"cpu"`
	Wakeups   int64     `json:"wakeups"`
	Over5ms   int       `json:"over_5ms"`
	Over20ms  int       `json:"over_20ms"`
	MaxMs     float64   `json:"max_late_ms"`
	LateMs    float64   `json:"late_ms_over_5ms"` // the sum of the lateness of the wake-ups over 5 ms
	LargestMs []float64 `json:"largest_ms"`       // the largest lateness seen, largest first
}

type report struct {
	Seconds  float64     `json:"seconds"`
	PeriodUs int64       `json:"period_us"`
	CPUs     []cpuReport `json:"cpus"`
}

func main() {
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: stallwatch [-cpus 0,1] [-duration 10s] [-period 1ms] [-json]\n\nReports how late a thread pinned to each CPU wakes from short sleeps: host stalls.\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		usageError("unexpected arguments %q (all options are flags)", flag.Args())
	}
	if *period < 100*time.Microsecond || *period > time.Second {
		usageError("-period %v is outside 100µs..1s", *period)
	}
	if *duration < 0 {
		usageError("-duration must not be negative")
	}
	cpus, err := parseCPUs(*cpusFlag)
	if err != nil {
		usageError("%v", err)
	}
	// One P per pinned thread and one to spare: a thread back from its
	// sleep must find a P at once, or the wait for one would count as a
	// stall.
	runtime.GOMAXPROCS(len(cpus) + 1)

	var stop atomic.Bool
	reports := make([]cpuReport, len(cpus))
	errs := make(chan error, len(cpus))
	var wg sync.WaitGroup
	start := time.Now()
	for i, cpu := range cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := watch(cpu, *period, &stop, &reports[i]); err != nil {
				errs <- err
				stop.Store(true)
			}
		}()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	var timeout <-chan time.Time
	if *duration > 0 {
		timeout = time.After(*duration)
	}
	select {
	case <-sig:
	case <-timeout:
	case err := <-errs:
		fmt.Fprintln(os.Stderr, "stallwatch:", err)
		os.Exit(1)
	}
	stop.Store(true)
	wg.Wait()
	for i := range reports {
		reports[i].finish()
	}
	r := report{Seconds: time.Since(start).Seconds(), PeriodUs: period.Microseconds(), CPUs: reports}
	if *jsonOut {
		_ = json.NewEncoder(os.Stdout).Encode(r)
		return
	}
	for _, c := range r.CPUs {
		fmt.Printf("cpu%d: %d wake-ups in %.1fs; late over 5 ms: %d (%.1f ms in all), over 20 ms: %d; largest %v ms\n",
			c.CPU, c.Wakeups, r.Seconds, c.Over5ms, c.LateMs, c.Over20ms, c.LargestMs)
	}
}

// watch pins the calling goroutine's thread to cpu and records into rep how
// late each sleep of d ends, until stop.
func watch(cpu int, d time.Duration, stop *atomic.Bool, rep *cpuReport) error {
	runtime.LockOSThread() // the thread dies with the goroutine: never unlocked
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pinning a thread to CPU %d: %w", cpu, err)
	}
	rep.CPU = cpu
	ts := unix.NsecToTimespec(int64(d))
	last := time.Now()
	for !stop.Load() {
		// A blocking sleep in the kernel, not a Go timer: the wake-up
		// comes from this CPU's own timer, so its lateness is this CPU's.
		_ = unix.Nanosleep(&ts, nil) // EINTR: a short sleep, still a wake-up
		now := time.Now()
		rep.add(now.Sub(last) - d)
		last = now
	}
	return nil
}

func (r *cpuReport) add(late time.Duration) {
	r.Wakeups++
	if late < lateShort {
		return
	}
	ms := float64(late) / 1e6
	r.Over5ms++
	r.LateMs += ms
	if late >= lateLong {
		r.Over20ms++
	}
	i, _ := slices.BinarySearchFunc(r.LargestMs, ms, func(a, b float64) int { return cmp.Compare(b, a) }) // largest first
	if i < keepTop {
		r.LargestMs = slices.Insert(r.LargestMs, i, ms)
		if len(r.LargestMs) > keepTop {
			r.LargestMs = r.LargestMs[:keepTop]
		}
	}
}

// finish fills in what the report derives from the wake-ups recorded.
func (r *cpuReport) finish() {
	if len(r.LargestMs) > 0 {
		r.MaxMs = r.LargestMs[0]
	}
}

// parseCPUs reads -cpus; empty means every CPU of this process's affinity.
func parseCPUs(s string) ([]int, error) {
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		return nil, fmt.Errorf("reading this process's CPUs: %w", err)
	}
	if s == "" {
		var cpus []int
		for c := 0; c < 1024; c++ {
			if allowed.IsSet(c) {
				cpus = append(cpus, c)
			}
		}
		return cpus, nil
	}
	var cpus []int
	for _, f := range strings.Split(s, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 0 {
			return nil, fmt.Errorf("-cpus %q: %q is not a CPU number", s, f)
		}
		if !allowed.IsSet(c) {
			return nil, fmt.Errorf("-cpus %q: this process may not run on CPU %d (see taskset, nproc)", s, c)
		}
		if slices.Contains(cpus, c) {
			return nil, fmt.Errorf("-cpus %q: CPU %d twice", s, c)
		}
		cpus = append(cpus, c)
	}
	return cpus, nil
}

func usageError(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "stallwatch: "+format+"\n", args...)
	fmt.Fprintln(os.Stderr, "run 'stallwatch -h' for the flags")
	os.Exit(2)
}
