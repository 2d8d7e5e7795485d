//! `memo_memory N`: fill a signature memo with N distinct remembered 5-caveat tokens (each with a
//! 250-byte kept rendering, about what `/v1/verify` keeps) and print this process's peak RSS.
//! Run at N = 0 and N = 65,536 (the default bound) in fresh processes: the difference over N is
//! what one entry costs (`docs/BENCHMARKS.md`).

use tessera_core::{
    Context, Identifier, KeyId, RootKey, SignatureMemo, StaticKeys, Token, TokenId, Verifier,
};
use time::macros::datetime;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(65_536);
    let secret = RootKey::new(&[0x5a; 32]).expect("key");
    let kid = KeyId::from_bytes([1; 8]);
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    let ctx = Context::at(datetime!(2027-06-01 0:00 UTC))
        .operation("read")
        .resource("issues/42")
        .client_ip("10.1.2.3".parse().expect("ip"));
    let memo = SignatureMemo::new(usize::MAX, usize::MAX);
    let verifier = Verifier::with_keys(&keys).memo(&memo);
    for i in 0..n {
        let mut tid = [0u8; 16];
        tid[..4].copy_from_slice(&i.to_le_bytes());
        let id = Identifier::new(kid, TokenId::from_bytes(tid), "alice").expect("id");
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
        let v = verifier.verify_text(&t.encode(), &ctx).expect("verify");
        v.rendered(|_| Ok::<_, ()>(vec![b'x'; 250])).expect("render");
    }
    assert_eq!(memo.len(), n as usize);
    println!("entries {n} peak_rss_kib {}", peak_rss_kib());
}
