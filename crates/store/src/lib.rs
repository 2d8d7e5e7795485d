//! Tessera key store on redb: root keys sealed at rest under a master key, rotation (one key
//! signs, retired keys verify, revoked keys do neither), token records that are never deleted,
//! and an append-only revocation log that verifier caches can poll.
//!
//! [`Store`] implements [`tessera_core::KeyProvider`], so a verifier chooses keys and sees
//! revocations through it without touching the disk.
//!
//! ```
//! use tessera_core::{Context, Identifier, Token, TokenId, Verifier};
//! use tessera_store::{MasterKey, NewToken, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("tessera.redb"), MasterKey::generate()?)?;
//! let key = store.rotate()?;                     // the first active key
//! let (kid, secret) = store.active_key().expect("active key");
//! let tid = TokenId::generate()?;
//! let token = Token::mint_tessera(None, &secret, &Identifier::new(kid, tid, "alice")?)?;
//! store.record_token(NewToken {
//!     tid, kid, subject: "alice".into(), description: "laptop".into(), expires: None, caveats: vec![], parent: None,
//! })?;
//! Verifier::with_keys(&store).verify(&token, &[], &Context::now())?;
//! store.revoke_token(tid)?;
//! assert!(Verifier::with_keys(&store).verify(&token, &[], &Context::now()).is_err());
//! # assert_eq!(key.kid, kid);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
mod backend;
mod backup;
mod codec;
mod error;
mod follow;
mod keys;
mod master;
mod memory;
mod migrate;
mod sessions;
mod store;
mod usage;
mod writer;

pub use audit::{
    Actor, AuditAnchor, AuditEntry, AuditFilter, AuditHead, AuditKind, AuditNote, AuditVerdict, Audited,
    Outcome, Target, MAX_AUDIT_PAGE,
};
pub use backend::postgres::{PostgresOptions, SslMode};
pub use backup::{remove_stale_snapshots, restore, snapshot_path_in, Snapshot};
pub use codec::{
    AppRecord, KeyInfo, KeyState, NewToken, Notice, Refreshed, Revocation, RevocationTarget, SessionRecord,
    SigningKeyInfo, SigningKeyState, Spent, TokenRecord, MAX_CAVEAT_SUMMARY, MAX_DESCRIPTION, SCHEMA_VERSION,
};
pub use error::{Error, Result};
pub use master::{MasterKey, MASTER_KEY_ENV};
pub use memory::{Merged, RevokedSet};
pub use migrate::{migrate, Migrated, Progress, TABLES};
pub use store::{Freshness, Location, Store};
pub use usage::{RateDecision, RateTake, DEFAULT_RATE_CAPACITY, MAX_FAMILY_BUDGETS, PRUNE_PER_TAKE};
