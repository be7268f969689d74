package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/bench/replay"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/testenv"
)

// TestThreeEdgesTwoIngest is the scale-out example of the README on one
// machine: three `flashgate edge` processes (nodes 1-3, stock leases, each on
// its own port) and two `flashgate ingest` processes in one consumer group,
// one embedded broker and one PostgreSQL. A flash sale is replayed across the
// three edges (each user's requests to one of them, as behind a load
// balancer with user affinity) and every invariant of the replay's
// verification must PASS (no oversell, no false sold-out: across edges too),
// and each edge must have sold.
func TestThreeEdgesTwoIngest(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the three-edge fleet in -short mode")
	}
	seed := tortureSeed(t)
	dir := testenv.TempDir(t)
	lease := []string{"-edge.leaseTTL", "10s"}
	st := startSplitStack(t, dir, append([]string{"-edge.nodeID", "1"}, lease...)...)
	tracePath := filepath.Join(dir, "sale.trace.zst")
	writeTestTrace(t, tracePath, seed, 16000, 600)

	second := newChild(t, filepath.Join(dir, "ingest-2.log"), nil, append([]string{"ingest"}, st.backends...)...)
	second.start()
	addrs := []string{st.edgeAddr}
	logs := []*child{st.edge, st.ing, second}
	for node := 2; node <= 3; node++ {
		addr := freeAddr(t)
		e, _ := st.newEdgeAt(t, dir, fmt.Sprint("edge-", node), addr, append([]string{"-edge.nodeID", fmt.Sprint(node)}, lease...)...)
		e.start()
		addrs = append(addrs, addr)
		logs = append(logs, e)
	}

	out, err := replay.Run(context.Background(), replay.Config{
		Trace: tracePath, EdgeAddr: strings.Join(addrs, ","), AdminURL: st.adminURL, Settle: 2 * time.Second,
		Conns: 48, OutDir: filepath.Join(dir, "out"), Timeout: time.Minute, Drain: time.Minute,
	})
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	verifyReplayed(t, out, st.dbURL, st.kafkaAddr, "across three edges", seed, logs...)

	// Every edge sold.
	ctx := context.Background()
	pool, err := ledger.Open(ctx, st.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var perNode [4]int64
	rows, err := pool.Query(ctx, `SELECT (order_id >> 16) & 63, count(*) FROM orders GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var node, n int64
		if err := rows.Scan(&node, &n); err != nil {
			t.Fatal(err)
		}
		if node < 1 || node > 3 {
			t.Fatalf("an order from node %d", node)
		}
		perNode[node] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for node := 1; node <= 3; node++ {
		if perNode[node] == 0 {
			t.Errorf("edge %d (node %d) sold nothing: orders per node %v", node, node, perNode[1:])
		}
	}
	t.Logf("orders per edge %v", perNode[1:])
}
