//! Minting: a fresh token family for a subject, recorded durably before it is returned.

use tessera_core::{Caveat, CustomClaims, Identifier, Predicate, Token, TokenId};
use tessera_store::{Actor, NewToken, Store, TokenRecord};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::http::auth::Caller;
use crate::http::problem::ApiError;
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
    /// The token family it is minted from (recorded; revoking the parent revokes this one).
    pub parent: Option<TokenId>,
    /// Custom claims bound into the identifier.
    pub claims: Option<CustomClaims>,
}

/// A minted, recorded token.
pub struct Minted {
    /// The token.
    pub token: Token,
    /// Its durable record.
    pub record: TokenRecord,
}

/// Mint with the active key and record it (blocking: the record is committed durably, with its
/// `token.mint` audit entry naming `actor`, in one transaction).
pub fn mint(
    store: &Store,
    actor: &Actor,
    location: &str,
    discharge_location: &str,
    spec: MintSpec,
) -> Result<Minted, ApiError> {
    let (token, new) = build(store, location, discharge_location, spec)?;
    let record = store.audited(actor).record_token(new)?;
    Ok(Minted { token, record })
}

/// Mint with the active key: the token and the record to commit. Nothing is written yet:
/// commit the record before the token is handed out.
pub(crate) fn build(
    store: &Store,
    location: &str,
    discharge_location: &str,
    spec: MintSpec,
) -> Result<(Token, NewToken), ApiError> {
    let (kid, secret) =
        store.active_key().ok_or_else(|| ApiError::unavailable("no active signing key: rotate keys"))?;
    let tid = TokenId::generate()?;
    let mut id = Identifier::new(kid, tid, spec.subject.clone())?;
    if let Some(claims) = spec.claims {
        id = id.with_claims(claims);
    }
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
    let new = NewToken {
        tid,
        kid,
        subject: spec.subject,
        description: spec.description,
        expires,
        caveats,
        parent: spec.parent,
    };
    Ok((token, new))
}

/// What a token minted from a caller's token inherits (../shared/DESIGN.md section 11).
pub(crate) struct Inheritance {
    /// Every first-party caveat of the caller's token and of its discharges, in order.
    pub(crate) caveats: Vec<String>,
    /// The caller's token carries this service's `not-revoked` ticket: the child must too.
    pub(crate) revocable: bool,
    /// The caller's custom claims (a child for the caller's own subject keeps them).
    pub(crate) claims: Option<CustomClaims>,
}

fn text(cid: &[u8]) -> String {
    String::from_utf8_lossy(cid).into_owned()
}

/// This service's own `not-revoked` ticket for the family `tid`, opened with the key it names.
fn is_own_ticket(store: &Store, cid: &[u8], tid: &TokenId) -> bool {
    ticket::kid_of(cid)
        .and_then(|kid| store.verifying_key(&kid))
        .and_then(|secret| ticket::open(cid, &secret))
        .is_some_and(|t| t.condition == ticket::NOT_REVOKED && t.tid == *tid)
}

/// The caveats a child of `caller` inherits, or 403 when the caller's token carries a condition
/// the service cannot copy: a third-party caveat that is not this service's own `not-revoked`
/// ticket for the caller's family (in the token or in any discharge).
///
/// From the discharges of the service's own tickets, the first caveat is the `time-before` the
/// service put there (a freshness bound, minutes long); it is not inherited, since the child is
/// revocable and gets a ticket of its own. Every caveat a holder added to a discharge is.
pub(crate) fn inheritance(store: &Store, caller: &Caller) -> Result<Inheritance, ApiError> {
    let cannot = |why: &str| {
        ApiError::forbidden(format!(
            "this token cannot mint: {why}; the service cannot copy a condition it cannot discharge \
             (mint from a token without third-party caveats, or one whose only third-party caveat \
             is this service's not-revoked ticket)"
        ))
    };
    let mut caveats = Vec::new();
    let mut revocable = false;
    let budget = |cid: &[u8]| matches!(Predicate::parse(cid), Ok(Predicate::RateLimit(_)));
    for c in caller.token.caveats() {
        match c {
            Caveat::FirstParty(cid) if budget(cid) => {
                return Err(cannot("it has a rate-limit, whose budget would not bind a new token family"))
            }
            Caveat::FirstParty(cid) => caveats.push(text(cid)),
            Caveat::ThirdParty { id, .. } if is_own_ticket(store, id, &caller.tid) => revocable = true,
            Caveat::ThirdParty { .. } => {
                return Err(cannot("it has a third-party caveat of another service"))
            }
        }
    }
    for d in &caller.discharges {
        let own = is_own_ticket(store, d.identifier(), &caller.tid);
        for (i, c) in d.caveats().enumerate() {
            match c {
                Caveat::FirstParty(cid) if own && i == 0 && cid.starts_with(b"time-before ") => {}
                Caveat::FirstParty(cid) if budget(cid) => {
                    return Err(cannot(
                        "a discharge has a rate-limit, whose budget would not bind a new token family",
                    ))
                }
                Caveat::FirstParty(cid) => caveats.push(text(cid)),
                Caveat::ThirdParty { .. } => return Err(cannot("a discharge has a third-party caveat")),
            }
        }
    }
    let claims = caller.token.tessera_identifier().and_then(|id| id.claims);
    Ok(Inheritance { caveats, revocable, claims })
}

/// The caveats the holder of `presented`, a credential this service minted with the first-party
/// caveats `recorded` for one purpose (a link token, a refresh token), added to it since: read
/// through [`inheritance`], so that what it is redeemed for keeps them (../shared/DESIGN.md
/// section 16) and a condition that cannot be copied refuses the redemption (403).
pub(crate) fn added_by_holder(
    store: &Store,
    presented: &Caller,
    recorded: &[String],
) -> Result<Vec<String>, ApiError> {
    let all = inheritance(store, presented)?.caveats;
    // A verified token begins with what was minted: attenuation only appends.
    all.strip_prefix(recorded)
        .map(<[String]>::to_vec)
        .ok_or_else(|| ApiError::unauthorized("the token does not begin with the caveats it was issued with"))
}

/// The caveats of `caveats` that bound time and network only (`time-before`, `time-after`,
/// `client-ip`): what a token that can do one thing (refresh a session, redeem a link) keeps of
/// its creator's, so it never outlives it or works from elsewhere.
pub(crate) fn time_and_network_bounds(caveats: &[String]) -> Vec<String> {
    caveats
        .iter()
        .filter(|c| {
            matches!(
                Predicate::parse(c.as_bytes()),
                Ok(Predicate::TimeBefore(_) | Predicate::TimeAfter(_) | Predicate::ClientIp(_))
            )
        })
        .cloned()
        .collect()
}
