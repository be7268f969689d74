package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/order"
	"github.com/flashgate/flashgate/lib/orderid"
)

// orderGen makes orders that look like the edge's: ids from an orderid
// generator (created_at is derived from them), users drawn from -users, a
// few SKUs, the client address always set, an Idempotency-Key on a
// -idemKeys fraction of them.
type orderGen struct {
	ids       *orderid.Generator
	rnd       *rand.Rand
	users     int
	skus      int
	idemShare float64
}

func newOrderGen(node int, seed uint64) *orderGen {
	return &orderGen{
		ids:       orderid.MustNew(node, 0),
		rnd:       rand.New(rand.NewPCG(seed, 0x1f1f)),
		users:     *users,
		skus:      4,
		idemShare: *idemKeys,
	}
}

func (g *orderGen) next(o *order.Order) {
	id := g.ids.Next()
	*o = order.Order{
		ID:         id,
		UserID:     "u" + strconv.Itoa(1+g.rnd.IntN(g.users)),
		SKU:        "SALE-" + strconv.Itoa(g.rnd.IntN(g.skus)),
		Qty:        1,
		PriceCents: 1999,
		ClientIP:   fmt.Sprintf("10.%d.%d.%d", g.rnd.IntN(256), g.rnd.IntN(256), 1+g.rnd.IntN(254)),
		CreatedAt:  orderid.Time(id),
	}
	if g.idemShare > 0 && g.rnd.Float64() < g.idemShare {
		o.IdemKey = fmt.Sprintf("%016x%016x", g.rnd.Uint64(), g.rnd.Uint64())
	}
}

// newProducer is a producer set up like the edge's (edge/server.go): acks
// from all in-sync replicas, zstd, no linger, keyed by user id. Only the
// buffer caps are larger, for the pre-production.
func newProducer(addr string) (*kgo.Client, error) {
	return kgo.NewClient(
		kgo.SeedBrokers(addr),
		kgo.DefaultProduceTopic(broker.TopicOrderCreated),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		broker.Compression(broker.CompressMin),
		kgo.ProducerLinger(0),
		kgo.MaxBufferedRecords(200_000),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
	)
}

// preProduce produces n orders into order.created and writes the same rows,
// as CSV in the orders(...) column order of copyColumns, to csvPath. It
// returns the record value bytes produced.
func preProduce(ctx context.Context, addr string, n int, csvPath string) (int64, error) {
	prod, err := newProducer(addr)
	if err != nil {
		return 0, err
	}
	defer prod.Close()
	f, err := os.Create(csvPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	var (
		mu       sync.Mutex
		firstErr error
		bytes    int64
	)
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}
	}
	gen := newOrderGen(1, *seed)
	var o order.Order
	var line []byte
	for i := 0; i < n; i++ {
		gen.next(&o)
		val := order.AppendJSON(make([]byte, 0, 256), &o)
		bytes += int64(len(val))
		prod.Produce(ctx, &kgo.Record{Key: []byte(o.UserID), Value: val}, promise)
		line = appendCSV(line[:0], &o)
		if _, err := w.Write(line); err != nil {
			return 0, err
		}
	}
	if err := prod.Flush(ctx); err != nil {
		return 0, err
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	mu.Lock()
	defer mu.Unlock()
	return bytes, firstErr
}

// copyColumns are the columns ingest writes (ledger.orderColumns), in order.
const copyColumns = "order_id, user_id, sku, qty, price_cents, idempotency_key, client_ip, created_at"

// appendCSV appends o as one CSV line for copyColumns. An absent
// idempotency key is an unquoted empty field: NULL, as ingest writes it.
// The generated fields hold no commas, quotes or newlines.
func appendCSV(dst []byte, o *order.Order) []byte {
	dst = strconv.AppendInt(dst, o.ID, 10)
	dst = append(dst, ',')
	dst = append(dst, o.UserID...)
	dst = append(dst, ',')
	dst = append(dst, o.SKU...)
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, int64(o.Qty), 10)
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, o.PriceCents, 10)
	dst = append(dst, ',')
	dst = append(dst, o.IdemKey...)
	dst = append(dst, ',')
	dst = append(dst, o.ClientIP...)
	dst = append(dst, ',')
	dst = order.AppendTime(dst, o.CreatedAt)
	return append(dst, '\n')
}

// since formats d in seconds with millisecond precision.
func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }
