-- Usage accounting (DESIGN §17): each process's running totals per tenant and UTC day.
-- A row belongs to one process (instance_id, random per start) and is replaced by each of
-- its flushes, so a flush repeated after a failure or a crash cannot count twice; a report
-- sums a day's rows over instances (peak_active_series: the highest). day is the number of
-- days since 1970-01-01; rows older than storage.usage_retention are deleted in batches.
CREATE TABLE tenant_usage (
    tenant_id            TEXT NOT NULL,
    day                  BIGINT NOT NULL,
    instance_id          TEXT NOT NULL,
    updated_at           BIGINT NOT NULL,
    samples              BIGINT NOT NULL,
    histograms           BIGINT NOT NULL,
    exemplars            BIGINT NOT NULL,
    refused_series_limit BIGINT NOT NULL,
    refused_throttled    BIGINT NOT NULL,
    bytes_compressed     BIGINT NOT NULL,
    bytes_decoded        BIGINT NOT NULL,
    write_requests       BIGINT NOT NULL,
    read_requests        BIGINT NOT NULL,
    query_requests       BIGINT NOT NULL,
    otlp_requests        BIGINT NOT NULL,
    new_series           BIGINT NOT NULL,
    peak_active_series   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, instance_id)
);
CREATE INDEX tenant_usage_by_day ON tenant_usage (day, tenant_id);
