package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSnap is the CPU time used so far by this process (the ingest workers,
// the embedded broker and the producer all run in it), by the PostgreSQL
// cluster (postmaster, its live children, and the children it has reaped),
// by the kernel outside any process's context (kernel threads such as the
// page cache's writeback, interrupts), and by the whole machine: what none
// of these used is other processes' work on a shared machine.
type cpuSnap struct {
	self, pg, kernel, busy time.Duration
}

// clkTck is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clkTck = 100

func takeCPU(pgDataDir string) cpuSnap {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	busy, irq := machineBusy()
	return cpuSnap{self: self, pg: pgCPU(pgDataDir), kernel: irq + kernelThreadsCPU(), busy: busy}
}

func (a cpuSnap) sub(b cpuSnap) cpuSnap {
	// A kernel thread that exited in between takes its time with it: never below 0.
	return cpuSnap{self: a.self - b.self, pg: a.pg - b.pg, kernel: max(0, a.kernel-b.kernel), busy: a.busy - b.busy}
}

// other is the CPU time other processes used during the run.
func (a cpuSnap) other() time.Duration { return max(0, a.busy-a.self-a.pg-a.kernel) }

// machineBusy returns the non-idle CPU time of all CPUs since boot, and the
// part of it spent in interrupts (irq, softirq) and stolen by the hypervisor.
func machineBusy() (busy, irq time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var all, intr int64
	for i, v := range f {
		if i == 0 || i == 4 || i == 5 || i > 8 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		all += n
		if i >= 6 {
			intr += n
		}
	}
	return time.Duration(all) * time.Second / clkTck, time.Duration(intr) * time.Second / clkTck
}

// pfKthread is PF_KTHREAD in /proc/<pid>/stat's flags.
const pfKthread = 0x00200000

// kernelThreadsCPU sums the CPU time of the kernel threads (writeback of
// the files PostgreSQL and the broker write, among others).
func kernelThreadsCPU() time.Duration {
	var ticks int64
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); f != nil && f[8]&pfKthread != 0 {
			ticks += f[13] + f[14]
		}
	}
	return time.Duration(ticks) * time.Second / clkTck
}

// pgCPU sums the CPU time of the cluster whose postmaster.pid is in dir.
// Backends that exited are in the postmaster's cutime/cstime once reaped.
func pgCPU(dir string) time.Duration {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	var ticks int64
	if f := statFields(pm); f != nil {
		ticks += f[13] + f[14] + f[15] + f[16] // utime stime cutime cstime
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pm {
			continue
		}
		if f := statFields(pid); f != nil && f[3] == int64(pm) {
			ticks += f[13] + f[14]
		}
	}
	return time.Duration(ticks) * time.Second / clkTck
}

// statFields returns the numeric fields of /proc/pid/stat, indexed as in
// proc(5) minus one (f[3] is ppid, f[13] utime), or nil.
func statFields(pid int) []int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // comm may hold spaces
	if i < 0 {
		return nil
	}
	rest := strings.Fields(s[i+1:])
	f := make([]int64, 2+len(rest))
	for j, v := range rest {
		f[2+j], _ = strconv.ParseInt(v, 10, 64)
	}
	return f
}

func numCPU() int { return runtime.NumCPU() }
