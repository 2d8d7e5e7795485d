//! Memory probe for the benchmarks: a fresh process that only opens a store (loading its keys
//! and its whole revocation set) and reports what that took, so the figure is the store's and
//! not what earlier work in the same process left behind.
//!
//! Usage: `tessera-store-open (PATH | postgres://...) MASTER_KEY_HEX`
//! Prints: `revoked=<n> open_s=<seconds> cpu_s=<user+system seconds> peak_rss_kib=<VmHWM>` (CPU
//! time because on a busy machine the wall clock measures the neighbours too).

#![allow(clippy::unwrap_used)] // a benchmark helper: any failure should be loud

use std::time::Instant;

use tessera_store::{Freshness, Location, MasterKey, PostgresOptions, Store};

fn main() {
    let mut args = std::env::args().skip(1);
    let at = args.next().expect("database path or postgres:// URL");
    let master = MasterKey::from_hex(&args.next().expect("master key hex")).unwrap();
    let location = if at.starts_with("postgres://") || at.starts_with("postgresql://") {
        Location::Postgres { url: at, options: PostgresOptions::default() }
    } else {
        Location::File(at.into())
    };
    let t = Instant::now();
    let store = Store::open_at(&location, master, Freshness::default()).unwrap();
    let open = t.elapsed();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB");
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks (100 a second on
    // Linux); counted after the command name, which may hold spaces.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    println!(
        "revoked={} open_s={:.3} cpu_s={:.2} peak_rss_kib={peak}",
        store.revoked_count(),
        open.as_secs_f64(),
        ticks as f64 / 100.0
    );
}
