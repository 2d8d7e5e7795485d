//! `verify_n N`: verify one 5-caveat token from its text N times, for instruction counts that do
//! not move with machine noise: `valgrind --tool=callgrind` at N = 0 and N = 1000, the difference
//! divided by 1000 is one verification (`make bench-instructions`).
//!
//! `verify_n N memo`: the same through a signature memo (the first call computes the chain, the
//! others are hits).

use tessera_core::{
    Context, Identifier, KeyId, RootKey, SignatureMemo, StaticKeys, Token, TokenId, Verifier,
};
use time::macros::datetime;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let with_memo = std::env::args().nth(2).as_deref() == Some("memo");
    let secret = RootKey::new(&[0x5a; 32]).expect("key");
    let kid = KeyId::from_bytes([1; 8]);
    let id = Identifier::new(kid, TokenId::from_bytes([2; 16]), "alice").expect("id");
    let mut t = Token::mint_tessera(Some("https://tessera.example"), &secret, &id).expect("mint");
    for c in [
        "allow read",
        "resource issues/42",
        "time-after 2026-01-01T00:00:00Z",
        "time-before 2030-01-01T00:00:00Z",
        "client-ip 10.0.0.0/8",
    ] {
        t = t.attenuate(c).expect("attenuate");
    }
    let text = t.encode();
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret);
    let ctx = Context::at(datetime!(2027-06-01 0:00 UTC))
        .operation("read")
        .resource("issues/42")
        .client_ip("10.1.2.3".parse().expect("ip"));
    let memo = SignatureMemo::default();
    let mut ok = 0;
    if with_memo {
        let verifier = Verifier::with_keys(&keys).memo(&memo);
        verifier.verify_text(&text, &ctx).expect("first verification");
        for _ in 0..n {
            ok += usize::from(verifier.verify_text(std::hint::black_box(&text), &ctx).is_ok());
        }
    } else {
        let verifier = Verifier::with_keys(&keys);
        for _ in 0..n {
            let t = Token::decode(std::hint::black_box(&text)).expect("decode");
            ok += usize::from(verifier.verify(&t, &[], &ctx).is_ok());
        }
    }
    assert_eq!(ok, n);
}
