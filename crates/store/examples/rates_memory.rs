//! `rates_memory N [B]`: fill one node's rate counters with N families of B budgets each (default
//! 262,144 families of 1 budget: the default capacity) and print this process's RSS (now and peak). Run at
//! N = 0 and at N in fresh processes: the difference over N × B is what one counter costs
//! (docs/LIMITS.md).

use tessera_core::{RateLimit, TokenId};
use tessera_store::{MasterKey, RateTake, Store};

/// `VmHWM` (peak) or `VmRSS` (now) of this process, in KiB.
fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(262_144);
    let b: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("tessera.redb"), MasterKey::generate()?)?;
    store.set_rate_capacity(usize::MAX);
    let limits: Vec<RateLimit> = (1..=b).map(|k| RateLimit { count: 100 + k, period: 86_400 }).collect();
    let now = 86_400 * 20_000 + 100;
    for i in 0..n {
        let mut tid = [0u8; 16];
        tid[..4].copy_from_slice(&i.to_le_bytes());
        let taken = store.take_rates(TokenId::from_bytes(tid), &limits, now)?;
        assert!(matches!(taken, RateTake::Taken(_)), "{taken:?}");
    }
    assert_eq!(store.rate_counters(), n as usize * b as usize);
    println!(
        "families {n} budgets {b} counters {} rss_kib {} peak_rss_kib {}",
        store.rate_counters(),
        rss_kib("VmRSS:"),
        rss_kib("VmHWM:")
    );
    Ok(())
}
