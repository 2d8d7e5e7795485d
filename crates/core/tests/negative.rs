//! Security properties: everything tampered, truncated, reordered, expired, misplaced, unknown or
//! oversized is rejected, with the documented error.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::cell::Cell;

use serde_json::Value;
use tessera_core::limits::{MAX_CAVEATS, MAX_DISCHARGE_DEPTH, MAX_FIELD, MAX_TOKEN_TEXT};
use tessera_core::{
    envelope, Context, Error, Identifier, KeyId, KeyProvider, RootKey, StaticKeys, Token, TokenId, Verifier,
};
use time::macros::datetime;
use time::Duration;

struct Fixture {
    kid: KeyId,
    tid: TokenId,
    keys: StaticKeys,
    secret: RootKey,
    token: Token,
}

const CAVEATS: [&str; 5] = [
    "allow read",
    "resource issues/42",
    "time-after 2026-01-01T00:00:00Z",
    "time-before 2030-01-01T00:00:00Z",
    "client-ip 10.0.0.0/8",
];

fn fixture() -> Fixture {
    let secret = RootKey::new(&[9u8; 32]).unwrap();
    let kid = KeyId::from_bytes([1; 8]);
    let tid = TokenId::from_bytes([2; 16]);
    let id = Identifier::new(kid, tid, "alice").unwrap();
    let mut token = Token::mint_tessera(Some("https://tessera.test"), &secret, &id).unwrap();
    for c in CAVEATS {
        token = token.attenuate(c).unwrap();
    }
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    Fixture { kid, tid, keys, secret, token }
}

fn good_ctx() -> Context {
    Context::at(datetime!(2027-06-01 0:00 UTC))
        .operation("read")
        .resource("issues/42")
        .client_ip("10.1.2.3".parse().unwrap())
}

fn verify(f: &Fixture, t: &Token, d: &[Token], ctx: &Context) -> tessera_core::Result<()> {
    Verifier::with_keys(&f.keys).verify(t, d, ctx).map(|_| ())
}

#[test]
fn the_fixture_verifies() {
    let f = fixture();
    verify(&f, &f.token, &[], &good_ctx()).unwrap();
}

#[test]
fn every_bit_flip_is_rejected() {
    let f = fixture();
    let bin = f.token.to_binary().to_vec();
    for i in 0..bin.len() * 8 {
        let mut b = bin.clone();
        b[i / 8] ^= 1 << (i % 8);
        if let Ok(t) = Token::from_binary(&b) {
            if verify(&f, &t, &[], &good_ctx()).is_ok() {
                // Only the location is unsigned (by the format's design): nothing else may change.
                assert_ne!(t.location(), f.token.location(), "bit {i} flipped still verifies");
                assert_eq!(t.identifier(), f.token.identifier());
                assert!(t.caveats().eq(f.token.caveats()));
                assert_eq!(t.signature(), f.token.signature());
            }
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let f = fixture();
    let bin = f.token.to_binary();
    for n in 0..bin.len() {
        assert!(Token::from_binary(&bin[..n]).is_err(), "truncated to {n} bytes parses");
    }
    let text = f.token.encode();
    for n in 0..text.len() {
        let r = Token::decode(&text[..n]);
        assert!(r.is_err(), "text truncated to {n} chars parses");
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let f = fixture();
    let mut bin = f.token.to_binary().to_vec();
    bin.push(0);
    assert!(matches!(Token::from_binary(&bin), Err(Error::Malformed(_))));
}

fn with_caveats(t: &Token, edit: impl FnOnce(&mut Vec<Value>)) -> Token {
    let mut j: Value = serde_json::from_str(&t.to_json()).unwrap();
    edit(j["c"].as_array_mut().unwrap());
    Token::decode(&j.to_string()).unwrap()
}

#[test]
fn removed_or_reordered_caveats_break_the_signature() {
    let f = fixture();
    for i in 0..CAVEATS.len() {
        let t = with_caveats(&f.token, |c| {
            c.remove(i);
        });
        assert_eq!(verify(&f, &t, &[], &good_ctx()), Err(Error::InvalidSignature), "removed {i}");
    }
    let t = with_caveats(&f.token, |c| c.swap(0, 1));
    assert_eq!(verify(&f, &t, &[], &good_ctx()), Err(Error::InvalidSignature));
    let t = with_caveats(&f.token, |c| c.reverse());
    assert_eq!(verify(&f, &t, &[], &good_ctx()), Err(Error::InvalidSignature));
}

#[test]
fn a_forged_token_with_unmet_caveats_still_reports_only_the_signature() {
    let f = fixture();
    // Drop the time-before and present it after expiry: the signature error wins, opaque.
    let t = with_caveats(&f.token, |c| {
        c.remove(3);
    });
    let ctx = good_ctx().operation("write");
    assert_eq!(verify(&f, &t, &[], &ctx), Err(Error::InvalidSignature));
}

#[test]
fn wrong_key_unknown_kid_and_foreign_identifier() {
    let f = fixture();
    let mut other = StaticKeys::new();
    other.insert(f.kid, RootKey::new(&[8u8; 32]).unwrap());
    let r = Verifier::with_keys(&other).verify(&f.token, &[], &good_ctx());
    assert_eq!(r.map(|_| ()), Err(Error::InvalidSignature));

    let empty = StaticKeys::new();
    let r = Verifier::with_keys(&empty).verify(&f.token, &[], &good_ctx());
    assert_eq!(r.map(|_| ()), Err(Error::UnknownKey(f.kid)));

    let foreign = Token::mint(None, &f.secret, b"not-ours").unwrap();
    assert_eq!(verify(&f, &foreign, &[], &good_ctx()), Err(Error::ForeignIdentifier));
    // Same token with its root key supplied verifies.
    Verifier::new().verify_with_key(&foreign, &f.secret, &[], &good_ctx()).unwrap();
}

#[test]
fn revoked_token_family_is_rejected_after_the_signature() {
    struct Revoking<'a> {
        inner: &'a StaticKeys,
        revoked: TokenId,
        asked: Cell<bool>,
    }
    impl KeyProvider for Revoking<'_> {
        fn token_key(&self, kid: &KeyId, tid: &TokenId) -> Option<tessera_core::TokenKey> {
            self.inner.token_key(kid, tid)
        }
        fn is_revoked(&self, tid: &TokenId) -> bool {
            self.asked.set(true);
            *tid == self.revoked
        }
    }
    let f = fixture();
    let p = Revoking { inner: &f.keys, revoked: f.tid, asked: Cell::new(false) };
    let narrower = f.token.attenuate("allow read").unwrap();
    let r = Verifier::with_keys(&p).verify(&narrower, &[], &good_ctx()).map(|_| ());
    assert_eq!(r, Err(Error::Revoked), "attenuations share the revoked tid");
    assert!(p.asked.get());
}

fn unmet(r: tessera_core::Result<()>) -> String {
    match r {
        Err(Error::CaveatNotMet { caveat, .. }) => caveat,
        other => panic!("expected an unmet caveat, got {other:?}"),
    }
}

#[test]
fn unmet_caveats_are_named() {
    let f = fixture();
    let t = &f.token;
    assert_eq!(unmet(verify(&f, t, &[], &good_ctx().operation("write"))), "allow read");
    assert_eq!(unmet(verify(&f, t, &[], &good_ctx().resource("issues/43"))), "resource issues/42");
    let expired = Context { time: datetime!(2030-01-01 0:00 UTC), ..good_ctx() };
    assert_eq!(unmet(verify(&f, t, &[], &expired)), "time-before 2030-01-01T00:00:00Z");
    let early = Context { time: datetime!(2025-12-31 23:59:59 UTC), ..good_ctx() };
    assert_eq!(unmet(verify(&f, t, &[], &early)), "time-after 2026-01-01T00:00:00Z");
    let subnet = good_ctx().client_ip("192.168.1.1".parse().unwrap());
    assert_eq!(unmet(verify(&f, t, &[], &subnet)), "client-ip 10.0.0.0/8");
    let v6 = good_ctx().client_ip("2001:db8::1".parse().unwrap());
    assert_eq!(unmet(verify(&f, t, &[], &v6)), "client-ip 10.0.0.0/8");
    let mut no_ip = good_ctx();
    no_ip.client_ip = None;
    assert_eq!(unmet(verify(&f, t, &[], &no_ip)), "client-ip 10.0.0.0/8");
}

#[test]
fn unknown_caveats_fail_closed_unless_a_checker_accepts_them() {
    let f = fixture();
    let t = f.token.attenuate("account 3735928559").unwrap();
    assert_eq!(verify(&f, &t, &[], &good_ctx()), Err(Error::UnknownCaveat("account 3735928559".into())));
    let v = Verifier::with_keys(&f.keys).satisfy_exact("account 3735928559");
    v.verify(&t, &[], &good_ctx()).unwrap();
    let v = Verifier::with_keys(&f.keys).satisfy_exact("account 1");
    assert!(v.verify(&t, &[], &good_ctx()).is_err());
    let v = Verifier::with_keys(&f.keys).satisfy_general(|c, ctx| {
        c.strip_prefix("account ").is_some_and(|a| ctx.extras.get("account").map(String::as_str) == Some(a))
    });
    v.verify(&t, &[], &good_ctx().extra("account", "3735928559")).unwrap();
    assert!(v.verify(&t, &[], &good_ctx().extra("account", "1")).is_err());
    let verified = v.verify(&t, &[], &good_ctx().extra("account", "3735928559")).unwrap();
    assert_eq!(verified.restrictions().other, vec!["account 3735928559".to_owned()]);

    // Non-UTF-8 caveats are unknown too.
    let t = f.token.attenuate_raw(b"\xff\x00binary").unwrap();
    assert!(matches!(verify(&f, &t, &[], &good_ctx()), Err(Error::UnknownCaveat(_))));
    // A malformed built-in fails even when smuggled past attenuate().
    let t = f.token.attenuate_raw(b"time-before soon").unwrap();
    assert!(matches!(verify(&f, &t, &[], &good_ctx()), Err(Error::MalformedCaveat { .. })));
}

#[test]
fn attenuate_refuses_malformed_builtins() {
    let f = fixture();
    for bad in ["", "allow", "time-before tomorrow", "client-ip 300.1.1.1", "resource  a"] {
        assert!(f.token.attenuate(bad).is_err(), "{bad:?}");
    }
}

// --- discharges ---------------------------------------------------------------------------

struct ThirdParty {
    key: RootKey,
    root: Token,
}

fn third_party(f: &Fixture) -> ThirdParty {
    let key = RootKey::new(&[0x42; 32]).unwrap();
    let root = f.token.add_third_party_caveat("https://idp.test", &key, b"ticket-1").unwrap();
    ThirdParty { key, root }
}

fn discharge(tp: &ThirdParty, caveat: &str) -> Token {
    Token::discharge(Some("https://idp.test"), &tp.key, b"ticket-1").unwrap().attenuate(caveat).unwrap()
}

#[test]
fn discharge_rules() {
    let f = fixture();
    let tp = third_party(&f);
    let d = discharge(&tp, "time-before 2028-01-01T00:00:00Z");
    let bound = tp.root.bind(&d);
    verify(&f, &tp.root, std::slice::from_ref(&bound), &good_ctx()).unwrap();

    // Missing.
    assert_eq!(
        verify(&f, &tp.root, &[], &good_ctx()),
        Err(Error::MissingDischarge { location: "https://idp.test".into() })
    );
    // Unbound.
    assert_eq!(verify(&f, &tp.root, std::slice::from_ref(&d), &good_ctx()), Err(Error::InvalidSignature));
    // Reused (supplied twice).
    assert_eq!(
        verify(&f, &tp.root, &[bound.clone(), bound.clone()], &good_ctx()),
        Err(Error::UnusedDischarge(1))
    );
    // Left over (not needed by any caveat).
    assert_eq!(
        verify(&f, &f.token, std::slice::from_ref(&bound), &good_ctx()),
        Err(Error::UnusedDischarge(1))
    );
    // Stale: the root was attenuated after binding.
    let narrower = tp.root.attenuate("allow read").unwrap();
    assert_eq!(
        verify(&f, &narrower, std::slice::from_ref(&bound), &good_ctx()),
        Err(Error::InvalidSignature)
    );
    verify(&f, &narrower, &[narrower.bind(&d)], &good_ctx()).unwrap();
    // Discharge minted with the wrong caveat key.
    let wrong = ThirdParty { key: RootKey::new(&[0x43; 32]).unwrap(), root: tp.root.clone() };
    let forged = tp.root.bind(&discharge(&wrong, "time-before 2028-01-01T00:00:00Z"));
    assert_eq!(verify(&f, &tp.root, &[forged], &good_ctx()), Err(Error::InvalidSignature));
    // The discharge's own caveats are checked against the same context.
    let late = Context { time: datetime!(2028-06-01 0:00 UTC), ..good_ctx() };
    assert_eq!(
        unmet(verify(&f, &tp.root, std::slice::from_ref(&bound), &late)),
        "time-before 2028-01-01T00:00:00Z"
    );
    let d_read = tp.root.bind(&discharge(&tp, "allow read"));
    assert_eq!(unmet(verify(&f, &tp.root, &[d_read], &good_ctx().operation("write"))), "allow read");
    // The discharge's restrictions are part of the effective restrictions.
    let v = Verifier::with_keys(&f.keys);
    let verified = v.verify(&tp.root, std::slice::from_ref(&bound), &good_ctx()).unwrap();
    assert_eq!(verified.restrictions().expires, Some(datetime!(2028-01-01 0:00 UTC)));
}

#[test]
fn nested_discharges_up_to_the_depth_limit() {
    let f = fixture();
    // Chain: root -> d1 -> d2 -> ... each discharge carries a third-party caveat for the next.
    let build = |depth: usize| {
        let keys: Vec<RootKey> = (0..depth).map(|i| RootKey::new(&[i as u8 + 100; 32]).unwrap()).collect();
        let cid = |i: usize| format!("level-{i}").into_bytes();
        let root = f.token.add_third_party_caveat("https://tp.test/0", &keys[0], &cid(0)).unwrap();
        let mut ds = Vec::new();
        for i in 0..depth {
            let mut d = Token::discharge(None, &keys[i], &cid(i)).unwrap();
            if i + 1 < depth {
                d = d.add_third_party_caveat("https://tp.test/n", &keys[i + 1], &cid(i + 1)).unwrap();
            }
            ds.push(root.bind(&d));
        }
        (root, ds)
    };
    let (root, ds) = build(MAX_DISCHARGE_DEPTH);
    verify(&f, &root, &ds, &good_ctx()).unwrap();
    let (root, ds) = build(MAX_DISCHARGE_DEPTH + 1);
    assert_eq!(verify(&f, &root, &ds, &good_ctx()), Err(Error::DischargeTooDeep(MAX_DISCHARGE_DEPTH)));
}

#[test]
fn tampered_vid_is_the_opaque_signature_error() {
    let f = fixture();
    let tp = third_party(&f);
    let bound = tp.root.bind(&discharge(&tp, "allow read"));
    let t = with_caveats(&tp.root, |c| {
        let last = c.last_mut().unwrap();
        let v = last["v64"].as_str().unwrap().to_owned();
        let flipped = if v.starts_with('A') { v.replacen('A', "B", 1) } else { format!("A{}", &v[1..]) };
        last["v64"] = Value::String(flipped);
    });
    assert_eq!(verify(&f, &t, &[bound], &good_ctx()), Err(Error::InvalidSignature));
}

// --- limits and garbage ---------------------------------------------------------------------

#[test]
fn limits_are_enforced() {
    let f = fixture();
    let huge = "A".repeat(MAX_TOKEN_TEXT + 1);
    assert!(matches!(Token::decode(&huge), Err(Error::TooLarge { what: "token text", .. })));

    let mut t = Token::mint(None, &f.secret, b"id").unwrap();
    for i in 0..MAX_CAVEATS {
        t = t.attenuate(&format!("allow op{i}")).unwrap();
    }
    assert!(matches!(t.attenuate("allow read"), Err(Error::TooLarge { what: "caveat count", .. })));
    // The same limit on input: hand-craft 65 caveats in JSON.
    let mut j: Value = serde_json::from_str(&t.to_json()).unwrap();
    j["c"].as_array_mut().unwrap().push(serde_json::json!({"i": "allow x"}));
    assert!(matches!(Token::decode(&j.to_string()), Err(Error::TooLarge { what: "caveat count", .. })));
    // ... and in binary: splice one more caveat section before the trailer.
    let bin = t.to_binary();
    let mut spliced = bin[..bin.len() - 35].to_vec();
    spliced.extend_from_slice(&[2, 1, b'x', 0]);
    spliced.extend_from_slice(&bin[bin.len() - 35..]);
    assert!(matches!(Token::from_binary(&spliced), Err(Error::TooLarge { what: "caveat count", .. })));

    let big = "x".repeat(MAX_FIELD + 1);
    assert!(matches!(f.token.attenuate(&format!("note {big}")), Err(Error::TooLarge { what: "caveat", .. })));
    assert!(matches!(Token::mint(None, &f.secret, big.as_bytes()), Err(Error::TooLarge { .. })));
    assert!(matches!(RootKey::new(&[1; 31]), Err(Error::KeyTooShort(31))));
    let many: Vec<Token> = (0..65).map(|_| f.token.clone()).collect();
    assert!(matches!(verify(&f, &f.token, &many, &good_ctx()), Err(Error::TooLarge { .. })));
}

#[test]
fn garbage_is_malformed() {
    for text in [
        "",
        "   ",
        "!!!!",
        "not base64 at all",
        "AgEaaHR0cHM6Ly90b2tlbnMu+_mixed",
        "{",
        "{}",
        r#"{"i":"x","s64":"AAAA"}"#,
        r#"{"i":"x","i64":"eA","s64":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        r#"{"v":1,"i":"x","s64":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        r#"{"i":"x","s64":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","extra":1}"#,
        r#"{"i":"x","c":[{"i":"a","l":"loc"}],"s64":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        r#"{"identifier":"x","signature":"zz"}"#,
        r#"{"identifier":"x","signature":"00","caveats":[{"cid":"a","cl":"l"}]}"#,
        "AA",
        "Ag",
        "MDAwMA",
    ] {
        assert!(matches!(Token::decode(text), Err(Error::Malformed(_))), "{text:?}");
    }
    // Binary-level: wrong field order, duplicate fields, unknown field type, bad signature length,
    // VID not 72 bytes, non-minimal varint, first-party caveat with a location.
    let sig = [0u8; 32];
    let mut cases: Vec<Vec<u8>> = vec![
        [&[2, 2, 1, b'i', 1, 1, b'l', 0, 0, 6, 32][..], &sig].concat(),
        [&[2, 2, 1, b'i', 2, 1, b'j', 0, 0, 6, 32][..], &sig].concat(),
        [&[2, 2, 1, b'i', 3, 1, b'x', 0, 0, 6, 32][..], &sig].concat(),
        [&[2, 2, 1, b'i', 0, 0, 6, 31][..], &sig[..31]].concat(),
        [&[2, 2, 1, b'i', 0, 1, 1, b'l', 2, 1, b'c', 4, 3, 1, 2, 3, 0, 0, 6, 32][..], &sig].concat(),
        [&[2, 2, 0x81, 0, b'i', 0, 0, 6, 32][..], &sig].concat(),
        [&[2, 2, 1, b'i', 0, 1, 1, b'l', 2, 1, b'c', 0, 0, 6, 32][..], &sig].concat(),
        [&[2, 2, 1, b'i', 0, 0][..], &sig].concat(),
        [&[2, 1, 1, b'l', 0, 0, 6, 32][..], &sig].concat(),
    ];
    for (i, c) in cases.drain(..).enumerate() {
        assert!(matches!(Token::from_binary(&c), Err(Error::Malformed(_))), "case {i}");
    }
    // The well-formed version of those cases parses (so the tests above test the rule, not noise).
    let ok = [&[2, 1, 1, b'l', 2, 1, b'i', 0, 0, 6, 32][..], &sig].concat();
    assert!(Token::from_binary(&ok).is_ok());
}

// --- envelopes -----------------------------------------------------------------------------

fn envelope_fixture() -> (Fixture, String) {
    let f = fixture();
    let jwt = {
        let v = Verifier::with_keys(&f.keys);
        let verified = v.verify(&f.token, &[], &good_ctx()).unwrap();
        envelope::issue(
            &verified,
            &f.secret.envelope_key(),
            "https://tessera.test",
            datetime!(2027-06-01 0:00 UTC),
            Duration::minutes(5),
        )
        .unwrap()
    };
    (f, jwt)
}

fn decode(f: &Fixture, jwt: &str, ctx: &Context) -> tessera_core::Result<envelope::Claims> {
    let key = f.secret.envelope_key();
    let kid = f.kid;
    envelope::decode(jwt, |k| (*k == kid).then(|| key.clone()), "https://tessera.test", ctx)
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn envelope_round_trip_and_cap_enforcement() {
    let (f, jwt) = envelope_fixture();
    let claims = decode(&f, &jwt, &good_ctx()).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.jti, f.tid.to_string());
    assert_eq!(claims.exp - claims.iat, 300);
    assert_eq!(claims.cap.allow, Some(vec!["read".to_owned()]));
    assert_eq!(claims.cap.client_ip, Some(vec!["10.0.0.0/8".to_owned()]));
    assert!(matches!(decode(&f, &jwt, &good_ctx().operation("write")), Err(Error::CaveatNotMet { .. })));
    assert!(matches!(decode(&f, &jwt, &good_ctx().resource("x")), Err(Error::CaveatNotMet { .. })));
    let ip = good_ctx().client_ip("192.168.0.1".parse().unwrap());
    assert!(matches!(decode(&f, &jwt, &ip), Err(Error::CaveatNotMet { .. })));
    let late = Context { time: datetime!(2027-06-01 0:05 UTC), ..good_ctx() };
    assert!(matches!(decode(&f, &jwt, &late), Err(Error::CaveatNotMet { .. })));
}

#[test]
fn envelope_exp_never_outlives_the_token() {
    let f = fixture();
    let t = f.token.attenuate("time-before 2027-06-01T00:01:00Z").unwrap();
    let v = Verifier::with_keys(&f.keys);
    let verified = v.verify(&t, &[], &good_ctx()).unwrap();
    let now = datetime!(2027-06-01 0:00 UTC);
    let jwt =
        envelope::issue(&verified, &f.secret.envelope_key(), "https://tessera.test", now, Duration::hours(1))
            .unwrap();
    let claims = decode(&f, &jwt, &good_ctx()).unwrap();
    assert_eq!(claims.exp, datetime!(2027-06-01 0:01 UTC).unix_timestamp());
}

#[test]
fn envelope_forgeries_are_rejected() {
    let (f, jwt) = envelope_fixture();
    let parts: Vec<&str> = jwt.split('.').collect();
    let header: Value = serde_json::json!({"alg": "none", "typ": "JWT", "kid": f.kid.to_string()});
    let none = format!("{}.{}.", b64(&header), parts[1]);
    assert!(matches!(decode(&f, &none, &good_ctx()), Err(Error::Envelope(m)) if m.contains("none")));
    let hs512 = serde_json::json!({"alg": "HS512", "typ": "JWT", "kid": f.kid.to_string()});
    let other = format!("{}.{}.{}", b64(&hs512), parts[1], parts[2]);
    assert!(matches!(decode(&f, &other, &good_ctx()), Err(Error::Envelope(_))));

    // Widen the cap in the payload: the signature no longer matches.
    let mut claims: Value = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    claims["cap"]["allow"] = serde_json::json!(["read", "write"]);
    let widened = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert_eq!(decode(&f, &widened, &good_ctx().operation("write")), Err(Error::InvalidSignature));

    // Wrong key.
    let other_key = RootKey::new(&[1; 32]).unwrap().envelope_key();
    let r = envelope::decode(&jwt, |_| Some(other_key.clone()), "https://tessera.test", &good_ctx());
    assert_eq!(r, Err(Error::InvalidSignature));
    // Untrusted issuer.
    let key = f.secret.envelope_key();
    let r = envelope::decode(&jwt, |_| Some(key.clone()), "https://elsewhere.test", &good_ctx());
    assert!(matches!(r, Err(Error::Envelope(_))));
    for garbage in ["", "a.b", "a.b.c.d", "....", &"x".repeat(20_000)] {
        assert!(decode(&f, garbage, &good_ctx()).is_err(), "{garbage:.10}");
    }
}

#[test]
fn envelopes_refuse_foreign_tokens_and_application_caveats() {
    let f = fixture();
    let foreign = Token::mint(None, &f.secret, b"plain").unwrap();
    let v = Verifier::new();
    let verified = v.verify_with_key(&foreign, &f.secret, &[], &good_ctx()).unwrap();
    let now = datetime!(2027-06-01 0:00 UTC);
    let key = f.secret.envelope_key();
    assert!(envelope::issue(&verified, &key, "i", now, Duration::minutes(1)).is_err());

    let t = f.token.attenuate("account 7").unwrap();
    let v = Verifier::with_keys(&f.keys).satisfy_exact("account 7");
    let verified = v.verify(&t, &[], &good_ctx()).unwrap();
    assert!(matches!(
        envelope::issue(&verified, &key, "i", now, Duration::minutes(1)),
        Err(Error::Envelope(_))
    ));
}

#[test]
fn secrets_are_redacted_in_debug() {
    let f = fixture();
    let key_dbg = format!("{:?}", f.secret);
    assert!(key_dbg.contains("redacted") && !key_dbg.contains("9, 9"));
    let env_dbg = format!("{:?}", f.secret.envelope_key());
    assert!(env_dbg.contains("redacted"));
    let tok_dbg = format!("{:?}", f.token);
    assert!(tok_dbg.contains("redacted"));
    let sig_hex = hex::encode(f.token.signature());
    assert!(!tok_dbg.contains(&sig_hex[..8]));
    assert!(!format!("{:?}", f.keys).contains("9, 9"));
}

// --- security review regressions ---------------------------------------------------------------

/// Finding 6: a field type >= 256 must not alias a defined type by truncation (258 as 2 would be
/// a second, overriding identifier that re-encodes as a valid one).
#[test]
fn field_types_beyond_a_byte_are_rejected() {
    let sig = [0u8; 32];
    let cases: Vec<Vec<u8>> = vec![
        // Identifier under type 258 (varint 0x82 0x02).
        [&[2, 0x82, 0x02, 1, b'i', 0, 0, 6, 32][..], &sig].concat(),
        // A real identifier, then a hidden "identifier" under 258 that would override it.
        [&[2, 2, 1, b'i', 0x82, 0x02, 1, b'j', 0, 0, 6, 32][..], &sig].concat(),
        // Location under 257, then identifier under 258.
        [&[2, 0x81, 0x02, 1, b'l', 0x82, 0x02, 1, b'i', 0, 0, 6, 32][..], &sig].concat(),
        // A caveat id under 258 inside a caveat section.
        [&[2, 2, 1, b'i', 0, 0x82, 0x02, 1, b'c', 0, 0, 6, 32][..], &sig].concat(),
    ];
    for (i, c) in cases.iter().enumerate() {
        assert!(
            matches!(Token::from_binary(c), Err(Error::Malformed("unknown field type"))),
            "case {i}: {:?}",
            Token::from_binary(c).map(|t| t.identifier().to_vec())
        );
    }
    // And a real token carrying one is refused as text too.
    let f = fixture();
    let mut bin = f.token.to_binary().to_vec();
    // 02 01 <len> location...: rewrite the location's type 1 as the two-byte varint 257.
    assert_eq!(&bin[..2], &[2, 1]);
    bin.splice(1..2, [0x81, 0x02]);
    use base64::Engine;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bin);
    assert!(Token::decode(&text).is_err());
}

/// Finding 3: `resource` caveats with `.`/`..` segments (plain or percent-encoded) are
/// malformed, so a holder of `resource issues/*` cannot fold in `issues/../admin/*` and carry it
/// into an envelope's `cap`.
#[test]
fn resource_caveats_cannot_climb_out_with_dot_segments() {
    let f = fixture();
    let base = {
        let secret = RootKey::new(&[9u8; 32]).unwrap();
        let id = Identifier::new(f.kid, f.tid, "alice").unwrap();
        Token::mint_tessera(None, &secret, &id).unwrap().attenuate("resource issues/*").unwrap()
    };
    for evil in [
        "resource issues/../admin/*",
        "resource issues/%2e%2e/admin/*",
        "resource issues/.%2E/admin/*",
        "resource issues/./x",
    ] {
        assert!(matches!(base.attenuate(evil), Err(Error::MalformedCaveat { .. })), "{evil}");
        // Added without validation (attenuate_raw), it fails verification, direct or deferred.
        let t = base.attenuate_raw(evil.as_bytes()).unwrap();
        let ctx = Context::at(datetime!(2027-06-01 0:00 UTC)).resource("issues/../admin/x");
        assert!(verify(&f, &t, &[], &ctx).is_err(), "{evil}");
        let deferred = Context::deferring_scope(datetime!(2027-06-01 0:00 UTC));
        assert!(verify(&f, &t, &[], &deferred).is_err(), "{evil} verified for an envelope");
    }
    // An envelope whose cap names such a pattern is refused even with a valid signature.
    let (f, jwt) = envelope_fixture();
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: Value = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    claims["cap"]["resource"] = serde_json::json!(["issues/../admin/*"]);
    let input = format!("{}.{}", parts[0], b64(&claims));
    let sig = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(f.secret.envelope_key().expose_secret()).unwrap();
        m.update(input.as_bytes());
        m.finalize().into_bytes()
    };
    use base64::Engine;
    let forged = format!("{input}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig));
    let ctx = good_ctx().resource("issues/../admin/x");
    assert!(matches!(decode(&f, &forged, &ctx), Err(Error::Envelope(m)) if m.contains("segment")));
}
