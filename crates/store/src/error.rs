//! The one error type of `tessera-store`.

use tessera_core::{KeyId, TokenId};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the key store can refuse or fail at. Refusals change nothing on disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The master key does not open this database's sealed check value.
    #[error("wrong master key: it does not open this database (check TESSERA_MASTER_KEY or the key file)")]
    WrongMasterKey,

    /// The master key file or value is not 32 bytes of hex.
    #[error("master key must be 64 hex digits (32 bytes): {0}")]
    BadMasterKey(String),

    /// The master key file is readable by group or others.
    #[error("master key file {0} is readable by other users: chmod 600 it")]
    MasterKeyPermissions(String),

    /// The database was written by a newer Tessera.
    #[error("database schema version {found} is newer than this Tessera understands ({supported}): upgrade Tessera")]
    NewerSchema {
        /// Version found on disk.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },

    /// A secret is shorter than 32 bytes.
    #[error("secret is too short: {0} bytes, at least 32 are required")]
    KeyTooShort(usize),

    /// No key with this id.
    #[error("unknown key id {0}")]
    UnknownKey(KeyId),

    /// The key has been revoked and can neither sign nor verify.
    #[error("key {0} is revoked")]
    KeyRevoked(KeyId),

    /// There is no active key to sign with (all revoked, or none created yet): rotate.
    #[error("no active signing key: create one with a key rotation")]
    NoActiveKey,

    /// No token record with this id.
    #[error("unknown token id {0}")]
    UnknownToken(TokenId),

    /// The token a new one is minted from is revoked (its descendants die with it).
    #[error("parent token {0} is revoked: nothing more can be minted from it")]
    ParentRevoked(TokenId),

    /// The database exists but its master key file does not: a new key would not open it.
    #[error(
        "database {db} exists but its master key file {key} does not: restore the key file or set \
         TESSERA_MASTER_KEY (a new key would not open the sealed keys)"
    )]
    MissingMasterKey {
        /// The key file looked for.
        key: String,
        /// The database.
        db: String,
    },

    /// The database cannot be reached (connection refused or lost, timeout): nothing was
    /// written; try again when it is back.
    #[error("{0}")]
    Unavailable(String),

    /// The database did not confirm a `COMMIT` it was sent before the write's deadline: the write
    /// may or may not have been applied. Check (e.g. list the tokens) before retrying.
    #[error("the database did not confirm the commit in time, so the write may have been applied: {0}; check before retrying")]
    Unconfirmed(String),

    /// The database refused a statement (a constraint, a bad value).
    #[error("database: {0}")]
    Database(String),

    /// This node has not heard from the shared database for longer than allowed: it refuses
    /// to verify until the database answers again.
    #[error("this node has not heard from the database for {seconds} s (limit {limit} s): refusing to verify until it does")]
    Stale {
        /// Seconds since the last answer.
        seconds: u64,
        /// The configured `max_staleness`, in seconds.
        limit: u64,
    },

    /// A signing-key rotation came before the next key was published long enough for verifiers'
    /// JWKS caches to have it.
    #[error("the next signing key has been published for {published} s; it may sign only after {required} s (JWKS caches must see it first)")]
    TooEarly {
        /// Seconds it has been published.
        published: i64,
        /// Seconds required.
        required: i64,
    },

    /// There is no next signing key of this algorithm to promote.
    #[error("no next {0} signing key to promote: the algorithm has no signing keys yet")]
    NoNextSigningKey(String),

    /// No application has this name.
    #[error("no application named \"{0}\"")]
    UnknownApp(String),

    /// An application with this name, or another one with this audience, is registered (names
    /// are never reused, even after an application is disabled).
    #[error("{0} is taken: application names and audiences are unique and never reused")]
    AppExists(String),

    /// No session has this id.
    #[error("no session {0}")]
    UnknownSession(String),

    /// The session was revoked (by an operator, or because a spent refresh token was reused).
    #[error("session {0} is revoked: sign in again")]
    SessionRevoked(String),

    /// An audit head, kind or outcome that does not parse.
    #[error("{0}")]
    BadAudit(String),

    /// The refresh token presented is not one the session issued.
    #[error("this refresh token does not belong to session {0}")]
    NotThisSession(String),

    /// The database already has keys (first-key creation on a cluster lost the race).
    #[error("the database already has keys")]
    KeysExist,

    /// A token record with this id exists already (ids are never reused).
    #[error("token id {0} is already recorded")]
    DuplicateToken(TokenId),

    /// A text field contains a NUL character.
    #[error("{0} must not contain a NUL character")]
    NulInText(&'static str),

    /// A field is over its documented limit.
    #[error("{what} is too long: {size} > {limit} bytes")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// A stored value does not decode (corruption or a foreign file).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),

    /// Another process (a running service?) holds the database open.
    #[error("database {0} is in use by another process (a running tessera service?): stop it, or use the HTTP API")]
    InUse(String),

    /// A migration's or restore's target already holds data (`migrate`, `restore`).
    #[error("the target {0} already holds data: migrate or restore only into an empty database")]
    TargetNotEmpty(String),

    /// The operation does not exist for this kind of database.
    #[error("{0}")]
    Unsupported(String),

    /// The storage engine failed (I/O, lock held by another process, ...).
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),

    /// Reading or writing the master key file failed.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The store's writer has stopped (the store is shutting down).
    #[error("store is closed")]
    Closed,

    /// The operating system random number generator failed.
    #[error("random number generator failed")]
    Random,
}

pub(crate) fn storage<E: Into<redb::Error>>(e: E) -> Error {
    Error::Storage(e.into())
}

impl Error {
    /// Whether this is a token record's refusal (its checks failed before anything was written),
    /// not a failure of the database.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::UnknownKey(_)
                | Error::KeyRevoked(_)
                | Error::DuplicateToken(_)
                | Error::UnknownToken(_)
                | Error::ParentRevoked(_)
        )
    }
}
