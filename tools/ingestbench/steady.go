package main

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/ingest"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
)

// Latencies in µs, 1 µs to 10 min, 3 significant digits.
func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 600_000_000, 3) }

// steadyResult is the latency phase's outcome.
type steadyResult struct {
	sent, measured int64 // records produced in all / in the measured window
	window         time.Duration
	produceErrs    int64
	ack            *hdrhistogram.Histogram // intended send -> broker ack, every measured record
	visible        *hdrhistogram.Histogram // intended send -> row seen by the poller, sampled records
	ackToVisible   *hdrhistogram.Histogram // broker ack -> row seen, sampled records: ingest's share
	sendDelay      *hdrhistogram.Histogram // intended send -> handed to the producer
	missing        int                     // sampled records never seen
	polls          int64
	pollTime       time.Duration // total time spent in poll queries
	cpu            cpuSnap
}

// pendingSet holds the sampled orders not yet both seen in the ledger and
// acknowledged by the broker, by id.
type pendingSet struct {
	mu sync.Mutex
	m  map[int64]*sampled
	// ackToVisible: broker ack -> row seen, for sampled orders seen after
	// their ack (0 when seen first: fetched before the ack reached us).
	ackToVisible *hdrhistogram.Histogram
}

type sampled struct {
	intended, acked, seen time.Time
}

func (p *pendingSet) add(id int64, at time.Time) {
	p.mu.Lock()
	p.m[id] = &sampled{intended: at}
	p.mu.Unlock()
}

// unseen appends the ids not seen yet to dst.
func (p *pendingSet) unseen(dst []int64) []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, s := range p.m {
		if s.seen.IsZero() {
			dst = append(dst, id)
		}
	}
	return dst
}

// see marks id seen at t and returns its intended send time.
func (p *pendingSet) see(id int64, t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.m[id]
	if !ok || !s.seen.IsZero() {
		return time.Time{}, false
	}
	s.seen = t
	p.done(id, s)
	return s.intended, true
}

// ack marks id acknowledged at t.
func (p *pendingSet) ack(id int64, t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.m[id]; ok {
		s.acked = t
		p.done(id, s)
	}
}

func (p *pendingSet) done(id int64, s *sampled) {
	if s.seen.IsZero() || s.acked.IsZero() {
		return
	}
	p.ackToVisible.RecordValue(max(0, s.seen.Sub(s.acked).Microseconds()))
	delete(p.m, id)
}

// unseenCount is how many sampled orders were not seen yet.
func (p *pendingSet) unseenCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.m {
		if s.seen.IsZero() {
			n++
		}
	}
	return n
}

// runSteady produces orders open loop at -steadyRate for -steadyWarmup +
// -steadyDuration while the ingest service (defaults, a group positioned at
// the end of order.created) writes them, and measures for every
// -sampleEvery'th order of the measured window the time from its intended
// send time until a poller, querying the sampled ids by primary key every
// -pollEvery, first sees its row. The true visibility time lies between the
// previous poll and this one, so the figures are upper bounds, late by at
// most one poll interval plus a query.
func runSteady(ctx context.Context, e *env, profile string) (steadyResult, error) {
	const group = "ingestbench-steady"
	if err := groupAtEnd(ctx, e.adm, group); err != nil {
		return steadyResult{}, err
	}
	cfg := ingest.FlagConfig() // the defaults, unless -ingest.* flags are given
	cfg.Brokers = e.brokers
	cfg.Group = group
	svc, err := ingest.Start(cfg, e.pool)
	if err != nil {
		return steadyResult{}, err
	}
	defer svc.Stop()
	if err := waitStable(ctx, e.adm, group); err != nil {
		return steadyResult{}, err
	}
	prod, err := newProducer(e.brokers[0])
	if err != nil {
		return steadyResult{}, err
	}
	defer prod.Close()

	res := steadyResult{ack: newHist(), visible: newHist(), sendDelay: newHist()}
	pending := &pendingSet{m: make(map[int64]*sampled), ackToVisible: newHist()}
	var ackMu sync.Mutex
	var produceErrs atomic.Int64
	rate := *steadyRate
	start := time.Now()
	measureFrom := start.Add(*steadyWarmup)
	end := measureFrom.Add(*steadyDuration)
	since := start.Add(-time.Minute) // created_at bound: prunes to the current partitions

	// The poller.
	pollDone := make(chan struct{})
	producing := atomic.Bool{}
	producing.Store(true)
	go func() {
		defer close(pollDone)
		var ids []int64
		for {
			t0 := time.Now()
			ids = pending.unseen(ids[:0])
			if len(ids) > 0 {
				rows, err := e.pool.Query(ctx, "SELECT order_id FROM orders WHERE order_id = ANY($1) AND created_at >= $2", ids, since)
				if err == nil {
					for rows.Next() {
						var id int64
						if rows.Scan(&id) == nil {
							if at, ok := pending.see(id, t0); ok {
								res.visible.RecordValue(t0.Sub(at).Microseconds())
							}
						}
					}
					rows.Close()
				}
				res.polls++
				res.pollTime += time.Since(t0)
			}
			if !producing.Load() && pending.unseenCount() == 0 {
				return
			}
			if !producing.Load() && time.Since(end) > 30*time.Second {
				return // the rest count as missing
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(t0.Add(*pollEvery))):
			}
		}
	}()

	var cpu0 cpuSnap
	profiling := false
	gen := newOrderGen(2, *seed+1)
	var o order.Order
	for i := int64(0); ; {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		if !profiling && !now.Before(measureFrom) {
			cpu0 = takeCPU(e.pgDir)
			if profile != "" {
				f, err := os.Create(profile)
				if err != nil {
					return res, err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return res, err
				}
				defer pprof.StopCPUProfile()
			}
			profiling = true
		}
		due := int64(now.Sub(start).Seconds()*rate) + 1
		for ; i < due; i++ {
			intended := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			measured := !intended.Before(measureFrom)
			sampledID := int64(0)
			gen.next(&o)
			val := order.AppendJSON(make([]byte, 0, 256), &o)
			if measured {
				res.measured++
				res.sendDelay.RecordValue(time.Since(intended).Microseconds())
				if res.measured%int64(*sampleEvery) == 0 {
					pending.add(o.ID, intended)
					sampledID = o.ID
				}
			}
			res.sent++
			prod.Produce(ctx, &kgo.Record{Key: []byte(o.UserID), Value: val}, func(_ *kgo.Record, err error) {
				if err != nil {
					produceErrs.Add(1)
					return
				}
				if measured {
					now := time.Now()
					ackMu.Lock()
					res.ack.RecordValue(now.Sub(intended).Microseconds())
					ackMu.Unlock()
					if sampledID != 0 {
						pending.ack(sampledID, now)
					}
				}
			})
		}
		time.Sleep(200 * time.Microsecond)
	}
	res.window = *steadyDuration
	res.cpu = takeCPU(e.pgDir).sub(cpu0)
	if err := prod.Flush(ctx); err != nil {
		return res, err
	}
	producing.Store(false)
	<-pollDone
	res.missing = pending.unseenCount()
	res.ackToVisible = pending.ackToVisible
	res.produceErrs = produceErrs.Load()
	if err := ingest.WaitCaughtUp(ctx, e.adm, group, 2*time.Minute); err != nil {
		return res, err
	}
	return res, nil
}

// groupAtEnd commits the end offsets of order.created for group, so that a
// service started under it takes only what is produced from now on.
func groupAtEnd(ctx context.Context, cl *kgo.Client, group string) error {
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, broker.TopicOrderCreated)
	if err != nil {
		return err
	}
	if err := ends.Error(); err != nil {
		return err
	}
	return adm.CommitAllOffsets(ctx, group, ends.Offsets())
}

// waitStable waits until group has a member and a settled assignment.
func waitStable(ctx context.Context, cl *kgo.Client, group string) error {
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		gs, err := adm.DescribeGroups(ctx, group)
		if err == nil {
			if g, ok := gs[group]; ok && g.State == "Stable" && len(g.Members) > 0 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("consumer group %s did not settle within 30s", group)
}
