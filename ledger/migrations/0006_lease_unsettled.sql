-- What an edge last reported of a lease's units whose fate is still open:
-- units it may still sell, and orders Kafka has not acknowledged yet (an
-- upper bound: the edge counts from its own leased stock, less the units of
-- orders the broker acknowledged). NULL: never reported. A lease's
-- outstanding units (granted - returned - its orders in the ledger) also
-- count orders acknowledged but not yet written by ingest; those are sold.
-- So a SKU is sold out once its pool is empty and every lease's
-- least(outstanding, unsettled) is 0, without waiting for ingest
-- (ledger/leases.go).
ALTER TABLE stock_leases ADD COLUMN unsettled bigint CHECK (unsettled >= 0);
