-- Tenant registry: tenants, their mTLS identities and the tokens promgate issued.
-- PostgreSQL edition (kept in step with migrations/sqlite). Timestamps are Unix seconds;
-- JSON columns hold objects/arrays as text.
CREATE TABLE tenants (
    id           TEXT PRIMARY KEY NOT NULL,
    label_value  TEXT NOT NULL,
    extra_labels TEXT NOT NULL,
    limits       TEXT NOT NULL,
    backends     TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- An identity (URI or DNS SAN) belongs to at most one tenant.
CREATE TABLE tenant_identities (
    identity  TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id)
);

-- Only the token id (the JWT's jti) is stored, never the token itself.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE INDEX tokens_by_tenant ON tokens (tenant_id);
