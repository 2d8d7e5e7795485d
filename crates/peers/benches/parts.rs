//! Where verification time goes: decode (base64 vs parse), per-token key, each caveat check,
//! and verify of an already decoded token. Run: `cargo bench -p tessera-peers --bench parts`.
#![allow(missing_docs)] // criterion_group! generates undocumented functions
#![allow(clippy::unwrap_used)] // bench fixtures

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tessera_core::*;
fn benches(c: &mut Criterion) {
    let secret = RootKey::new(&[0x5a; 32]).unwrap();
    let kid = KeyId::from_bytes([1; 8]);
    let tid = TokenId::from_bytes([2; 16]);
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    let id = Identifier::new(kid, tid, "alice").unwrap();
    let mut t = Token::mint_tessera(Some("https://tessera.example"), &secret, &id).unwrap();
    for k in [
        "allow read",
        "resource issues/42",
        "time-after 2026-01-01T00:00:00Z",
        "time-before 2030-01-01T00:00:00Z",
        "client-ip 10.0.0.0/8",
    ] {
        t = t.attenuate(k).unwrap();
    }
    let text = t.encode();
    use base64::Engine;
    c.bench_function("b64_only", |b| {
        b.iter(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(black_box(&text)).unwrap())
    });
    let bin = t.to_binary().to_vec();
    c.bench_function("from_binary", |b| b.iter(|| Token::from_binary(black_box(&bin)).unwrap()));
    c.bench_function("decode", |b| b.iter(|| Token::decode(black_box(&text)).unwrap()));
    c.bench_function("token_key", |b| b.iter(|| keys.token_key(black_box(&kid), &tid)));
    let ctx = Context::now().operation("read").resource("issues/42").client_ip("10.1.2.3".parse().unwrap());
    for k in ["allow read", "resource issues/42", "time-after 2026-01-01T00:00:00Z", "client-ip 10.0.0.0/8"] {
        c.bench_function(k, |b| {
            b.iter(|| Predicate::parse(black_box(k.as_bytes())).unwrap().check(&ctx).is_ok())
        });
    }
    let t2 = Token::decode(&text).unwrap();
    let v = Verifier::with_keys(&keys);
    c.bench_function("verify_only", |b| b.iter(|| v.verify(black_box(&t2), &[], &ctx).is_ok()));
}
criterion_group!(g, benches);
criterion_main!(g);
