//! What only the shared backend has: several stores (nodes) on one database, following each
//! other's writes through the change log; staleness and recovery when the database goes away;
//! connection errors at open; the schema guard.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use tessera_core::{Context, Identifier, Token, TokenId, Verifier};
use tessera_store::{Error, Freshness, Location, PostgresOptions, Store};
use tessera_testpg::PgServer;

fn open(url: &str, freshness: Freshness) -> Result<Store, Error> {
    let options = PostgresOptions { connect_timeout: Duration::from_secs(2), ..PostgresOptions::default() };
    Store::open_at(&Location::Postgres { url: url.into(), options }, master(), freshness)
}

fn mint(store: &Store) -> (Token, TokenId) {
    let (kid, secret) = store.active_key().unwrap();
    let new = new_token(store, "alice", None);
    let tid = new.tid;
    let token = Token::mint_tessera(None, &secret, &Identifier::new(kid, tid, "alice").unwrap()).unwrap();
    store.record_token(new).unwrap();
    (token, tid)
}

fn verifies(store: &Store, t: &Token) -> bool {
    Verifier::with_keys(store).verify(t, &[], &Context::now()).is_ok()
}

/// Wait until `cond` holds, at most `limit`; returns how long it took.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn nodes_follow_each_others_writes_within_a_second() {
    let url = pg().create_database();
    let a = open(&url, Freshness::default()).unwrap();
    let b = open(&url, Freshness::default()).unwrap();
    a.rotate().unwrap();
    // B learns the key from the change log, then verifies A's token.
    assert!(within(Duration::from_secs(1), || b.active_key().is_some()).is_some(), "key did not reach B");
    let (token, tid) = mint(&a);
    assert!(verifies(&b, &token));
    // Revoked on A: refused on B within a second (LISTEN/NOTIFY, polling as the fallback).
    a.revoke_token(tid).unwrap();
    assert!(!verifies(&a, &token), "the revoking node refuses at once");
    let took =
        within(Duration::from_secs(1), || !verifies(&b, &token)).expect("revocation did not reach B in 1 s");
    eprintln!("revocation reached the other node in {took:?}");
    // Rotation on B: A signs with the new key.
    let k2 = b.rotate().unwrap();
    assert!(within(Duration::from_secs(1), || a.active_key().map(|k| k.0) == Some(k2.kid)).is_some());
    assert_eq!(a.last_applied(), b.last_applied());
}

#[test]
fn exactly_one_of_several_nodes_creates_the_first_key() {
    let url = pg().create_database();
    let stores: Vec<Store> = (0..4).map(|_| open(&url, Freshness::default()).unwrap()).collect();
    let created: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> =
            stores.iter().map(|st| s.spawn(move || st.create_first_key().unwrap().is_some())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
    assert_eq!(stores[0].list_keys().unwrap().len(), 1);
}

/// The trap of DESIGN section 12: sequence values are not commit-ordered. Writers on two nodes
/// revoke concurrently; the log must have no gap, and a third node must end up with every one.
#[test]
fn the_change_log_is_gap_free_under_concurrent_writers() {
    let url = pg().create_database();
    let a = open(&url, Freshness::default()).unwrap();
    let b = open(&url, Freshness::default()).unwrap();
    let c = open(&url, Freshness::default()).unwrap();
    a.rotate().unwrap();
    within(Duration::from_secs(1), || b.active_key().is_some()).unwrap();
    let tids: Vec<TokenId> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let st = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    (0..15)
                        .map(|_| {
                            let (_, tid) = mint(st);
                            st.revoke_token(tid).unwrap();
                            tid
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let feed = a.revocations_after(0, 10_000).unwrap();
    assert_eq!(feed.len(), tids.len());
    let seqs: Vec<u64> = feed.iter().map(|r| r.seq).collect();
    // Entry 1 is the key; revocations follow without a gap.
    assert_eq!(seqs, (2..2 + tids.len() as u64).collect::<Vec<_>>());
    within(Duration::from_secs(2), || c.revoked_count() == tids.len()).expect("C missed revocations");
    assert!(tids.iter().all(|t| c.is_token_revoked(t)));
}

#[test]
fn without_the_database_a_node_goes_stale_then_recovers() {
    let mut server = PgServer::start();
    let url = server.create_database();
    let freshness = Freshness { max_staleness: Duration::from_secs(2) };
    let node = open(&url, freshness).unwrap();
    node.rotate().unwrap();
    let (token, _) = mint(&node);
    server.stop();
    // Verification goes on from memory until max-staleness...
    assert!(verifies(&node, &token));
    assert!(node.check_fresh().is_ok());
    // ...writes fail at once, cleanly, with nothing written...
    assert!(matches!(node.rotate(), Err(Error::Unavailable(_))));
    // ...then verification fails closed.
    within(Duration::from_secs(5), || node.check_fresh().is_err()).expect("never went stale");
    assert!(matches!(node.check_fresh(), Err(Error::Stale { .. })));
    assert!(!verifies(&node, &token), "a stale node must refuse");
    // The database comes back: the same store recovers without a restart.
    server.start_again();
    within(Duration::from_secs(5), || node.check_fresh().is_ok()).expect("did not recover");
    assert!(verifies(&node, &token));
    let k = node.rotate().expect("writes work again");
    assert_eq!(node.list_keys().unwrap().len(), 2);
    assert_eq!(node.active_key().unwrap().0, k.kid);
}

#[test]
fn bad_connections_and_schemas_are_clear_errors_at_open() {
    // Nothing listens on port 1.
    let started = Instant::now();
    let err = open("postgres://tessera:x@127.0.0.1:1/tessera", Freshness::default()).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // Wrong password.
    let url = pg().create_database().replace(tessera_testpg::PASSWORD, "wrong");
    let err = open(&url, Freshness::default()).unwrap_err();
    assert!(err.to_string().contains("password"), "{err}");
    // Not a URL.
    assert!(matches!(open("postgres://[", Freshness::default()), Err(Error::Database(_))));
    // A schema newer than this build: refused, nothing written.
    let url = pg().create_database();
    drop(open(&url, Freshness::default()).unwrap());
    pg().sql(&url, "UPDATE tessera_meta SET value = '\\x00000063'::bytea WHERE name = 'schema'");
    let err = open(&url, Freshness::default()).unwrap_err();
    assert!(matches!(err, Error::NewerSchema { found: 99, .. }), "{err}");
    assert_eq!(pg().sql(&url, "SELECT count(*) FROM tessera_keys").trim(), "0");
}

/// The service may drop its store on an async runtime's thread: the backend's own runtime must
/// not be shut down there by waiting (tokio panics if it is).
#[test]
fn a_store_can_be_dropped_on_an_async_runtime() {
    let url = pg().create_database();
    let store = open(&url, Freshness::default()).unwrap();
    store.rotate().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async move { drop(store) });
}

/// Three nodes spending one family's budget at once: the cluster never admits more than the
/// budget (each lease is taken from the shared counter without passing it), and refuses at most
/// one lease per node early.
#[test]
fn rate_budgets_hold_across_three_nodes() {
    use tessera_core::RateLimit;
    let url = pg().create_database();
    let nodes: Vec<Store> = (0..3).map(|_| open(&url, Freshness::default()).unwrap()).collect();
    nodes[0].rotate().unwrap();
    let tid = TokenId::generate().unwrap();
    let limit = RateLimit::parse("1000/1h").unwrap();
    // Well inside one window.
    let now = 3600 * 1000 + 10;
    let allowed: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .flat_map(|n| (0..2).map(move |_| n))
            .map(|n| {
                s.spawn(move || {
                    (0..400).filter(|_| n.take_rate(tid, limit, now).unwrap().allowed).count() as u64
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: u64 = allowed.iter().sum();
    let lease = limit.count / 100;
    assert!(total <= limit.count, "admitted {total} of a budget of {}", limit.count);
    assert!(total + 3 * lease >= limit.count, "admitted only {total}");
    // The next window starts afresh.
    assert!(nodes[1].take_rate(tid, limit, now + 3600).unwrap().allowed);
}

/// Issue 19, finding 4, across nodes: a use one node refuses because one budget is spent takes
/// nothing from the family's other budgets in the shared counters: another node finds them whole.
#[test]
fn a_refused_take_leaves_the_other_budgets_untouched_across_nodes() {
    use tessera_core::RateLimit;
    use tessera_store::RateTake;
    let url = pg().create_database();
    let (a, b) = (open(&url, Freshness::default()).unwrap(), open(&url, Freshness::default()).unwrap());
    let tid = TokenId::generate().unwrap();
    let (hour, day) = (RateLimit::parse("6/1h").unwrap(), RateLimit::parse("3/1d").unwrap());
    let now = 86_400 * 20_000 + 100;
    let taken = |r: RateTake| matches!(r, RateTake::Taken(_));
    let on_a: Vec<bool> = (0..6).map(|_| taken(a.take_rates(tid, &[hour, day], now).unwrap())).collect();
    assert_eq!(on_a, [true, true, true, false, false, false]);
    let on_b: Vec<bool> = (0..6).map(|_| taken(b.take_rates(tid, &[hour], now).unwrap())).collect();
    assert_eq!(on_b, [true, true, true, false, false, false], "6/1h had three uses left");
}

/// Issue 19, finding 3, across nodes: one family holds at most 8 distinct budgets in the shared
/// counters, however its uses are spread over nodes; a refused budget leaves no counter anywhere.
#[test]
fn a_familys_distinct_budgets_are_capped_across_nodes() {
    use tessera_core::RateLimit;
    use tessera_store::RateTake;
    let url = pg().create_database();
    let (a, b) = (open(&url, Freshness::default()).unwrap(), open(&url, Freshness::default()).unwrap());
    let tid = TokenId::generate().unwrap();
    let now = 86_400 * 20_000 + 100;
    let budget = |n: u64| RateLimit::parse(&format!("{n}/1h")).unwrap();
    for n in 1..=5 {
        assert!(matches!(a.take_rates(tid, &[budget(n)], now).unwrap(), RateTake::Taken(_)));
    }
    for n in 6..=8 {
        assert!(matches!(b.take_rates(tid, &[budget(n)], now).unwrap(), RateTake::Taken(_)));
    }
    assert_eq!(
        b.take_rates(tid, &[budget(9)], now).unwrap(),
        RateTake::TooManyBudgets { held: 8, adding: 1, limit: 8 }
    );
    assert_eq!(b.rate_counters(), 3, "no counter kept for the refused budget");
    let rows = pg().sql(&url, "SELECT count(*) FROM tessera_rates");
    assert_eq!(rows.trim(), "8");
    // Budgets the family holds still work on any node; after their windows, new ones do.
    assert!(matches!(b.take_rates(tid, &[budget(1)], now).unwrap(), RateTake::Spent(_)));
    assert!(matches!(b.take_rates(tid, &[budget(2)], now).unwrap(), RateTake::Taken(_)));
    assert!(matches!(b.take_rates(tid, &[budget(9)], now + 3600).unwrap(), RateTake::Taken(_)));
    assert_eq!(pg().sql(&url, "SELECT count(*) FROM tessera_rates").trim(), "1", "ended rows dropped");
}
