//! The signature memo: a remembered token answers exactly as a fresh verification would, and
//! nothing but the exact text of a token that verified, under the same keys, is ever a hit.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::collections::HashSet;
use std::sync::RwLock;

use tessera_core::{
    Context, Error, Identifier, KeyId, KeyProvider, RootKey, SignatureMemo, StaticKeys, Token, TokenId,
    TokenKey, Verifier,
};
use time::macros::datetime;

fn setup() -> (StaticKeys, RootKey, KeyId) {
    let secret = RootKey::new(&[0x42; 32]).unwrap();
    let kid = KeyId::from_bytes([3; 8]);
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    (keys, secret, kid)
}

fn token(secret: &RootKey, kid: KeyId, tid: u8, caveats: &[&str]) -> Token {
    let id = Identifier::new(kid, TokenId::from_bytes([tid; 16]), "alice").unwrap();
    let mut t = Token::mint_tessera(Some("https://tessera.example"), secret, &id).unwrap();
    for c in caveats {
        t = t.attenuate(c).unwrap();
    }
    t
}

const CAVEATS: [&str; 5] = [
    "allow read",
    "resource issues/*",
    "time-after 2026-01-01T00:00:00Z",
    "time-before 2030-01-01T00:00:00Z",
    "client-ip 10.0.0.0/8",
];

fn ok_ctx() -> Context {
    Context::at(datetime!(2027-06-01 12:00 UTC))
        .operation("read")
        .resource("issues/42")
        .client_ip("10.1.2.3".parse().unwrap())
}

/// The outcome as a comparable string: Ok with the subject, or the error's message.
fn outcome<T>(r: Result<T, Error>, subject: impl Fn(&T) -> Option<String>) -> String {
    match r {
        Ok(v) => format!("ok {:?}", subject(&v)),
        Err(e) => format!("err {e}"),
    }
}

#[test]
fn a_remembered_token_answers_every_context_as_a_fresh_verification() {
    let (keys, secret, kid) = setup();
    let text = token(&secret, kid, 1, &CAVEATS).encode();
    let memo = SignatureMemo::default();
    let remembering = Verifier::with_keys(&keys).memo(&memo);
    let plain = Verifier::with_keys(&keys);
    remembering.verify_text(&text, &ok_ctx()).unwrap();
    assert_eq!(memo.len(), 1);
    let contexts = [
        ok_ctx(),
        ok_ctx().operation("write"),
        ok_ctx().resource("pulls/1"),
        ok_ctx().client_ip("192.168.1.1".parse().unwrap()),
        Context { time: datetime!(2031-01-01 0:00 UTC), ..ok_ctx() },
        Context { time: datetime!(2025-01-01 0:00 UTC), ..ok_ctx() },
        Context { subject: Some("bob".into()), ..ok_ctx() },
        Context { subject: Some("alice".into()), ..ok_ctx() },
        Context::at(datetime!(2027-06-01 12:00 UTC)),
    ];
    for ctx in &contexts {
        let hit = outcome(remembering.verify_text(&text, ctx), |v| v.restrictions().subject.clone());
        let fresh =
            outcome(plain.verify(&Token::decode(&text).unwrap(), &[], ctx), |v| v.restrictions().subject);
        assert_eq!(hit, fresh, "{ctx:?}");
    }
    // Failures are not remembered as anything, and the one entry stays.
    assert_eq!(memo.len(), 1);
    let first = remembering.verify_text(&text, &ok_ctx()).unwrap();
    assert_eq!(
        *first.restrictions(),
        plain.verify(&Token::decode(&text).unwrap(), &[], &ok_ctx()).unwrap().restrictions()
    );
}

#[test]
fn near_copies_of_a_remembered_token_are_refused() {
    let (keys, secret, kid) = setup();
    let good = token(&secret, kid, 1, &CAVEATS);
    let text = good.encode();
    let memo = SignatureMemo::default();
    let v = Verifier::with_keys(&keys).memo(&memo);
    v.verify_text(&text, &ok_ctx()).unwrap();

    // One character changed anywhere in the text: the answer is a fresh verification's. (The
    // location is not signed, so a change there is a different token that verifies on its own.)
    let plain = Verifier::with_keys(&keys);
    let fresh = |t: &str| Token::decode(t).and_then(|t| plain.verify(&t, &[], &ok_ctx()).map(|_| ()));
    let bytes = text.as_bytes();
    let mut valid_variants = 0;
    for i in 0..bytes.len() {
        let mut forged = bytes.to_vec();
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let expected = fresh(&forged);
        assert_eq!(v.verify_text(&forged, &ok_ctx()).map(|_| ()), expected, "changed at {i}");
        valid_variants += usize::from(expected.is_ok());
        if i + 43 >= bytes.len() {
            // The signature's characters: never a valid token.
            assert!(expected.is_err(), "changed at {i}");
        }
    }
    // The valid variants differ in the unsigned location: they share the signature, so the
    // memo's slot, and each lookup found another text there (a miss, verified afresh).
    assert!(valid_variants > 0);
    assert_eq!(memo.len(), 1);
    memo.clear();
    v.verify_text(&text, &ok_ctx()).unwrap();
    // Truncated, extended.
    assert!(v.verify_text(&text[..text.len() - 1], &ok_ctx()).is_err());
    assert!(v.verify_text(&format!("{text}A"), &ok_ctx()).is_err());
    // The caveats reordered, or one dropped, with the remembered token's signature.
    let mut reordered = CAVEATS;
    reordered.swap(0, 4);
    for caveats in [&reordered[..], &CAVEATS[..4]] {
        let other = token(&secret, kid, 1, caveats);
        let bin = other.to_binary();
        let mut forged = bin[..bin.len() - 32].to_vec();
        forged.extend_from_slice(&good.to_binary()[good.to_binary().len() - 32..]);
        let forged = Token::from_binary(&forged).unwrap().encode();
        assert_eq!(v.verify_text(&forged, &ok_ctx()).unwrap_err(), Error::InvalidSignature);
    }
    // Only the one good text was ever remembered.
    assert_eq!(memo.len(), 1);
}

#[test]
fn a_key_change_makes_every_remembered_token_verify_again() {
    let (mut keys, secret, kid) = setup();
    let text = token(&secret, kid, 1, &CAVEATS).encode();
    let memo = SignatureMemo::default();
    Verifier::with_keys(&keys).memo(&memo).verify_text(&text, &ok_ctx()).unwrap();
    // The kid now names another key: the remembered text must not verify under it.
    keys.insert(kid, RootKey::new(&[0x43; 32]).unwrap());
    let err = Verifier::with_keys(&keys).memo(&memo).verify_text(&text, &ok_ctx()).unwrap_err();
    assert_eq!(err, Error::InvalidSignature);
}

#[test]
fn a_memo_shared_by_two_providers_never_carries_a_token_across() {
    let (a, secret, kid) = setup();
    let mut b = StaticKeys::new();
    b.insert(kid, RootKey::new(&[0x44; 32]).unwrap());
    let text = token(&secret, kid, 1, &CAVEATS).encode();
    let memo = SignatureMemo::default();
    Verifier::with_keys(&a).memo(&memo).verify_text(&text, &ok_ctx()).unwrap();
    assert_eq!(memo.len(), 1);
    let err = Verifier::with_keys(&b).memo(&memo).verify_text(&text, &ok_ctx()).unwrap_err();
    assert_eq!(err, Error::InvalidSignature);
}

/// A provider whose families can be revoked while verifiers use it.
struct Revocable {
    keys: StaticKeys,
    revoked: RwLock<HashSet<TokenId>>,
    generation: Option<u64>,
}

impl KeyProvider for Revocable {
    fn token_key(&self, kid: &KeyId, tid: &TokenId) -> Option<TokenKey> {
        self.keys.token_key(kid, tid)
    }
    fn is_revoked(&self, tid: &TokenId) -> bool {
        self.revoked.read().unwrap().contains(tid)
    }
    fn generation(&self) -> Option<u64> {
        self.generation
    }
}

#[test]
fn revocation_is_asked_on_every_hit() {
    let (keys, secret, kid) = setup();
    let text = token(&secret, kid, 1, &CAVEATS).encode();
    let p = Revocable {
        keys,
        revoked: RwLock::new(HashSet::new()),
        generation: Some(tessera_core::new_key_generation()),
    };
    let memo = SignatureMemo::default();
    let v = Verifier::with_keys(&p).memo(&memo);
    v.verify_text(&text, &ok_ctx()).unwrap();
    v.verify_text(&text, &ok_ctx()).unwrap();
    p.revoked.write().unwrap().insert(TokenId::from_bytes([1; 16]));
    assert_eq!(v.verify_text(&text, &ok_ctx()).unwrap_err(), Error::Revoked);
}

#[test]
fn nothing_is_remembered_without_a_generation_or_with_third_party_caveats() {
    let (keys, secret, kid) = setup();
    let text = token(&secret, kid, 1, &CAVEATS).encode();
    let p = Revocable { keys, revoked: RwLock::new(HashSet::new()), generation: None };
    let memo = SignatureMemo::default();
    Verifier::with_keys(&p).memo(&memo).verify_text(&text, &ok_ctx()).unwrap();
    assert!(memo.is_empty());

    // A third-party caveat needs a discharge: it fails without one and is never remembered.
    let (keys, secret, kid) = setup();
    let third = token(&secret, kid, 2, &["allow read"])
        .add_third_party_caveat("https://auth.example", &RootKey::new(&[9; 32]).unwrap(), b"is-alice")
        .unwrap()
        .encode();
    let v = Verifier::with_keys(&keys).memo(&memo);
    assert!(matches!(v.verify_text(&third, &ok_ctx()), Err(Error::MissingDischarge { .. })));
    assert!(memo.is_empty());
}

#[test]
fn service_caveats_are_checked_by_the_verifier_at_hand() {
    let (keys, secret, kid) = setup();
    let text = token(&secret, kid, 1, &["allow read", "once", "rate-limit 10/1m"]).encode();
    let memo = SignatureMemo::default();
    Verifier::with_keys(&keys).service_caveats().memo(&memo).verify_text(&text, &ok_ctx()).unwrap();
    assert_eq!(memo.len(), 1);
    // An offline verifier sharing the memo still fails closed on them.
    let err = Verifier::with_keys(&keys).memo(&memo).verify_text(&text, &ok_ctx()).unwrap_err();
    assert!(matches!(err, Error::UnknownCaveat(_) | Error::CaveatNotMet { .. }), "{err:?}");
}

#[test]
fn the_memo_is_bounded_and_starts_over_when_full() {
    let (keys, secret, kid) = setup();
    let memo = SignatureMemo::new(2, 1 << 20);
    let v = Verifier::with_keys(&keys).memo(&memo);
    let texts: Vec<String> = (1..=5).map(|i| token(&secret, kid, i, &CAVEATS).encode()).collect();
    for t in &texts {
        v.verify_text(t, &ok_ctx()).unwrap();
        assert!(memo.len() <= 2);
    }
    for t in &texts {
        v.verify_text(t, &ok_ctx()).unwrap();
    }
    // A byte bound smaller than one text remembers nothing.
    let small = SignatureMemo::new(100, texts[0].len() - 1);
    Verifier::with_keys(&keys).memo(&small).verify_text(&texts[0], &ok_ctx()).unwrap();
    assert!(small.is_empty());
    assert_eq!(format!("{small:?}"), "SignatureMemo(0 entries)");
}

#[test]
fn a_rendering_is_kept_with_a_remembered_token_only() {
    let (keys, secret, kid) = setup();
    let text = token(&secret, kid, 1, &CAVEATS).encode();
    let memo = SignatureMemo::default();
    let v = Verifier::with_keys(&keys).memo(&memo);
    let renders = std::cell::Cell::new(0);
    let render = |r: &tessera_core::Restrictions| -> Result<Vec<u8>, ()> {
        renders.set(renders.get() + 1);
        Ok(format!("{:?}", r.operations).into_bytes())
    };
    for _ in 0..3 {
        assert_eq!(v.verify_text(&text, &ok_ctx()).unwrap().rendered(render).unwrap(), b"Some([\"read\"])");
    }
    assert_eq!(renders.get(), 1);
    // A failed rendering keeps nothing.
    let fresh = Verifier::with_keys(&keys).verify_text(&text, &ok_ctx()).unwrap();
    assert_eq!(fresh.rendered(|_| Err::<Vec<u8>, _>("no")), Err("no"));
    assert_eq!(fresh.rendered(render).unwrap(), b"Some([\"read\"])");
    // Without the memo, every verification renders afresh.
    for _ in 0..2 {
        Verifier::with_keys(&keys).verify_text(&text, &ok_ctx()).unwrap().rendered(render).unwrap();
    }
    assert_eq!(renders.get(), 4);
}
