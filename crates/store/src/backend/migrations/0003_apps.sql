-- Schema version 4: registered applications, and signing keys owned by one application.
--
-- An application's record is CBOR (the store's codec), as in the embedded backend; its name and
-- audience are columns so that both stay unique across every node.

CREATE TABLE tessera_apps (
    name     text PRIMARY KEY,
    audience text NOT NULL UNIQUE,
    record   bytea NOT NULL
);

-- NULL: the service's own keys; otherwise the application whose envelopes the key signs.
ALTER TABLE tessera_signing_keys ADD COLUMN owner text REFERENCES tessera_apps (name);

ALTER TABLE tessera_changes DROP CONSTRAINT tessera_changes_kind_check;
ALTER TABLE tessera_changes ADD CONSTRAINT tessera_changes_kind_check
    CHECK (kind IN ('token-revoked', 'key-revoked', 'key-changed', 'signing-keys', 'apps'));
