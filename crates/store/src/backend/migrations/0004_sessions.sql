-- Schema version 5: sessions (an access-token template and the chain of refresh tokens that
-- renew it). The record is CBOR (the store's codec), as in the embedded backend; a refresh locks
-- its row (SELECT ... FOR UPDATE), so concurrent refreshes of one session on several nodes take
-- turns and reuse detection sees every spend.

CREATE TABLE tessera_sessions (
    sid     bytea PRIMARY KEY CHECK (length(sid) = 16),
    subject text NOT NULL,
    record  bytea NOT NULL
);

CREATE INDEX tessera_sessions_by_subject ON tessera_sessions (subject);
