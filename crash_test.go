package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flashgate/flashgate/bench/replay"
	"github.com/flashgate/flashgate/bench/report"
	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/testenv"
)

// childArgsEnv makes the test binary run `flashgate` with these arguments
// (separated by \x1f) instead of the tests: the crash tests need the stack
// in a process of its own to kill -9 it, and the test binary is already
// built (with the race detector when the tests have it).
const childArgsEnv = "FLASHGATE_TEST_MAIN_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(childArgsEnv); args != "" {
		os.Args = append([]string{"flashgate"}, strings.Split(args, "\x1f")...)
		main()
		os.Exit(0)
	}
	testenv.Main(m)
}

// tortureSeed is $FLASHGATE_TORTURE_SEED, or a new seed; logged so that a
// failing fault schedule can be run again.
func tortureSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FLASHGATE_TORTURE_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("FLASHGATE_TORTURE_SEED=%q: %v", s, err)
		}
	}
	t.Logf("fault schedule seed %d (FLASHGATE_TORTURE_SEED=%d go test -run '%s' replays it)", seed, seed, t.Name())
	return seed
}

// child is a `flashgate` subcommand in a process of its own, so that it can
// be killed with SIGKILL and started again in place (same flags, addresses
// and data).
type child struct {
	t      *testing.T
	name   string
	args   []string
	ready  func() bool // it serves (nil: as soon as it started)
	log    *os.File
	cmd    *exec.Cmd  // the running process, nil when there is none
	exited chan error // cmd's exit
}

func newChild(t *testing.T, logPath string, ready func() bool, args ...string) *child {
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p := &child{t: t, name: "flashgate " + args[0], args: args, ready: ready, log: logf}
	t.Cleanup(func() {
		if p.cmd != nil {
			p.cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-p.exited:
			case <-time.After(time.Minute):
				t.Errorf("%s did not stop within a minute of SIGINT; its log:\n%s", p.name, p.tail())
				p.cmd.Process.Kill()
				<-p.exited
			}
		}
		logf.Close()
	})
	return p
}

// start starts the process and waits until it is ready.
func (p *child) start() {
	t := p.t
	t.Helper()
	fmt.Fprintf(p.log, "\n==== start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childArgsEnv+"="+strings.Join(p.args, "\x1f"))
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the test
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd, p.exited = cmd, make(chan error, 1)
	go func(exited chan<- error) { exited <- cmd.Wait() }(p.exited)
	deadline := time.Now().Add(2 * time.Minute)
	for p.ready != nil && !p.ready() {
		select {
		case err := <-p.exited:
			p.cmd = nil
			t.Fatalf("%s exited before it was ready (%v); its log:\n%s", p.name, err, p.tail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 2 minutes; its log:\n%s", p.name, p.tail())
		}
	}
}

// kill9 kills the process with SIGKILL and waits for it to be gone.
func (p *child) kill9() {
	fmt.Fprintf(p.log, "\n==== kill -9 %s\n", time.Now().Format(time.RFC3339Nano))
	p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

// tail is the end of the process's log.
func (p *child) tail() string {
	b, _ := os.ReadFile(p.log.Name())
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// devChild is `flashgate dev` on fresh addresses and dir; env returns the
// dev.env of the running process (PostgreSQL may change ports on a restart).
func devChild(t *testing.T, dir string) (p *child, env func() map[string]string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	envPath := filepath.Join(dir, "dev.env")
	var cur map[string]string
	ready := func() bool {
		e, err := readEnvFile(envPath)
		if err != nil || e["ADMIN_URL"] == "" {
			return false
		}
		os.Remove(envPath) // the next start writes its own
		cur = e
		return true
	}
	p = newChild(t, filepath.Join(dir, "dev.log"), ready,
		"dev", "-data-dir", dir, "-edge-addr", freeAddr(t), "-admin-addr", freeAddr(t), "-kafka-addr", freeAddr(t))
	return p, func() map[string]string { return cur }
}

// TestKillNineMidSale replays a flash sale against `flashgate dev` and kills
// the whole stack (edge, ingest, broker; PostgreSQL goes down with it) with
// SIGKILL at seeded random moments, starting it again on the same data dir
// after a seeded random pause. The replay goes on throughout: requests sent
// while the stack is down fail, and the ones in flight at a kill have no
// answer. Afterwards every invariant must hold: each 202 is in the ledger
// exactly once, no SKU sold beyond its stock across the restarts (stock is
// rebuilt from the ledger, not reset), per-user limits held, a retried key
// got one order id, no sold-out while stock was left, no order that nobody
// was told about except those whose requests went unanswered; and each
// SKU's stock on the edge matches the ledger's orders exactly.
func TestKillNineMidSale(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the crash test in -short mode")
	}
	seed := tortureSeed(t)
	rng := rand.New(rand.NewPCG(seed, 9))
	dir := testenv.TempDir(t)
	tracePath := filepath.Join(dir, "sale.trace.zst")
	writeTestTrace(t, tracePath, seed, 16000, 60) // ~8 s at speed 1
	dev, devEnv := devChild(t, filepath.Join(dir, "dev"))
	dev.start()
	env := devEnv()

	done := replayInBackground(tracePath, dir, strings.TrimPrefix(env["EDGE_URL"], "http://"), env["ADMIN_URL"], 5*time.Second)

	// The fault schedule: kills at random moments of the sale, each
	// followed by a random pause before the restart.
	kills := 2
	var res replayResult
	finished := false
	for k := 0; k < kills && !finished; k++ {
		wait := time.Duration(300+rng.IntN(2500)) * time.Millisecond
		pause := time.Duration(rng.IntN(1500)) * time.Millisecond
		select {
		case res = <-done:
			finished = true
			continue
		case <-time.After(wait):
		}
		t.Logf("kill -9 after %v more; down for %v", wait, pause)
		dev.kill9()
		time.Sleep(pause)
		dev.start()
	}
	if !finished {
		res = <-done
	}
	if res.err != nil {
		t.Fatalf("replay: %v", res.err)
	}
	env = devEnv() // PostgreSQL may be on another port after a restart
	checkAfterFaults(t, res.out, env["DATABASE_URL"], env["KAFKA_BROKERS"], env["ADMIN_URL"], seed, dev)
}

type replayResult struct {
	out *replay.Outcome
	err error
}

// replayInBackground replays the trace against the edge (32 connections,
// results under dir/out, timeout per response and for the drain) and
// delivers the outcome on the channel.
func replayInBackground(tracePath, dir, edgeAddr, adminURL string, timeout time.Duration) <-chan replayResult {
	done := make(chan replayResult, 1)
	go func() {
		out, err := replay.Run(context.Background(), replay.Config{
			Trace: tracePath, EdgeAddr: edgeAddr, AdminURL: adminURL,
			Conns: 32, OutDir: filepath.Join(dir, "out"), Timeout: timeout, Drain: timeout,
		})
		done <- replayResult{out, err}
	}()
	return done
}

// verifyReplayed runs the replay's verification against the ledger at dbURL
// and the broker at kafka, logs the report, and fails the test (with the
// seed and the processes' logs) unless every invariant PASSes. It returns
// that explanation, for the caller's own checks.
func verifyReplayed(t *testing.T, out *replay.Outcome, dbURL, kafka, when string, seed uint64, logs ...*child) (explain func() string) {
	t.Helper()
	explain = func() string {
		var sb strings.Builder
		fmt.Fprintf(&sb, "seed %d", seed)
		for _, c := range logs {
			fmt.Fprintf(&sb, "\n---- %s log:\n%s", c.name, c.tail())
		}
		return sb.String()
	}
	vc := replay.VerifyConfig{DatabaseURL: dbURL, KafkaBrokers: []string{kafka},
		Group: ingest.DefaultConfig().Group, DrainTimeout: 2 * time.Minute}
	if err := replay.Verify(context.Background(), out, vc); err != nil {
		t.Fatalf("%v (%s)", err, explain())
	}
	var sb strings.Builder
	if err := report.WriteText(&sb, out.Run); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + sb.String())
	if !replay.Passed(out.Run) {
		t.Fatalf("an invariant broke %s (%s)", when, explain())
	}
	return explain
}

// checkAfterFaults verifies a replay that ran through faults: the seven
// invariants of the replay's verification PASS, orders were accepted, and
// each SKU's stock on the edge matches the ledger's orders (rebuilt after a
// restart, not reset; every cancel's release applied once). logs are shown
// when it fails.
func checkAfterFaults(t *testing.T, out *replay.Outcome, dbURL, kafka, adminURL string, seed uint64, logs ...*child) {
	t.Helper()
	ctx := context.Background()
	explain := verifyReplayed(t, out, dbURL, kafka, "under faults", seed, logs...)
	if out.Run.Totals.Outcomes[outcomeIndex(t, out.Run, "accepted")] == 0 {
		t.Fatal("no order was accepted: the test sold nothing")
	}

	pool, err := ledger.Open(ctx, dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	adm, err := broker.NewAdmin([]string{kafka})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	var buf bytes.Buffer
	target := reconcileTarget{pool: pool, adm: adm, group: ingest.DefaultConfig().Group, edges: []string{adminURL}}
	deadline := time.Now().Add(time.Minute)
	for {
		buf.Reset()
		diffs, err := reconcile(ctx, target, false, &buf)
		if err != nil {
			t.Fatal(err)
		}
		if diffs == 0 && !strings.Contains(buf.String(), "in flight") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge's stock differs from the ledger (%s):\n%s", explain(), buf.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
}
