//! Compact JWS verification, written once for Tessera's own envelopes and for ID tokens of
//! trusted issuers: split, decode the header, pin the algorithm to the key the `kid` names,
//! check the signature. Claims are the caller's business.

use serde_json::{Map, Value};

use super::{bad, Algorithm, Header, VerifyKey};
use crate::error::{Error, Result};
use crate::format::decode_base64;
use crate::limits::MAX_ENVELOPE_TEXT;

/// How strict the protected header is.
pub(crate) enum HeaderRules<'a> {
    /// Tessera's own envelopes: exactly `alg`, `typ` (JWT), `kid`.
    Envelope,
    /// Tokens of other issuers: `alg` among `allowed`, a `kid`, `typ` JWT if present, other
    /// members ignored unless `crit` names any (then refused: RFC 7515 section 4.1.11).
    Foreign { allowed: &'a [Algorithm] },
}

/// A compact JWS whose header passed its checks; nothing verified yet.
pub(crate) struct Parsed<'a> {
    /// The header's algorithm (one of [`Algorithm`], allowed by the rules).
    pub(crate) alg: Algorithm,
    /// The header's `kid`.
    pub(crate) kid: String,
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

/// Split a compact JWS and check its header against `rules`: size, form, `alg` (never `none`,
/// only an [`Algorithm`], and for foreign tokens one of the allowed), `kid`, `typ`, `crit`.
pub(crate) fn parse<'a>(jwt: &'a str, rules: &HeaderRules<'_>) -> Result<Parsed<'a>> {
    if jwt.len() > MAX_ENVELOPE_TEXT {
        return Err(Error::TooLarge { what: "JWT", size: jwt.len(), limit: MAX_ENVELOPE_TEXT });
    }
    let jwt = jwt.trim_ascii();
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not a compact JWS (three dot-separated parts)"));
    };
    let header_bytes = decode_base64(h).map_err(|_| bad("header is not base64url"))?;
    let (alg_name, kid) = match rules {
        HeaderRules::Envelope => {
            let header: Header =
                serde_json::from_slice(&header_bytes).map_err(|_| bad("header is not valid JSON"))?;
            if header.typ.as_deref().is_some_and(|t| t != "JWT") {
                return Err(bad("typ must be JWT"));
            }
            (header.alg, header.kid)
        }
        HeaderRules::Foreign { allowed } => {
            let header: Map<String, Value> =
                serde_json::from_slice(&header_bytes).map_err(|_| bad("header is not a JSON object"))?;
            if header.contains_key("crit") {
                return Err(bad("header has critical extensions (crit), which are not understood"));
            }
            if header.get("typ").is_some_and(|t| !t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT"))) {
                return Err(bad("typ must be JWT"));
            }
            let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default().to_owned();
            if !allowed.iter().any(|a| a.name() == alg) {
                let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
                return Err(bad(format!(
                    "algorithm \"{alg:.20}\" is not allowed for this issuer ({})",
                    names.join(", ")
                )));
            }
            let kid = header.get("kid").and_then(Value::as_str).ok_or_else(|| bad("header has no kid"))?;
            (alg, kid.to_owned())
        }
    };
    let alg = Algorithm::from_name(&alg_name)
        .ok_or_else(|| bad(format!("algorithm \"{alg_name:.20}\" is not allowed (HS256, ES256, EdDSA)")))?;
    Ok(Parsed { alg, kid, signing_input: &jwt[..h.len() + 1 + p.len()], payload: p, signature: s })
}

/// Verify a compact JWS; returns its payload bytes. `key_for` returns the key the `kid` names;
/// the header's `alg` must be that key's algorithm (an HS256 token "signed" with a public key
/// never verifies), and `none` or any algorithm outside [`Algorithm`] is refused.
pub(crate) fn verify_compact(
    jwt: &str,
    key_for: impl Fn(&str) -> Result<VerifyKey>,
    rules: HeaderRules<'_>,
) -> Result<Vec<u8>> {
    let Parsed { alg, kid, signing_input, payload, signature } = parse(jwt, &rules)?;
    let key = key_for(&kid)?;
    if key.algorithm() != alg {
        // Algorithm confusion (e.g. HS256 with a public key as the HMAC secret): never.
        return Err(bad(format!("kid {kid:.80} is a {} key; the header says {alg}", key.algorithm())));
    }
    let sig = decode_base64(signature).map_err(|_| bad("signature is not base64url"))?;
    if !key.verify(signing_input.as_bytes(), &sig) {
        return Err(Error::InvalidSignature);
    }
    decode_base64(payload).map_err(|_| bad("claims are not base64url"))
}
