-- Optimistic concurrency for admin writes: every change to a tenant bumps its version,
-- and an update only lands on the version it was computed from (ETag / If-Match).
ALTER TABLE tenants ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

-- Two tenants sharing a label_value would read and write each other's series. promgate
-- refuses to start (naming the tenants) before this migration when duplicates exist.
CREATE UNIQUE INDEX tenants_label_value_unique ON tenants (label_value);
