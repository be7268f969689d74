-- Stock leases: with several edges selling the same SKU, each leases blocks
-- of units from the ledger instead of loading the whole stock (leases.go).
-- A unit is always in exactly one place: the pool, an edge's lease, or an
-- order. Per (SKU, sale generation, node): granted and returned are running
-- totals; the lease's units not yet sold are granted - returned - the units
-- of that node's orders of the generation (whatever their state: a cancelled
-- order's units go back to the pool, not to the lease), less sold_base.
CREATE TABLE stock_leases (
    sku             text        NOT NULL,
    sale_started_at timestamptz NOT NULL, -- the sale generation (sale_items.sale_started_at)
    node_id         integer     NOT NULL CHECK (node_id BETWEEN 0 AND 63),
    granted         bigint      NOT NULL DEFAULT 0 CHECK (granted >= 0),
    returned        bigint      NOT NULL DEFAULT 0 CHECK (returned >= 0),
    -- the node's units of the generation already in orders when the lease
    -- began (sold without a lease): not sold from it
    sold_base       bigint      NOT NULL DEFAULT 0,
    -- the last grant or return applied, by the edge's number for it, and
    -- its units: a retry of an operation whose answer was lost (a timeout
    -- after the commit) gets the same answer instead of applying twice
    last_op         bigint      NOT NULL DEFAULT 0,
    last_units      bigint      NOT NULL DEFAULT 0,
    expires_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, sale_started_at, node_id)
);

-- Set when a lease request found the pool short, cleared when one finds it
-- not empty: edges holding more than they need give the excess back while
-- another edge starves.
ALTER TABLE sale_items ADD COLUMN starved_at timestamptz, ADD COLUMN starved_by integer;
