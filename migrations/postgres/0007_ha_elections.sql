-- Prometheus HA pairs (DESIGN §15): the elected replica of each (tenant, cluster), when
-- its samples were last received (Unix milliseconds), when it was elected and how many
-- times the election changed. Changed only by compare-and-swap on (replica,
-- received_at), so every promgate replica agrees on one elected replica.
CREATE TABLE ha_elections (
    tenant_id   TEXT NOT NULL,
    cluster     TEXT NOT NULL,
    replica     TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    elected_at  BIGINT NOT NULL,
    changes     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, cluster)
);
