//! ID tokens (and other JWTs) of a trusted issuer, for a login exchange: signature with a key of
//! the issuer's JWKS and an algorithm configured for it, `iss`, `aud` (a string or an array),
//! `exp` (required), `nbf`, and a `sub`.

use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};

use super::jws::{parse, verify_compact, HeaderRules};
use super::{bad, Algorithm, VerifyKey};
use crate::error::Result;

/// The largest clock leeway [`IdTokenRules`] may allow (a leeway is for clock skew, not for
/// accepting expired tokens).
pub const MAX_LEEWAY: Duration = Duration::HOUR;

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
    /// Clock skew allowed on `exp` and `nbf`: 0 to [`MAX_LEEWAY`] (anything else is refused).
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
    // Only the rules' own values are added to: a NumericDate anywhere in the calendar (9999-12-31
    // included) is compared, never computed with, so no claim reaches an overflow.
    if rules.leeway.is_negative() || rules.leeway > MAX_LEEWAY {
        return Err(bad(format!("leeway must be between 0 and {MAX_LEEWAY}")));
    }
    let out_of_range = || bad("the current time minus or plus the leeway is outside the calendar");
    let earliest = rules.now.checked_sub(rules.leeway).ok_or_else(out_of_range)?;
    let latest = rules.now.checked_add(rules.leeway).ok_or_else(out_of_range)?;
    let time = |name: &str| -> Result<Option<OffsetDateTime>> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => {
                v.as_i64().and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()).map(Some).ok_or_else(
                    || bad(format!("{name} is not a NumericDate (whole seconds within years 1-9999)")),
                )
            }
        }
    };
    let exp = time("exp")?.ok_or_else(|| bad("token has no exp"))?;
    if exp <= earliest {
        return Err(bad("token has expired"));
    }
    if time("nbf")?.is_some_and(|nbf| nbf > latest) {
        return Err(bad("token is not valid yet (nbf)"));
    }
    if claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(bad("token has no sub"));
    }
    Ok(claims)
}

/// The `kid` of a token of a trusted issuer, once its header passed every check
/// [`verify_id_token`] makes of it (size, form, `alg` among `algorithms`, a `kid`, no `crit`);
/// nothing is verified yet. For a caller that must find the key (perhaps fetching its issuer's
/// JWKS) before it verifies: a token refused by its header never causes a fetch.
pub fn id_token_key_id(jwt: &str, algorithms: &[Algorithm]) -> Result<String> {
    parse(jwt, &HeaderRules::Foreign { allowed: algorithms }).map(|p| p.kid)
}
