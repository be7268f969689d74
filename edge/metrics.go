package edge

import (
	"strconv"

	"github.com/VictoriaMetrics/metrics"
	"github.com/twmb/franz-go/pkg/kgo"
)

// responsesTotal counts responses by status code, indexed by the code so the
// hot path does no map lookup.
var responsesTotal = func() (t [600]*metrics.Counter) {
	for code := range statusText {
		t[code] = metrics.NewCounter(`flashgate_edge_responses_total{code="` + strconv.Itoa(code) + `"}`)
	}
	return t
}()

var (
	ordersAcceptedTotal     = metrics.NewCounter(`flashgate_edge_orders_accepted_total`)
	ordersSoldOutTotal      = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="sold-out"}`)
	producerAbortsTotal     = metrics.NewCounter(`flashgate_edge_producer_aborts_total`)
	leaseWaitTotal          = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="lease-wait"}`)
	leaseGrantsTotal        = metrics.NewCounter(`flashgate_edge_lease_grants_total`)
	leaseBatchesTotal       = metrics.NewCounter(`flashgate_edge_lease_grant_batches_total`) // transactions asking for grants (up to 256 SKUs each)
	ordersParkedTotal       = metrics.NewCounter(`flashgate_edge_orders_parked_total`)       // waited for a lease grant (then accepted or refused)
	parkedWait              = metrics.NewHistogram(`flashgate_edge_order_parked_seconds`)    // how long parked orders waited for units or an answer
	leaseStep               = metrics.NewHistogram(`flashgate_edge_lease_step_seconds`)      // one round of the lease manager: renewals, grants, returns
	leaseUnitsTotal         = metrics.NewCounter(`flashgate_edge_lease_units_total{way="granted"}`)
	leaseReturnedTotal      = metrics.NewCounter(`flashgate_edge_lease_units_total{way="returned"}`)
	leaseLostTotal          = metrics.NewCounter(`flashgate_edge_lease_units_total{way="lost"}`)
	leaseReclaimedTotal     = metrics.NewCounter(`flashgate_edge_lease_units_total{way="reclaimed"}`)
	ordersInactiveTotal     = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="sale-not-active"}`)
	ordersUnknownSKUTotal   = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="unknown-sku"}`)
	ordersInvalidTotal      = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="invalid-request"}`)
	ordersLimitTotal        = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="purchase-limit"}`)
	idemReplaysTotal        = metrics.NewCounter(`flashgate_edge_idempotent_replays_total`)
	idemMismatchTotal       = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="idempotency-mismatch"}`)
	idemBusyTotal           = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="idempotency-in-flight"}`)
	purchaseFullTotal       = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="purchase-table-full"}`)
	produceFailedTotal      = metrics.NewCounter(`flashgate_edge_produce_errors_total{outcome="failed"}`)
	produceUnknownTotal     = metrics.NewCounter(`flashgate_edge_produce_errors_total{outcome="unknown"}`)
	shedBufferTotal         = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="kafka-buffer-full"}`)
	shedBreakerTotal        = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="kafka-breaker-open"}`)
	produceBatchesTotal     = metrics.NewCounter(`flashgate_edge_produce_batches_total`)                  // partition batches Kafka acked
	produceBatchRecords     = metrics.NewHistogram(`flashgate_edge_produce_batch_records`)                // orders per acked batch
	produceRawBytesTotal    = metrics.NewCounter(`flashgate_edge_produce_batch_bytes_total{form="raw"}`)  // record bytes of the acked batches
	produceSentBytesTotal   = metrics.NewCounter(`flashgate_edge_produce_batch_bytes_total{form="sent"}`) // the same as sent (compressed or not)
	breakerOpensTotal       = metrics.NewCounter(`flashgate_edge_breaker_opens_total`)
	breakerProbesTotal      = metrics.NewCounter(`flashgate_edge_breaker_probes_total`)
	unknownPending          = metrics.NewGauge(`flashgate_edge_unknown_orders`, nil)
	unknownUntrackedTotal   = metrics.NewCounter(`flashgate_edge_unknown_orders_untracked_total`)
	reconciledLandedTotal   = metrics.NewCounter(`flashgate_edge_reconciled_total{outcome="landed"}`)
	reconciledReleasedTotal = metrics.NewCounter(`flashgate_edge_reconciled_total{outcome="released"}`)
	authFailuresTotal       = metrics.NewCounter(`flashgate_edge_auth_failures_total`)
	reconcilePausedTotal    = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="sku-reconciling"}`)
	eventStreams            = metrics.NewGauge(`flashgate_edge_event_streams`, nil)
	releasesAppliedTotal    = metrics.NewCounter(`flashgate_edge_stock_releases_applied_total`)
	releasedUnitsTotal      = metrics.NewCounter(`flashgate_edge_stock_released_units_total`)
	webhooksAppliedTotal    = metrics.NewCounter(`flashgate_edge_webhooks_total{outcome="applied"}`)
	webhooksRefusedTotal    = metrics.NewCounter(`flashgate_edge_webhooks_total{outcome="refused"}`)
	drainRefusedTotal       = metrics.NewCounter(`flashgate_edge_orders_rejected_total{reason="draining"}`)
	limitedUserTotal        = metrics.NewCounter(`flashgate_edge_rate_limited_total{limit="user"}`)
	limitedIPTotal          = metrics.NewCounter(`flashgate_edge_rate_limited_total{limit="ip"}`)
	limitedAPIKeyTotal      = metrics.NewCounter(`flashgate_edge_rate_limited_total{limit="api-key"}`)
	limitedGlobalTotal      = metrics.NewCounter(`flashgate_edge_rate_limited_total{limit="global"}`)
	orderDuration           = metrics.NewHistogram(`flashgate_edge_order_duration_seconds`) // parse to 202 (Kafka ack)
	readsRejectedTotal      = metrics.NewCounter(`flashgate_edge_reads_rejected_total`)
	slowReaderCloseTotal    = metrics.NewCounter(`flashgate_edge_slow_reader_closes_total`)
	connsOpenedTotal        = metrics.NewCounter(`flashgate_edge_connections_opened_total`)
	connsRejectedTotal      = metrics.NewCounter(`flashgate_edge_connections_rejected_total`)
	connsOpen               = metrics.NewGauge(`flashgate_edge_connections`, nil)
	readTimeoutsTotal       = metrics.NewCounter(`flashgate_edge_read_timeouts_total`)
	idleClosesTotal         = metrics.NewCounter(`flashgate_edge_idle_closes_total`)
	inboundClosesTotal      = metrics.NewCounter(`flashgate_edge_inbound_overflow_closes_total`)
)

// batchMetrics is the producer's hook counting the batches Kafka acked.
type batchMetrics struct{}

func (batchMetrics) OnProduceBatchWritten(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.ProduceBatchMetrics) {
	produceBatchesTotal.Inc()
	produceBatchRecords.Update(float64(m.NumRecords))
	produceRawBytesTotal.Add(m.UncompressedBytes)
	produceSentBytesTotal.Add(m.CompressedBytes)
}
