package broker

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestEmbeddedRollsSmallSegments: the embedded broker's log is cut into
// segments of segmentBytes, so that kfake's per-segment index stays small
// (growing a large one stalled every ack for tens of milliseconds), and what
// was written across several segments reads back whole after a restart.
func TestEmbeddedRollsSmallSegments(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded("127.0.0.1:0", dir, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prod, err := kgo.NewClient(kgo.SeedBrokers(e.Addr()), kgo.DefaultProduceTopic(TopicOrderCreated),
		kgo.ProducerBatchCompression(kgo.NoCompression()), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	// 3.5 segments' worth of 64 KiB records, each stamped with its index.
	const recSize = 64 << 10
	n := 7 * segmentBytes / 2 / recSize
	for i := range n {
		v := bytes.Repeat([]byte{byte(i)}, recSize)
		if err := prod.ProduceSync(ctx, &kgo.Record{Value: v}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	prod.Close()
	e.Close()

	pdir := filepath.Join(dir, "partitions", TopicOrderCreated+"-0")
	segs, err := filepath.Glob(filepath.Join(pdir, "*.dat")) // kfake's segment files: <base offset>.dat
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) < 3 {
		entries, _ := os.ReadDir(pdir)
		var names []string
		for _, en := range entries {
			names = append(names, en.Name())
		}
		t.Fatalf("%d MiB written in %d segment files (%v); want them cut at %d MiB", n*recSize>>20, len(segs), names, segmentBytes>>20)
	}

	e, err = StartEmbedded("127.0.0.1:0", dir, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cons, err := kgo.NewClient(kgo.SeedBrokers(e.Addr()), kgo.ConsumeTopics(TopicOrderCreated), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	got := 0
	for got < n {
		fs := cons.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("after %d of %d records: %v", got, n, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if len(r.Value) != recSize || r.Value[0] != byte(got) || r.Value[recSize-1] != byte(got) {
				t.Fatalf("record %d at offset %d is not the one written", got, r.Offset)
			}
			got++
		})
	}
}
