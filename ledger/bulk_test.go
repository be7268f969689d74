package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/orderid"
	"github.com/flashgate/flashgate/lib/testenv"
)

// An admin cancels pending orders of any user in bulk: each one the same
// transition as a user's cancel (history, records, one numbered release),
// recorded with actor "admin"; orders that cannot be cancelled are reported
// one by one and left as they are.
func TestCancelByAdmin(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "S", 100, 0)
	gen := orderid.MustNew(0, 11)
	os := insert(t, pool, gen, 5, func(i int) (string, string, int32) { return fmt.Sprint("u", i), "S", int32(1 + i) })
	a, b, paid, gone, kept := os[0], os[1], os[2], os[3], os[4]
	if _, _, err := ledger.ApplyPayment(ctx, pool, pay(paid.ID, "p", 300)); err != nil {
		t.Fatal(err)
	}
	if _, err := ledger.Cancel(ctx, pool, gone.ID, gone.UserID); err != nil { // release_seq 1
		t.Fatal(err)
	}
	unknown := gen.Next()

	ids := []int64{b.ID, paid.ID, unknown, a.ID, gone.ID, -5}
	res, err := ledger.CancelByAdmin(ctx, pool, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(ids) {
		t.Fatalf("%d results for %d ids", len(res), len(ids))
	}
	for i, r := range res {
		if r.OrderID != ids[i] {
			t.Fatalf("result %d is of order %d, want %d (input order)", i, r.OrderID, ids[i])
		}
	}
	for _, i := range []int{0, 3} {
		if r := res[i]; r.Err != nil || r.Record.Status != ledger.StatusCancelled || r.Record.Version != 1 {
			t.Errorf("order %d: %+v, want cancelled at version 1", r.OrderID, r)
		}
	}
	wantIllegal(t, res[1].Err, "paid", "cancelled")
	wantIllegal(t, res[4].Err, "cancelled", "cancelled")
	if res[1].Record.Status != "paid" {
		t.Errorf("a refused order's record: %+v, want it as it is", res[1].Record)
	}
	for _, i := range []int{2, 5} {
		if !errors.Is(res[i].Err, ledger.ErrNotFound) {
			t.Errorf("order %d: %v, want ErrNotFound", res[i].OrderID, res[i].Err)
		}
	}
	for _, o := range []int64{a.ID, b.ID} {
		es := events(t, pool, o)
		if len(es) != 1 || es[0].Actor != ledger.ActorAdmin || es[0].Reason != ledger.ReasonCancelled || es[0].To != "cancelled" {
			t.Errorf("history of order %d: %+v, want one cancel by admin", o, es)
		}
	}
	if r := mustGet(t, pool, kept.ID); r.Status != "pending_payment" {
		t.Errorf("an order not listed changed: %+v", r)
	}

	rows := readOutbox(t, pool)
	checkReleaseSeqs(t, pool, rows)
	rels := map[string]int{}
	for _, r := range releasesOf(rows) {
		rels[r.str("order_id")]++
		if r.str("order_id") == strconv.FormatInt(a.ID, 10) && (r.num("qty") != 1 || r.str("user_id") != "u0" || r.str("reason") != "cancelled") {
			t.Errorf("release of order a: %s", r.Value)
		}
	}
	for _, o := range os {
		want := 0
		if o.ID == a.ID || o.ID == b.ID || o.ID == gone.ID {
			want = 1
		}
		if rels[strconv.FormatInt(o.ID, 10)] != want {
			t.Errorf("order %d: %d releases, want %d", o.ID, rels[strconv.FormatInt(o.ID, 10)], want)
		}
	}
	// Taken: the paid order's 3 and the pending one's 5.
	if it := saleItem(t, pool, "S"); it.TakenUnits != 8 || it.ReleaseSeq != 3 {
		t.Fatalf("after the bulk cancel: %+v, want 8 units taken and 3 releases", it)
	}

	// Again: nothing more is released.
	res, err = ledger.CancelByAdmin(ctx, pool, []int64{a.ID, b.ID})
	if err != nil {
		t.Fatal(err)
	}
	wantIllegal(t, res[0].Err, "cancelled", "cancelled")
	wantIllegal(t, res[1].Err, "cancelled", "cancelled")
	if it := saleItem(t, pool, "S"); it.TakenUnits != 8 || it.ReleaseSeq != 3 {
		t.Fatalf("after a repeated bulk cancel: %+v, want it unchanged", it)
	}

	// Refused as a whole: nothing tried.
	if _, err := ledger.CancelByAdmin(ctx, pool, []int64{kept.ID, kept.ID}); !errors.Is(err, ledger.ErrBulkInput) {
		t.Errorf("duplicate ids: %v, want ErrBulkInput", err)
	}
	if _, err := ledger.CancelByAdmin(ctx, pool, make([]int64, ledger.MaxBulkCancel+1)); !errors.Is(err, ledger.ErrBulkInput) {
		t.Errorf("%d ids: %v, want ErrBulkInput", ledger.MaxBulkCancel+1, err)
	}
	if r := mustGet(t, pool, kept.ID); r.Status != "pending_payment" {
		t.Errorf("a refused bulk cancel changed an order: %+v", r)
	}
}

// Bulk cancels racing each other, users' cancels and expirers: each order
// leaves pending_payment once and releases its units once.
func TestCancelByAdminRaces(t *testing.T) {
	pool, _ := testenv.Ledger(t)
	ctx := context.Background()
	putSale(t, pool, "A", 1000, 0)
	putSale(t, pool, "B", 1000, 0)
	const orders = 60
	os := insert(t, pool, orderid.MustNew(0, 12), orders, func(i int) (string, string, int32) {
		return fmt.Sprint("u", i%5), []string{"A", "B"}[i%2], int32(1 + i%3)
	})
	var all, evens, reversed []int64
	for i, o := range os {
		all = append(all, o.ID)
		if i%2 == 0 {
			evens = append(evens, o.ID)
		}
		reversed = append([]int64{o.ID}, reversed...)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := map[int64]int{}
	run := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); <-start; f() }()
	}
	for _, ids := range [][]int64{all, evens, reversed} {
		run(func() {
			res, err := ledger.CancelByAdmin(ctx, pool, ids)
			if err != nil {
				t.Errorf("bulk cancel: %v", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range res {
				var ite *ledger.IllegalTransitionError
				switch {
				case r.Err == nil:
					wins[r.OrderID]++
				case !errors.As(r.Err, &ite):
					t.Errorf("order %d: %v", r.OrderID, r.Err)
				}
			}
		})
	}
	for i, o := range os {
		if i%3 == 0 {
			run(func() {
				_, err := ledger.Cancel(ctx, pool, o.ID, o.UserID)
				var ite *ledger.IllegalTransitionError
				if err == nil {
					mu.Lock()
					wins[o.ID]++
					mu.Unlock()
				} else if !errors.As(err, &ite) {
					t.Errorf("cancel %d: %v", o.ID, err)
				}
			})
		}
	}
	run(func() {
		if _, err := ledger.ExpireBefore(ctx, pool, time.Now().Add(time.Hour), 7); err != nil {
			t.Errorf("expire: %v", err)
		}
	})
	close(start)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	rows := readOutbox(t, pool)
	checkReleaseSeqs(t, pool, rows)
	rels, cancels := map[string]int{}, map[string]int{}
	for _, r := range rows {
		switch r.Topic {
		case broker.TopicSaleEvents:
			rels[r.str("order_id")]++
		case broker.TopicOrderCancelled:
			cancels[r.str("order_id")]++
		}
	}
	for _, o := range os {
		r := mustGet(t, pool, o.ID)
		id := strconv.FormatInt(o.ID, 10)
		switch {
		case r.Status == "cancelled" && wins[o.ID] == 1, r.Status == "expired" && wins[o.ID] == 0:
		default:
			t.Errorf("order %d ended %s after %d successful cancels", o.ID, r.Status, wins[o.ID])
		}
		if len(events(t, pool, o.ID)) != 1 || rels[id] != 1 || cancels[id] != 1 {
			t.Errorf("order %d: %d events, %d releases, %d order.cancelled records; want 1 each", o.ID, len(events(t, pool, o.ID)), rels[id], cancels[id])
		}
	}
	for _, sku := range []string{"A", "B"} {
		if it := saleItem(t, pool, sku); it.TakenUnits != 0 {
			t.Errorf("%s: %d units still taken", sku, it.TakenUnits)
		}
	}
}
