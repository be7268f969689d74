-- Orders, partitioned by range on created_at (daily partitions are made ahead by
-- `flashgate ledger partitions` and by the running services; there is no DEFAULT
-- partition: a row without a partition is an error that ingest answers by making
-- the partition, never a row parked somewhere unexpected).
--
-- created_at is derived from order_id (see lib/orderid), so a redelivered record
-- always lands in the same partition and hits the same primary key.
CREATE TABLE orders (
    order_id        bigint      NOT NULL,
    user_id         text        NOT NULL,
    sku             text        NOT NULL,
    qty             integer     NOT NULL CHECK (qty > 0),
    price_cents     bigint      NOT NULL CHECK (price_cents >= 0),
    status          text        NOT NULL DEFAULT 'pending_payment'
                    CHECK (status IN ('pending_payment', 'paid', 'fulfilled', 'cancelled', 'expired', 'refunded')),
    idempotency_key text,
    client_ip       text,
    version         integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, created_at)
) PARTITION BY RANGE (created_at);

-- GET /v1/orders: the caller's orders, newest first.
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC);
-- Stock rebuilt at edge start: units taken per SKU.
CREATE INDEX orders_sku_idx ON orders (sku);

-- Sale items: what the admin plane loads and the edges sell. `sale_started_at`
-- marks the sale's generation: orders before it do not count against its stock.
CREATE TABLE sale_items (
    sku             text        PRIMARY KEY,
    stock           bigint      NOT NULL CHECK (stock >= 0),
    price_cents     bigint      NOT NULL CHECK (price_cents >= 0),
    per_user_limit  integer     NOT NULL CHECK (per_user_limit >= 0),
    starts_at       timestamptz,
    ends_at         timestamptz,
    sale_started_at timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
