//! `make bench-grow` (issue 24, "Done when"): how long moving and backing up a 100,000-revocation
//! store takes.
//!
//! Builds an embedded store with `GROW_REVOKED` (default 100,000) revoked tokens, each minted and
//! revoked through the audited write path as the service does it (1,000 families of a parent and
//! 99 children, each family revoked by revoking its parent), plus what a deployment holds beside
//! them: three root keys, two signing keys, an application, live tokens, sessions, and an audit
//! entry for every write. The fill runs 128 writers at once, so the store's group commit makes a
//! few hundred records one durable commit (not 100,000 commits).
//!
//! Then it times, each once: `migrate` file → PostgreSQL (a throwaway server started by
//! `tessera-testpg` with `fsync=on`), `migrate` PostgreSQL → a new file, `backup_to` of the
//! file while it is open, and `restore` of that snapshot; it prints each figure, the sizes, the
//! load average before and after, and checks that every copy holds every revocation.

#![allow(missing_docs)] // example binary
#![allow(clippy::unwrap_used)] // bench fixture: any failure should be loud

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tessera_core::envelope::Algorithm;
use tessera_core::{KeyId, SessionId, TokenId};
use tessera_store::{
    migrate, restore, Actor, AppRecord, Freshness, Location, MasterKey, NewToken, PostgresOptions, Progress,
    SessionRecord, Store,
};
use tessera_testpg::PgServer;

/// Children minted from each revoked parent (a family is 1 + this many tokens).
const CHILDREN: usize = 99;
/// Tokens left live beside the revoked ones.
const LIVE: usize = 2_000;
/// Sessions (each with its refresh token).
const SESSIONS: usize = 200;
/// Writers submitting at once (the group commit shares one durable commit among them).
const WRITERS: usize = 128;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn new_token(kid: KeyId, subject: &str, parent: Option<TokenId>) -> NewToken {
    NewToken {
        tid: TokenId::generate().unwrap(),
        kid,
        subject: subject.into(),
        description: "grow_timings".into(),
        expires: Some(4_000_000_000),
        caveats: vec!["allow read write".into(), "resource docs/*".into()],
        parent,
    }
}

fn actor(i: usize) -> Actor {
    Actor {
        subject: Some("admin".into()),
        address: Some(format!("10.0.{}.{}", i / 250 % 250, i % 250)),
        request_id: Some(format!("req-{i}")),
        user_agent: Some("tessera-cli/grow-timings".into()),
        ..Actor::default()
    }
}

/// Run `job(i)` for i in 0..n on [`WRITERS`] threads at once.
fn parallel(n: usize, job: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..WRITERS.min(n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                job(i);
            });
        }
    });
}

fn session_of(subject: &str) -> SessionRecord {
    SessionRecord {
        subject: subject.into(),
        app: Some("billing".into()),
        created: 0,
        alg: "ES256".into(),
        access_ttl: 900,
        refresh_ttl: 72 * 3600,
        strategy: "refreshBoth".into(),
        caveats: vec!["allow read".into()],
        refresh_caveats: vec!["allow sessions.refresh".into()],
        claims: Some(r#"{"team":"ops"}"#.into()),
        current: TokenId::from_bytes([0; 16]),
        first: TokenId::from_bytes([0; 16]),
        last_spent: None,
        revoked_at: None,
    }
}

/// Fill `store` with `families` revoked families (and the rest); returns the revocation count.
fn fill(store: &Store, families: usize) -> usize {
    let system = Actor::system();
    let audited = store.audited(&system);
    audited.rotate().unwrap();
    audited.rotate().unwrap();
    let kid = audited.rotate().unwrap().kid;
    store.ensure_signing_keys(Algorithm::Es256).unwrap();
    store.ensure_signing_keys(Algorithm::EdDsa).unwrap();
    let credential = new_token(kid, "app:billing", None);
    let app = AppRecord {
        name: "billing".into(),
        audience: "https://billing.example".into(),
        ttl: 300,
        algorithms: vec!["ES256".into()],
        own_keys: false,
        refresh_strategy: None,
        operations: Some(vec!["read".into()]),
        resources: None,
        credential: credential.tid,
        created: 0,
        disabled_at: None,
    };
    audited.register_app(app, credential).unwrap();
    // Parents, then their children, then the parents revoked (each revocation takes its family).
    let parents: Vec<TokenId> = (0..families).map(|_| TokenId::generate().unwrap()).collect();
    parallel(families, |i| {
        let mut t = new_token(kid, &format!("user{i}"), None);
        t.tid = parents[i];
        store.audited(&actor(i)).record_token(t).unwrap();
    });
    parallel(families * CHILDREN, |i| {
        let family = i / CHILDREN;
        let t = new_token(kid, &format!("user{family}"), Some(parents[family]));
        store.audited(&actor(i)).record_token(t).unwrap();
    });
    parallel(LIVE, |i| {
        store.audited(&actor(i)).record_token(new_token(kid, &format!("live{i}"), None)).unwrap();
    });
    parallel(SESSIONS, |i| {
        let mut refresh = new_token(kid, &format!("live{i}"), None);
        refresh.caveats = vec!["allow sessions.refresh".into()];
        let sid = SessionId::generate().unwrap();
        store.audited(&actor(i)).create_session(sid, session_of(&format!("live{i}")), refresh).unwrap();
    });
    parallel(families, |i| {
        store.audited(&actor(i)).revoke_token(parents[i]).unwrap();
    });
    store.revoked_count()
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    let d = t.elapsed();
    println!("{what:<44} {:>8.2} s", d.as_secs_f64());
    (out, d)
}

fn no_progress(_: Progress) {}

fn main() {
    let revoked: usize = std::env::var("GROW_REVOKED").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let families = (revoked / (CHILDREN + 1)).max(1);
    let master = MasterKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!("load average at start: {}", load_average());

    let source = dir.path().join("source.redb");
    let (count, fill_time) = timed("fill (128 writers, group commit)", || {
        let store = Store::open(&source, master.clone()).unwrap();
        fill(&store, families)
    });
    assert_eq!(count, families * (CHILDREN + 1), "revocations in the filled store");
    let audit = {
        let store = Store::open(&source, master.clone()).unwrap();
        store.audit_head().unwrap().map_or(0, |h| h.seq)
    };
    println!(
        "store: {count} revocations, {} live tokens, {SESSIONS} sessions, ~{audit} audit entries; file {} ({:.0} records/s fill)",
        LIVE + SESSIONS + 1,
        mib(file_size(&source)),
        (count + LIVE + 2 * SESSIONS) as f64 / fill_time.as_secs_f64()
    );

    let pg = PgServer::start_durable();
    let url = pg.create_database();
    let cluster = Location::Postgres { url: url.clone(), options: PostgresOptions::default() };
    let (report, _) = timed("migrate file -> PostgreSQL (fsync on)", || {
        migrate(&Location::File(source.clone()), &cluster, &master, &mut no_progress).unwrap()
    });
    let pg_bytes: u64 = pg.sql(&url, "SELECT pg_database_size(current_database())").trim().parse().unwrap();
    println!("  rows: {:?}; database {}", report.tables, mib(pg_bytes));

    let back = dir.path().join("back.redb");
    timed("migrate PostgreSQL -> new file", || {
        migrate(&cluster, &Location::File(back.clone()), &master, &mut no_progress).unwrap()
    });
    println!("  file {}", mib(file_size(&back)));

    let snapshot = dir.path().join("snapshot.redb");
    let store = Store::open(&source, master.clone()).unwrap();
    let (snap, _) = timed("backup_to (file store open)", || store.backup_to(&snapshot).unwrap());
    drop(store);
    println!("  snapshot {} (last change {})", mib(snap.bytes), snap.last_change);

    let restored = dir.path().join("restored/tessera.redb");
    let (put, _) = timed("restore (copy, check, rename)", || restore(&snapshot, &restored, &master).unwrap());
    println!("  restored {}", mib(put.bytes));

    for (name, location) in [
        ("PostgreSQL", cluster),
        ("file moved back", Location::File(back)),
        ("restored", Location::File(restored)),
    ] {
        let store = Store::open_at(&location, master.clone(), Freshness::default()).unwrap();
        assert_eq!(store.revoked_count(), count, "{name} lost revocations");
        assert_eq!(store.last_applied(), snap.last_change, "{name} has another change log");
    }
    println!("every copy holds all {count} revocations and the same change log");
    println!("load average at end: {}", load_average());
}
