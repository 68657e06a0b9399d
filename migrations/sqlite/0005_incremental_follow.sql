-- Incremental follow: every change to the registry takes the next revision from the one
-- row of registry_revision (in the writing transaction, before anything else, so writers
-- commit in revision order), stamps the tenant or token row it writes with it, and leaves a
-- tombstone when it deletes. A replica then reads only what changed after the revision it
-- holds. Rows written before this migration keep revision 1, which every replica loads in
-- full at start-up.
CREATE TABLE registry_revision (
    id                        BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    revision                  BIGINT NOT NULL,
    -- Tombstones at or below this revision were removed; a replica behind it reloads in full.
    tombstones_pruned_through BIGINT NOT NULL
);
INSERT INTO registry_revision (id, revision, tombstones_pruned_through) VALUES (1, 1, 0);

ALTER TABLE tenants ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;
ALTER TABLE tokens ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;
CREATE INDEX tenants_by_revision ON tenants (revision);
CREATE INDEX tokens_by_revision ON tokens (revision);
-- A changed tenant's identities are read (and replaced) by tenant.
CREATE INDEX tenant_identities_by_tenant ON tenant_identities (tenant_id);
-- Expired tokens are pruned after a grace period.
CREATE INDEX tokens_by_expiry ON tokens (expires_at);

-- What a delete removed: a tenant (with its identities and tokens) or a pruned token.
CREATE TABLE registry_tombstones (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    revision   BIGINT NOT NULL,
    deleted_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX tombstones_by_revision ON registry_tombstones (revision);
CREATE INDEX tombstones_by_age ON registry_tombstones (deleted_at);

-- Each replica says how long its heartbeat counts (it follows the replica's poll_interval);
-- 0 for rows written by a version that did not say, which count for 5 s as before.
ALTER TABLE replicas ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
