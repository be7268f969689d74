package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "stallwatch")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// A process stopped for 80 ms is what a host stall looks like from inside:
// stallwatch must report it on every CPU it watches, and nothing like it
// while it runs.
func TestReportsAStop(t *testing.T) {
	bin := build(t)
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, "-cpus", "0", "-duration", "1s", "-json")
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(80 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stallwatch: %v\n%s", err, errb.String())
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("output is not the JSON report: %v\n%s", err, out.String())
	}
	if len(r.CPUs) != 1 || r.CPUs[0].CPU != 0 {
		t.Fatalf("want a report for CPU 0, got %+v", r.CPUs)
	}
	c := r.CPUs[0]
	// ~920 ms of 1 ms sleeps; far fewer would mean the sleeps are not what
	// is measured (the race detector and a loaded machine slow it down, not
	// by 3x).
	if c.Wakeups < 300 {
		t.Errorf("%d wake-ups in %.2fs of 1 ms sleeps", c.Wakeups, r.Seconds)
	}
	if c.Over20ms < 1 || c.MaxMs < 60 {
		t.Errorf("an 80 ms stop was not reported: %+v", c)
	}
	if len(c.LargestMs) == 0 || c.LargestMs[0] != c.MaxMs {
		t.Errorf("largest_ms %v does not start with max_late_ms %v", c.LargestMs, c.MaxMs)
	}
}

func TestRejectsBadFlags(t *testing.T) {
	bin := build(t)
	for _, args := range [][]string{
		{"-cpus", "0,x"},
		{"-cpus", "0,0"},
		{"-cpus", "4096"},
		{"-period", "1us"},
		{"-duration", "-1s"},
		{"extra"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: want exit code 2, got %v: %s", args, err, out)
			continue
		}
		if !strings.HasPrefix(string(out), "stallwatch: ") {
			t.Errorf("%v: the error should name the tool and the problem: %s", args, out)
		}
	}
}

func TestLargestKeepsTheTopFive(t *testing.T) {
	var r cpuReport
	for _, ms := range []float64{1, 7, 30, 6, 100, 5, 8, 9, 25, 2} {
		r.add(time.Duration(ms * float64(time.Millisecond)))
	}
	r.finish()
	want := []float64{100, 30, 25, 9, 8}
	if len(r.LargestMs) != len(want) {
		t.Fatalf("largest %v, want %v", r.LargestMs, want)
	}
	for i := range want {
		if r.LargestMs[i] != want[i] {
			t.Fatalf("largest %v, want %v", r.LargestMs, want)
		}
	}
	if r.Wakeups != 10 || r.Over5ms != 8 || r.Over20ms != 3 || r.MaxMs != 100 {
		t.Fatalf("counts %+v", r)
	}
}
