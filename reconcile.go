package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/edge"
	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/ledger"
)

func runReconcile(ctx context.Context) error {
	brokers, url, err := requireBackends(true)
	if err != nil {
		return err
	}
	adm, _, err := kafkaAdmin(ctx, brokers)
	if err != nil {
		return err
	}
	defer adm.Close()
	pool, err := ledger.Open(ctx, url, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	edges := strings.Split(*reconcileEdges, ",")
	if *reconcileEdges == "" {
		edges = []string{"http://" + *adminAddr}
	}
	diffs, err := reconcile(ctx, reconcileTarget{pool: pool, adm: adm, group: ingest.FlagConfig().Group, edges: edges, token: edge.AdminToken()}, *reconcileRepair, os.Stdout)
	if err == nil && diffs > 0 {
		err = fmt.Errorf("%d differences between the edges and the ledger remain; see above (-reconcile.repair reloads the stock of the SKUs that differ)", diffs)
	}
	return err
}

// reconcileTarget is what reconcile compares: the ledger (after ingest has
// caught up with Kafka) and the edges, through their admin planes.
type reconcileTarget struct {
	pool  *pgxpool.Pool
	adm   *kgo.Client
	group string
	edges []string // admin base URLs
	token string   // admin token, if the edges need one
}

// reconcile compares, for every sale item and edge, the units the edge
// holds taken with the units of the ledger's orders that hold stock, prints
// one line each, and returns how many differ without an explanation (and,
// with repair, could not be repaired). An edge holding more than the ledger
// explains is undersold stock (a lost release, an order never written); one
// holding less than the ledger has orders for is an oversell risk. Both are
// repaired by reloading the SKU's stock on the edge from the ledger.
// Differences explained by work in flight (produces unanswered, orders of
// unknown outcome awaiting reconciliation, releases not yet applied) are
// reported, not repaired. It assumes each edge sells its SKU's whole stock
// (one edge per sale).
func reconcile(ctx context.Context, t reconcileTarget, repair bool, w io.Writer) (int, error) {
	if err := ingest.WaitCaughtUp(ctx, t.adm, t.group, 2*time.Minute); err != nil {
		return 0, err
	}
	items, err := ledger.LoadSaleItems(ctx, t.pool)
	if err != nil {
		return 0, err
	}
	cl := &http.Client{Timeout: 2 * time.Minute}
	get := func(method, url string, v any) (int, error) {
		req, err := http.NewRequestWithContext(ctx, method, url, nil)
		if err != nil {
			return 0, err
		}
		if t.token != "" {
			req.Header.Set("Authorization", "Bearer "+t.token)
		}
		resp, err := cl.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == 200 {
			return 200, json.Unmarshal(b, v)
		}
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	fmt.Fprintf(w, "%-28s %-16s %12s %12s %8s  %s\n", "edge", "sku", "ledger taken", "edge taken", "diff", "verdict")
	diffs := 0
	for _, base := range t.edges {
		base = strings.TrimRight(strings.TrimSpace(base), "/")
		var status struct {
			Produces int64 `json:"produces_in_flight"`
			Unknown  int64 `json:"unknown_orders"`
		}
		if _, err := get("GET", base+"/admin/v1/status", &status); err != nil {
			return diffs, fmt.Errorf("edge %s: %w", base, err)
		}
		for _, li := range items {
			var st edge.SKUState
			code, err := get("GET", base+"/admin/v1/skus/"+li.SKU, &st)
			switch {
			case code == 404:
				fmt.Fprintf(w, "%-28s %-16s %12d %12s %8s  not sold on this edge\n", base, li.SKU, li.TakenUnits, "-", "-")
				continue
			case err != nil:
				return diffs, err
			}
			diff := st.TakenUnits - li.TakenUnits
			verdict := "ok"
			switch {
			case diff == 0:
			case st.ReleaseSeq < li.ReleaseSeq || status.Produces > 0 || status.Unknown > 0:
				verdict = fmt.Sprintf("in flight (%d releases not applied yet, %d produces unanswered, %d orders of unknown outcome): run again later",
					max(0, li.ReleaseSeq-st.ReleaseSeq), status.Produces, status.Unknown)
			case diff > 0:
				verdict = fmt.Sprintf("the edge holds %d units the ledger has no order for (undersold)", diff)
			default:
				verdict = fmt.Sprintf("OVERSELL RISK: the ledger holds orders for %d units the edge does not count", -diff)
			}
			fmt.Fprintf(w, "%-28s %-16s %12d %12d %8d  %s\n", base, li.SKU, li.TakenUnits, st.TakenUnits, diff, verdict)
			if diff == 0 || strings.HasPrefix(verdict, "in flight") {
				continue
			}
			if !repair {
				diffs++
				continue
			}
			var after edge.SKUState
			if _, err := get("POST", base+"/admin/v1/skus/"+li.SKU+"/reload", &after); err != nil {
				diffs++
				fmt.Fprintf(w, "%-28s %-16s repair failed: %v\n", base, li.SKU, err)
				continue
			}
			fmt.Fprintf(w, "%-28s %-16s repaired: stock %d, taken %d, remaining %d (release %d)\n", base, li.SKU, after.Stock, after.TakenUnits, after.Remaining, after.ReleaseSeq)
		}
	}
	return diffs, nil
}
