//! `sessions_size [N] [redb|postgres]`: create N live sessions (default 1,000,000) through the
//! store's API, on redb and on a throwaway PostgreSQL (`fsync=on`), and print what they take on
//! disk per session (issue 25, goal 3; `make bench-sessions-size`, part of `make bench-store`).
//!
//! Each session is what `POST /v1/sessions` creates: one `create_session` call, which records
//! the session, its first refresh token and its `session.create` audit entry in one durable
//! transaction. Subjects are distinct, caveats and the description are the service's. Sessions are created by concurrent clients, so they share
//! commits: 16 clients on redb; on PostgreSQL 16 clients on each of three nodes (`Store`s with
//! their own pools and writers), as a cluster would.
//!
//! Sizes are measured after N/2 and after N sessions, above the store's size just after it was
//! created with one root key: the redb file's length; on PostgreSQL `pg_total_relation_size`
//! (heap, indexes, TOAST) of `tessera_sessions`, `tessera_tokens` and `tessera_audit`, and
//! `pg_database_size`.
//! Two sizes show whether the cost per session is constant. Then, on redb, what of the file is
//! in use (redb's own statistics) and its length once compacted (`Database::compact`, the
//! store closed).

#![allow(clippy::unwrap_used)] // a measurement: any failure should be loud

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tessera_core::{KeyId, SessionId, TokenId};
use tessera_store::{Freshness, Location, MasterKey, NewToken, PostgresOptions, SessionRecord, Store};
use tessera_testpg::PgServer;

/// Concurrent clients on each node.
const CLIENTS: usize = 16;
/// A refresh token's lifetime (the service's default, 72 hours).
const REFRESH_TTL: u64 = 72 * 3600;

/// Session `i` as the service would create it for user `i`: its record and first refresh token.
fn session(kid: KeyId, i: usize, now: i64) -> (SessionId, SessionRecord, NewToken) {
    let sid = SessionId::generate().unwrap();
    let subject = format!("user-{i:08}");
    let refresh_caveats = vec!["allow sessions.refresh".to_owned(), format!("resource sessions/{sid}")];
    let record = SessionRecord {
        subject: subject.clone(),
        app: None,
        created: 0,
        alg: "ES256".into(),
        access_ttl: 900,
        refresh_ttl: REFRESH_TTL,
        strategy: "refreshBoth".into(),
        caveats: vec!["allow read write".into(), "resource projects/*".into()],
        refresh_caveats: refresh_caveats.clone(),
        claims: None,
        current: TokenId::from_bytes([0; 16]),
        first: TokenId::from_bytes([0; 16]),
        last_spent: None,
        revoked_at: None,
    };
    let refresh = NewToken {
        tid: TokenId::generate().unwrap(),
        kid,
        subject,
        description: format!("refresh token of session {sid}"),
        expires: Some(now + REFRESH_TTL as i64),
        caveats: refresh_caveats,
        parent: None,
    };
    (sid, record, refresh)
}

/// Create sessions `from..to` with `CLIENTS` threads on each node; sessions per second.
fn create(nodes: &[Store], kid: KeyId, from: usize, to: usize) -> f64 {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let next = AtomicUsize::new(from);
    let t = Instant::now();
    std::thread::scope(|s| {
        for store in nodes {
            for _ in 0..CLIENTS {
                let next = &next;
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        break;
                    }
                    let (sid, record, refresh) = session(kid, i, now);
                    store.create_session(sid, record, refresh).unwrap();
                    if (i + 1) % 100_000 == 0 {
                        eprintln!("  {} sessions, {:.0} s", i + 1, t.elapsed().as_secs_f64());
                    }
                });
            }
        }
    });
    (to - from) as f64 / t.elapsed().as_secs_f64()
}

/// Bytes per session above a baseline, for a count of sessions.
fn per(bytes: u64, base: u64, count: usize) -> f64 {
    bytes.saturating_sub(base) as f64 / count as f64
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn redb(n: usize, master: &MasterKey) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let store = Store::open(&path, master.clone()).unwrap();
    let kid = store.rotate().unwrap().kid;
    let size = || std::fs::metadata(&path).unwrap().len();
    let base = size();
    let nodes = [store];
    println!("\n| redb, {CLIENTS} clients | sessions/s | file | file per session |\n|---|---|---|---|");
    let mut done = 0;
    for to in [n / 2, n] {
        let rate = create(&nodes, kid, done, to);
        done = to;
        let file = size();
        println!("| {to} sessions | {rate:.0} | {:.1} MiB | {:.0} bytes |", mib(file), per(file, base, to));
    }
    println!("(empty store with one root key: {base} bytes)");
    // What of the file holds data, and what it is once compacted (the store closed first).
    drop(nodes);
    let mut db = redb::Database::open(&path).unwrap();
    let tx = db.begin_write().unwrap();
    let stats = tx.stats().unwrap();
    tx.abort().unwrap();
    let used = stats.allocated_pages() * stats.page_size() as u64;
    println!(
        "in the file: pages in use {:.1} MiB ({:.0} B/session), keys and values {:.0} B/session, fragmentation {:.0} B/session",
        mib(used),
        per(used, 0, n),
        per(stats.stored_bytes(), 0, n),
        per(stats.fragmented_bytes(), 0, n)
    );
    let t = Instant::now();
    while db.compact().unwrap() {}
    drop(db);
    let file = size();
    println!(
        "compacted (redb Database::compact, {:.0} s): {:.1} MiB, {:.0} B/session",
        t.elapsed().as_secs_f64(),
        mib(file),
        per(file, base, n)
    );
}

fn postgres(n: usize, master: &MasterKey) {
    let pg = PgServer::start_durable();
    let url = pg.create_database();
    let open = || {
        let location = Location::Postgres { url: url.clone(), options: PostgresOptions::default() };
        Store::open_at(&location, master.clone(), Freshness::default()).unwrap()
    };
    let first = open();
    let kid = first.rotate().unwrap().kid;
    let nodes = [first, open(), open()];
    let sizes = || -> [u64; 4] {
        let out = pg.sql(
            &url,
            "SELECT pg_total_relation_size('tessera_sessions'), pg_total_relation_size('tessera_tokens'),
                    pg_total_relation_size('tessera_audit'), pg_database_size(current_database())",
        );
        let v: Vec<u64> = out.trim().split('|').map(|x| x.parse().unwrap()).collect();
        [v[0], v[1], v[2], v[3]]
    };
    let base = sizes();
    println!(
        "\n| PostgreSQL, 3 nodes x {CLIENTS} clients | sessions/s | tessera_sessions | tessera_tokens | sessions + tokens | tessera_audit | database |\n|---|---|---|---|---|---|---|"
    );
    let mut done = 0;
    for to in [n / 2, n] {
        let rate = create(&nodes, kid, done, to);
        done = to;
        let [s, t, a, d] = sizes();
        println!(
            "| {to} sessions | {rate:.0} | {:.1} MiB, {:.0} B/session | {:.1} MiB, {:.0} B/session | {:.0} B/session | {:.1} MiB, {:.0} B/session | {:.1} MiB, {:.0} B/session |",
            mib(s),
            per(s, base[0], to),
            mib(t),
            per(t, base[1], to),
            per(s + t, base[0] + base[1], to),
            mib(a),
            per(a, base[2], to),
            mib(d),
            per(d, base[3], to)
        );
    }
    println!("(empty store with one root key: database {} bytes)", base[3]);
    let largest = pg.sql(
        &url,
        "SELECT relname || ' ' || round(pg_total_relation_size(oid) / 1048576.0, 1) || ' MiB'
           FROM pg_class WHERE relkind = 'r' ORDER BY pg_total_relation_size(oid) DESC LIMIT 4",
    );
    println!("largest tables (with indexes and TOAST): {}", largest.trim().replace('\n', ", "));
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1_000_000, |a| a.parse().expect("N: a number of sessions"));
    assert!(n >= 2, "N: at least 2 sessions");
    let which = args.next().unwrap_or_default();
    let master = MasterKey::generate().unwrap();
    println!("{n} live sessions (measured at {} and {n})", n / 2);
    if which.is_empty() || which == "redb" {
        redb(n, &master);
    }
    if which.is_empty() || which == "postgres" {
        postgres(n, &master);
    }
}
