//! JWT envelopes: a verified token's effective restrictions as a compact JWS, signed with HS256,
//! ES256 or EdDSA ([`keys`] is where the algorithms differ; everything here is shared).
//!
//! Header `{"alg":..,"typ":"JWT","kid":..}`; claims `iss`, `sub`, `aud` (when issued for an
//! audience), `jti` (= tid), `iat`,
//! `exp` (never later than the token's earliest `time-before`, and at most the configured TTL),
//! `nbf` (the latest `time-after`), and `cap` with the effective `allow`, `resource` and
//! `client-ip` sets (absent = unrestricted), and the token's custom claims beside them. The key is `H(secret[kid], "tessera/jwt/v1")`.
//!
//! Decoding pins the algorithm to the one of the key the `kid` names (`none`, unknown algorithms
//! and a header that names another algorithm than its key's are refused, so an HS256 envelope
//! "signed" with a public key never verifies), checks the signature (HS256 in constant time),
//! then `iss`, `aud`, `exp`, `nbf` and `cap` against a request context.

mod id_token;
mod jws;
mod keys;

pub use id_token::{id_token_key_id, verify_id_token, IdTokenRules, MAX_LEEWAY};
pub use keys::{Algorithm, PublicKey, SigningKey, VerifyKey};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::caveat::{parse_net, Context, Restrictions};
use crate::claims::{CustomClaims, REGISTERED_CLAIMS};
pub use crate::crypto::EnvelopeKey;
use crate::error::{Error, Result};
use crate::format::encode_base64;
use crate::id::KeyId;
use crate::verify::Verified;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Header {
    alg: String,
    typ: Option<String>,
    kid: String,
}

/// The effective restrictions carried in the `cap` claim; `None` = unrestricted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    /// Allowed operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Allowed resources (names and `/*` patterns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Vec<String>>,
    /// Allowed client networks.
    #[serde(rename = "client-ip", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<Vec<String>>,
}

/// The claims of an envelope. On the wire, the custom claims sit beside the registered ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Audience, when the envelope was issued for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Token id (hex), shared by every attenuation of the token.
    pub jti: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Not before (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Effective restrictions.
    pub cap: Cap,
    /// The session an access token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The token's custom claims (every claim that is not registered).
    #[serde(skip)]
    pub custom: Option<CustomClaims>,
}

impl Claims {
    /// The JSON object: registered claims, then the custom ones (which never share a name).
    fn to_json(&self) -> String {
        let mut map = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        if let Some(c) = &self.custom {
            map.extend(c.as_map().iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        to_json(&map)
    }

    /// Split a JSON object into registered claims (checked strictly) and custom ones.
    fn from_json(bytes: &[u8]) -> Result<Claims> {
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(|_| bad("claims are not a JSON object"))?;
        let custom: serde_json::Map<_, _> = {
            let names: Vec<String> =
                map.keys().filter(|k| !REGISTERED_CLAIMS.contains(&k.as_str())).cloned().collect();
            names.into_iter().filter_map(|k| map.remove_entry(&k)).collect()
        };
        let mut claims: Claims = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| bad(format!("claims: {e}")))?;
        if !custom.is_empty() {
            claims.custom = Some(CustomClaims::new(custom)?);
        }
        Ok(claims)
    }
}

/// Emit an HS256 envelope for a verified Tessera token at time `now`, valid for at most `ttl`,
/// under the token's own kid (see [`issue_signed`] for the other algorithms).
///
/// Refuses foreign tokens (no subject or tid) and tokens with application-defined caveats, which
/// a JWT could not enforce.
pub fn issue(
    verified: &Verified<'_>,
    key: &EnvelopeKey,
    issuer: &str,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<String> {
    let kid = verified.restrictions().kid.ok_or_else(|| bad("only Tessera tokens have HS256 envelopes"))?;
    let key = SigningKey::from_secret_bytes(Algorithm::Hs256, key.expose_secret())?;
    issue_signed(verified, &key, &kid.to_string(), issuer, None, now, ttl)
}

/// Emit an envelope signed with `key` (any [`Algorithm`]), naming `kid` in its header (for a
/// public key, its thumbprint as published in the JWKS), for `audience` if given.
pub fn issue_signed(
    verified: &Verified<'_>,
    key: &SigningKey,
    kid: &str,
    issuer: &str,
    audience: Option<&str>,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<String> {
    issue_restricted(
        verified.restrictions(),
        &Signing { key, kid, issuer, audience, now, ttl, session: None },
    )
}

/// How an envelope is signed and for whom.
#[derive(Debug)]
pub struct Signing<'a> {
    /// The key (any [`Algorithm`]).
    pub key: &'a SigningKey,
    /// The header's `kid` (for a public key, its thumbprint as published in the JWKS).
    pub kid: &'a str,
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`, if any.
    pub audience: Option<&'a str>,
    /// `iat`.
    pub now: OffsetDateTime,
    /// The longest life (`exp` is never after the token's own expiry).
    pub ttl: Duration,
    /// `sid`: the session an access token belongs to.
    pub session: Option<&'a str>,
}

/// Emit an envelope for restrictions that came from [`Verified::restrictions`], possibly folded
/// narrower by the issuer (for example with what an application may request: fold more caveats
/// in with [`Restrictions::add`]; never widen them). `jti` is the restrictions' tid.
pub fn issue_restricted(r: Restrictions, how: &Signing<'_>) -> Result<String> {
    let Signing { key, kid, issuer, audience, now, ttl, session } = *how;
    let (Some(_), Some(tid), Some(sub)) = (r.kid, r.tid, r.subject.clone()) else {
        return Err(Error::Envelope("only Tessera tokens (with kid, tid and subject) have envelopes".into()));
    };
    if !r.other.is_empty() {
        return Err(Error::Envelope(format!(
            "token has application-defined caveats a JWT cannot enforce: {}",
            r.other.join(", ")
        )));
    }
    if r.once || !r.rate_limits.is_empty() {
        return Err(Error::Envelope(
            "token has rate-limit or once caveats, which only the service can enforce: a JWT could be \
             replayed past them"
                .into(),
        ));
    }
    let mut exp = now
        .checked_add(ttl)
        .filter(|_| ttl.is_positive())
        .ok_or_else(|| bad("the envelope's ttl must be positive and end within the calendar"))?
        .unix_timestamp();
    if let Some(e) = r.expires {
        // exp is exclusive in both: a time-before T becomes exp <= T (rounded down to seconds).
        exp = exp.min(e.unix_timestamp());
    }
    if exp <= now.unix_timestamp() {
        return Err(Error::Envelope("token expires before the envelope could be used".into()));
    }
    let claims = Claims {
        iss: issuer.to_owned(),
        sub,
        aud: audience.map(str::to_owned),
        jti: tid.to_string(),
        iat: now.unix_timestamp(),
        exp,
        // Round up so the envelope never starts before the token does.
        nbf: r.not_before.map(|t| t.unix_timestamp() + i64::from(t.nanosecond() > 0)),
        cap: Cap {
            allow: r.operations,
            resource: r.resources,
            client_ip: r.networks.map(|n| n.iter().map(|n| n.to_string()).collect()),
        },
        sid: session.map(str::to_owned),
        custom: r.claims,
    };
    let header = Header { alg: key.algorithm().name().into(), typ: Some("JWT".into()), kid: kid.to_owned() };
    let signing_input = format!(
        "{}.{}",
        encode_base64(to_json(&header).as_bytes()),
        encode_base64(claims.to_json().as_bytes())
    );
    let sig = key.sign(signing_input.as_bytes());
    Ok(format!("{signing_input}.{}", encode_base64(&sig)))
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing plain structs of strings and integers cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Envelope(msg.into())
}

/// Decode and check an HS256 envelope (kids are Tessera key ids): signature, issuer, time, and
/// `cap` against the request context. `key_for` returns the envelope key of a kid (or `None`).
/// Envelopes issued for an audience are refused here (use [`decode_with`]).
pub fn decode(
    jwt: &str,
    key_for: impl Fn(&KeyId) -> Option<EnvelopeKey>,
    issuer: &str,
    ctx: &Context,
) -> Result<Claims> {
    let lookup = |kid: &str| -> Result<VerifyKey> {
        let kid: KeyId = kid.parse().map_err(|_| bad("kid is not a Tessera key id"))?;
        key_for(&kid).map(VerifyKey::Hs256).ok_or(Error::UnknownKey(kid))
    };
    decode_with(jwt, lookup, issuer, None, ctx)
}

/// Decode and check an envelope of any [`Algorithm`]. `key_for` returns the key the header's
/// `kid` names (from a JWKS for public keys); the header's `alg` must be that key's algorithm.
/// With `audience`, `aud` must equal it; without, an envelope that names an audience is refused.
pub fn decode_with(
    jwt: &str,
    key_for: impl Fn(&str) -> Result<VerifyKey>,
    issuer: &str,
    audience: Option<&str>,
    ctx: &Context,
) -> Result<Claims> {
    let payload = jws::verify_compact(jwt, key_for, jws::HeaderRules::Envelope)?;
    let claims = Claims::from_json(&payload)?;
    if claims.iss != issuer {
        return Err(bad(format!("issuer \"{}\" is not trusted", claims.iss)));
    }
    match (&claims.aud, audience) {
        (None, None) => {}
        (Some(a), Some(want)) if a == want => {}
        (Some(a), _) => return Err(bad(format!("envelope is for audience \"{a}\""))),
        (None, Some(want)) => return Err(bad(format!("envelope has no audience; expected \"{want}\""))),
    }
    let time = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|_| bad("timestamp out of range"));
    let networks = match &claims.cap.client_ip {
        None => None,
        Some(nets) => Some(
            nets.iter()
                .map(|n| parse_net(n).ok_or_else(|| bad(format!("\"{n}\" is not a network"))))
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    if let Some(bad_name) = claims.cap.resource.iter().flatten().find(|r| crate::caveat::has_dot_segment(r)) {
        return Err(bad(format!("cap resource \"{bad_name}\" has a `.` or `..` segment")));
    }
    let r = Restrictions {
        expires: Some(time(claims.exp)?),
        not_before: claims.nbf.map(time).transpose()?,
        operations: claims.cap.allow.clone(),
        resources: claims.cap.resource.clone(),
        networks,
        ..Restrictions::default()
    };
    r.check(ctx)?;
    ctx.check_subject(Some(&claims.sub))?;
    Ok(claims)
}
