//! Session benchmarks (criterion; `cargo bench -p tessera-store --bench sessions`), redb and a
//! throwaway PostgreSQL with `fsync=on` in the same run:
//!
//! - `session_refresh/<backend>/rotation_1`: a rotating refresh of a session never refreshed
//!   before; `rotation_10000`: the same, of a session rotated 10,000 times first. A refresh must
//!   cost the same at any age (issue 25, goal 3).
//! - `session_end/<backend>/after_N`: revoking a session whose refresh token has been rotated N
//!   times (every refresh token is revoked: the work is linear in N, the walk visits each once).
//!
//! - `refresh at rotation 1 vs 10,000` (printed): the two interleaved, 20 rounds of 50 refreshes
//!   each, medians and their ratio. Criterion measures the two benchmarks minutes apart, so on a
//!   busy machine their difference is mostly the machine's; the interleaved ratio is the
//!   comparison.
//!
//! Sessions to end are built concurrently (their refreshes share commits) and only the timed
//! calls are measured. Under `cargo test --all-targets` (no `--bench`) a small smoke version runs.

#![allow(missing_docs)] // criterion_group! generates undocumented functions
#![allow(clippy::unwrap_used)] // a benchmark: any failure should be loud

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use tessera_core::{KeyId, SessionId, TokenId};
use tessera_store::{Freshness, Location, MasterKey, NewToken, PostgresOptions, SessionRecord, Store};
use tessera_testpg::PgServer;

const GRACE: Duration = Duration::from_secs(10);

fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn token(kid: KeyId) -> NewToken {
    NewToken {
        tid: TokenId::generate().unwrap(),
        kid,
        subject: "alice".into(),
        description: "refresh token".into(),
        expires: Some(2_000_000_000),
        caveats: vec!["allow sessions.refresh".into()],
        parent: None,
    }
}

fn record() -> SessionRecord {
    SessionRecord {
        subject: "alice".into(),
        app: None,
        created: 0,
        alg: "ES256".into(),
        access_ttl: 900,
        refresh_ttl: 72 * 3600,
        strategy: "refreshBoth".into(),
        caveats: vec!["allow read".into()],
        refresh_caveats: vec!["allow sessions.refresh".into()],
        claims: None,
        current: TokenId::from_bytes([0; 16]),
        first: TokenId::from_bytes([0; 16]),
        last_spent: None,
        revoked_at: None,
    }
}

/// A session rotated `n` times: its id and current refresh token.
fn rotated(store: &Store, kid: KeyId, n: usize) -> (SessionId, TokenId) {
    let sid = SessionId::generate().unwrap();
    let first = token(kid);
    store.create_session(sid, record(), first.clone()).unwrap();
    let mut current = first.tid;
    for _ in 0..n {
        let next = token(kid);
        store.refresh_session(sid, current, Some(next.clone()), GRACE).unwrap();
        current = next.tid;
    }
    (sid, current)
}

/// `count` sessions rotated `n` times each, built by up to 16 concurrent clients.
fn many(store: &Store, kid: KeyId, count: usize, n: usize) -> Vec<(SessionId, TokenId)> {
    let clients = count.clamp(1, 16);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                let mine = count / clients + usize::from(c < count % clients);
                s.spawn(move || (0..mine).map(|_| rotated(store, kid, n)).collect::<Vec<_>>())
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Mean seconds per refresh of `n` rotations of the session whose current token is `*current`.
fn rotate(store: &Store, kid: KeyId, sid: SessionId, current: &mut TokenId, n: usize) -> f64 {
    let next: Vec<NewToken> = (0..n).map(|_| token(kid)).collect();
    let t = Instant::now();
    for new in next {
        let tid = new.tid;
        store.refresh_session(sid, *current, Some(new), GRACE).unwrap();
        *current = tid;
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// A refresh of a young session against one of a session rotated `long` times, interleaved.
fn refresh_ratio(name: &str, store: &Store, kid: KeyId, long: usize, rounds: usize) {
    let (old, mut old_current) = rotated(store, kid, long);
    let (mut young, mut old_s) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (sid, mut current) = rotated(store, kid, 0);
        young.push(rotate(store, kid, sid, &mut current, 50));
        old_s.push(rotate(store, kid, old, &mut old_current, 50));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let (y, o) = (median(&mut young), median(&mut old_s));
    println!(
        "{name}: refresh at rotation 1-50: {y:.3} ms, at rotation {long}+: {o:.3} ms, ratio {:.2} (medians of {rounds} interleaved rounds of 50; goal 3 of issue 25: the same cost, a ratio near 1)",
        o / y
    );
}

fn sessions(c: &mut Criterion) {
    let (long, ends): (usize, &[usize]) = if benching() { (10_000, &[1_000, 10_000]) } else { (20, &[10]) };
    let pg = PgServer::start_durable();
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    let postgres = Location::Postgres { url: pg.create_database(), options: PostgresOptions::default() };
    let redb = Location::File(dir.path().join("sessions.redb"));
    for (name, location) in [("redb", redb), ("postgres", postgres)] {
        let store = Store::open_at(&location, master.clone(), Freshness::default()).unwrap();
        let kid = store.rotate().unwrap().kid;
        refresh_ratio(name, &store, kid, long, if benching() { 20 } else { 2 });

        let mut g = c.benchmark_group(format!("session_refresh/{name}"));
        g.bench_function("rotation_1", |b| {
            b.iter_custom(|iters| {
                let fresh = many(&store, kid, usize::try_from(iters).unwrap(), 0);
                let t = Instant::now();
                for (sid, first) in fresh {
                    store.refresh_session(sid, first, Some(token(kid)), GRACE).unwrap();
                }
                t.elapsed()
            })
        });
        let (sid, mut current) = rotated(&store, kid, long);
        g.bench_function(format!("rotation_{long}"), |b| {
            b.iter_custom(|iters| {
                let n = usize::try_from(iters).unwrap();
                Duration::from_secs_f64(rotate(&store, kid, sid, &mut current, n) * n as f64)
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("session_end/{name}"));
        // Each iteration ends a session built for it: as few as criterion allows.
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(100));
        for &n in ends {
            g.bench_function(format!("after_{n}"), |b| {
                b.iter_custom(|iters| {
                    let built = many(&store, kid, usize::try_from(iters).unwrap(), n);
                    let t = Instant::now();
                    for (sid, _) in built {
                        assert_eq!(store.revoke_session(sid).unwrap().len(), n + 1);
                    }
                    t.elapsed()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, sessions);
criterion_main!(benches);
