//! ID tokens (and other JWTs) of a trusted issuer, for a login exchange: signature with a key of
//! the issuer's JWKS and an algorithm configured for it, `iss`, `aud` (a string or an array),
//! `exp` (required), `nbf`, and a `sub`.

use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};

use super::jws::{verify_compact, HeaderRules};
use super::{bad, Algorithm, VerifyKey};
use crate::error::Result;

/// What a token of a trusted issuer must satisfy.
#[derive(Clone, Debug)]
pub struct IdTokenRules<'a> {
    /// The issuer's identifier, compared exactly with `iss`.
    pub issuer: &'a str,
    /// This service's client id at the issuer: `aud` must be it or contain it.
    pub audience: &'a str,
    /// The algorithms configured for the issuer (`none` is never one).
    pub algorithms: &'a [Algorithm],
    /// The current time.
    pub now: OffsetDateTime,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Verify a JWT of a trusted issuer; returns its claims (with a non-empty string `sub`).
///
/// ```
/// use tessera_core::envelope::{verify_id_token, Algorithm, IdTokenRules, VerifyKey};
/// use time::{Duration, OffsetDateTime};
///
/// let rules = IdTokenRules {
///     issuer: "https://idp.example",
///     audience: "tessera",
///     algorithms: &[Algorithm::Es256],
///     now: OffsetDateTime::now_utc(),
///     leeway: Duration::seconds(30),
/// };
/// let no_keys = |kid: &str| Err::<VerifyKey, _>(tessera_core::Error::Envelope(format!("unknown kid {kid}")));
/// // An unsigned token is refused before any key is looked up.
/// let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
/// assert!(verify_id_token(none, no_keys, &rules).is_err());
/// ```
pub fn verify_id_token(
    jwt: &str,
    key_for: impl Fn(&str) -> Result<VerifyKey>,
    rules: &IdTokenRules<'_>,
) -> Result<Map<String, Value>> {
    let payload = verify_compact(jwt, key_for, HeaderRules::Foreign { allowed: rules.algorithms })?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| bad("claims are not a JSON object"))?;
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
    if iss != rules.issuer {
        return Err(bad(format!("issuer \"{iss:.200}\" is not the configured \"{}\"", rules.issuer)));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == rules.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(rules.audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(bad(format!("token is not for audience \"{}\"", rules.audience)));
    }
    let time = |name: &str| -> Result<Option<OffsetDateTime>> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("{name} is not a NumericDate"))),
        }
    };
    let exp = time("exp")?.ok_or_else(|| bad("token has no exp"))?;
    if rules.now >= exp + rules.leeway {
        return Err(bad("token has expired"));
    }
    if time("nbf")?.is_some_and(|nbf| rules.now + rules.leeway < nbf) {
        return Err(bad("token is not valid yet (nbf)"));
    }
    if claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(bad("token has no sub"));
    }
    Ok(claims)
}
