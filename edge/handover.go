package edge

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// A handover replaces a running edge with a new process on the same address
// (SO_REUSEPORT) without failing requests and without two processes selling
// the same stock:
//
//  1. the new process asks the old one to drain (POST /admin/v1/drain): the
//     old edge answers new orders 503 + Retry-After with Connection: close
//     and returns once every order it handed to Kafka has its answer;
//  2. the new process waits for ingest to catch up, loads the stock from the
//     ledger (everything the old one sold is in it now) and starts serving
//     on the same address: new connections are split between the two;
//  3. it asks the old one to shut down (POST /admin/v1/shutdown?grace=D):
//     the old edge answers for D more, every response with Connection:
//     close, so clients reconnect and find the new one, then exits.
//
// Clients see 503s from the old process between 1 and 3, and nothing fails.
// Connections still waiting in the old listener's accept queue when it
// closes are reset unless net.ipv4.tcp_migrate_req=1 (Linux 5.14+) hands them
// to the new listener; set it on hosts that hand over.

// HandoverDrain is step 1: it asks the edge whose admin plane is at
// adminURL to drain, and returns once it has.
func HandoverDrain(ctx context.Context, adminURL, token string) error {
	return handoverCall(ctx, adminURL+"/admin/v1/drain", token, 200)
}

// HandoverResume gives the drained edge its orders back: the new process
// could not take over after step 1.
func HandoverResume(ctx context.Context, adminURL, token string) error {
	return handoverCall(ctx, adminURL+"/admin/v1/resume", token, 200)
}

// HandoverShutdown is step 3: it asks the old edge to answer for grace more,
// then exit.
func HandoverShutdown(ctx context.Context, adminURL, token string, grace time.Duration) error {
	return handoverCall(ctx, fmt.Sprintf("%s/admin/v1/shutdown?grace=%s", adminURL, grace), token, 202)
}

func handoverCall(ctx context.Context, url, token string, want int) error {
	req, err := http.NewRequestWithContext(ctx, "POST", url, nil)
	if err != nil {
		return fmt.Errorf("handover: %w", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("handover: %w; possible fix: -edge.handoverFrom must be the running edge's admin URL", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != want {
		return fmt.Errorf("handover: POST %s: %d %s", url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}
