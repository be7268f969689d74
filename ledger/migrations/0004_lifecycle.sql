-- The order lifecycle: payments on orders, the history of every transition,
-- the outbox the relay publishes to Kafka, webhook dedupe, and the per-SKU
-- sequence of stock releases. See ledger/lifecycle.go and docs/records.md.

-- Money the payment provider reported for an order. refund_due: money was
-- received that bought nothing (a payment after expiry or cancellation, a
-- second payment, an underpayment) and must be given back. No CHECKs here:
-- validating one would scan every existing partition under the migration's
-- exclusive lock; ledger/lifecycle.go keeps them non-negative.
ALTER TABLE orders
    ADD COLUMN paid_cents     bigint  NOT NULL DEFAULT 0,
    ADD COLUMN refunded_cents bigint  NOT NULL DEFAULT 0,
    ADD COLUMN payment_id     text,
    ADD COLUMN refund_due     boolean NOT NULL DEFAULT false;

-- The expiry scan: pending orders, oldest first. Partial, so it holds only
-- the orders still waiting for payment.
CREATE INDEX orders_pending_created_idx ON orders (created_at) WHERE status = 'pending_payment';

-- History of transitions, partitioned like orders by the order's created_at
-- (daily partitions order_events_pYYYYMMDD, made and detached with orders').
-- event_id is global and increasing: consumers dedupe Kafka records by it.
CREATE SEQUENCE order_events_event_id_seq AS bigint;
CREATE TABLE order_events (
    event_id         bigint      NOT NULL DEFAULT nextval('order_events_event_id_seq'),
    order_id         bigint      NOT NULL,
    order_created_at timestamptz NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    from_status      text        NOT NULL,
    to_status        text        NOT NULL,
    reason           text        NOT NULL,
    actor            text        NOT NULL,
    amount_cents     bigint      NOT NULL DEFAULT 0,
    version          integer     NOT NULL, -- the order's version after the event
    PRIMARY KEY (event_id, order_created_at)
) PARTITION BY RANGE (order_created_at);
ALTER SEQUENCE order_events_event_id_seq OWNED BY order_events.event_id;
CREATE INDEX order_events_order_idx ON order_events (order_id, event_id);

-- Partitions of order_events for the days orders already has.
DO $$
DECLARE
    r   record;
    day timestamptz;
BEGIN
    FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'orders'::regclass AND c.relname ~ '^orders_p[0-9]{8}$'
    LOOP
        day := to_date(substr(r.relname, 9), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF order_events FOR VALUES FROM (%L) TO (%L)',
            'order_events_p' || substr(r.relname, 9), day, day + interval '1 day');
    END LOOP;
END $$;

-- Kafka records written in the transaction of the change they announce and
-- published by one relay at a time, in id order, then deleted.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    value      bytea       NOT NULL,
    event_id   bigint      NOT NULL, -- sent as the record header "event_id"
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Webhook events applied, so a replayed event applies once. Prune old rows
-- with PrunePaymentEvents (providers stop retrying after a few days).
CREATE TABLE payment_events (
    provider     text        NOT NULL,
    event_id     text        NOT NULL,
    order_id     bigint      NOT NULL,
    kind         text        NOT NULL,
    amount_cents bigint      NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX payment_events_received_idx ON payment_events (received_at);

-- Every stock release of a SKU takes the next number, in the transaction
-- that releases: an edge that loaded the stock in a snapshot applies exactly
-- the releases numbered above the release_seq of that snapshot.
ALTER TABLE sale_items ADD COLUMN release_seq bigint NOT NULL DEFAULT 0;
