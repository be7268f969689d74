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

// devProcess is `flashgate dev` in a process of its own, on fixed addresses
// and one data dir, so that it can be killed and started again in place.
type devProcess struct {
	t      *testing.T
	dir    string
	args   []string
	log    *os.File
	cmd    *exec.Cmd  // the running process, nil when there is none
	exited chan error // cmd's exit
	env    map[string]string
}

func newDevProcess(t *testing.T, dir string, extra ...string) *devProcess {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"dev", "-data-dir", dir, "-edge-addr", freeAddr(t), "-admin-addr", freeAddr(t), "-kafka-addr", freeAddr(t)}
	logf, err := os.Create(filepath.Join(dir, "dev.log"))
	if err != nil {
		t.Fatal(err)
	}
	p := &devProcess{t: t, dir: dir, args: append(args, extra...), log: logf}
	t.Cleanup(func() {
		if p.cmd != nil {
			p.cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-p.exited:
			case <-time.After(time.Minute):
				t.Errorf("flashgate dev did not stop within a minute of SIGINT; its log:\n%s", p.tail())
				p.cmd.Process.Kill()
				<-p.exited
			}
		}
		logf.Close()
	})
	return p
}

// start starts the process and waits until it wrote dev.env (it serves).
func (p *devProcess) start() {
	t := p.t
	t.Helper()
	envPath := filepath.Join(p.dir, "dev.env")
	os.Remove(envPath)
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
	for {
		if env, err := readEnvFile(envPath); err == nil && env["ADMIN_URL"] != "" {
			p.env = env
			return
		}
		select {
		case err := <-p.exited:
			p.cmd = nil
			t.Fatalf("flashgate dev exited before it was ready (%v); its log:\n%s", err, p.tail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("flashgate dev not ready after 2 minutes; its log:\n%s", p.tail())
		}
	}
}

// kill9 kills the process with SIGKILL and waits for it to be gone.
func (p *devProcess) kill9() {
	fmt.Fprintf(p.log, "\n==== kill -9 %s\n", time.Now().Format(time.RFC3339Nano))
	p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

// tail is the end of the process's log.
func (p *devProcess) tail() string {
	b, _ := os.ReadFile(p.log.Name())
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
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
	writeTestTrace(t, tracePath, seed, 16000) // ~8 s at speed 1
	dev := newDevProcess(t, filepath.Join(dir, "dev"))
	dev.start()
	env := dev.env

	ctx := context.Background()
	type result struct {
		out *replay.Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := replay.Run(ctx, replay.Config{
			Trace: tracePath, EdgeAddr: strings.TrimPrefix(env["EDGE_URL"], "http://"), AdminURL: env["ADMIN_URL"],
			Conns: 32, OutDir: filepath.Join(dir, "out"), Timeout: 5 * time.Second, Drain: 5 * time.Second,
		})
		done <- result{out, err}
	}()

	// The fault schedule: kills at random moments of the sale, each
	// followed by a random pause before the restart.
	kills := 2
	var res result
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
	out := res.out
	env = dev.env // PostgreSQL may be on another port after a restart
	vc := replay.VerifyConfig{DatabaseURL: env["DATABASE_URL"], KafkaBrokers: []string{env["KAFKA_BROKERS"]},
		Group: ingest.DefaultConfig().Group, DrainTimeout: 2 * time.Minute}
	if err := replay.Verify(ctx, out, vc); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	if err := report.WriteText(&sb, out.Run); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + sb.String())
	if !replay.Passed(out.Run) {
		t.Fatalf("an invariant broke across kill -9 and restart (seed %d); dev log:\n%s", seed, dev.tail())
	}
	if out.Run.Totals.Outcomes[outcomeIndex(t, out.Run, "accepted")] == 0 {
		t.Fatal("no order was accepted: the test sold nothing")
	}

	// The edge's stock of every SKU matches the ledger's orders: rebuilt,
	// not reset, and every cancel's release applied once.
	pool, err := ledger.Open(ctx, env["DATABASE_URL"], 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	adm, err := broker.NewAdmin([]string{env["KAFKA_BROKERS"]})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	var buf bytes.Buffer
	target := reconcileTarget{pool: pool, adm: adm, group: ingest.DefaultConfig().Group, edges: []string{env["ADMIN_URL"]}}
	deadline := time.Now().Add(time.Minute)
	for {
		buf.Reset()
		diffs, err := reconcile(ctx, target, false, &buf)
		if err != nil {
			t.Fatal(err)
		}
		if diffs == 0 && !strings.Contains(buf.String(), "in flight") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge's stock differs from the ledger (seed %d):\n%s", seed, buf.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
}
