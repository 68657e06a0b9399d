-- Live promgate replicas: each one writes its heartbeat every poll interval; a tenant's
-- rate limits are shared among the replicas heard from recently.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
