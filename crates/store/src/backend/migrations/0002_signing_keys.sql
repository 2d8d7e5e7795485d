-- Schema version 3: JWT signing keys (ES256, EdDSA), sealed under the master key like root keys,
-- and their change-log entries.

CREATE TABLE tessera_signing_keys (
    kid          text PRIMARY KEY,
    alg          text NOT NULL CHECK (alg IN ('ES256', 'EdDSA')),
    sealed       bytea NOT NULL,
    jwk          text NOT NULL,
    state        text NOT NULL CHECK (state IN ('next', 'active', 'retired')),
    created      bigint NOT NULL,
    activated_at bigint,
    retired_at   bigint
);

ALTER TABLE tessera_changes DROP CONSTRAINT tessera_changes_kind_check;
ALTER TABLE tessera_changes ADD CONSTRAINT tessera_changes_kind_check
    CHECK (kind IN ('token-revoked', 'key-revoked', 'key-changed', 'signing-keys'));
