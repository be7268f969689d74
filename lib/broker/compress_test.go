package broker

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// batchCodecs records the codec of every batch a client wrote or read.
type batchCodecs struct {
	mu      sync.Mutex
	written []kgo.ProduceBatchMetrics
	read    map[uint8]int // codec -> batches
}

func (b *batchCodecs) OnProduceBatchWritten(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.ProduceBatchMetrics) {
	b.mu.Lock()
	b.written = append(b.written, m)
	b.mu.Unlock()
}

func (b *batchCodecs) writtenRecords() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.written {
		n += m.NumRecords
	}
	return n
}

func (b *batchCodecs) OnFetchBatchRead(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.FetchBatchMetrics) {
	b.mu.Lock()
	b.read[m.CompressionType]++
	b.mu.Unlock()
}

// TestCompressionSkipsSmallBatches: batches under the minimum go out
// uncompressed, larger ones zstd, and a consumer reads both back intact.
func TestCompressionSkipsSmallBatches(t *testing.T) {
	_, addr := startKfake(t)
	const codecZstd = 4
	hooks := &batchCodecs{read: map[uint8]int{}}
	prod, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DefaultProduceTopic(testTopic), kgo.RequiredAcks(kgo.AllISRAcks()),
		Compression(CompressMin), kgo.ProducerLinger(50*time.Millisecond), kgo.WithHooks(hooks))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	value := func(i int) []byte {
		return fmt.Appendf(nil, `{"v":1,"order_id":"%d","user_id":"u%d","sku":"BENCH","qty":1,"price_cents":100}`, 254292496429875200+i, i)
	}
	var want [][]byte
	produce := func(n int) { // one ProduceSync: one batch (it ends the linger once all are buffered)
		var rs []*kgo.Record
		for range n {
			want = append(want, value(len(want)))
			rs = append(rs, &kgo.Record{Value: want[len(want)-1]})
		}
		if err := prod.ProduceSync(ctx, rs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	produce(1)   // ~100 bytes
	produce(10)  // ~1 KiB
	produce(200) // ~20 KiB

	// franz-go runs the batch-written hook on a goroutine of its own after
	// the produce response, so it may still be behind the promises.
	for hooks.writtenRecords() < len(want) {
		if ctx.Err() != nil {
			t.Fatalf("the hook saw %d of %d records written", hooks.writtenRecords(), len(want))
		}
		time.Sleep(time.Millisecond)
	}
	hooks.mu.Lock()
	var small, large int
	for _, m := range hooks.written {
		switch {
		case m.UncompressedBytes < CompressMin && m.CompressionType != 0:
			t.Errorf("a batch of %d bytes (%d records) was compressed (codec %d)", m.UncompressedBytes, m.NumRecords, m.CompressionType)
		case m.UncompressedBytes >= CompressMin && m.CompressionType != codecZstd:
			t.Errorf("a batch of %d bytes (%d records) went with codec %d, want zstd", m.UncompressedBytes, m.NumRecords, m.CompressionType)
		case m.UncompressedBytes < CompressMin:
			small++
		default:
			large++
			if m.CompressedBytes*4 > m.UncompressedBytes {
				t.Errorf("zstd took a batch of %d bytes only to %d", m.UncompressedBytes, m.CompressedBytes)
			}
		}
	}
	hooks.mu.Unlock()
	if small == 0 || large == 0 {
		t.Fatalf("batches under the minimum: %d, over: %d; want both", small, large)
	}

	cons, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(testTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.WithHooks(hooks))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	var got [][]byte
	for len(got) < len(want) {
		fs := cons.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("consumed %d of %d records: %v", len(got), len(want), err)
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, r.Value) })
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d: got %q, want %q", i, got[i], want[i])
		}
	}
	hooks.mu.Lock()
	defer hooks.mu.Unlock()
	if hooks.read[0] == 0 || hooks.read[codecZstd] == 0 {
		t.Fatalf("the consumer read batches by codec %v; want uncompressed and zstd ones", hooks.read)
	}
}
