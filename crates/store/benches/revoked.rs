//! The revocation set in memory (`make bench-store`; issue 25, goal 2):
//!
//! 1. memory and open time of a fresh process that only opens a store (`tessera-store-open`)
//!    with 0, 1,000,000 and 10,000,000 revocations, on redb and on PostgreSQL: bytes of peak
//!    RSS per revoked id above the empty store (goal: 40), seconds per million (goal: 1);
//! 2. criterion: `contains` (hit and miss) and a verification whose provider checks revocation
//!    in the previous implementation (`HashSet<TokenId>`) or in [`RevokedSet`], same run, with
//!    1,000,000 and 10,000,000 ids; the verify ratio new/old is printed (goal: at most 1.02).
//!
//! The redb stores are built once, by writing change-log entries straight into the file (the
//! store's `revocations` table, CBOR as the store writes it: open reads only the log, so records
//! would add nothing but minutes), and kept in `target/bench-stores/`; PostgreSQL's are made in
//! a throwaway server with one `INSERT .. SELECT` per run. Sizes: `REVOKED_BENCH_SIZES`
//! (comma-separated). Under `cargo test --all-targets` (no `--bench`) it runs a smoke version.

#![allow(missing_docs)] // bench binary
#![allow(clippy::unwrap_used)] // bench fixtures: any failure should be loud

use std::collections::HashSet;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use tessera_core::{Context, Identifier, KeyId, KeyProvider, Token, TokenId, TokenKey, Verifier};
use tessera_store::{Freshness, Location, MasterKey, PostgresOptions, RevokedSet, Store, SCHEMA_VERSION};
use tessera_testpg::PgServer;

const MASTER_HEX: &str = "4242424242424242424242424242424242424242424242424242424242424242";
/// The goals of issue 25.
const GOAL_BYTES_PER_ID: f64 = 40.0;
const GOAL_OPEN_S_PER_MILLION: f64 = 1.0;
const GOAL_VERIFY_RATIO: f64 = 1.02;
/// Probe runs per store (medians are reported).
const PROBES: usize = 3;

fn master() -> MasterKey {
    MasterKey::from_hex(MASTER_HEX).unwrap()
}

/// A deterministic source of ids (xorshift), so a cached store is the same every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn tid(&mut self) -> [u8; 16] {
        ((u128::from(self.next()) << 64) | u128::from(self.next())).to_le_bytes()
    }
}

/// A change-log entry as the store encodes it (`codec::StoredRevocation`).
#[derive(Serialize)]
struct StoredRevocation {
    at: i64,
    target: StoredTarget,
}

#[derive(Serialize)]
enum StoredTarget {
    Token([u8; 16]),
}

const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("revocations");

/// A redb store with a key and `n` revocations, built once and kept in `target/bench-stores/`.
fn redb_store(n: usize) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("bench-stores");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("revoked-{n}-schema{SCHEMA_VERSION}.redb"));
    let done = path.with_extension("done");
    if done.exists() {
        return path;
    }
    let _ = std::fs::remove_file(&path);
    eprintln!("building {} (once)", path.display());
    Store::open(&path, master()).unwrap().rotate().unwrap();
    let db = redb::Database::open(&path).unwrap();
    let mut seq = {
        let txn = db.begin_read().unwrap();
        let log = txn.open_table(CHANGES).unwrap();
        let last = log.last().unwrap().map_or(0, |(k, _)| k.value());
        last
    };
    let mut rng = Rng(0x5eed_0000 + n as u64);
    let mut left = n;
    let mut buf = Vec::new();
    while left > 0 {
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(CHANGES).unwrap();
            for _ in 0..left.min(500_000) {
                seq += 1;
                buf.clear();
                let entry = StoredRevocation { at: 1_700_000_000, target: StoredTarget::Token(rng.tid()) };
                ciborium::into_writer(&entry, &mut buf).unwrap();
                log.insert(seq, buf.as_slice()).unwrap();
                left -= 1;
            }
        }
        txn.commit().unwrap();
    }
    drop(db);
    std::fs::write(&done, b"").unwrap();
    path
}

/// A PostgreSQL database with a key and `n` revocations (random ids, from md5).
fn pg_store(pg: &PgServer, n: usize) -> String {
    let url = pg.create_database();
    let location = Location::Postgres { url: url.clone(), options: PostgresOptions::default() };
    let store = Store::open_at(&location, master(), Freshness::default()).unwrap();
    store.rotate().unwrap();
    drop(store);
    if n > 0 {
        pg.sql(
            &url,
            &format!(
                "INSERT INTO tessera_changes (seq, at, kind, id)
                   SELECT m.s + g, 0, 'token-revoked', decode(md5(g::text), 'hex')
                   FROM generate_series(1, {n}) g, (SELECT max(seq) AS s FROM tessera_changes) m;
                 UPDATE tessera_change_counter SET last_seq = (SELECT max(seq) FROM tessera_changes);"
            ),
        );
        pg.sql(&url, "VACUUM ANALYZE tessera_changes");
    }
    url
}

/// What one fresh process that only opened the store reported.
struct Probe {
    revoked: usize,
    open_s: f64,
    cpu_s: f64,
    peak_kib: f64,
}

fn probe(at: &str) -> Probe {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-store-open")).args([at, MASTER_HEX]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> f64 {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .parse()
            .unwrap()
    };
    Probe {
        revoked: field("revoked") as usize,
        open_s: field("open_s"),
        cpu_s: field("cpu_s"),
        peak_kib: field("peak_rss_kib"),
    }
}

/// Median open time, CPU time and peak RSS of `PROBES` fresh processes.
fn probe_median(at: &str, n: usize) -> (f64, f64, f64) {
    let runs: Vec<Probe> = (0..PROBES).map(|_| probe(at)).collect();
    assert!(runs.iter().all(|p| p.revoked == n), "expected {n} revocations");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (
        median(runs.iter().map(|p| p.open_s).collect()),
        median(runs.iter().map(|p| p.cpu_s).collect()),
        median(runs.iter().map(|p| p.peak_kib).collect()),
    )
}

fn memory(sizes: &[usize]) {
    println!("\n| backend | revocations | open: wall, process CPU (medians of {PROBES}) | open per million (goal {GOAL_OPEN_S_PER_MILLION:.0} s) | peak RSS | bytes per id above empty | goal | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    let pg = PgServer::start();
    type Open<'a> = Box<dyn Fn(usize) -> String + 'a>;
    let backends: [(&str, Open<'_>); 2] = [
        ("redb", Box::new(|n| redb_store(n).to_str().unwrap().to_owned())),
        ("PostgreSQL", Box::new(|n| pg_store(&pg, n))),
    ];
    for (name, make) in backends {
        let (empty_s, empty_cpu, empty_kib) = probe_median(&make(0), 0);
        println!(
            "| {name} | 0 | {empty_s:.2} s, CPU {empty_cpu:.2} s | | {:.1} MiB | (baseline) | | |",
            empty_kib / 1024.0
        );
        for &n in sizes {
            let (open_s, cpu_s, peak_kib) = probe_median(&make(n), n);
            let per_id = (peak_kib - empty_kib) * 1024.0 / n as f64;
            // The whole open, fixed costs (connecting, keys) included, per million.
            let per_million = open_s / (n as f64 / 1e6);
            println!(
                "| {name} | {n} | {open_s:.2} s, CPU {cpu_s:.2} s | {per_million:.2} s ({:.2} of the goal; {:.2} s above empty) | {:.1} MiB | {per_id:.1} B | {GOAL_BYTES_PER_ID:.0} B | {:.2} |",
                per_million / GOAL_OPEN_S_PER_MILLION,
                (open_s - empty_s) / (n as f64 / 1e6),
                peak_kib / 1024.0,
                per_id / GOAL_BYTES_PER_ID
            );
        }
    }
}

/// The previous implementation (a `HashSet<TokenId>`) and the new one, behind the same lock.
trait Revoked: Sync {
    fn has(&self, tid: &TokenId) -> bool;
}

impl Revoked for HashSet<TokenId> {
    fn has(&self, tid: &TokenId) -> bool {
        self.contains(tid)
    }
}

impl Revoked for RevokedSet {
    fn has(&self, tid: &TokenId) -> bool {
        self.contains(tid)
    }
}

/// A key provider like the store's: keys from a store, revocation from `set` under a read lock,
/// then the staleness flag (as `Store::is_revoked`).
struct Provider<'a, S> {
    store: &'a Store,
    set: RwLock<S>,
    stale: AtomicBool,
}

impl<S: Revoked> KeyProvider for Provider<'_, S> {
    fn token_key(&self, kid: &KeyId, tid: &TokenId) -> Option<TokenKey> {
        self.store.token_key(kid, tid)
    }

    fn chain_key(&self, kid: &KeyId, tid: &TokenId) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        self.store.chain_key(kid, tid)
    }

    fn is_revoked(&self, tid: &TokenId) -> bool {
        self.set.read().map(|s| s.has(tid)).unwrap_or(true) || self.stale.load(Ordering::Acquire)
    }
}

/// Median of criterion's estimate for `group/id`, in ns (from its JSON).
fn criterion_median(group: &str, id: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("criterion").join(group).join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let point = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    point[..point.find([',', '}'])?].trim().parse().ok()
}

fn lookups(c: &mut Criterion, sizes: &[usize], benching: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("keys.redb"), master()).unwrap();
    let kid = store.rotate().unwrap().kid;
    let (_, secret) = store.active_key().unwrap();
    let live_tid = TokenId::generate().unwrap();
    let mut live =
        Token::mint_tessera(None, &secret, &Identifier::new(kid, live_tid, "alice").unwrap()).unwrap();
    for cav in ["allow read", "resource issues/*", "time-before 2099-01-01T00:00:00Z"] {
        live = live.attenuate(cav).unwrap();
    }
    let ctx = Context::now().operation("read").resource("issues/42");
    let mut ratios = Vec::new();
    for &n in sizes {
        let mut rng = Rng(0xabc + n as u64);
        let ids: Vec<TokenId> = (0..n).map(|_| TokenId::from_bytes(rng.tid())).collect();
        let hit = ids[n / 2];
        // Built as each implementation is at open: the old one grown by inserts, the new one loaded.
        let mut old: HashSet<TokenId> = HashSet::new();
        old.extend(ids.iter().copied());
        let mut new = RevokedSet::loading(n);
        for t in &ids {
            new.insert(*t);
        }
        new.finish_loading();
        drop(ids);
        let mut g = c.benchmark_group(format!("revoked-{n}"));
        if !benching {
            g.sample_size(10);
        }
        g.bench_function("contains-hit/hashset", |b| b.iter(|| black_box(old.contains(black_box(&hit)))));
        g.bench_function("contains-hit/revokedset", |b| b.iter(|| black_box(new.contains(black_box(&hit)))));
        g.bench_function("contains-miss/hashset", |b| {
            b.iter(|| black_box(old.contains(black_box(&live_tid))))
        });
        g.bench_function("contains-miss/revokedset", |b| {
            b.iter(|| black_box(new.contains(black_box(&live_tid))))
        });
        let old = Provider { store: &store, set: RwLock::new(old), stale: AtomicBool::new(false) };
        let new = Provider { store: &store, set: RwLock::new(new), stale: AtomicBool::new(false) };
        // Each pair back to back, twice, so drift on a shared machine falls on both.
        for round in ["a", "b"] {
            g.bench_function(BenchmarkId::new("verify-hashset", round), |b| {
                b.iter(|| black_box(Verifier::with_keys(&old).verify(&live, &[], &ctx).is_ok()))
            });
            g.bench_function(BenchmarkId::new("verify-revokedset", round), |b| {
                b.iter(|| black_box(Verifier::with_keys(&new).verify(&live, &[], &ctx).is_ok()))
            });
        }
        g.finish();
        let group = format!("revoked-{n}");
        let both = |kind: &str| -> Option<f64> {
            Some(
                criterion_median(&group, &format!("{kind}/a"))?
                    + criterion_median(&group, &format!("{kind}/b"))?,
            )
        };
        if let (Some(o), Some(w)) = (both("verify-hashset"), both("verify-revokedset")) {
            ratios.push((n, o / 2.0, w / 2.0));
        }
    }
    if benching {
        println!("\n| revoked | verify, HashSet (before) | verify, RevokedSet | ratio | goal |\n|---|---|---|---|---|");
        for (n, o, w) in ratios {
            println!("| {n} | {o:.0} ns | {w:.0} ns | {:.3} | ≤ {GOAL_VERIFY_RATIO} |", w / o);
        }
    }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = std::env::var("REVOKED_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| if benching { vec![1_000_000, 10_000_000] } else { vec![2_000] });
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    lookups(&mut c, &sizes, benching);
    memory(&sizes);
    c.final_summary();
}
