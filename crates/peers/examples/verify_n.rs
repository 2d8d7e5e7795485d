//! `verify_n N`: verify one 5-caveat token from its text N times, for instruction counts that do
//! not move with machine noise: `valgrind --tool=callgrind` at N = 0 and N = 1000, the difference
//! divided by 1000 is one verification (`make bench-instructions`).
//!
//! `verify_n N memo`: the same through a signature memo (the first call computes the chain, the
//! others are hits).

use tessera_core::{SignatureMemo, Token, TokenId, Verifier};
use tessera_peers::{five_caveat_token, keys, request};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let with_memo = std::env::args().nth(2).as_deref() == Some("memo");
    let (secret, kid, keys) = keys();
    let text = five_caveat_token(&secret, kid, TokenId::from_bytes([2; 16])).encode();
    let ctx = request();
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
