package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/lib/broker"
)

// Lag returns how many records of order.created the group has not committed
// yet: the orders accepted but not yet in the ledger.
func Lag(ctx context.Context, cl *kgo.Client, group string) (int64, error) {
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, broker.TopicOrderCreated)
	if err != nil {
		return 0, err
	}
	if err := ends.Error(); err != nil {
		return 0, err
	}
	starts, err := adm.ListStartOffsets(ctx, broker.TopicOrderCreated)
	if err != nil {
		return 0, err
	}
	committed, err := adm.FetchOffsets(ctx, group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		// No worker of the group ever committed (kfake says so; Kafka
		// answers with no offsets): the lag is the whole topic.
		committed, err = nil, nil
	}
	if err != nil {
		return 0, err
	}
	var lag int64
	ends.Each(func(e kadm.ListedOffset) {
		from := int64(0)
		if s, ok := starts.Lookup(e.Topic, e.Partition); ok {
			from = s.Offset
		}
		if c, ok := committed.Lookup(e.Topic, e.Partition); ok && c.At >= 0 {
			from = c.At
		}
		if e.Offset > from {
			lag += e.Offset - from
		}
	})
	return lag, nil
}

// WaitCaughtUp waits until the group's lag is zero: every order accepted so
// far is in the ledger. Edges call it before rebuilding stock from the ledger.
func WaitCaughtUp(ctx context.Context, cl *kgo.Client, group string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lag := int64(-1) // unknown until a Lag call succeeds
	var err error
	for {
		var l int64
		if l, err = Lag(ctx, cl, group); err == nil {
			lag = l // a call cut by the deadline does not overwrite the last lag seen
		}
		if err == nil && lag == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ingest group %q did not catch up within %v (lag %d, last error: %v); "+
				"possible fix: check that ingest workers run and reach PostgreSQL", group, timeout, lag, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
