-- Tessera schema version 2 on PostgreSQL (the version numbers are shared with the redb backend;
-- version 1 existed only on redb). Applied at start under an advisory lock.

CREATE TABLE tessera_meta (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE tessera_keys (
    kid        bytea PRIMARY KEY CHECK (length(kid) = 8),
    sealed     bytea NOT NULL,
    state      text NOT NULL CHECK (state IN ('active', 'retired', 'revoked')),
    created    bigint NOT NULL,
    retired_at bigint,
    revoked_at bigint
);

CREATE TABLE tessera_tokens (
    tid         bytea PRIMARY KEY CHECK (length(tid) = 16),
    kid         bytea NOT NULL REFERENCES tessera_keys (kid),
    subject     text NOT NULL,
    description text NOT NULL,
    created     bigint NOT NULL,
    expires     bigint,
    caveats     text[] NOT NULL,
    revoked_at  bigint,
    parent      bytea REFERENCES tessera_tokens (tid)
);
CREATE INDEX tessera_tokens_by_subject ON tessera_tokens (subject, tid);
CREATE INDEX tessera_tokens_by_parent ON tessera_tokens (parent, tid) WHERE parent IS NOT NULL;

-- The change log. Gap-free and in commit order: a writer takes the next number by updating the
-- single counter row, whose row lock it holds until it commits, so appends are serialized and a
-- follower reading `seq > last` never skips an entry that commits late.
CREATE TABLE tessera_changes (
    seq   bigint PRIMARY KEY,
    at    bigint NOT NULL,
    kind  text NOT NULL CHECK (kind IN ('token-revoked', 'key-revoked', 'key-changed')),
    id    bytea NOT NULL
);
CREATE TABLE tessera_change_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_seq bigint NOT NULL
);
INSERT INTO tessera_change_counter (last_seq) VALUES (0);
