//! Public-key envelopes (ES256, EdDSA): keys and JWKs, round trips, and everything a forger or a
//! confused verifier could try: wrong key, tampered claims, `alg: none`, an HS256 envelope keyed
//! with a public key (algorithm confusion), a header naming another algorithm than its key's, and
//! audiences.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use serde_json::{json, Value};
use tessera_core::envelope::{self, Algorithm, PublicKey, SigningKey, VerifyKey};
use tessera_core::{Context, Error, Identifier, KeyId, RootKey, StaticKeys, Token, TokenId, Verifier};
use time::macros::datetime;
use time::Duration;

const ISS: &str = "https://tessera.test";

fn token() -> (StaticKeys, Token) {
    let secret = RootKey::new(&[9u8; 32]).unwrap();
    let kid = KeyId::from_bytes([1; 8]);
    let id = Identifier::new(kid, TokenId::from_bytes([2; 16]), "alice").unwrap();
    let t = Token::mint_tessera(None, &secret, &id).unwrap().attenuate("allow read").unwrap();
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret);
    (keys, t)
}

fn ctx() -> Context {
    Context::at(datetime!(2027-06-01 0:00 UTC)).operation("read")
}

fn issue(key: &SigningKey, kid: &str, aud: Option<&str>) -> String {
    let (keys, t) = token();
    let v = Verifier::with_keys(&keys).verify(&t, &[], &ctx()).unwrap();
    envelope::issue_signed(&v, key, kid, ISS, aud, datetime!(2027-06-01 0:00 UTC), Duration::minutes(5))
        .unwrap()
}

fn decode(
    jwt: &str,
    keys: &[(String, VerifyKey)],
    aud: Option<&str>,
    c: &Context,
) -> tessera_core::Result<envelope::Claims> {
    let lookup = |kid: &str| {
        keys.iter()
            .find(|(k, _)| k == kid)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::Envelope(format!("unknown kid {kid}")))
    };
    envelope::decode_with(jwt, lookup, ISS, aud, c)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn rfc8037_thumbprint_of_an_ed25519_jwk() {
    // RFC 8037, appendix A.3.
    let jwk = json!({"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    let key = PublicKey::from_jwk(&jwk).unwrap();
    assert_eq!(key.thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    assert_eq!(key.algorithm(), Algorithm::EdDsa);
}

#[test]
fn keys_round_trip_through_secret_bytes_and_jwks() {
    for alg in [Algorithm::Es256, Algorithm::EdDsa] {
        let k = SigningKey::generate(alg).unwrap();
        let again = SigningKey::from_secret_bytes(alg, k.secret_bytes().as_ref()).unwrap();
        let public = k.public_key().unwrap();
        assert_eq!(again.public_key(), Some(public));
        let jwk = public.jwk();
        assert_eq!(jwk["kid"], json!(public.thumbprint()));
        assert_eq!(jwk["alg"], json!(alg.name()));
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), public);
        assert!(!format!("{k:?}").contains(&b64(k.secret_bytes().as_ref())[..8]), "secret in Debug");
        assert!(format!("{k:?}").contains("redacted"));
    }
    assert!(SigningKey::generate(Algorithm::Hs256).unwrap().public_key().is_none());
    assert!(SigningKey::from_secret_bytes(Algorithm::Es256, &[0u8; 32]).is_err(), "zero scalar");
    assert!(SigningKey::from_secret_bytes(Algorithm::EdDsa, &[1u8; 31]).is_err());
    for bad in [
        json!({"kty": "RSA", "crv": "x"}),
        json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
        json!({}),
    ] {
        assert!(PublicKey::from_jwk(&bad).is_err(), "{bad}");
    }
}

#[test]
fn public_key_envelopes_round_trip_and_enforce_cap_and_audience() {
    for alg in [Algorithm::Es256, Algorithm::EdDsa] {
        let k = SigningKey::generate(alg).unwrap();
        let public = k.public_key().unwrap();
        let kid = public.thumbprint();
        let keys = vec![(kid.clone(), VerifyKey::Public(public))];
        let jwt = issue(&k, &kid, Some("gateway"));
        let claims = decode(&jwt, &keys, Some("gateway"), &ctx()).unwrap();
        assert_eq!((claims.sub.as_str(), claims.aud.as_deref()), ("alice", Some("gateway")));
        assert!(matches!(
            decode(&jwt, &keys, Some("gateway"), &ctx().operation("write")),
            Err(Error::CaveatNotMet { .. })
        ));
        // Audience: another one, none expected, or expected but absent: all refused.
        assert!(matches!(decode(&jwt, &keys, Some("other"), &ctx()), Err(Error::Envelope(_))));
        assert!(matches!(decode(&jwt, &keys, None, &ctx()), Err(Error::Envelope(_))));
        let no_aud = issue(&k, &kid, None);
        assert!(decode(&no_aud, &keys, None, &ctx()).is_ok());
        assert!(matches!(decode(&no_aud, &keys, Some("gateway"), &ctx()), Err(Error::Envelope(_))));
        // Expired.
        let late = Context::at(datetime!(2027-06-01 0:06 UTC)).operation("read");
        assert!(decode(&jwt, &keys, Some("gateway"), &late).is_err());
    }
}

#[test]
fn forgeries_and_confusions_are_refused() {
    let k = SigningKey::generate(Algorithm::Es256).unwrap();
    let public = k.public_key().unwrap();
    let kid = public.thumbprint();
    let keys = vec![(kid.clone(), VerifyKey::Public(public))];
    let jwt = issue(&k, &kid, None);
    let parts: Vec<&str> = jwt.split('.').collect();

    // Another key under the same kid.
    let other = SigningKey::generate(Algorithm::Es256).unwrap();
    assert_eq!(decode(&issue(&other, &kid, None), &keys, None, &ctx()), Err(Error::InvalidSignature));
    // Tampered claims (widened cap), signature kept.
    let mut claims: Value = {
        use base64::Engine;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
            .unwrap()
    };
    claims["cap"]["allow"] = json!(["read", "write"]);
    let widened = format!("{}.{}.{}", parts[0], b64(claims.to_string().as_bytes()), parts[2]);
    assert_eq!(decode(&widened, &keys, None, &ctx().operation("write")), Err(Error::InvalidSignature));
    // alg none, and an unknown algorithm.
    for alg in ["none", "ES384", "RS256", "es256"] {
        let h = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let forged = format!("{}.{}.{}", b64(h.to_string().as_bytes()), parts[1], parts[2]);
        assert!(matches!(decode(&forged, &keys, None, &ctx()), Err(Error::Envelope(_))), "{alg}");
    }
    // Algorithm confusion: HS256 "signed" with the public key's bytes as the secret.
    let h = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let input = format!("{}.{}", b64(h.to_string().as_bytes()), parts[1]);
    let pubkey_bytes = public.jwk().to_string();
    let mac = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(pubkey_bytes.as_bytes()).unwrap();
        m.update(input.as_bytes());
        m.finalize().into_bytes()
    };
    let confused = format!("{input}.{}", b64(&mac));
    assert!(
        matches!(decode(&confused, &keys, None, &ctx()), Err(Error::Envelope(m)) if m.contains("ES256 key"))
    );
    // A header naming EdDSA for an ES256 kid.
    let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let swapped = format!("{}.{}.{}", b64(h.to_string().as_bytes()), parts[1], parts[2]);
    assert!(matches!(decode(&swapped, &keys, None, &ctx()), Err(Error::Envelope(_))));
    // Unknown kid; truncated or non-base64 signatures.
    assert!(decode(&jwt, &[], None, &ctx()).is_err());
    for sig in ["", "AAAA", "!!!!", &parts[2][..parts[2].len() - 2]] {
        let t = format!("{}.{}.{sig}", parts[0], parts[1]);
        assert!(decode(&t, &keys, None, &ctx()).is_err(), "{sig}");
    }
}

#[test]
fn hs256_envelopes_still_decode_with_the_old_api() {
    let (keys, t) = token();
    let secret = RootKey::new(&[9u8; 32]).unwrap();
    let v = Verifier::with_keys(&keys).verify(&t, &[], &ctx()).unwrap();
    let ek = secret.envelope_key();
    let jwt = envelope::issue(&v, &ek, ISS, datetime!(2027-06-01 0:00 UTC), Duration::minutes(5)).unwrap();
    let claims = envelope::decode(&jwt, |_| Some(ek.clone()), ISS, &ctx()).unwrap();
    assert_eq!(claims.aud, None);
    // The public-key path refuses an HS256 envelope when the kid names a public key.
    let es = SigningKey::generate(Algorithm::Es256).unwrap().public_key().unwrap();
    let kid = KeyId::from_bytes([1; 8]).to_string();
    assert!(decode(&jwt, &[(kid, VerifyKey::Public(es))], None, &ctx()).is_err());
}

/// Security review 3, finding 14: the key a kid names fixes the algorithm, and a JWK that says
/// otherwise is no key at all. A JWK's `alg`, when present, must be its key's algorithm (an EC
/// P-256 entry saying `EdDSA` verified ES256 envelopes before); `use`, when present, must be
/// `sig`; `key_ops`, when present, must allow `verify`.
#[test]
fn a_jwk_whose_alg_or_use_disagrees_is_no_key() {
    for (alg, wrong) in [
        (Algorithm::Es256, ["EdDSA", "HS256", "ES384", "RS256", "none", "es256"]),
        (Algorithm::EdDsa, ["ES256", "HS256", "Ed25519", "EdDSA ", "none", "eddsa"]),
    ] {
        let k = SigningKey::generate(alg).unwrap();
        let public = k.public_key().unwrap();
        let jwk = public.jwk();
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), public, "alg and use: sig, as published");
        let with = |name: &str, v: Value| {
            let mut j = jwk.clone();
            j[name] = v;
            PublicKey::from_jwk(&j)
        };
        for w in wrong {
            let e = with("alg", json!(w)).unwrap_err();
            assert!(e.to_string().contains("alg"), "{w}: {e}");
        }
        assert!(with("alg", json!(7)).is_err());
        for u in [json!("enc"), json!("SIG"), json!(""), json!(["sig"])] {
            let e = with("use", u.clone()).unwrap_err();
            assert!(e.to_string().contains("use"), "{u}: {e}");
        }
        for ops in [json!(["sign"]), json!(["encrypt", "wrapKey"]), json!([]), json!("verify")] {
            let e = with("key_ops", ops.clone()).unwrap_err();
            assert!(e.to_string().contains("key_ops"), "{ops}: {e}");
        }
        assert_eq!(with("key_ops", json!(["sign", "verify"])).unwrap(), public);
        let mut bare = jwk.clone();
        bare.as_object_mut().unwrap().retain(|n, _| n != "alg" && n != "use");
        assert_eq!(PublicKey::from_jwk(&bare).unwrap(), public, "alg and use are optional");

        // Through an envelope, as `tessera jwt-check --jwks` looks keys up: the header names the
        // key's real algorithm, the JWKS entry another; refused.
        let kid = public.thumbprint();
        let jwt = issue(&k, &kid, None);
        let mut lying = jwk.clone();
        lying["alg"] = json!(wrong[0]);
        let lookup = |_: &str| PublicKey::from_jwk(&lying).map(VerifyKey::Public);
        let e = envelope::decode_with(&jwt, lookup, ISS, None, &ctx()).unwrap_err();
        assert!(e.to_string().contains("alg"), "{e}");
        let honest = |_: &str| PublicKey::from_jwk(&jwk).map(VerifyKey::Public);
        envelope::decode_with(&jwt, honest, ISS, None, &ctx()).unwrap();
    }
}

/// Finding 12 for envelopes: a lifetime or a signed time past the calendar is an error, never a
/// panic (issuing added the ttl unchecked).
#[test]
fn times_past_the_calendar_are_errors_in_envelopes() {
    let (keys, t) = token();
    let v = Verifier::with_keys(&keys).verify(&t, &[], &ctx()).unwrap();
    let k = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let at = datetime!(2027-06-01 0:00 UTC);
    for ttl in [Duration::MAX, Duration::days(3_000_000)] {
        let e = envelope::issue_signed(&v, &k, "k", ISS, None, at, ttl).unwrap_err();
        assert!(e.to_string().contains("ttl"), "{e}");
    }
    // A signed envelope whose exp or nbf lies past the calendar: refused, not a panic.
    let public = k.public_key().unwrap();
    let keys = vec![("k".to_owned(), VerifyKey::Public(public))];
    for (name, value) in
        [("exp", json!(i64::MAX)), ("nbf", json!(i64::MIN)), ("exp", json!(253_402_300_800i64))]
    {
        let mut claims =
            json!({"iss": ISS, "sub": "alice", "jti": "00", "iat": 0, "exp": 1_900_000_000, "cap": {}});
        claims[name] = value;
        let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": "k"});
        let input = format!("{}.{}", b64(h.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let jwt = format!("{input}.{}", b64(&k.sign(input.as_bytes())));
        assert!(matches!(decode(&jwt, &keys, None, &ctx()), Err(Error::Envelope(_))), "{name}");
    }
}
