//! Prometheus metrics in the text exposition format.
//!
//! Counters are sharded per thread (cache-line padded), so workers on different cores never
//! contend on a counter; rendering sums the shards.

use std::cell::Cell;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

const SHARDS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

/// A counter that threads increment without contending.
#[derive(Debug, Default)]
pub struct Counter([Padded; SHARDS]);

fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SLOT: Cell<usize> = const { Cell::new(usize::MAX) });
    SLOT.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Relaxed) % SHARDS);
        }
        s.get()
    })
}

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Relaxed)).sum()
    }
}

/// Counters of the service.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) responses_2xx: Counter,
    pub(crate) responses_4xx: Counter,
    pub(crate) responses_5xx: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) verify_allowed: Counter,
    pub(crate) verify_denied: Counter,
    pub(crate) tokens_minted: Counter,
    pub(crate) tokens_revoked: Counter,
    pub(crate) discharges_issued: Counter,
    pub(crate) envelopes_issued: Counter,
    pub(crate) keys_rotated: Counter,
    pub(crate) sessions_created: Counter,
    pub(crate) sessions_refreshed: Counter,
    pub(crate) sessions_reuse_detected: Counter,
    pub(crate) exchanges: Counter,
    pub(crate) token_rate_limited: Counter,
    /// Tokens expiring within each notice threshold, as of the last housekeeping round.
    expiring: std::sync::Mutex<Vec<(String, usize)>>,
}

impl Metrics {
    /// Set the expiring-token gauges (threshold label, count).
    pub(crate) fn set_expiring(&self, gauges: Vec<(String, usize)>) {
        if let Ok(mut g) = self.expiring.lock() {
            *g = gauges;
        }
    }

    pub(crate) fn observe(&self, status: u16) {
        match status {
            200..=299 => self.responses_2xx.inc(),
            400..=499 => self.responses_4xx.inc(),
            500..=599 => self.responses_5xx.inc(),
            _ => {}
        }
        if status == 429 {
            self.rate_limited.inc();
        }
    }

    /// Render all counters.
    pub fn render(&self, store: &tessera_store::Store) -> String {
        let revoked = store.revoked_count();
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, labels: &[(&str, &Counter)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (label, v) in labels {
                let _ = writeln!(out, "{name}{label} {}", v.get());
            }
        };
        counter(
            "tessera_http_responses_total",
            "HTTP responses by status class.",
            &[
                ("{class=\"2xx\"}", &self.responses_2xx),
                ("{class=\"4xx\"}", &self.responses_4xx),
                ("{class=\"5xx\"}", &self.responses_5xx),
            ],
        );
        counter("tessera_rate_limited_total", "Requests refused with 429.", &[("", &self.rate_limited)]);
        counter(
            "tessera_verifications_total",
            "Verify endpoint outcomes.",
            &[("{result=\"allowed\"}", &self.verify_allowed), ("{result=\"denied\"}", &self.verify_denied)],
        );
        counter("tessera_tokens_minted_total", "Tokens minted.", &[("", &self.tokens_minted)]);
        counter("tessera_tokens_revoked_total", "Token families revoked.", &[("", &self.tokens_revoked)]);
        counter("tessera_discharges_issued_total", "Discharges issued.", &[("", &self.discharges_issued)]);
        counter("tessera_envelopes_issued_total", "JWT envelopes issued.", &[("", &self.envelopes_issued)]);
        counter("tessera_keys_rotated_total", "Key rotations.", &[("", &self.keys_rotated)]);
        counter("tessera_sessions_created_total", "Sessions started.", &[("", &self.sessions_created)]);
        counter(
            "tessera_sessions_refreshed_total",
            "Session renewals answered.",
            &[("", &self.sessions_refreshed)],
        );
        counter(
            "tessera_sessions_reuse_detected_total",
            "Spent refresh tokens presented again after the grace window (each revoked its session).",
            &[("", &self.sessions_reuse_detected)],
        );
        counter("tessera_exchanges_total", "Login exchanges answered.", &[("", &self.exchanges)]);
        counter(
            "tessera_token_rate_limited_total",
            "Uses refused because a token's rate-limit budget was spent.",
            &[("", &self.token_rate_limited)],
        );
        let _ = writeln!(
            out,
            "# HELP tessera_tokens_expiring Unrevoked tokens expiring within each notice threshold.\n# TYPE tessera_tokens_expiring gauge"
        );
        for (within, n) in self.expiring.lock().map(|g| g.clone()).unwrap_or_default() {
            let _ = writeln!(out, "tessera_tokens_expiring{{within=\"{within}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tessera_revoked_tokens Revoked token families in memory.\n# TYPE tessera_revoked_tokens gauge\ntessera_revoked_tokens {revoked}"
        );
        let _ = writeln!(
            out,
            "# HELP tessera_follower_last_applied_seq Last change-log entry this node applied.\n\
             # TYPE tessera_follower_last_applied_seq gauge\ntessera_follower_last_applied_seq {}\n\
             # HELP tessera_follower_lag_seconds Seconds since the database last answered this node's follower (0 on redb).\n\
             # TYPE tessera_follower_lag_seconds gauge\ntessera_follower_lag_seconds {:.3}\n\
             # HELP tessera_follower_stale 1 while this node refuses to verify because the database is unheard past --max-staleness.\n\
             # TYPE tessera_follower_stale gauge\ntessera_follower_stale {}",
            store.last_applied(),
            store.follower_lag().as_secs_f64(),
            u8::from(store.check_fresh().is_err()),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_threads() {
        let c = std::sync::Arc::new(Counter::default());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc()))
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 4000);
    }
}
