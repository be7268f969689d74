// Package orderid makes 64-bit, time-ordered order ids that are unique across
// event-loop shards and edge instances, and from which the creation time can be
// recovered (ingest derives the partition key `created_at` from the id, so a
// redelivered record always lands on the same primary key).
//
// Layout, most significant bit first:
//
//	1 bit   zero (ids stay positive in a PostgreSQL bigint)
//	41 bits milliseconds since Epoch (until 2094)
//	10 bits generator: node (6 bits) << 4 | shard (4 bits)
//	12 bits sequence within the millisecond (4096 ids/ms per generator)
package orderid

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Epoch is the zero of the id clock: 2025-01-01T00:00:00Z.
var Epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	seqBits   = 12
	shardBits = 4
	nodeBits  = 6
	genBits   = nodeBits + shardBits
	seqMask   = 1<<seqBits - 1

	// MaxNode is the largest node id (edge instance) an id can carry.
	MaxNode = 1<<nodeBits - 1
	// MaxShard is the largest shard (event loop) index an id can carry.
	MaxShard = 1<<shardBits - 1
	// SeqBits is how many low bits of an id count ids within one
	// generator's millisecond: consecutive ids of a generator differ there.
	SeqBits = seqBits
)

var epochMs = Epoch.UnixMilli()

// Generator hands out ids for one (node, shard) pair. It is safe for
// concurrent use; the hot path is one uncontended CAS.
//
// When more than 4096 ids are asked for within one millisecond the generator
// borrows the next millisecond, so ids stay unique and increasing; the
// recovered time is then at most a few ms ahead of the wall clock.
type Generator struct {
	gen  uint64
	last atomic.Uint64 // (ms since Epoch) << seqBits | seq of the last id
	now  func() time.Time
}

// New returns a generator for the given node and shard.
func New(node, shard int) (*Generator, error) {
	if node < 0 || node > MaxNode {
		return nil, fmt.Errorf("orderid: node %d out of range [0, %d]; possible fix: set -edge.nodeID within the range", node, MaxNode)
	}
	if shard < 0 || shard > MaxShard {
		return nil, fmt.Errorf("orderid: shard %d out of range [0, %d]; possible fix: lower -edge.loops", shard, MaxShard)
	}
	return &Generator{gen: uint64(node<<shardBits | shard), now: time.Now}, nil
}

// MustNew is New for start-up code whose arguments were validated already.
func MustNew(node, shard int) *Generator {
	g, err := New(node, shard)
	if err != nil {
		panic(err)
	}
	return g
}

// Next returns a fresh id.
func (g *Generator) Next() int64 {
	nowMs := uint64(g.now().UnixMilli() - epochMs)
	for {
		last := g.last.Load()
		next := nowMs << seqBits
		if next <= last {
			next = last + 1 // same (or an earlier) millisecond: next sequence, maybe borrowing the next ms
		}
		if g.last.CompareAndSwap(last, next) {
			ms, seq := next>>seqBits, next&seqMask
			return int64(ms<<(genBits+seqBits) | g.gen<<seqBits | seq)
		}
	}
}

// Time returns the creation time carried by id, to the millisecond, in UTC.
func Time(id int64) time.Time {
	return time.UnixMilli(epochMs + id>>(genBits+seqBits)).UTC()
}

// Valid reports whether id could have come from a Generator.
func Valid(id int64) bool { return id > 0 }

// Node returns the node id (edge instance) that made id.
func Node(id int64) int { return int(id>>(seqBits+shardBits)) & MaxNode }

// NodeSQL is Node as a PostgreSQL expression over the bigint column col.
func NodeSQL(col string) string {
	return fmt.Sprintf("((%s >> %d) & %d)", col, seqBits+shardBits, MaxNode)
}
