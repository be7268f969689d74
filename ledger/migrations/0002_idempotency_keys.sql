-- The backstop for Idempotency-Key: the edge remembers keys in a bounded cache,
-- so a retry that comes after its key was evicted is admitted as a new order.
-- Ingest records each key here in the transaction that writes its order; an
-- order whose key already belongs to another order is cancelled as a
-- duplicate, so one key never makes two live orders.
CREATE TABLE idempotency_keys (
    user_id         text        NOT NULL,
    idempotency_key text        NOT NULL,
    order_id        bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);
