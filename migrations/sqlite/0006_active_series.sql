-- Each replica's view of each tenant's active series (DESIGN §14), so the limit holds
-- across replicas: a HyperLogLog sketch of the series it holds (base64), near the limit
-- a Bloom filter of them (base64; empty otherwise), and the room for new series it
-- allows itself until its next row (grant). A row counts until
-- updated_at + idle_timeout_ms, also after its replica stopped: its series are still
-- active until they idle out.
CREATE TABLE active_series (
    tenant_id       TEXT NOT NULL,
    replica_id      TEXT NOT NULL,
    updated_at      BIGINT NOT NULL,
    idle_timeout_ms BIGINT NOT NULL,
    series          BIGINT NOT NULL,
    grant_series    BIGINT NOT NULL,
    sketch          TEXT NOT NULL,
    members         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, replica_id)
);
