//! Minting: a fresh token family for a subject, recorded durably before it is returned.

use tessera_core::{Caveat, Identifier, Predicate, Token, TokenId};
use tessera_store::{NewToken, Store, TokenRecord};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::problem::ApiError;
use crate::ticket;

/// What to mint.
pub struct MintSpec {
    /// Whom the token speaks for.
    pub subject: String,
    /// Shown to the owner.
    pub description: String,
    /// First-party caveats, in order (inherited ones first).
    pub caveats: Vec<String>,
    /// Expiry, added as a final `time-before` (the record shows the earliest of all).
    pub expires: Option<OffsetDateTime>,
    /// Add the service's `not-revoked` third-party caveat (revocation bites within the
    /// discharge TTL even for offline verifiers).
    pub revocable: bool,
}

/// A minted, recorded token.
pub struct Minted {
    /// The token.
    pub token: Token,
    /// Its durable record.
    pub record: TokenRecord,
}

/// Mint with the active key and record it (blocking: the record is committed durably).
pub fn mint(
    store: &Store,
    location: &str,
    discharge_location: &str,
    spec: MintSpec,
) -> Result<Minted, ApiError> {
    let (kid, secret) =
        store.active_key().ok_or_else(|| ApiError::unavailable("no active signing key: rotate keys"))?;
    let tid = TokenId::generate()?;
    let id = Identifier::new(kid, tid, spec.subject.clone())?;
    let mut token = Token::mint_tessera((!location.is_empty()).then_some(location), &secret, &id)?;
    let mut caveats = spec.caveats;
    if let Some(exp) = spec.expires {
        let t = exp.replace_nanosecond(0).unwrap_or(exp);
        caveats.push(format!("time-before {}", t.format(&Rfc3339).map_err(ApiError::internal)?));
    }
    for c in &caveats {
        token = token.attenuate(c).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    if spec.revocable {
        let (cid, caveat_key) = ticket::seal(kid, &secret, tid)?;
        token = token.add_third_party_caveat(discharge_location, &caveat_key, &cid)?;
    }
    // The record shows the effective expiry: the earliest time-before, inherited ones included.
    let expires = caveats
        .iter()
        .filter_map(|c| match Predicate::parse(c.as_bytes()) {
            Ok(Predicate::TimeBefore(t)) => Some(t.unix_timestamp()),
            _ => None,
        })
        .min();
    let record = store.record_token(NewToken {
        tid,
        kid,
        subject: spec.subject,
        description: spec.description,
        expires,
        caveats,
    })?;
    Ok(Minted { token, record })
}

/// The first-party caveats of a token, as text (what a token minted for its holder inherits).
pub(crate) fn first_party_caveats(token: &Token) -> Vec<String> {
    token
        .caveats()
        .filter_map(|c| match c {
            Caveat::FirstParty(id) => Some(String::from_utf8_lossy(id).into_owned()),
            Caveat::ThirdParty { .. } => None,
        })
        .collect()
}
