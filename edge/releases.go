package edge

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/lib/broker"
)

// stockReleased is a flash-sale.events record giving an order's units back
// to its sale (the order was cancelled, expired, or cancelled by ingest as a
// duplicate); see docs/records.md.
type stockReleased struct {
	Type       string `json:"type"`
	SKU        string `json:"sku"`
	Qty        int64  `json:"qty"`
	UserID     string `json:"user_id"`
	ReleaseSeq int64  `json:"release_seq"`
}

// runReleases applies the stock releases of flash-sale.events until ctx
// ends. It reads the topic from its start: each SKU's releases are numbered
// (release_seq, in order on the SKU's partition), and the edge applies only
// those numbered above what it loaded from the ledger or applied since, so
// each release is applied exactly once however often it is delivered.
func (s *Server) runReleases(ctx context.Context) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(s.cfg.Brokers...),
		kgo.ConsumeTopics(broker.TopicSaleEvents),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, s.cfg.KafkaOpts...)...)
	if err != nil {
		slog.Error("edge: no consumer of stock releases; cancelled and expired orders' units come back at the next start", "err", err)
		return
	}
	defer cl.Close()
	for ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				slog.Warn("edge: reading stock releases", "topic", t, "partition", p, "err", err)
			}
		})
		fs.EachRecord(func(r *kgo.Record) { s.applyRelease(r.Value) })
	}
}

// applyRelease applies one flash-sale.events record if it is a stock release
// not applied yet, and reports whether it did.
func (s *Server) applyRelease(value []byte) bool {
	var ev stockReleased
	if err := json.Unmarshal(value, &ev); err != nil || ev.Type != "stock_released" {
		return false // other sale events, or not ours to read
	}
	it := s.items.lookup([]byte(ev.SKU))
	if it == nil || ev.Qty <= 0 {
		return false
	}
	for {
		cur := it.releaseSeq.Load()
		if ev.ReleaseSeq <= cur {
			return false // counted in the ledger snapshot, or applied already
		}
		if it.releaseSeq.CompareAndSwap(cur, ev.ReleaseSeq) {
			if ev.ReleaseSeq > cur+1 {
				slog.Warn("edge: stock releases missing (their units stay taken until the next start)", "sku", ev.SKU, "after", cur, "got", ev.ReleaseSeq)
			}
			break
		}
	}
	if s.leases == nil {
		it.giveBack(int(ev.ReleaseSeq%int64(len(it.stripes))), ev.Qty)
	} else { // the units went back to the ledger's pool: orders may lease them
		it.poolEmpty.Store(false)
		it.refilled.Store(true)
	}
	s.purchases.forgive([]byte(ev.UserID), []byte(ev.SKU), ev.Qty)
	releasesAppliedTotal.Inc()
	releasedUnitsTotal.Add(int(ev.Qty))
	return true
}
