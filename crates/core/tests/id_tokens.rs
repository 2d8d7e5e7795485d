//! ID tokens of a trusted issuer (the login exchange) and subject binding: a token is refused
//! for wrong `iss`, wrong `aud`, expired, not yet valid, `alg: none`, HS256 keyed with the
//! issuer's public key, an algorithm not configured, an unknown `kid`, no `sub`, or critical
//! header extensions; a capability presented by another subject than its own is refused.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use serde_json::{json, Value};
use tessera_core::envelope::{
    self, verify_id_token, Algorithm, IdTokenRules, PublicKey, SigningKey, VerifyKey,
};
use tessera_core::{Context, Error, Identifier, KeyId, RootKey, StaticKeys, Token, TokenId, Verifier};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const ISS: &str = "https://idp.test";
const AUD: &str = "tessera";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> OffsetDateTime {
    datetime!(2027-06-01 12:00 UTC)
}

fn sign(key: &SigningKey, header: Value, claims: Value) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    format!("{input}.{}", b64(&key.sign(input.as_bytes())))
}

fn claims() -> Value {
    let t = now().unix_timestamp();
    json!({"iss": ISS, "aud": AUD, "sub": "u-123", "email": "ada@example.com", "iat": t, "exp": t + 300})
}

struct Idp {
    key: SigningKey,
    kid: String,
}

impl Idp {
    fn new() -> Self {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let kid = key.public_key().unwrap().thumbprint();
        Idp { key, kid }
    }
    fn token(&self, claims: Value) -> String {
        sign(&self.key, json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}), claims)
    }
    fn public(&self) -> PublicKey {
        self.key.public_key().unwrap()
    }
    fn check(&self, jwt: &str) -> tessera_core::Result<serde_json::Map<String, Value>> {
        let rules = IdTokenRules {
            issuer: ISS,
            audience: AUD,
            algorithms: &[Algorithm::Es256, Algorithm::EdDsa],
            now: now(),
            leeway: Duration::seconds(30),
        };
        let public = self.public();
        let kid = self.kid.clone();
        let lookup = move |k: &str| {
            if k == kid {
                Ok(VerifyKey::Public(public))
            } else {
                Err(Error::Envelope(format!("kid {k} is not in the issuer's JWKS")))
            }
        };
        verify_id_token(jwt, lookup, &rules)
    }
}

fn refused(r: tessera_core::Result<serde_json::Map<String, Value>>, words: &str) {
    let e = r.expect_err("must be refused");
    assert!(e.to_string().contains(words), "expected \"{words}\" in: {e}");
}

#[test]
fn a_good_id_token_verifies_with_aud_as_string_or_array() {
    let idp = Idp::new();
    let c = idp.check(&idp.token(claims())).unwrap();
    assert_eq!(c["sub"], "u-123");
    assert_eq!(c["email"], "ada@example.com");
    let mut many = claims();
    many["aud"] = json!(["other", AUD]);
    idp.check(&idp.token(many)).unwrap();
    // Within the leeway either side.
    let mut skew = claims();
    skew["exp"] = json!(now().unix_timestamp() - 10);
    skew["nbf"] = json!(now().unix_timestamp() + 10);
    idp.check(&idp.token(skew)).unwrap();
}

#[test]
fn bad_id_tokens_are_refused() {
    let idp = Idp::new();
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        idp.token(c)
    };
    refused(idp.check(&with("iss", json!("https://evil.test"))), "issuer");
    refused(idp.check(&with("aud", json!("someone-else"))), "audience");
    refused(idp.check(&with("aud", json!(["a", "b"]))), "audience");
    refused(idp.check(&with("exp", json!(now().unix_timestamp() - 31))), "expired");
    refused(idp.check(&with("exp", json!("tomorrow"))), "NumericDate");
    refused(idp.check(&with("nbf", json!(now().unix_timestamp() + 31))), "not valid yet");
    refused(idp.check(&with("sub", json!(""))), "no sub");
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(idp.check(&idp.token(no_exp)), "no exp");

    // alg none, with and without a signature.
    let body = b64(claims().to_string().as_bytes());
    for none in [json!({"alg": "none", "kid": idp.kid}), json!({"alg": "none"})] {
        let h = b64(none.to_string().as_bytes());
        refused(idp.check(&format!("{h}.{body}.")), "not allowed");
    }
    // HS256 "signed" with the issuer's public key (the JWK text and the raw point as secrets).
    let jwk = idp.public().jwk().to_string();
    for secret in [jwk.as_bytes().to_vec(), jwk.replace(' ', "").into_bytes()] {
        let mut s = secret.clone();
        s.resize(s.len().max(32), 0);
        let hs = SigningKey::from_secret_bytes(Algorithm::Hs256, &s[..32]).unwrap();
        let t = sign(&hs, json!({"alg": "HS256", "typ": "JWT", "kid": idp.kid}), claims());
        refused(idp.check(&t), "not allowed");
    }
    // Configured for HS256 too, the key the kid names is still an ES256 key: refused.
    let confused = {
        let hs = SigningKey::from_secret_bytes(Algorithm::Hs256, &[7; 32]).unwrap();
        sign(&hs, json!({"alg": "HS256", "kid": idp.kid}), claims())
    };
    let rules = IdTokenRules {
        issuer: ISS,
        audience: AUD,
        algorithms: &[Algorithm::Es256, Algorithm::Hs256],
        now: now(),
        leeway: Duration::ZERO,
    };
    let public = idp.public();
    let e = verify_id_token(&confused, |_| Ok(VerifyKey::Public(public)), &rules).unwrap_err();
    assert!(e.to_string().contains("is a ES256 key"), "{e}");
    // Another key under the right kid, an unknown kid, critical extensions, tampering.
    let other = Idp::new();
    let forged = sign(&other.key, json!({"alg": "ES256", "kid": idp.kid}), claims());
    assert_eq!(idp.check(&forged).unwrap_err(), Error::InvalidSignature);
    refused(idp.check(&other.token(claims())), "not in the issuer's JWKS");
    let crit = sign(&idp.key, json!({"alg": "ES256", "kid": idp.kid, "crit": ["exp"], "exp": 1}), claims());
    refused(idp.check(&crit), "crit");
    let good = idp.token(claims());
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c["sub"] = json!("admin");
    parts[1] = b64(c.to_string().as_bytes());
    assert_eq!(idp.check(&parts.join(".")).unwrap_err(), Error::InvalidSignature);
    refused(idp.check("a.b"), "three");
    refused(idp.check(&"x".repeat(20_000)), "too large");
}

#[test]
fn a_token_presented_by_another_subject_is_refused() {
    let secret = RootKey::new(&[9u8; 32]).unwrap();
    let kid = KeyId::from_bytes([1; 8]);
    let id = Identifier::new(kid, TokenId::from_bytes([2; 16]), "alice").unwrap();
    let t = Token::mint_tessera(None, &secret, &id).unwrap().attenuate("allow read").unwrap();
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    let v = Verifier::with_keys(&keys);
    let ctx = Context::at(now()).operation("read");
    v.verify(&t, &[], &ctx).unwrap();
    v.verify(&t, &[], &ctx.clone().subject("alice")).unwrap();
    let e = v.verify(&t, &[], &ctx.clone().subject("mallory")).unwrap_err();
    assert!(matches!(&e, Error::CaveatNotMet { caveat, .. } if caveat == "subject"), "{e}");
    // A forged token is still reported as a bad signature, not as a subject mismatch.
    let mut bytes = t.to_binary().to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let forged = Token::from_binary(&bytes).unwrap();
    assert_eq!(v.verify(&forged, &[], &ctx.clone().subject("mallory")).unwrap_err(), Error::InvalidSignature);
    // A foreign token names no subject: refused when the request names one.
    let foreign = Token::mint(None, &secret, b"order-7").unwrap();
    assert!(Verifier::new().verify_with_key(&foreign, &secret, &[], &ctx.clone().subject("alice")).is_err());

    // Envelopes too.
    let verified = v.verify(&t, &[], &Context::deferring_scope(now())).unwrap();
    let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let jwt = envelope::issue_signed(&verified, &key, "k", ISS, None, now(), Duration::minutes(5)).unwrap();
    let public = key.public_key().unwrap();
    let lookup = |_: &str| Ok(VerifyKey::Public(public));
    envelope::decode_with(&jwt, lookup, ISS, None, &ctx.clone().subject("alice")).unwrap();
    let e = envelope::decode_with(&jwt, lookup, ISS, None, &ctx.subject("mallory")).unwrap_err();
    assert!(e.to_string().contains("mallory"), "{e}");
}

/// Security review 3, finding 12: no time in a token reaches a panic. An `exp` of 9999-12-31
/// plus the leeway overflowed the date type (a 500 at the exchange); every NumericDate at or past
/// the edges of the calendar is answered, and rules at the edges too.
#[test]
fn times_at_the_edges_of_the_calendar_are_answered_never_panicked() {
    let idp = Idp::new();
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        idp.token(c)
    };
    let last = datetime!(9999-12-31 23:59:59 UTC).unix_timestamp();
    let first = datetime!(-9999-01-01 0:00 UTC).unix_timestamp();
    // The far future is a valid expiry; a start there is not valid yet.
    idp.check(&with("exp", json!(last))).unwrap();
    refused(idp.check(&with("nbf", json!(last))), "not valid yet");
    // The far past: expired; a start there is fine.
    refused(idp.check(&with("exp", json!(first))), "expired");
    idp.check(&with("nbf", json!(first))).unwrap();
    // Past the calendar, or not an integer: not a NumericDate.
    for v in
        [json!(last + 1), json!(first - 1), json!(i64::MAX), json!(i64::MIN), json!(u64::MAX), json!(1e300)]
    {
        refused(idp.check(&with("exp", v.clone())), "NumericDate");
        refused(idp.check(&with("nbf", v)), "NumericDate");
    }
    // Rules at the edges: a leeway past the calendar (or negative), a clock at either end.
    let token = with("exp", json!(last));
    let public = idp.public();
    for (now, leeway) in [
        (now(), Duration::MAX),
        (now(), Duration::MIN),
        (now(), Duration::seconds(-1)),
        (datetime!(9999-12-31 23:59:59 UTC), Duration::seconds(60)),
        (datetime!(-9999-01-01 0:00 UTC), Duration::seconds(60)),
    ] {
        let rules = IdTokenRules { issuer: ISS, audience: AUD, algorithms: &[Algorithm::Es256], now, leeway };
        let r = verify_id_token(&token, |_| Ok(VerifyKey::Public(public)), &rules);
        if leeway < Duration::ZERO || leeway > Duration::days(1) {
            refused(r, "leeway");
        }
    }
}

/// Finding 14 for issuers' keys: a JWKS entry whose `alg` is not its key's (or whose `use` is not
/// `sig`) names no key, so an ID token under its kid is refused.
#[test]
fn an_issuer_jwk_whose_alg_or_use_disagrees_names_no_key() {
    let idp = Idp::new();
    let rules = IdTokenRules {
        issuer: ISS,
        audience: AUD,
        algorithms: &[Algorithm::Es256, Algorithm::EdDsa],
        now: now(),
        leeway: Duration::seconds(30),
    };
    let token = idp.token(claims());
    for (name, value) in [("alg", json!("EdDSA")), ("use", json!("enc"))] {
        let mut jwk = idp.public().jwk();
        jwk[name] = value;
        let lookup = |_: &str| PublicKey::from_jwk(&jwk).map(VerifyKey::Public);
        refused(verify_id_token(&token, lookup, &rules), name);
    }
    let jwk = idp.public().jwk();
    verify_id_token(&token, |_: &str| PublicKey::from_jwk(&jwk).map(VerifyKey::Public), &rules).unwrap();
}
