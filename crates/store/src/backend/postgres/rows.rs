//! Rows and values: how each stored form and change-log entry maps to PostgreSQL columns, and
//! how the database's errors map to the store's.

use tessera_core::{KeyId, TokenId};
use tokio_postgres::Row;

use crate::backend::{Change, Event};
use crate::codec::{
    self, KeyState, Notice, SigningKeyState, StoredApp, StoredKey, StoredSession, StoredSigningKey,
    StoredToken,
};
use crate::error::{Error, Result};

pub(super) fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("database: {e}"))
}

/// Errors the database returned for a statement (a constraint, a bad value) are failures of the
/// operation; anything about the connection makes the database unavailable.
pub(super) fn db(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(d) => Error::Database(format!("{}: {}", d.code().code(), d.message())),
        None => unavailable(with_causes(&e)),
    }
}

/// An error with its causes: the driver's own words are only its kind ("error performing TLS
/// handshake"); why (the certificate's issuer, the refused connection) is in its sources.
pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut said = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        said = format!("{said}: {s}");
        source = s.source();
    }
    said
}

pub(super) fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        other => unavailable(other),
    }
}

pub(super) fn kind_of(e: &Event) -> (&'static str, Vec<u8>) {
    match e {
        Event::TokenRevoked(t) => ("token-revoked", t.as_bytes().to_vec()),
        Event::KeyRevoked(k) => ("key-revoked", k.as_bytes().to_vec()),
        Event::KeyChanged(k) => ("key-changed", k.as_bytes().to_vec()),
        Event::SigningKeys => ("signing-keys", Vec::new()),
        Event::Apps => ("apps", Vec::new()),
    }
}

pub(super) fn bytes<const N: usize>(v: Vec<u8>, what: &str) -> Result<[u8; N]> {
    v.try_into().map_err(|_| Error::Corrupt(format!("{what} has the wrong length")))
}

pub(super) fn state_name(s: KeyState) -> &'static str {
    match s {
        KeyState::Active => "active",
        KeyState::Retired => "retired",
        KeyState::Revoked => "revoked",
    }
}

pub(super) fn key_of(row: &Row) -> Result<(KeyId, StoredKey)> {
    let kid = KeyId::from_bytes(bytes(row.try_get(0).map_err(db)?, "kid")?);
    let state = match row.try_get::<_, String>(2).map_err(db)?.as_str() {
        "active" => KeyState::Active,
        "retired" => KeyState::Retired,
        "revoked" => KeyState::Revoked,
        other => return Err(Error::Corrupt(format!("key state {other}"))),
    };
    Ok((
        kid,
        StoredKey {
            sealed: row.try_get(1).map_err(db)?,
            state,
            created: row.try_get(3).map_err(db)?,
            retired_at: row.try_get(4).map_err(db)?,
            revoked_at: row.try_get(5).map_err(db)?,
        },
    ))
}

pub(super) fn token_of(row: &Row) -> Result<(TokenId, StoredToken)> {
    let tid = TokenId::from_bytes(bytes(row.try_get(0).map_err(db)?, "tid")?);
    let parent: Option<Vec<u8>> = row.try_get(8).map_err(db)?;
    let session: Option<Vec<u8>> = row.try_get(12).map_err(db)?;
    Ok((
        tid,
        StoredToken {
            kid: bytes(row.try_get(1).map_err(db)?, "kid")?,
            subject: row.try_get(2).map_err(db)?,
            description: row.try_get(3).map_err(db)?,
            created: row.try_get(4).map_err(db)?,
            expires: row.try_get(5).map_err(db)?,
            caveats: row.try_get(6).map_err(db)?,
            revoked_at: row.try_get(7).map_err(db)?,
            parent: parent.map(|p| bytes(p, "parent")).transpose()?,
            used_at: row.try_get(9).map_err(db)?,
            last_used: row.try_get(10).map_err(db)?,
            grant: row.try_get(11).map_err(db)?,
            session: session.map(|s| bytes(s, "session")).transpose()?,
        },
    ))
}

pub(super) fn notice_of(row: &Row) -> Result<Notice> {
    let attempts: i32 = row.try_get(4).map_err(db)?;
    Ok(Notice {
        tid: TokenId::from_bytes(bytes(row.try_get(0).map_err(db)?, "tid")?),
        threshold: row.try_get(1).map_err(db)?,
        created: row.try_get(2).map_err(db)?,
        delivered_at: row.try_get(3).map_err(db)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt: row.try_get(5).map_err(db)?,
    })
}

pub(super) fn signing_key_of(row: &Row) -> Result<(String, StoredSigningKey)> {
    let state = match row.try_get::<_, String>(4).map_err(db)?.as_str() {
        "next" => SigningKeyState::Next,
        "active" => SigningKeyState::Active,
        "retired" => SigningKeyState::Retired,
        other => return Err(Error::Corrupt(format!("signing key state {other}"))),
    };
    Ok((
        row.try_get(0).map_err(db)?,
        StoredSigningKey {
            alg: row.try_get(1).map_err(db)?,
            sealed: row.try_get(2).map_err(db)?,
            jwk: row.try_get(3).map_err(db)?,
            state,
            created: row.try_get(5).map_err(db)?,
            activated_at: row.try_get(6).map_err(db)?,
            retired_at: row.try_get(7).map_err(db)?,
            owner: row.try_get(8).map_err(db)?,
        },
    ))
}

pub(super) const SELECT_SIGNING: &str =
    "SELECT kid, alg, sealed, jwk, state, created, activated_at, retired_at, owner FROM tessera_signing_keys ORDER BY created, kid";

pub(super) fn signing_state_name(s: SigningKeyState) -> &'static str {
    match s {
        SigningKeyState::Next => "next",
        SigningKeyState::Active => "active",
        SigningKeyState::Retired => "retired",
    }
}

pub(super) const SELECT_APPS: &str = "SELECT name, record FROM tessera_apps ORDER BY name";

pub(super) fn app_of(row: &Row) -> Result<(String, StoredApp)> {
    let record: Vec<u8> = row.try_get(1).map_err(db)?;
    Ok((row.try_get(0).map_err(db)?, codec::decode(&record, "application")?))
}

pub(super) fn change_of(row: &Row) -> Result<Change> {
    let seq: i64 = row.try_get(0).map_err(db)?;
    let kind: String = row.try_get(2).map_err(db)?;
    let id: Vec<u8> = row.try_get(3).map_err(db)?;
    let event = match kind.as_str() {
        "token-revoked" => Event::TokenRevoked(TokenId::from_bytes(bytes(id, "change id")?)),
        "key-revoked" => Event::KeyRevoked(KeyId::from_bytes(bytes(id, "change id")?)),
        "key-changed" => Event::KeyChanged(KeyId::from_bytes(bytes(id, "change id")?)),
        "signing-keys" => Event::SigningKeys,
        "apps" => Event::Apps,
        other => return Err(Error::Corrupt(format!("change kind {other}"))),
    };
    Ok(Change { seq: seq as u64, at: row.try_get(1).map_err(db)?, event })
}

pub(super) fn session_of(row: &Row) -> Result<StoredSession> {
    let record: Vec<u8> = row.try_get(0).map_err(db)?;
    codec::decode(&record, "session")
}
