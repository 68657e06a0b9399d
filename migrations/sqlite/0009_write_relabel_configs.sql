-- Per-tenant write_relabel_configs (DESIGN §16): the tenant's Prometheus relabel_config
-- rules as a JSON array, checked by promgate when the tenant is written. Tenants from
-- before this migration have none.
ALTER TABLE tenants ADD COLUMN write_relabel_configs TEXT NOT NULL DEFAULT '[]';
