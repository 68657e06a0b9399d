-- Admin audit log: who did what to which tenant or token, from where, with what result.
-- Never a secret: the actor is a fingerprint of the admin token, not the token.
CREATE TABLE audit_log (
    id     BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    result BIGINT NOT NULL
);
