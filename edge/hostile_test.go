package edge

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/lib/testenv"
)

// attackEnv makes the test binary an attacker of the edge at this address
// (see attack) instead of running the tests: a process of its own, so that
// its 10K sockets and the edge's 10K do not share one file-descriptor limit.
const attackEnv = "FLASHGATE_TEST_ATTACK"

// attackCounts is what the attacker saw, printed as JSON when it stops.
type attackCounts struct {
	SlowOpen   int64 // slowloris connections open at the end
	SlowPeak   int64 // most open at once
	SlowClosed int64 // closed by the edge (408 and close)
	Status431  int64 // header floods refused
	Status413  int64 // huge bodies refused
	PipeClosed int64 // pipelining floods cut off by the edge
	DialErrors int64
}

// attack runs until its stdin closes: slowloris connections that send a
// request a byte every second (the edge's header-read timeout closes them;
// they come back), header floods, bodies announced at a gigabyte, and
// connections that pipeline requests without ever reading a response.
func attack(addr string, slow int) {
	var c attackCounts
	stop := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stop) }()
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	dial := func() net.Conn {
		for !stopped() {
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err == nil {
				return conn
			}
			atomic.AddInt64(&c.DialErrors, 1)
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}
	// Slowloris.
	for i := 0; i < slow; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			time.Sleep(time.Duration(i%1000) * time.Millisecond) // ramp up over a second
			for !stopped() {
				conn := dial()
				if conn == nil {
					return
				}
				if n := atomic.AddInt64(&c.SlowOpen, 1); n > atomic.LoadInt64(&c.SlowPeak) {
					atomic.StoreInt64(&c.SlowPeak, n) // racy max; a peak, not an exact one
				}
				req := fmt.Sprintf("POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-User-ID: slow%d\r\nX-Pad: ", i)
				closed := false
				for j := 0; !stopped() && !closed; j++ {
					b := []byte{'a'}
					if j < len(req) {
						b = []byte{req[j]}
					}
					if _, err := conn.Write(b); err != nil {
						closed = true
						break
					}
					select {
					case <-stop:
					case <-time.After(time.Second):
					}
				}
				conn.Close()
				atomic.AddInt64(&c.SlowOpen, -1)
				if closed {
					atomic.AddInt64(&c.SlowClosed, 1)
				}
			}
		}(i)
	}
	// Header floods, huge bodies, pipelining floods: a few connections each,
	// again and again.
	refused := func(req string, want int, count *int64) {
		defer wg.Done()
		for !stopped() {
			conn := dial()
			if conn == nil {
				return
			}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			conn.Write([]byte(req))
			if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
				resp.Body.Close()
				if resp.StatusCode == want {
					atomic.AddInt64(count, 1)
				}
			}
			conn.Close()
		}
	}
	headers := "GET /healthz HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Flood: "+strings.Repeat("f", 100)+"\r\n", 1000) + "\r\n"
	huge := "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-User-ID: huge\r\nContent-Length: 1000000000\r\n\r\n" + strings.Repeat("{", 64<<10)
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go refused(headers, 431, &c.Status431)
		go refused(huge, 413, &c.Status413)
	}
	pipe := strings.Repeat("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 1000)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopped() {
				conn := dial()
				if conn == nil {
					return
				}
				for !stopped() {
					conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
					if _, err := conn.Write([]byte(pipe)); err != nil {
						break
					}
				}
				atomic.AddInt64(&c.PipeClosed, 1)
				conn.Close()
			}
		}()
	}
	<-stop
	wg.Wait()
	json.NewEncoder(os.Stdout).Encode(&c)
}

// TestHostileLoadKeepsServing: while 10,000 slowloris connections, header
// floods, gigabyte bodies and pipelining floods that never read hit the
// edge, a well-behaved client's orders are all answered, the attackers are
// cut off by the limits (408, 431, 413, closed), and the edge's memory
// stays bounded.
func TestHostileLoadKeepsServing(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the hostile load in -short mode")
	}
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "H-1", 1_000_000, func(c *Config) {
		c.HeaderReadTimeout = 3 * time.Second
		c.RatePerIP = RateLimit{} // the well-behaved client's orders all come from one address
	})
	runtime.GC()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	slow := 10_000
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), attackEnv+"="+s.cfg.Addr, fmt.Sprintf("FLASHGATE_TEST_ATTACK_SLOW=%d", slow))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	// Wait until the slowloris connections are in: alone, 9,000-10,000 are
	// open at once; on a CI machine running other packages' tests beside
	// this one, ~5,800, because each lives 3 s (the header-read timeout)
	// and its reconnect waits for SYN retransmits (1 s, then 3 s) when the
	// accept queue overflows. Half of them at once is the bar.
	deadline := time.Now().Add(2 * time.Minute)
	for s.conns.Load() < int64(slow/2) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d connections open after 2 minutes; attacker:\n%s", s.conns.Load(), out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	peakConns := s.conns.Load()

	// The well-behaved client: orders from new users, 100 a second for 8 s,
	// over a few keep-alive connections.
	cl := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	var lat []time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	tick := time.NewTicker(10 * time.Millisecond)
	for i := 0; i < 800; i++ {
		<-tick.C
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req, _ := http.NewRequest("POST", "http://"+s.cfg.Addr+"/v1/orders", strings.NewReader(`{"sku":"H-1","qty":1}`))
			req.Header.Set("X-User-ID", fmt.Sprint("good-", i))
			t0 := time.Now()
			resp, err := cl.Do(req)
			if err != nil {
				t.Errorf("order %d: %v", i, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 202 {
				t.Errorf("order %d: %d, want 202", i, resp.StatusCode)
			}
			mu.Lock()
			lat = append(lat, time.Since(t0))
			mu.Unlock()
		}(i)
	}
	tick.Stop()
	wg.Wait()
	if n := s.conns.Load(); n > peakConns {
		peakConns = n
	}
	// What is live, with the attackers still connected. Twice: objects with
	// finalizers (franz-go's pooled zstd encoders, dropped by sync.Pool at a
	// GC) are freed only by the GC after their finalizer ran.
	runtime.GC()
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	if p := os.Getenv("FLASHGATE_TEST_HEAPPROFILE"); p != "" {
		f, _ := os.Create(p)
		pprof.WriteHeapProfile(f)
		f.Close()
	}

	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("attacker: %v\n%s", err, out.String())
	}
	var c attackCounts
	if err := json.Unmarshal([]byte(out.String()[strings.LastIndexByte(strings.TrimSpace(out.String()), '\n')+1:]), &c); err != nil {
		t.Fatalf("attacker's counts: %v\n%s", err, out.String())
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		t.Logf("well-behaved orders during the attack: %d, p50 %v, p99 %v, max %v", len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	}
	heapGrowth := int64(during.HeapInuse) - int64(before.HeapInuse)
	t.Logf("attacker: %+v; edge connections at peak %d; Go heap in use grew by %d MiB", c, peakConns, heapGrowth>>20)

	// The limits cut every kind of attacker off.
	if c.SlowClosed == 0 || c.Status431 == 0 || c.Status413 == 0 || c.PipeClosed == 0 {
		t.Errorf("an attack was never refused by the edge: %+v", c)
	}
	// Memory: a connection that does not pipeline holds its state and one
	// slot (~2 KiB), a closed one nothing but its state until its timer
	// entry goes: ~50 MiB for this attack (it was 1.1 GiB when every
	// connection had all -edge.maxPipeline slots and kept its output buffer
	// after closing).
	if limit := int64(128 << 20); heapGrowth > limit {
		t.Errorf("the edge's heap grew by %d MiB under the attack, more than %d MiB", heapGrowth>>20, limit>>20)
	}
}
