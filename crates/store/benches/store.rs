//! Store benchmarks (plain harness; run with `make bench` or `cargo bench -p tessera-store`):
//!
//! 1. mint-record throughput with durable commits: one writer vs 8 concurrent writers;
//! 2. a store with `STORE_BENCH_N` (default 1,000,000) token records, all revoked: open time,
//!    resident-memory growth of the open, revocation check time, and verify time compared with
//!    an empty revocation set.

#![allow(missing_docs)] // bench binary
#![allow(clippy::unwrap_used)] // bench fixtures

use std::hint::black_box;
use std::time::{Duration, Instant};

use tessera_core::{Context, Identifier, KeyId, Token, TokenId, Verifier};
use tessera_store::{MasterKey, NewToken, Store};

fn record(kid: KeyId, subject: &str) -> NewToken {
    NewToken {
        tid: TokenId::generate().unwrap(),
        kid,
        subject: subject.into(),
        description: "bench".into(),
        expires: Some(2_000_000_000),
        caveats: vec!["allow read".into()],
        parent: None,
    }
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// Median of `rounds` timings of `n` calls, in ns per call.
fn median_ns(rounds: usize, n: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            per_op(t.elapsed(), n)
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn throughput(store: &Store, kid: KeyId, writers: usize, per_writer: usize) -> f64 {
    let t = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..per_writer {
                    store.record_token(record(kid, &format!("w{w}"))).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (writers * per_writer) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then run a quick smoke
    // version so the test suite checks this program without spending minutes in it.
    let benching = std::env::args().any(|a| a == "--bench");
    let default_n = if benching { 1_000_000 } else { 2_000 };
    let n: usize = std::env::var("STORE_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(default_n);
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();

    // 1. Durable mint-record throughput.
    let path = dir.path().join("throughput.redb");
    let store = Store::open(&path, master.clone()).unwrap();
    let kid = store.rotate().unwrap().kid;
    let per_writer = if benching { 300 } else { 10 };
    let one = throughput(&store, kid, 1, per_writer);
    let eight = throughput(&store, kid, 8, per_writer);
    println!("record_token durable, 1 writer:   {one:>9.0} records/s");
    println!("record_token durable, 8 writers:  {eight:>9.0} records/s  ({:.1}x)", eight / one);
    drop(store);

    // 2. A large store: n records, all revoked.
    let path = dir.path().join("large.redb");
    let store = Store::open(&path, master.clone()).unwrap();
    let kid = store.rotate().unwrap().kid;
    let (_, secret) = store.active_key().unwrap();
    let live_tid = TokenId::generate().unwrap();
    let live = Token::mint_tessera(None, &secret, &Identifier::new(kid, live_tid, "alice").unwrap()).unwrap();
    let ctx = Context::now();
    let empty_verify = median_ns(11, 20_000, || {
        black_box(Verifier::with_keys(&store).verify(&live, &[], &ctx).is_ok());
    });
    let t = Instant::now();
    let writers = 16;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut last = None;
                for _ in 0..n / writers {
                    let r = record(kid, &format!("bulk{w}"));
                    let tid = r.tid;
                    store.record_token(r).unwrap();
                    store.revoke_token(tid).unwrap();
                    last = Some(tid);
                }
                last.unwrap()
            })
        })
        .collect();
    let revoked_tid = handles.into_iter().map(|h| h.join().unwrap()).last().unwrap();
    let fill = t.elapsed();
    println!(
        "filled {} records + {} revocations in {:.1} s (16 writers)",
        store.revoked_count(),
        store.revoked_count(),
        fill.as_secs_f64()
    );
    drop(store);

    // Memory: a fresh process that only opens this store (its peak RSS), not growth in this
    // process, where freed memory is reused.
    let probe = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-store-open"))
        .arg(&path)
        .arg(master.to_hex().as_str())
        .output()
        .unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    println!("open in a fresh process: {}", String::from_utf8_lossy(&probe.stdout).trim());
    let t = Instant::now();
    let store = Store::open(&path, master).unwrap();
    let open = t.elapsed();
    assert_eq!(store.revoked_count(), n / writers * writers);
    println!("open with {} records / revocations: {:.3} s", store.revoked_count(), open.as_secs_f64());
    let miss = median_ns(11, 1_000_000, || {
        black_box(store.is_token_revoked(black_box(&live_tid)));
    });
    let hit = median_ns(11, 1_000_000, || {
        black_box(store.is_token_revoked(black_box(&revoked_tid)));
    });
    println!("is_token_revoked with {} revoked: hit {hit:.1} ns, miss {miss:.1} ns", store.revoked_count());
    let full_verify = median_ns(11, 20_000, || {
        black_box(Verifier::with_keys(&store).verify(&live, &[], &ctx).is_ok());
    });
    println!(
        "verify (store as key provider): {empty_verify:.0} ns with 0 revoked, {full_verify:.0} ns with {} revoked ({:.2}x)",
        store.revoked_count(),
        full_verify / empty_verify
    );
}
