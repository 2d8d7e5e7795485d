//! Property tests: attenuation only narrows, serialization round-trips, parsers never panic.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use proptest::prelude::*;
use tessera_core::{envelope, Caveat, Context, RootKey, Token, Verifier};
use time::OffsetDateTime;

fn caveat() -> impl Strategy<Value = String> {
    let ops = prop::sample::subsequence(vec!["read", "write", "delete"], 1..=3).prop_map(|v| v.join(" "));
    let resources =
        prop::sample::subsequence(vec!["issues/42", "issues/*", "issues/7/*", "wiki/home", "wiki/*"], 1..=3)
            .prop_map(|v| v.join(" "));
    let nets = prop::sample::subsequence(
        vec!["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "192.168.0.0/16", "::1"],
        1..=3,
    )
    .prop_map(|v| v.join(" "));
    let year = 2025..2031i32;
    prop_oneof![
        ops.prop_map(|o| format!("allow {o}")),
        resources.prop_map(|r| format!("resource {r}")),
        nets.prop_map(|n| format!("client-ip {n}")),
        year.clone().prop_map(|y| format!("time-before {y}-01-01T00:00:00Z")),
        year.prop_map(|y| format!("time-after {y}-01-01T00:00:00Z")),
    ]
}

/// Caveats including resource patterns that try to climb out with dot segments.
fn hostile_caveat() -> impl Strategy<Value = String> {
    let names = vec![
        "issues/*",
        "issues/7/*",
        "issues/../admin/*",
        "issues/%2e%2e/admin/*",
        "issues/./7/*",
        "admin/*",
        "admin/x",
        "issues/7",
        "issues/.%2E/admin/x",
        "*",
        "issues/**",
    ];
    let resources = prop::sample::subsequence(names, 1..=3).prop_map(|v| v.join(" "));
    prop_oneof![
        3 => resources.prop_map(|r| format!("resource {r}")),
        1 => caveat(),
    ]
}

fn hostile_context() -> impl Strategy<Value = Context> {
    (
        context(),
        prop::sample::select(vec![
            "issues/7",
            "issues/7/1",
            "admin/x",
            "issues/../admin/x",
            "issues/%2e%2e/admin/x",
            "issues/7/../../admin/x",
            "issues/.%2E/admin/x",
            "issues/x",
            "*",
        ]),
    )
        .prop_map(|(ctx, res)| ctx.resource(res))
}

fn context() -> impl Strategy<Value = Context> {
    (
        prop::sample::select(vec!["read", "write", "delete", "admin"]),
        prop::sample::select(vec!["issues/42", "issues/7/1", "issues/8", "wiki/home", "wiki/a/b", "other"]),
        prop::sample::select(vec!["10.1.2.3", "10.1.9.9", "10.2.0.1", "192.168.4.4", "::1", "8.8.8.8"]),
        1_735_689_600i64..1_924_992_000i64,
    )
        .prop_map(|(op, res, ip, t)| {
            Context::at(OffsetDateTime::from_unix_timestamp(t).unwrap())
                .operation(op)
                .resource(res)
                .client_ip(ip.parse().unwrap())
        })
}

/// The parts covered by the signature: identifier, caveat ids and VIDs, signature.
type SignedParts = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, [u8; 32]);

fn signed_parts(t: &Token) -> SignedParts {
    let caveats = t
        .caveats()
        .map(|c| match c {
            Caveat::FirstParty(id) => (id.to_vec(), vec![]),
            Caveat::ThirdParty { id, vid, .. } => (id.to_vec(), vid.to_vec()),
        })
        .collect();
    (t.identifier().to_vec(), caveats, *t.signature())
}

fn key() -> RootKey {
    RootKey::new(&[3u8; 32]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// An attenuated token never accepts a context that its parent rejects, and the effective
    /// restrictions agree with the verifier on every context.
    #[test]
    fn attenuation_only_narrows(parent_caveats in prop::collection::vec(caveat(), 0..4), extra in caveat(), ctx in context()) {
        let key = key();
        let mut parent = Token::mint(None, &key, b"prop").unwrap();
        for c in &parent_caveats {
            parent = parent.attenuate(c).unwrap();
        }
        let child = parent.attenuate(&extra).unwrap();
        let v = Verifier::new();
        let parent_ok = v.verify_with_key(&parent, &key, &[], &ctx).is_ok();
        let child_result = v.verify_with_key(&child, &key, &[], &ctx);
        if child_result.is_ok() {
            prop_assert!(parent_ok, "child accepts what parent rejects: {extra}");
        }
        // The folded restrictions decide exactly as the caveats do.
        let unrestricted = Context::at(ctx.time);
        let all = Token::mint(None, &key, b"prop").unwrap();
        let verified = v.verify_with_key(&all, &key, &[], &unrestricted).unwrap();
        prop_assert!(verified.restrictions().check(&ctx).is_ok());
        let mut folded = tessera_core::Restrictions::default();
        for c in child.caveats() {
            if let Caveat::FirstParty(cid) = c {
                folded.add(&tessera_core::Predicate::parse(cid).unwrap());
            }
        }
        prop_assert_eq!(folded.check(&ctx).is_ok(), child_result.is_ok(), "{:?}", folded);
    }

    /// For every token (caveats added raw, so malformed and hostile ones too) and every context,
    /// checking the folded restrictions of a scope-deferred verification (what a JWT envelope
    /// carries) agrees with verifying the caveats directly: the envelope never allows more.
    #[test]
    fn folded_restrictions_agree_with_direct_verification(
        caveats in prop::collection::vec(hostile_caveat(), 0..5),
        ctx in hostile_context(),
    ) {
        let key = key();
        let mut t = Token::mint(None, &key, b"prop").unwrap();
        for c in &caveats {
            t = t.attenuate_raw(c.as_bytes()).unwrap();
        }
        let v = Verifier::new();
        let direct = v.verify_with_key(&t, &key, &[], &ctx).is_ok();
        let deferred = v.verify_with_key(&t, &key, &[], &Context::deferring_scope(ctx.time));
        match deferred {
            Ok(verified) => {
                let folded = verified.restrictions().check(&ctx).is_ok();
                prop_assert_eq!(folded, direct, "caveats {:?} ctx {:?} folded {:?}", caveats, ctx.resource, verified.restrictions());
            }
            Err(_) => prop_assert!(!direct, "deferred verification refused what direct allowed: {:?}", caveats),
        }
    }

    /// parse(serialize(t)) == t for V2 binary, base64 text and V2 JSON.
    #[test]
    fn serialization_round_trips(
        location in prop::option::of("[ -~]{0,40}"),
        identifier in prop::collection::vec(any::<u8>(), 0..64),
        caveats in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..48), any::<bool>(), "[a-z:/.]{0,20}"), 0..8),
    ) {
        let key = key();
        let mut t = Token::mint(location.as_deref(), &key, &identifier).unwrap();
        for (cid, third, loc) in &caveats {
            t = if *third {
                t.add_third_party_caveat(loc, &key, cid).unwrap()
            } else {
                t.attenuate_raw(cid).unwrap()
            };
        }
        let from_bin = Token::from_binary(t.to_binary()).unwrap();
        prop_assert_eq!(from_bin.to_binary(), t.to_binary());
        let from_text = Token::decode(&t.encode()).unwrap();
        prop_assert_eq!(from_text.to_binary(), t.to_binary());
        let from_json = Token::decode(&t.to_json()).unwrap();
        prop_assert_eq!(from_json.location(), t.location());
        prop_assert_eq!(from_json.identifier(), t.identifier());
        prop_assert!(from_json.caveats().eq(t.caveats()));
        prop_assert_eq!(from_json.signature(), t.signature());
    }

    /// Arbitrary bytes never panic the binary parser.
    #[test]
    fn binary_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Token::from_binary(&bytes);
        let mut v2 = vec![2u8];
        v2.extend_from_slice(&bytes);
        let _ = Token::from_binary(&v2);
    }

    /// Arbitrary text never panics the text parsers (base64, JSON, V1, envelopes).
    #[test]
    fn text_parsers_never_panic(text in ".{0,400}", json in r#"\{"[a-z0-9]{0,3}":.{0,100}\}"#) {
        let _ = Token::decode(&text);
        let _ = Token::decode(&json);
        let ctx = Context::now();
        let _ = envelope::decode(&text, |_| None, "i", &ctx);
    }

    /// Mutating one byte of a valid token's binary never panics and never verifies, unless only
    /// the (unsigned) location changed.
    #[test]
    fn mutations_never_verify(at in any::<prop::sample::Index>(), with in any::<u8>()) {
        let key = key();
        let t = Token::mint(Some("loc"), &key, b"id").unwrap()
            .attenuate("allow read").unwrap()
            .add_third_party_caveat("tp", &key, b"cav").unwrap();
        let mut bin = t.to_binary().to_vec();
        let i = at.index(bin.len());
        prop_assume!(bin[i] != with);
        bin[i] = with;
        if let Ok(m) = Token::from_binary(&bin) {
            let d = m.bind(&Token::discharge(None, &key, b"cav").unwrap());
            let ctx = Context::now().operation("read");
            if Verifier::new().verify_with_key(&m, &key, &[d], &ctx).is_ok() {
                // Locations (of the token and of third-party caveats) are unsigned by the format's
                // design; every signed part must be unchanged.
                prop_assert_eq!(signed_parts(&m), signed_parts(&t));
            }
        }
    }
}
