//! `rate-limit` and `once`: parsed strictly, reported in the restrictions (a tighter limit
//! added by a holder is one more that must hold), accepted only by a verifier that says the
//! service checks them; an offline verifier fails closed; envelopes refuse them.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use tessera_core::envelope::{self, Algorithm, SigningKey};
use tessera_core::{
    Context, Error, Identifier, KeyId, Predicate, RateLimit, RootKey, StaticKeys, Token, TokenId, Verifier,
};
use time::macros::datetime;
use time::Duration;

#[test]
fn budgets_parse_strictly_and_print_canonically() {
    for (text, count, period, canonical) in [
        ("100/1m", 100, 60, "100/1m"),
        ("5/s", 5, 1, "5/1s"),
        ("1000/d", 1000, 86_400, "1000/1d"),
        ("7/90s", 7, 90, "7/90s"),
        ("3/120m", 3, 7200, "3/2h"),
        ("1000000000/30d", 1_000_000_000, 30 * 86_400, "1000000000/30d"),
    ] {
        let r = RateLimit::parse(text).unwrap();
        assert_eq!((r.count, r.period), (count, period), "{text}");
        assert_eq!(r.to_string(), canonical);
        assert_eq!(RateLimit::parse(canonical), Some(r));
    }
    for bad in [
        "",
        "100",
        "0/1m",
        "100/0m",
        "100/1w",
        "-1/1m",
        "1/31d",
        "1000000001/1s",
        "1 /1m",
        "1/ 1m",
        "a/1m",
        "1/m1",
        "1/+1m",
        "99999999999/1s",
        "1/é",
        "1/1é",
        "é/1m",
        "1/",
    ] {
        assert_eq!(RateLimit::parse(bad), None, "{bad}");
    }
    assert!(matches!(Predicate::parse(b"rate-limit 100/1m"), Ok(Predicate::RateLimit(_))));
    assert!(matches!(Predicate::parse(b"rate-limit"), Err(Error::MalformedCaveat { .. })));
    assert!(matches!(Predicate::parse(b"rate-limit 10/1m 5/1s"), Err(Error::MalformedCaveat { .. })));
    assert!(matches!(Predicate::parse(b"once"), Ok(Predicate::Once)));
    assert!(matches!(Predicate::parse(b"once twice"), Err(Error::MalformedCaveat { .. })));
}

fn token(caveats: &[&str]) -> (StaticKeys, Token) {
    let secret = RootKey::new(&[3u8; 32]).unwrap();
    let kid = KeyId::from_bytes([1; 8]);
    let id = Identifier::new(kid, TokenId::from_bytes([2; 16]), "alice").unwrap();
    let mut t = Token::mint_tessera(None, &secret, &id).unwrap();
    for c in caveats {
        t = t.attenuate(c).unwrap();
    }
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret);
    (keys, t)
}

#[test]
fn offline_verifiers_fail_closed_and_the_service_gets_them_reported() {
    let ctx = Context::at(datetime!(2027-06-01 0:00 UTC)).operation("read");
    let (keys, t) =
        token(&["allow read", "rate-limit 100/1m", "rate-limit 10/1m", "rate-limit 100/1m", "once"]);
    let e = Verifier::with_keys(&keys).verify(&t, &[], &ctx).unwrap_err();
    assert!(matches!(&e, Error::CaveatNotMet { caveat, .. } if caveat == "rate-limit 100/1m"), "{e}");
    let v = Verifier::with_keys(&keys).service_caveats().verify(&t, &[], &ctx).unwrap();
    let r = v.restrictions();
    let limits: Vec<String> = r.rate_limits.iter().map(ToString::to_string).collect();
    assert_eq!(limits, ["100/1m", "10/1m"], "every distinct budget, the tighter one too");
    assert!(r.once);
    // Other caveats still bite with the flag.
    assert!(Verifier::with_keys(&keys)
        .service_caveats()
        .verify(&t, &[], &ctx.clone().operation("write"))
        .is_err());
    // A JWT cannot enforce them.
    let v = Verifier::with_keys(&keys)
        .service_caveats()
        .verify(&t, &[], &Context::deferring_scope(ctx.time))
        .unwrap();
    let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let e = envelope::issue_signed(&v, &key, "k", "iss", None, ctx.time, Duration::minutes(5)).unwrap_err();
    assert!(e.to_string().contains("only the service"), "{e}");
}

/// The chain-key cache gives the same answers as deriving, and forgets on `clear` and when full.
#[test]
fn the_chain_key_cache_agrees_with_derivation() {
    use tessera_core::{ChainKeyCache, KeyProvider};
    let (keys, t) = token(&["allow read"]);
    let id = t.tessera_identifier().unwrap();
    let cache = ChainKeyCache::new(2);
    let derive = || keys.token_key(&id.kid, &id.tid);
    let first = cache.get_or(&id.kid, &id.tid, derive).unwrap();
    let again = cache.get_or(&id.kid, &id.tid, || panic!("cached")).unwrap();
    assert_eq!(first, again);
    assert_eq!(Some(first.clone()), keys.chain_key(&id.kid, &id.tid));
    cache.clear();
    assert!(cache.get_or(&id.kid, &id.tid, || None).is_none(), "cleared: derives again");
    for i in 0..3u8 {
        cache.get_or(&id.kid, &TokenId::from_bytes([i; 16]), derive);
    }
    assert!(format!("{cache:?}").contains("1 entries"), "{cache:?}: started over when full");
}
