// Command openloop sends POST /v1/orders to a flashgate edge (or any HTTP/1.1
// server) at a fixed rate, open loop: requests leave on schedule whatever the
// server's speed, and latency is measured from each request's intended send
// time (see package bench/openloop). It prints a line of progress per second
// to stderr and a summary at the end; -json prints the summary as JSON on
// stdout for scripts.
//
//	go run ./tools/openloop -url 127.0.0.1:8080 -rate 50000 -duration 30s -conns 64
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flashgate/flashgate/bench/openloop"
)

var (
	addrFlag = flag.String("url", "127.0.0.1:8080", "the server's host:port (an http:// prefix is accepted; https is not supported)")
	rate     = flag.Float64("rate", 0, "requests per second, required; the schedule holds whatever the server does, so past its capacity latency grows with the run")
	duration = flag.Duration("duration", 10*time.Second, "measured time, after -warmup")
	warmup   = flag.Duration("warmup", 2*time.Second, "time sent at the same rate before measuring, left out of the summary (connections, caches and buffers settle)")
	conns    = flag.Int("conns", 64, "keep-alive connections; a request due while all are busy waits and its wait counts, so too few shows as latency and 'unsent'")
	pipeline = flag.Int("pipeline", 1, "most requests written at once on a connection (those already due); 1 = no pipelining")
	users    = flag.Int("users", 100000, "X-User-ID rotates over u1..uN; keep rate/N under the edge's -edge.ratePerUser or see 429s")
	sku      = flag.String("sku", "BENCH", "SKU of every order")
	qty      = flag.Int("qty", 1, "units per order")
	path     = flag.String("path", "/v1/orders", "request path")
	timeout  = flag.Duration("timeout", 10*time.Second, "per response; slower is an error and the connection is replaced")
	drain    = flag.Duration("drain", 5*time.Second, "wait this long after the last request is due for outstanding responses")
	jsonOut  = flag.Bool("json", false, "print the summary as JSON on stdout (the text summary goes to stderr)")
	quiet    = flag.Bool("quiet", false, "no progress lines")
	cpuProf  = flag.String("cpuprofile", "", "write the generator's CPU profile to this file (is the generator the limit?)")
)

func main() {
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: openloop -rate N [flags]\n\nSends POST %s with {\"sku\":..,\"qty\":..} at a fixed rate, open loop.\n\nFlags:\n", *path)
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		usageError("unexpected arguments %q (all options are flags)", flag.Args())
	}
	addr, err := checkFlags()
	if err != nil {
		usageError("%v", err)
	}

	body, _ := json.Marshal(struct {
		SKU string `json:"sku"`
		Qty int    `json:"qty"`
	}{*sku, *qty})
	prefix := []byte("POST " + *path + " HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nX-User-ID: u")
	suffix := []byte("\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body))
	nUsers := uint64(*users)
	build := func(i uint64, dst []byte) []byte {
		dst = append(dst, prefix...)
		dst = strconv.AppendUint(dst, i%nUsers+1, 10)
		return append(dst, suffix...)
	}

	r, err := openloop.New(openloop.Config{
		Addr: addr, Conns: *conns, Pipeline: *pipeline,
		Warmup: *warmup, Duration: *duration, Timeout: *timeout, Drain: *drain,
	}, openloop.NewRateSource(*rate, 0, build))
	if err != nil {
		usageError("%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { // a second signal exits at once
		<-ctx.Done()
		stop()
	}()
	progCtx, progStop := context.WithCancel(ctx)
	progDone := make(chan struct{})
	if *quiet {
		close(progDone)
	} else {
		fmt.Fprintf(os.Stderr, "openloop: %s, %.0f req/s, %d connections, warm-up %v, measured %v\n", addr, *rate, *conns, *warmup, *duration)
		go func() {
			defer close(progDone)
			progress(progCtx, r)
		}()
	}
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			usageError("-cpuprofile: %v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			usageError("-cpuprofile: %v", err)
		}
		defer pprof.StopCPUProfile()
	}
	res, err := r.Run(ctx)
	progStop()
	<-progDone
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	text := io.Writer(os.Stdout)
	if *jsonOut {
		text = os.Stderr
	}
	fmt.Fprintf(text, "target %.0f req/s, ", *rate)
	res.WriteText(text)
	if *jsonOut {
		out, err := json.MarshalIndent(struct {
			TargetRate float64 `json:"target_per_s"`
			Warmup     float64 `json:"warmup_s"`
			Users      int     `json:"users"`
			Non2xx     uint64  `json:"non_2xx"`
			*openloop.Result
		}{*rate, warmup.Seconds(), *users, res.Non2xx(), res}, "", "  ")
		if err != nil {
			fmt.Fprintln(os.Stderr, "openloop:", err)
			os.Exit(1)
		}
		fmt.Println(string(out))
	}
}

func progress(ctx context.Context, r *openloop.Runner) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	r.Progress() // start the first interval now
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fmt.Fprintln(os.Stderr, r.Progress())
		}
	}
}

// checkFlags returns the host:port to dial.
func checkFlags() (string, error) {
	a := *addrFlag
	if strings.HasPrefix(a, "https://") {
		return "", fmt.Errorf("-url %q: https is not supported; point it at the plain-HTTP listener", a)
	}
	a = strings.TrimPrefix(a, "http://")
	a = strings.TrimSuffix(a, "/")
	if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
		return "", fmt.Errorf("-url %q is not host:port (e.g. 127.0.0.1:8080)", *addrFlag)
	}
	switch {
	case !(*rate > 0):
		return "", fmt.Errorf("-rate is required: requests per second, above 0 (got %v)", *rate)
	case *rate > 10e6:
		return "", fmt.Errorf("-rate %v is above 10M req/s, beyond what one generator can send; split the load", *rate)
	case *duration <= 0:
		return "", fmt.Errorf("-duration must be above 0 (got %v)", *duration)
	case *warmup < 0:
		return "", fmt.Errorf("-warmup must not be negative (got %v)", *warmup)
	case *conns < 1:
		return "", fmt.Errorf("-conns must be at least 1 (got %d)", *conns)
	case *pipeline < 1:
		return "", fmt.Errorf("-pipeline must be at least 1 (got %d)", *pipeline)
	case *users < 1:
		return "", fmt.Errorf("-users must be at least 1 (got %d)", *users)
	case *qty < 1:
		return "", fmt.Errorf("-qty must be at least 1 (got %d)", *qty)
	case *sku == "":
		return "", fmt.Errorf("-sku must not be empty")
	case !strings.HasPrefix(*path, "/") || strings.ContainsAny(*path, " \r\n"):
		return "", fmt.Errorf("-path %q must start with / and hold no spaces or line breaks", *path)
	}
	return a, nil
}

func usageError(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "openloop: "+format+"\nRun 'openloop -help' for the flags.\n", args...)
	os.Exit(2)
}
