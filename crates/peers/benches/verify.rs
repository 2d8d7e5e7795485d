//! Verify, attenuate and envelope benchmarks, with the floor and a peer measured in the same run.
//!
//! - `verify/text/N`: decode token text + parse + chain + caveat checks, N caveats (ours).
//! - `verify/memo/N`: the same text again through a signature memo (caveats checked, no chain).
//! - `floor/chain/5`: the bare HMAC-SHA256 chain of the same 5-caveat token with the hmac crate
//!   (derive + 6 HMACs + constant-time compare), as DESIGN.md defines the floor.
//! - `floor/chain+token_key/5`: the same plus the per-token key derivation a Tessera token needs.
//! - `peer/macaroon_crate/5`: the `macaroon` crate deserializing and verifying the same token.
//! - `attenuate/text`, `envelope/issue`, `envelope/decode` (HS256), and `envelope/issue/es256`,
//!   `decode/es256`, `issue/eddsa`, `decode/eddsa`.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tessera_core::{
    envelope, Identifier, KeyId, RootKey, SignatureMemo, StaticKeys, Token, TokenId, Verifier,
};
use tessera_peers::{request, KINDS};
use time::macros::datetime;
use time::Duration;

#[derive(serde::Serialize, serde::Deserialize)]
struct JwtClaims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

struct Setup {
    secret: RootKey,
    kid: KeyId,
    tid: TokenId,
    keys: StaticKeys,
}

fn setup() -> Setup {
    let secret = RootKey::new(&[0x5a; 32]).expect("key");
    let kid = KeyId::from_bytes([1; 8]);
    let tid = TokenId::from_bytes([2; 16]);
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    Setup { secret, kid, tid, keys }
}

fn token(s: &Setup, n: usize) -> Token {
    token_with(s, n, None)
}

/// A 5-caveat token whose identifier carries custom claims (a user id, roles, an owner).
fn token_with(s: &Setup, n: usize, claims: Option<&str>) -> Token {
    let mut id = Identifier::new(s.kid, s.tid, "alice").expect("id");
    if let Some(c) = claims {
        id = id.with_claims(tessera_core::CustomClaims::from_json(c).expect("claims"));
    }
    let mut t = Token::mint_tessera(Some("https://tessera.example"), &s.secret, &id).expect("mint");
    for i in 0..n {
        t = t.attenuate(KINDS[i % KINDS.len()]).expect("attenuate");
    }
    t
}

type HmacSha256 = Hmac<Sha256>;

fn h(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("hmac");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The bare chain: derive + HMAC over id and each caveat + constant-time compare.
fn floor_chain(root: &[u8], id: &[u8], caveats: &[&[u8]], sig: &[u8; 32]) -> bool {
    let mut s = h(&h(b"macaroons-key-generator", root), id);
    for c in caveats {
        s = h(&s, c);
    }
    s.ct_eq(sig).into()
}

fn benches(c: &mut Criterion) {
    let s = setup();
    let ctx = request();
    let verifier = Verifier::with_keys(&s.keys);

    let mut g = c.benchmark_group("verify");
    for n in [1usize, 5, 20] {
        let text = token(&s, n).encode();
        assert!(verifier.verify(&Token::decode(&text).expect("decode"), &[], &ctx).is_ok());
        g.bench_function(format!("text/{n}"), |b| {
            b.iter(|| {
                let t = Token::decode(black_box(&text)).expect("decode");
                verifier.verify(&t, &[], &ctx).map(|_| ()).expect("verify")
            })
        });
    }
    // Custom claims: what they cost verification alone, and verification plus the folded
    // restrictions the HTTP answer is built from (where the claims are parsed).
    let claims = r#"{"uid":1234567,"roles":["editor","billing"],"org":{"id":42,"owner":"alice"}}"#;
    for (name, text) in [("5", token(&s, 5).encode()), ("5+claims", token_with(&s, 5, Some(claims)).encode())]
    {
        if name != "5" {
            g.bench_function(format!("text/{name}"), |b| {
                b.iter(|| {
                    let t = Token::decode(black_box(&text)).expect("decode");
                    verifier.verify(&t, &[], &ctx).map(|_| ()).expect("verify")
                })
            });
        }
        g.bench_function(format!("text+restrictions/{name}"), |b| {
            b.iter(|| {
                let t = Token::decode(black_box(&text)).expect("decode");
                let v = verifier.verify(&t, &[], &ctx).expect("verify");
                black_box(v.restrictions());
            })
        });
    }
    // The same texts presented again to a verifier with a signature memo: no decode, no chain;
    // every caveat still checked, the folded restrictions shared (compare `text+restrictions`).
    let memo = SignatureMemo::default();
    let remembering = Verifier::with_keys(&s.keys).memo(&memo);
    for n in [1usize, 5, 20] {
        let text = token(&s, n).encode();
        remembering.verify_text(&text, &ctx).expect("first verification");
        g.bench_function(format!("memo/{n}"), |b| {
            b.iter(|| black_box(remembering.verify_text(black_box(&text), &ctx).expect("verify")))
        });
    }
    assert_eq!(memo.len(), 3, "the benchmarked texts were hits");
    g.finish();

    // The same 5-caveat token for the floor and the peer.
    let t5 = token(&s, 5);
    let text5 = t5.encode();
    let token_key = s.secret.token_key(&s.tid);
    let id = t5.identifier().to_vec();
    let sig = *t5.signature();
    let cavs: Vec<&[u8]> = KINDS.iter().map(|k| k.as_bytes()).collect();
    assert!(floor_chain(token_key.expose_secret(), &id, &cavs, &sig));

    let mut g = c.benchmark_group("floor");
    g.bench_function("chain/5", |b| {
        b.iter(|| floor_chain(black_box(token_key.expose_secret()), &id, &cavs, &sig))
    });
    let mut tid_input = b"tessera/token/v1".to_vec();
    tid_input.extend_from_slice(s.tid.as_bytes());
    for n in [1usize, 5, 20] {
        let t = token(&s, n);
        let id = t.identifier().to_vec();
        let sig = *t.signature();
        let cavs: Vec<Vec<u8>> = (0..n).map(|i| KINDS[i % KINDS.len()].as_bytes().to_vec()).collect();
        let cavs: Vec<&[u8]> = cavs.iter().map(Vec::as_slice).collect();
        assert!(floor_chain(token_key.expose_secret(), &id, &cavs, &sig));
        g.bench_function(format!("chain+token_key/{n}"), |b| {
            b.iter(|| {
                let k = h(black_box(s.secret.expose_secret()), &tid_input);
                floor_chain(&k, &id, &cavs, &sig)
            })
        });
    }
    g.finish();

    macaroon::initialize().expect("sodium init");
    let mkey = macaroon::MacaroonKey::generate(token_key.expose_secret());
    let mut mv = macaroon::Verifier::default();
    for k in KINDS {
        mv.satisfy_exact(k.into());
    }
    let m = macaroon::Macaroon::deserialize(&text5).expect("peer reads our token");
    mv.verify(&m, &mkey, vec![]).expect("peer verifies our token");
    let mut g = c.benchmark_group("peer");
    g.bench_function("macaroon_crate/5", |b| {
        b.iter(|| {
            let m = macaroon::Macaroon::deserialize(black_box(&text5)).expect("decode");
            mv.verify(&m, &mkey, vec![]).expect("verify")
        })
    });
    // jsonwebtoken: an HS256 JWT with six claims (iss, sub, aud, iat, nbf, exp), decoded and
    // validated (signature, exp, nbf, iss, aud) into a struct.
    let jwt_key = [7u8; 32];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = JwtClaims {
        iss: "https://tessera.example".into(),
        sub: "alice".into(),
        aud: "api".into(),
        iat: now,
        nbf: now - 60,
        exp: 4_000_000_000,
    };
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&jwt_key),
    )
    .expect("encode");
    let dkey = jsonwebtoken::DecodingKey::from_secret(&jwt_key);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["api"]);
    validation.set_issuer(&["https://tessera.example"]);
    validation.validate_nbf = true;
    jsonwebtoken::decode::<JwtClaims>(&jwt, &dkey, &validation).expect("peer decodes");
    g.bench_function("jsonwebtoken_hs256/6", |b| {
        b.iter(|| jsonwebtoken::decode::<JwtClaims>(black_box(&jwt), &dkey, &validation).expect("decode"))
    });
    g.finish();

    let mut g = c.benchmark_group("attenuate");
    g.bench_function("text", |b| {
        b.iter(|| {
            Token::decode(black_box(&text5)).and_then(|t| t.attenuate("allow read")).map(|t| t.encode())
        })
    });
    g.finish();

    let ekey = s.secret.envelope_key();
    let now = datetime!(2027-06-01 0:00 UTC);
    let verified = verifier.verify(&t5, &[], &ctx).expect("verify");
    let jwt = envelope::issue(&verified, &ekey, "https://tessera.example", now, Duration::minutes(5))
        .expect("issue");
    let kid = s.kid;
    let mut g = c.benchmark_group("envelope");
    g.bench_function("issue", |b| {
        b.iter(|| envelope::issue(&verified, &ekey, "https://tessera.example", now, Duration::minutes(5)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            envelope::decode(
                black_box(&jwt),
                |k| (*k == kid).then(|| ekey.clone()),
                "https://tessera.example",
                &ctx,
            )
            .expect("decode")
        })
    });
    // Public-key envelopes (issue 10): the same token and claims, signed and checked with ES256
    // and EdDSA, beside the HS256 pair above.
    for alg in [envelope::Algorithm::Es256, envelope::Algorithm::EdDsa] {
        let key = envelope::SigningKey::generate(alg).expect("key");
        let public = key.public_key().expect("public");
        let pkid = public.thumbprint();
        let sign = || {
            envelope::issue_signed(
                &verified,
                &key,
                &pkid,
                "https://tessera.example",
                None,
                now,
                Duration::minutes(5),
            )
        };
        let signed = sign().expect("issue");
        let name = alg.name().to_ascii_lowercase();
        g.bench_function(format!("issue/{name}"), |b| b.iter(sign));
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                envelope::decode_with(
                    black_box(&signed),
                    |_| Ok(envelope::VerifyKey::Public(public)),
                    "https://tessera.example",
                    None,
                    &ctx,
                )
                .expect("decode")
            })
        });
    }
    g.finish();
}

criterion_group!(verify, benches);
criterion_main!(verify);
