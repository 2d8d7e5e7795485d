-- Schema version 6: limits that need the service.
--   * tokens: the single use of a `once` token, the last successful use (batched), and what a
--     link token grants when redeemed;
--   * rate counters per token family, budget and fixed window (nodes lease units from them);
--   * expiry notices, claimed once per token and threshold across the cluster.

ALTER TABLE tessera_tokens
    ADD COLUMN used_at    bigint,
    ADD COLUMN last_used  bigint,
    ADD COLUMN grant_json text;

CREATE INDEX tessera_tokens_by_expiry ON tessera_tokens (expires)
    WHERE expires IS NOT NULL AND revoked_at IS NULL;

CREATE TABLE tessera_rates (
    tid        bytea  NOT NULL,
    spec       text   NOT NULL,
    win        bigint NOT NULL,
    used       bigint NOT NULL,
    last_grant bigint NOT NULL,
    PRIMARY KEY (tid, spec, win)
);

CREATE TABLE tessera_notices (
    tid          bytea  NOT NULL REFERENCES tessera_tokens (tid),
    threshold    bigint NOT NULL,
    created      bigint NOT NULL,
    delivered_at bigint,
    attempts     int    NOT NULL,
    next_attempt bigint NOT NULL,
    PRIMARY KEY (tid, threshold)
);
CREATE INDEX tessera_notices_due ON tessera_notices (next_attempt) WHERE delivered_at IS NULL;
