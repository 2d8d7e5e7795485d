//! The login exchange's targets: ID-token checks in the core (`id_token`) and `POST
//! /v1/exchange` bodies through the handler's own steps (`http_exchange`). The harness signs
//! what the fuzzer writes with fixed issuer keys, so the checks behind the signature are reached.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tessera_core::envelope::{self, Algorithm, IdTokenRules, PublicKey, SigningKey, VerifyKey};
use tessera_server::fuzzing::{exchange_body, ExchangeFixture};
use time::Duration;

use crate::when;

/// The issuer the targets trust, and this service's client id at it.
pub const ISS: &str = "https://idp.test";
/// The audience.
pub const AUD: &str = "tessera";
/// A second issuer (session template), for the exchange target.
pub const ISS2: &str = "https://idp2.test";
/// The leeway the rules allow.
const LEEWAY: Duration = Duration::seconds(60);

/// The issuer's fixed keys: ES256 and EdDSA.
pub struct IssuerKeys {
    /// ES256.
    pub es: SigningKey,
    /// EdDSA.
    pub ed: SigningKey,
}

/// The fixed keys, built once per process.
pub fn issuer_keys() -> &'static IssuerKeys {
    static K: OnceLock<IssuerKeys> = OnceLock::new();
    K.get_or_init(|| {
        let key =
            |alg, byte| SigningKey::from_secret_bytes(alg, &[byte; 32]).unwrap_or_else(|_| unreachable!());
        IssuerKeys { es: key(Algorithm::Es256, 0x11), ed: key(Algorithm::EdDsa, 0x22) }
    })
}

fn public(key: &SigningKey) -> PublicKey {
    key.public_key().unwrap_or_else(|| unreachable!("ES256 and EdDSA keys have a public half"))
}

/// The issuer's JWKS as it publishes it (`kid` = thumbprint, `alg`, `use: sig`).
pub fn issuer_jwks() -> Value {
    let k = issuer_keys();
    json!({"keys": [public(&k.es).jwk(), public(&k.ed).jwk()]})
}

/// The default header for `key`: its algorithm and its thumbprint as `kid`.
pub fn header_for(key: &SigningKey) -> Value {
    json!({"alg": key.algorithm().name(), "typ": "JWT", "kid": public(key).thumbprint()})
}

/// A compact JWS of `header` and `claims` (bytes as given) signed with `key`.
pub fn sign(key: &SigningKey, header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes())))
}

/// Claims an issuer would send at [`when`]: valid for ten minutes.
pub fn good_claims() -> Value {
    let t = when().unix_timestamp();
    json!({"iss": ISS, "aud": AUD, "sub": "u-1", "email": "ada@example.com", "iat": t, "exp": t + 600})
}

fn decode_part(jwt: &str, n: usize) -> Option<Value> {
    let part = jwt.trim_ascii().split('.').nth(n)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// The JWK of `kid` in `jwks` (the first with that `kid`, as `tessera jwt-check` picks it).
fn jwk_of<'a>(jwks: &'a Value, kid: &str) -> Option<&'a Value> {
    jwks["keys"].as_array()?.iter().find(|k| k["kid"] == kid)
}

/// ID tokens of a trusted issuer. The first byte chooses: bits 0-1 the algorithms configured
/// (ES256, EdDSA, both), bit 2 the signing key (ES256 or EdDSA), bit 3 whether the rest is a
/// whole compact JWT (else it is `header NUL claims [NUL jwks]`, signed by the harness; an empty
/// header is the key's own, no JWKS is the issuer's). Whatever is accepted really satisfies the
/// rules: `iss`, `aud`, `exp` and `nbf` within the leeway, a `sub`, an allowed `alg` that is the
/// key's, from a JWK whose `alg` and `use` agree; and a harness-signed token verifies only under
/// its signer's key.
pub fn id_token(data: &[u8]) {
    let _ = id_token_accepted(data);
}

/// The body of [`id_token`]: whether the token was accepted (every property held).
fn id_token_accepted(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else { return false };
    let allowed: &[Algorithm] = match mode % 3 {
        0 => &[Algorithm::Es256],
        1 => &[Algorithm::EdDsa],
        _ => &[Algorithm::Es256, Algorithm::EdDsa],
    };
    let keys = issuer_keys();
    let signer = if mode & 4 == 0 { &keys.es } else { &keys.ed };
    let (jwt, jwks, signed) = if mode & 8 != 0 {
        let Ok(text) = std::str::from_utf8(rest) else { return false };
        (text.to_owned(), issuer_jwks(), false)
    } else {
        let mut parts = rest.splitn(3, |b| *b == 0);
        let header = parts.next().unwrap_or_default();
        let claims = parts.next().unwrap_or_default();
        let jwks = match parts.next() {
            None => issuer_jwks(),
            Some(j) => match serde_json::from_slice(j) {
                Ok(v) => v,
                Err(_) => return false,
            },
        };
        let own = header_for(signer).to_string();
        let header = if header.is_empty() { own.as_bytes() } else { header };
        (sign(signer, header, claims), jwks, true)
    };
    let rules = IdTokenRules { issuer: ISS, audience: AUD, algorithms: allowed, now: when(), leeway: LEEWAY };
    let lookup = |kid: &str| {
        let jwk = jwk_of(&jwks, kid).ok_or_else(|| tessera_core::Error::Envelope("no such kid".into()))?;
        PublicKey::from_jwk(jwk).map(VerifyKey::Public)
    };
    let kid = envelope::id_token_key_id(&jwt, allowed);
    let Ok(claims) = envelope::verify_id_token(&jwt, lookup, &rules) else { return false };
    // The header passed the same checks on its own.
    let kid = kid.expect("an accepted token's header passes id_token_key_id");
    let header = decode_part(&jwt, 0).expect("an accepted token has a JSON header");
    let alg = header["alg"].as_str().and_then(Algorithm::from_name).expect("an accepted alg is known");
    assert!(allowed.contains(&alg), "alg {alg} accepted though not configured");
    assert!(header.get("crit").is_none(), "crit accepted");
    let jwk = jwk_of(&jwks, &kid).expect("the key came from the JWKS");
    let key = PublicKey::from_jwk(jwk).expect("the key parsed");
    assert_eq!(key.algorithm(), alg, "a key verified another algorithm than its own");
    assert!(jwk.get("alg").is_none_or(|a| a == alg.name()), "JWK alg disagrees: {jwk}");
    assert!(jwk.get("use").is_none_or(|u| u == "sig"), "JWK use is not sig: {jwk}");
    if signed {
        assert_eq!(key, public(signer), "verified under another key than its signer's");
    }
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISS), "iss");
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUD,
        Some(Value::Array(list)) => list.iter().any(|a| a == AUD),
        _ => false,
    };
    assert!(aud_ok, "aud: {:?}", claims.get("aud"));
    let t = when().unix_timestamp();
    let exp = claims.get("exp").and_then(Value::as_i64).expect("exp is an integer");
    assert!(exp > t - LEEWAY.whole_seconds(), "expired token accepted: exp {exp}");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().expect("nbf is an integer");
        assert!(nbf <= t + LEEWAY.whole_seconds(), "token not yet valid accepted: nbf {nbf}");
    }
    assert!(claims.get("sub").and_then(Value::as_str).is_some_and(|s| !s.is_empty()), "no sub");
    true
}

/// A trusted issuer of a fixture: its `iss`, its subject prefix, whether it issues sessions.
type Trusted = (&'static str, &'static str, bool);

/// The exchange target's two sets of trusted issuers: `[0]` two issuers with their own prefixes
/// (`idp:` issuing tokens with `email` copied, `i2:` issuing sessions); `[1]` one issuer with no
/// prefix, where only the reserved-subject rule keeps `admin` and `app:` out.
fn exchange_fixtures() -> &'static [(ExchangeFixture, Vec<Trusted>); 2] {
    static F: OnceLock<[(ExchangeFixture, Vec<Trusted>); 2]> = OnceLock::new();
    F.get_or_init(|| {
        let issuer = |iss: &str, prefix: &str, issue: &str| {
            json!({"issuer": iss, "audience": AUD, "jwks_file": "issuer.jwks", "algorithms": ["ES256", "EdDSA"],
                   "subject_prefix": prefix,
                   "template": {"issue": issue, "operations": ["read"], "claims": ["email"]}})
        };
        let jwks = issuer_jwks().to_string();
        let build = |issuers: Value| {
            ExchangeFixture::new(&json!({"issuers": issuers}).to_string(), &jwks, "admin")
                .unwrap_or_else(|e| unreachable!("the fixture's issuers are valid: {e}"))
        };
        [
            (
                build(json!([issuer(ISS, "idp:", "token"), issuer(ISS2, "i2:", "session")])),
                vec![(ISS, "idp:", false), (ISS2, "i2:", true)],
            ),
            (build(json!([issuer(ISS, "", "token")])), vec![(ISS, "", false)]),
        ]
    })
}

fn form_encode(fields: &Map<String, Value>) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let value = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    fields.iter().map(|(k, v)| format!("{}={}", enc(k), enc(&value(v)))).collect::<Vec<_>>().join("&")
}

/// `POST /v1/exchange` bodies through the handler's own steps (no store, keys from the fixture's
/// JWKS). The first byte chooses: bit 0 JSON or form; bit 1 the issuers (see
/// [`exchange_fixtures`]); bit 2 whether the rest is the whole body (else it is `claims [NUL
/// header [NUL extra request fields as a JSON object]]`, signed with the issuer's ES256 key and
/// put in a well-formed request). Whatever is accepted is for `<prefix><sub>` of the issuer that
/// signed it, never the admin's or an application's subject, issues what that issuer's template
/// issues, and copies only the claims the template names.
pub fn http_exchange(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let json = mode & 1 == 0;
    let (fixture, issuers) = &exchange_fixtures()[usize::from(mode & 2 != 0)];
    let (body, claims) = if mode & 4 != 0 {
        (rest.to_vec(), None)
    } else {
        let mut parts = rest.splitn(3, |b| *b == 0);
        let claims = parts.next().unwrap_or_default();
        let header = parts.next().filter(|h| !h.is_empty());
        let own = header_for(&issuer_keys().es).to_string();
        let jwt = sign(&issuer_keys().es, header.unwrap_or(own.as_bytes()), claims);
        let mut fields = Map::new();
        fields.insert("grant_type".into(), json!("urn:ietf:params:oauth:grant-type:token-exchange"));
        fields.insert("subject_token".into(), json!(jwt));
        fields.insert("subject_token_type".into(), json!("urn:ietf:params:oauth:token-type:id_token"));
        if let Some(extra) = parts.next() {
            match serde_json::from_slice::<Map<String, Value>>(extra) {
                Ok(extra) => fields.extend(extra),
                Err(_) => return,
            }
        }
        let body = if json { Value::Object(fields).to_string() } else { form_encode(&fields) };
        (body.into_bytes(), serde_json::from_slice::<Value>(claims).ok())
    };
    let Ok(out) = exchange_body(fixture, json, &body, when()) else { return };
    assert_ne!(out.subject, "admin", "an exchange gave the admin subject");
    assert!(!out.subject.starts_with("app:"), "an exchange gave an application's subject: {}", out.subject);
    assert!(
        issuers.iter().any(|(_, p, _)| out.subject.starts_with(p)),
        "subject {} has no issuer's prefix",
        out.subject
    );
    if let Some(claims) = claims {
        let (_, own_prefix, own_session) = issuers
            .iter()
            .find(|(iss, _, _)| claims["iss"] == *iss)
            .expect("an accepted token names a trusted issuer");
        let sub = claims["sub"].as_str().expect("an accepted token has a sub");
        assert_eq!(out.subject, format!("{own_prefix}{sub}"), "subject is not prefix + sub");
        assert_eq!(out.session, *own_session, "issued another type than the template's");
    }
    if let Some(copied) = &out.claims {
        assert!(copied.keys().all(|k| k == "email"), "copied a claim the template does not name: {copied:?}");
    }
}

/// Seeds of the two targets: (target, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let keys = issuer_keys();
    let mut out = Vec::new();
    let claims = good_claims();
    let with = |k: &str, v: Value| {
        let mut c = good_claims();
        c[k] = v;
        c
    };
    let t = when().unix_timestamp();
    let variants = [
        claims.clone(),
        with("aud", json!(["other", AUD])),
        with("aud", json!("other")),
        with("iss", json!(ISS2)),
        with("exp", json!(t - 61)),
        with("exp", json!(253_402_300_799i64)),
        with("exp", json!(i64::MAX)),
        with("nbf", json!(t + 61)),
        with("sub", json!("admin")),
        with("sub", json!("app:billing")),
        with("sub", json!("")),
        with("email", json!({"nested": [1, 2]})),
    ];
    let cat = |mode: u8, parts: &[&[u8]]| {
        let mut v = vec![mode];
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                v.push(0);
            }
            v.extend_from_slice(p);
        }
        v
    };
    for c in &variants {
        let c = c.to_string();
        for mode in [0u8, 2, 5, 6] {
            out.push(("id_token", cat(mode, &[b"", c.as_bytes()])));
        }
    }
    let claims_text = claims.to_string();
    let es_header = header_for(&keys.es);
    for header in [
        json!({"alg": "none", "kid": es_header["kid"]}),
        json!({"alg": "HS256", "kid": es_header["kid"]}),
        json!({"alg": "EdDSA", "kid": es_header["kid"]}),
        json!({"alg": "ES256", "kid": es_header["kid"], "crit": ["exp"]}),
        json!({"alg": "ES256"}),
        json!({"alg": "ES256", "typ": "jwt", "kid": es_header["kid"]}),
    ] {
        out.push(("id_token", cat(2, &[header.to_string().as_bytes(), claims_text.as_bytes()])));
    }
    // JWKS entries that disagree with their keys.
    for (name, value) in [("alg", json!("EdDSA")), ("use", json!("enc")), ("key_ops", json!(["sign"]))] {
        let mut jwk = public(&keys.es).jwk();
        jwk[name] = value;
        let jwks = json!({"keys": [jwk]}).to_string();
        out.push(("id_token", cat(2, &[b"", claims_text.as_bytes(), jwks.as_bytes()])));
    }
    let whole = sign(&keys.es, es_header.to_string().as_bytes(), claims_text.as_bytes());
    out.push(("id_token", cat(8, &[whole.as_bytes()])));

    // Exchange requests: signed claims, both encodings, both fixtures.
    let mut requests = variants.to_vec();
    requests.push(with("iss", json!(ISS2)));
    for c in &requests {
        let c = c.to_string();
        for mode in [0u8, 1, 2, 3] {
            out.push(("http_exchange", cat(mode, &[c.as_bytes()])));
        }
    }
    for extra in [
        json!({"requested_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
        json!({"requested_token_type": "urn:tessera:params:oauth:token-type:tessera"}),
        json!({"requested_token_type": "urn:x:saml"}),
        json!({"grant_type": "password"}),
        json!({"subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": "a", "scope": "s"}),
        json!({"ttl": "90d"}),
    ] {
        let extra = extra.to_string();
        out.push(("http_exchange", cat(0, &[claims_text.as_bytes(), b"", extra.as_bytes()])));
        out.push(("http_exchange", cat(1, &[claims_text.as_bytes(), b"", extra.as_bytes()])));
    }
    let body = json!({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": whole,
                      "subject_token_type": "urn:ietf:params:oauth:token-type:id_token"});
    out.push(("http_exchange", cat(4, &[body.to_string().as_bytes()])));
    let mut fields = Map::new();
    if let Value::Object(m) = body {
        fields = m;
    }
    out.push(("http_exchange", cat(5, &[form_encode(&fields).as_bytes()])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(claims: &Value) -> Vec<u8> {
        let jwt = sign(
            &issuer_keys().es,
            header_for(&issuer_keys().es).to_string().as_bytes(),
            claims.to_string().as_bytes(),
        );
        json!({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": jwt,
               "subject_token_type": "urn:ietf:params:oauth:token-type:id_token"})
        .to_string()
        .into_bytes()
    }

    /// The targets are not vacuous: the harness's tokens reach acceptance, and the refusals the
    /// properties guard against happen for the right reason.
    #[test]
    fn the_fixtures_accept_good_tokens_and_refuse_reserved_subjects() {
        let [(two, _), (alone, _)] = exchange_fixtures();
        let out = exchange_body(two, true, &request(&good_claims()), when()).unwrap();
        assert_eq!((out.subject.as_str(), out.session), ("idp:u-1", false));
        assert_eq!(out.claims.unwrap().keys().collect::<Vec<_>>(), ["email"]);
        let mut second = good_claims();
        second["iss"] = json!(ISS2);
        let out = exchange_body(two, true, &request(&second), when()).unwrap();
        assert_eq!((out.subject.as_str(), out.session), ("i2:u-1", true));
        for sub in ["admin", "app:x"] {
            let mut c = good_claims();
            c["sub"] = json!(sub);
            assert_eq!(exchange_body(alone, true, &request(&c), when()).unwrap_err(), 403);
            assert_eq!(exchange_body(two, true, &request(&c), when()).unwrap().subject, format!("idp:{sub}"));
        }
        // Every seed runs clean; the good ID-token seeds are accepted by the core's checks.
        let mut accepted = 0;
        for (target, data) in seeds() {
            let f = crate::TARGETS.iter().find(|(n, _)| *n == target).unwrap().1;
            f(&data);
            accepted += usize::from(target == "id_token" && id_token_accepted(&data));
        }
        assert!(accepted >= 4, "{accepted} ID-token seeds accepted");
    }
}
