//! Benchmarks only: see `benches/verify.rs`. Run with `make bench`.
//!
//! The token and request the examples measure, written once.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(clippy::expect_used)] // a benchmark fixture: fail loudly

use tessera_core::{Context, Identifier, KeyId, RootKey, StaticKeys, Token, TokenId};
use time::macros::datetime;

/// The five built-in caveat kinds, in the order the benchmarks attenuate with them.
pub const KINDS: [&str; 5] = [
    "allow read",
    "resource issues/42",
    "time-after 2026-01-01T00:00:00Z",
    "time-before 2030-01-01T00:00:00Z",
    "client-ip 10.0.0.0/8",
];

/// The benchmarks' root key, its key id, and a key provider holding it.
pub fn keys() -> (RootKey, KeyId, StaticKeys) {
    let secret = RootKey::new(&[0x5a; 32]).expect("key");
    let kid = KeyId::from_bytes([1; 8]);
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    (secret, kid, keys)
}

/// A token of `tid` for alice with the five [`KINDS`].
pub fn five_caveat_token(secret: &RootKey, kid: KeyId, tid: TokenId) -> Token {
    let id = Identifier::new(kid, tid, "alice").expect("id");
    let mut t = Token::mint_tessera(Some("https://tessera.example"), secret, &id).expect("mint");
    for c in KINDS {
        t = t.attenuate(c).expect("attenuate");
    }
    t
}

/// A request every [`KINDS`] caveat allows.
pub fn request() -> Context {
    Context::at(datetime!(2027-06-01 0:00 UTC))
        .operation("read")
        .resource("issues/42")
        .client_ip("10.1.2.3".parse().expect("ip"))
}
