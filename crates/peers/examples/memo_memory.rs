//! `memo_memory N`: fill a signature memo with N distinct remembered 5-caveat tokens (each with a
//! 250-byte kept rendering, about what `/v1/verify` keeps) and print this process's peak RSS.
//! Run at N = 0 and N = 16,384 (the default bound) in fresh processes: the difference over N is
//! what one entry costs (`docs/BENCHMARKS.md`).

use tessera_core::{SignatureMemo, TokenId, Verifier};
use tessera_peers::{five_caveat_token, keys, request};

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
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(16_384);
    let (secret, kid, keys) = keys();
    let ctx = request();
    let memo = SignatureMemo::new(usize::MAX, usize::MAX);
    let verifier = Verifier::with_keys(&keys).memo(&memo);
    for i in 0..n {
        let mut tid = [0u8; 16];
        tid[..4].copy_from_slice(&i.to_le_bytes());
        let text = five_caveat_token(&secret, kid, TokenId::from_bytes(tid)).encode();
        let v = verifier.verify_text(&text, &ctx).expect("verify");
        v.rendered(|_| Ok::<_, ()>(vec![b'x'; 250])).expect("render");
    }
    assert_eq!(memo.len(), n as usize);
    println!("entries {n} peak_rss_kib {}", peak_rss_kib());
}
