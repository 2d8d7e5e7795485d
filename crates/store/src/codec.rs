//! The one codec: every stored value is CBOR (ciborium) of a struct defined here.
//!
//! Keys of tables are fixed-size byte arrays (kid: 8, tid: 16), `(subject, tid)` tuples for the
//! subject index, and `u64` sequence numbers for the revocation log; values are these records.

use serde::{Deserialize, Serialize};
use tessera_core::{KeyId, TokenId};

use crate::error::{Error, Result};
pub(crate) use crate::sessions::StoredSession;
pub use crate::sessions::{Refreshed, SessionRecord, Spent};

/// Schema version this build writes; a database with a newer one is refused.
pub const SCHEMA_VERSION: u32 = 10;
// Version history: 1 = first release; 2 = token lineage (`parent` in records, the children
// index), change log with key changes; 3 = JWT signing keys; 4 = registered applications and
// signing keys they own; 5 = sessions; 6 = uses, last use and grants of tokens, rate counters,
// expiry notices; 7 = rate counters one row per family and budget with the end of its window
// (PostgreSQL only: redb keeps no rate counters); 8 = sessions of fixed size (`first`,
// `last_spent` in milliseconds) and the session of a refresh token in its record;
// 9 = the audit trail (`audit` on redb; `tessera_audit`, `tessera_audit_anchor` on PostgreSQL);
// 10 = the audit anchor's time and MAC (`pruned_at_ms`, `anchor_mac`; redb's `audit_anchor`
// value gains both, absent in an anchor written before).
// Older databases are migrated at open, after the master key check.

/// The state of a root key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Signs new tokens (exactly one key at a time) and verifies.
    Active,
    /// Verifies tokens it signed; signs nothing new.
    Retired,
    /// Neither signs nor verifies: every token it signed is dead.
    Revoked,
}

/// Metadata of a root key (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key id.
    pub kid: KeyId,
    /// Current state.
    pub state: KeyState,
    /// Creation time (seconds since the epoch).
    pub created: i64,
    /// When it stopped being active, if it did.
    pub retired_at: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// The state of a JWT signing key (ES256 or EdDSA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKeyState {
    /// Published in the JWKS ahead of use: verifiers' caches learn it before it signs.
    Next,
    /// Signs new envelopes (one per algorithm).
    Active,
    /// Signs nothing new; published while envelopes it signed may still be valid.
    Retired,
}

/// Metadata and public half of a JWT signing key (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKeyInfo {
    /// The RFC 7638 thumbprint of its public key: the JWS `kid`.
    pub kid: String,
    /// `ES256` or `EdDSA`.
    pub alg: String,
    /// Current state.
    pub state: SigningKeyState,
    /// The public JWK, as published.
    pub jwk: String,
    /// Creation (= first publication) time, seconds since the epoch.
    pub created: i64,
    /// When it started signing.
    pub activated_at: Option<i64>,
    /// When it stopped signing.
    pub retired_at: Option<i64>,
    /// The application whose envelopes it signs; `None` for the service's own keys.
    pub owner: Option<String>,
}

/// A registered application (a client of the JWT issuer): who may ask for envelopes for which
/// audience, how they are signed and what they may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppRecord {
    /// Unique name (`[a-z0-9._-]`, 1 to 64 bytes); its credential's subject is `app:<name>`.
    pub name: String,
    /// The `aud` of every envelope issued to it; unique among applications.
    pub audience: String,
    /// Default envelope lifetime, seconds.
    pub ttl: u64,
    /// Algorithms it may ask for (`ES256`, `EdDSA`, `HS256`); the first is its default.
    pub algorithms: Vec<String>,
    /// Whether it has signing keys of its own (ES256 and EdDSA) instead of the service's.
    pub own_keys: bool,
    /// Default renew strategy of its sessions (`noRefresh` when `None`).
    pub refresh_strategy: Option<String>,
    /// Operations its envelopes may carry (`None` = whatever the token allows).
    pub operations: Option<Vec<String>>,
    /// Resources its envelopes may carry (`None` = whatever the token allows).
    pub resources: Option<Vec<String>>,
    /// The token family of its credential (revoked when it is disabled).
    pub credential: TokenId,
    /// Registration time (seconds since the epoch).
    pub created: i64,
    /// When it was disabled, if it was.
    pub disabled_at: Option<i64>,
}

pub(crate) mod tid {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tessera_core::TokenId;

    pub(crate) fn serialize<S: Serializer>(v: &TokenId, s: S) -> Result<S::Ok, S::Error> {
        v.as_bytes().serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TokenId, D::Error> {
        <[u8; 16]>::deserialize(d).map(TokenId::from_bytes)
    }
}

pub(crate) mod tids {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tessera_core::TokenId;

    pub(crate) fn serialize<S: Serializer>(v: &[TokenId], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|t| *t.as_bytes()).collect::<Vec<_>>().serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TokenId>, D::Error> {
        Ok(<Vec<[u8; 16]>>::deserialize(d)?.into_iter().map(TokenId::from_bytes).collect())
    }
}

/// A minted token's record. Records are never deleted, so token ids are never reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Token family id.
    pub tid: TokenId,
    /// Key that signed it.
    pub kid: KeyId,
    /// Whom it speaks for.
    pub subject: String,
    /// Free text shown to the owner.
    pub description: String,
    /// Creation time (seconds since the epoch).
    pub created: i64,
    /// Expiry (its `time-before`), if any.
    pub expires: Option<i64>,
    /// The caveats it was minted with (a summary of its restrictions).
    pub caveats: Vec<String>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// The token it was minted from through the API, if any (revoking that one revokes this).
    pub parent: Option<TokenId>,
    /// When its single use happened (a `once` token).
    pub used_at: Option<i64>,
    /// When it was last used successfully (batched: up to a flush interval stale).
    pub last_used: Option<i64>,
    /// What a link token gives when it is redeemed (JSON).
    pub grant: Option<String>,
}

/// An expiry notice for one token at one threshold: claimed once across the cluster, delivered
/// at least once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The token family.
    #[serde(with = "tid")]
    pub tid: TokenId,
    /// Seconds before expiry (0: at expiry).
    pub threshold: i64,
    /// When it was claimed.
    pub created: i64,
    /// When the receiver accepted it.
    pub delivered_at: Option<i64>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When to try next (undelivered notices).
    pub next_attempt: i64,
}

/// What to record for a freshly minted token.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// Token family id (from the token's identifier).
    pub tid: TokenId,
    /// Key that signed it.
    pub kid: KeyId,
    /// Whom it speaks for.
    pub subject: String,
    /// Free text, at most [`MAX_DESCRIPTION`] bytes.
    pub description: String,
    /// Expiry, if any.
    pub expires: Option<i64>,
    /// The caveats it was minted with, at most [`MAX_CAVEAT_SUMMARY`] bytes in all.
    pub caveats: Vec<String>,
    /// The caller's token family when minted from a token: must be recorded and not revoked.
    pub parent: Option<TokenId>,
}

/// Maximum description length, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;
/// Maximum total length of a record's caveat summary, in bytes.
pub const MAX_CAVEAT_SUMMARY: usize = 4096;

/// What a revocation log entry revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationTarget {
    /// A token family (the token and every attenuation of it).
    Token(TokenId),
    /// A root key (every token it signed).
    Key(KeyId),
}

/// One entry of the append-only revocation log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Sequence number, increasing from 1.
    pub seq: u64,
    /// When (seconds since the epoch).
    pub at: i64,
    /// What.
    pub target: RevocationTarget,
}

// ---- stored forms ---------------------------------------------------------------------------

/// A key as stored: its secret only sealed under the master key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    #[serde(with = "bytes")]
    pub(crate) sealed: Vec<u8>,
    pub(crate) state: KeyState,
    pub(crate) created: i64,
    pub(crate) retired_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredToken {
    pub(crate) kid: [u8; 8],
    pub(crate) subject: String,
    pub(crate) description: String,
    pub(crate) created: i64,
    pub(crate) expires: Option<i64>,
    pub(crate) caveats: Vec<String>,
    pub(crate) revoked_at: Option<i64>,
    /// Absent in records written before schema version 2.
    #[serde(default)]
    pub(crate) parent: Option<[u8; 16]>,
    /// Absent before schema version 6 (as are the next two).
    #[serde(default)]
    pub(crate) used_at: Option<i64>,
    #[serde(default)]
    pub(crate) last_used: Option<i64>,
    #[serde(default)]
    pub(crate) grant: Option<String>,
    /// The session whose refresh token this is (schema 8; absent for any other token, and for
    /// refresh tokens recorded before): how a spent refresh token is recognised as this
    /// session's without the session listing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) session: Option<[u8; 16]>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredRevocation {
    pub(crate) at: i64,
    pub(crate) target: StoredTarget,
}

impl StoredRevocation {
    /// Decode a change-log entry. Every open reads the whole log, mostly token revocations, and
    /// ciborium spends about a microsecond on each (sixteen array items and a 4 KiB scratch
    /// buffer cleared per call): that one shape, as `encode` writes it, is read here directly;
    /// anything else, or any other way of writing it, goes through ciborium.
    pub(crate) fn from_cbor(bytes: &[u8]) -> Result<StoredRevocation> {
        match token_revocation(bytes) {
            Some(r) => Ok(r),
            None => decode(bytes, "change"),
        }
    }
}

/// `{"at": int, "target": {"Token": [16 × u8]}}` in the (minimal) encoding `encode` writes.
fn token_revocation(bytes: &[u8]) -> Option<StoredRevocation> {
    let rest = bytes.strip_prefix(&[0xa2, 0x62, b'a', b't'])?;
    let (at, rest) = cbor_int(rest)?;
    let mut rest = rest.strip_prefix(b"\x66target\xa1\x65Token\x90")?;
    let mut tid = [0u8; 16];
    for out in &mut tid {
        rest = match rest {
            [v @ 0x00..=0x17, r @ ..] => {
                *out = *v;
                r
            }
            [0x18, v @ 0x18..=0xff, r @ ..] => {
                *out = *v;
                r
            }
            _ => return None,
        };
    }
    rest.is_empty().then_some(StoredRevocation { at, target: StoredTarget::Token(tid) })
}

/// A CBOR integer (major type 0 or 1) in its minimal encoding, and what follows it.
fn cbor_int(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    let len = match first & 0x1f {
        0..=23 => 0,
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return None,
    };
    let (arg, rest) = (rest.get(..len)?, rest.get(len..)?);
    let n =
        if len == 0 { u64::from(first & 0x1f) } else { arg.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)) };
    // Minimal: a longer form only for a value that needs it.
    let min_len = match n {
        0..=23 => 0,
        24..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    };
    if len != min_len {
        return None;
    }
    let n = i64::try_from(n).ok()?;
    match first >> 5 {
        0 => Some((n, rest)),
        1 => Some((-1 - n, rest)),
        _ => None,
    }
}

/// A JWT signing key as stored: its secret only sealed under the master key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredSigningKey {
    pub(crate) alg: String,
    #[serde(with = "bytes")]
    pub(crate) sealed: Vec<u8>,
    pub(crate) jwk: String,
    pub(crate) state: SigningKeyState,
    pub(crate) created: i64,
    pub(crate) activated_at: Option<i64>,
    pub(crate) retired_at: Option<i64>,
    /// Absent before schema version 4: the service's own key.
    #[serde(default)]
    pub(crate) owner: Option<String>,
}

/// An application as stored.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredApp {
    pub(crate) audience: String,
    pub(crate) ttl: u64,
    pub(crate) algorithms: Vec<String>,
    pub(crate) own_keys: bool,
    /// Absent before schema version 5.
    #[serde(default)]
    pub(crate) refresh_strategy: Option<String>,
    pub(crate) operations: Option<Vec<String>>,
    pub(crate) resources: Option<Vec<String>>,
    pub(crate) credential: [u8; 16],
    pub(crate) created: i64,
    pub(crate) disabled_at: Option<i64>,
}

impl StoredApp {
    pub(crate) fn into_record(self, name: String) -> AppRecord {
        AppRecord {
            name,
            audience: self.audience,
            ttl: self.ttl,
            algorithms: self.algorithms,
            own_keys: self.own_keys,
            refresh_strategy: self.refresh_strategy,
            operations: self.operations,
            resources: self.resources,
            credential: TokenId::from_bytes(self.credential),
            created: self.created,
            disabled_at: self.disabled_at,
        }
    }
}

impl StoredSigningKey {
    pub(crate) fn info(&self, kid: &str) -> SigningKeyInfo {
        SigningKeyInfo {
            kid: kid.to_owned(),
            alg: self.alg.clone(),
            state: self.state,
            jwk: self.jwk.clone(),
            created: self.created,
            activated_at: self.activated_at,
            retired_at: self.retired_at,
            owner: self.owner.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) enum StoredTarget {
    Token([u8; 16]),
    Key([u8; 8]),
    /// A key added or whose state changed (schema 2; the log is the change log).
    KeyChanged([u8; 8]),
    /// A JWT signing key added or whose state changed.
    SigningKeys,
    /// An application registered or disabled (schema 4).
    Apps,
}

mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let v = ciborium::value::Value::deserialize(d)?;
        match v {
            ciborium::value::Value::Bytes(b) => Ok(b),
            _ => Err(serde::de::Error::custom("expected bytes")),
        }
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    // Serializing these plain structs into a Vec cannot fail.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    ciborium::from_reader(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

impl StoredToken {
    pub(crate) fn into_record(self, tid: TokenId) -> TokenRecord {
        TokenRecord {
            tid,
            kid: KeyId::from_bytes(self.kid),
            subject: self.subject,
            description: self.description,
            created: self.created,
            expires: self.expires,
            caveats: self.caveats,
            revoked_at: self.revoked_at,
            parent: self.parent.map(TokenId::from_bytes),
            used_at: self.used_at,
            last_used: self.last_used,
            grant: self.grant,
        }
    }
}

impl StoredKey {
    pub(crate) fn info(&self, kid: KeyId) -> KeyInfo {
        KeyInfo {
            kid,
            state: self.state,
            created: self.created,
            retired_at: self.retired_at,
            revoked_at: self.revoked_at,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

    use super::*;

    fn same(a: &StoredRevocation, b: &StoredRevocation) -> bool {
        a.at == b.at && encode(&a.target) == encode(&b.target)
    }

    #[test]
    fn token_revocations_decode_directly_and_as_ciborium_does() {
        let ats = [
            0,
            1,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            1_700_000_000_123,
            i64::MAX,
            -1,
            -24,
            -25,
            -257,
            i64::MIN,
        ];
        let tids = [
            [0u8; 16],
            [0xff; 16],
            core::array::from_fn(|i| i as u8 * 17),
            core::array::from_fn(|i| 20 + i as u8),
        ];
        for at in ats {
            for tid in tids {
                let entry = StoredRevocation { at, target: StoredTarget::Token(tid) };
                let bytes = encode(&entry);
                let direct = token_revocation(&bytes).expect("the direct path reads what encode writes");
                let slow: StoredRevocation = decode(&bytes, "change").unwrap();
                assert!(same(&direct, &slow) && same(&direct, &entry), "at {at}");
                assert!(same(&StoredRevocation::from_cbor(&bytes).unwrap(), &entry));
            }
        }
    }

    #[test]
    fn other_entries_and_other_encodings_go_through_ciborium() {
        for target in [
            StoredTarget::Key([7; 8]),
            StoredTarget::KeyChanged([1; 8]),
            StoredTarget::SigningKeys,
            StoredTarget::Apps,
        ] {
            let entry = StoredRevocation { at: 5, target };
            let bytes = encode(&entry);
            assert!(token_revocation(&bytes).is_none());
            assert!(same(&StoredRevocation::from_cbor(&bytes).unwrap(), &entry));
        }
        let mut bytes = encode(&StoredRevocation { at: 5, target: StoredTarget::Token([9; 16]) });
        // `at` = 5 written in the one-byte form (0x18 0x05): valid CBOR, not minimal.
        bytes.splice(4..5, [0x18, 0x05]);
        assert!(token_revocation(&bytes).is_none());
        assert!(same(
            &StoredRevocation::from_cbor(&bytes).unwrap(),
            &StoredRevocation { at: 5, target: StoredTarget::Token([9; 16]) }
        ));
        // Truncated, or with a trailing byte: never read as a revocation.
        let good = encode(&StoredRevocation { at: 5, target: StoredTarget::Token([9; 16]) });
        assert!(token_revocation(&good[..good.len() - 1]).is_none());
        assert!(StoredRevocation::from_cbor(&good[..good.len() - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(token_revocation(&long).is_none());
    }
}
