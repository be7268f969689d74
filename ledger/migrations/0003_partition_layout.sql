-- The layout of the daily partitions of orders made from now on: with
-- user_hash_partitions = N > 0, each new day is itself partitioned by hash of
-- user_id into N tables (smaller indexes and vacuums on very large days, and
-- a user's orders of a day in one of them). Set it with
-- `flashgate ledger partitions -ledger.userHashPartitions N`; days already
-- made keep their layout.
CREATE TABLE partition_layout (
    only_row             boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    user_hash_partitions integer NOT NULL DEFAULT 0 CHECK (user_hash_partitions BETWEEN 0 AND 64)
);
INSERT INTO partition_layout DEFAULT VALUES;

-- A unique key of a partitioned table must hold every partitioning column at
-- every level: user_id joins the primary key so that days can be
-- sub-partitioned by it. order_id still identifies an order (an id is never
-- reused, and a redelivered record carries the same user), so the key dedupes
-- redeliveries as before.
ALTER TABLE orders DROP CONSTRAINT orders_pkey;
ALTER TABLE orders ADD PRIMARY KEY (order_id, created_at, user_id);
