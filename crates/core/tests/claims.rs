//! Custom claims: bound by the token's signature (changing, adding or dropping them breaks it),
//! kept by every attenuation, returned by the verifier, copied into envelopes; tokens without
//! claims keep their old bytes.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use serde_json::json;
use tessera_core::envelope::{self, Algorithm, SigningKey, VerifyKey};
use tessera_core::{
    Context, CustomClaims, Error, Identifier, KeyId, RootKey, StaticKeys, Token, TokenId, Verifier,
};
use time::macros::datetime;
use time::Duration;

fn keys() -> (StaticKeys, RootKey, KeyId) {
    let secret = RootKey::new(&[9u8; 32]).unwrap();
    let kid = KeyId::from_bytes([1; 8]);
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    (keys, secret, kid)
}

fn claims() -> CustomClaims {
    CustomClaims::from_json(r#"{"roles":["editor"],"org":{"id":7,"owner":"alice"},"beta":true}"#).unwrap()
}

fn minted(claims: CustomClaims) -> Token {
    let (_, secret, kid) = keys();
    let id = Identifier::new(kid, TokenId::from_bytes([2; 16]), "alice").unwrap().with_claims(claims);
    Token::mint_tessera(None, &secret, &id).unwrap()
}

fn ctx() -> Context {
    Context::at(datetime!(2027-06-01 0:00 UTC)).operation("read").resource("docs/1")
}

#[test]
fn claims_survive_attenuation_and_come_back_from_the_verifier() {
    let (keys, ..) = keys();
    let t = minted(claims()).attenuate("allow read").unwrap().attenuate("resource docs/*").unwrap();
    let t = Token::decode(&t.encode()).unwrap();
    let v = Verifier::with_keys(&keys).verify(&t, &[], &ctx()).unwrap();
    let r = v.restrictions();
    assert_eq!(r.claims, Some(claims()));
    assert_eq!(r.claims.unwrap().get("org"), Some(&json!({"id": 7, "owner": "alice"})));
}

#[test]
fn a_holder_cannot_change_add_or_drop_claims() {
    let (keys, secret, kid) = keys();
    let t = minted(claims()).attenuate("allow read").unwrap();
    let verify = |t: &Token| Verifier::with_keys(&keys).verify(t, &[], &ctx()).map(|_| ());
    assert!(verify(&t).is_ok());
    // Rebuild the same token with other claims but the old chain: the signature no longer holds.
    let other =
        CustomClaims::from_json(r#"{"roles":["admin"],"org":{"id":7,"owner":"alice"},"beta":true}"#).unwrap();
    for forged_claims in [Some(other), None] {
        let mut id = Identifier::new(kid, TokenId::from_bytes([2; 16]), "alice").unwrap();
        id.claims = forged_claims;
        let genuine = Token::mint_tessera(None, &secret, &id).unwrap().attenuate("allow read").unwrap();
        // Same caveats, same length class; graft the genuine signature of `t` onto it.
        let mut bytes = genuine.to_binary().to_vec();
        let n = bytes.len();
        bytes[n - 32..].copy_from_slice(t.signature());
        let forged = Token::from_binary(&bytes).unwrap();
        assert_eq!(verify(&forged), Err(Error::InvalidSignature));
    }
    // Flip one byte inside the claims text of the identifier.
    let mut bytes = t.to_binary().to_vec();
    let at = bytes.windows(6).position(|w| w == b"editor").unwrap();
    bytes[at] = b'E';
    let tampered = Token::from_binary(&bytes).unwrap();
    assert_eq!(verify(&tampered), Err(Error::InvalidSignature));
}

#[test]
fn tokens_without_claims_keep_their_bytes_and_have_none() {
    let (keys, ..) = keys();
    let empty = minted(CustomClaims::from_json("{}").unwrap());
    let (_, secret, kid) = self::keys();
    let old = Token::mint_tessera(
        None,
        &secret,
        &Identifier::new(kid, TokenId::from_bytes([2; 16]), "alice").unwrap(),
    )
    .unwrap();
    assert_eq!(empty.to_binary(), old.to_binary());
    let v = Verifier::with_keys(&keys).verify(&old, &[], &ctx()).unwrap();
    assert_eq!(v.restrictions().claims, None);
}

#[test]
fn envelopes_carry_the_claims_beside_the_registered_ones() {
    let (keys, ..) = keys();
    let t = minted(claims()).attenuate("allow read").unwrap();
    let v = Verifier::with_keys(&keys).verify(&t, &[], &ctx()).unwrap();
    let now = datetime!(2027-06-01 0:00 UTC);
    for alg in [Algorithm::Hs256, Algorithm::Es256, Algorithm::EdDsa] {
        let key = match alg {
            Algorithm::Hs256 => SigningKey::from_secret_bytes(alg, &[5u8; 32]).unwrap(),
            _ => SigningKey::generate(alg).unwrap(),
        };
        let verify_key = match key.public_key() {
            Some(p) => VerifyKey::Public(p),
            None => VerifyKey::Hs256(envelope::EnvelopeKey::from_bytes([5u8; 32])),
        };
        let jwt =
            envelope::issue_signed(&v, &key, "k1", "https://iss", Some("app"), now, Duration::minutes(5))
                .unwrap();
        let payload = jwt.split('.').nth(1).unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&base64_decode(payload)).unwrap();
        assert_eq!(raw["roles"], json!(["editor"]), "{alg}");
        assert_eq!(raw["sub"], json!("alice"), "{alg}");
        let lookup = |_: &str| Ok(verify_key.clone());
        let decoded = envelope::decode_with(&jwt, lookup, "https://iss", Some("app"), &ctx()).unwrap();
        assert_eq!(decoded.custom, Some(claims()), "{alg}");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}
