//! Prometheus metrics in the text exposition format.
//!
//! Counters are sharded per thread (cache-line padded), so workers on different cores never
//! contend on a counter; rendering sums the shards. The latency histogram is sharded the same way.

use std::cell::Cell;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

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
    /// Request durations by route template and status class.
    pub(crate) latency: Latency,
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
            "# HELP tessera_log_lines_dropped_total Log lines dropped because the log writer was behind.\n\
             # TYPE tessera_log_lines_dropped_total counter\ntessera_log_lines_dropped_total {}",
            crate::logging::dropped_lines()
        );
        let _ = writeln!(
            out,
            "# HELP tessera_audit_notes_dropped_total Audit entries of refusals not written because the audit writer was behind.\n\
             # TYPE tessera_audit_notes_dropped_total counter\ntessera_audit_notes_dropped_total {}",
            store.audit_dropped()
        );
        self.latency.render(&mut out);
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

/// Upper bounds of the latency buckets, in seconds: OpenTelemetry's defaults for
/// `http.server.request.duration` from 5 ms up, with 0.5, 1 and 2.5 ms below them (a verify is
/// answered in well under a millisecond).
pub(crate) const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BOUNDS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Buckets plus the one above the last bound.
const SLOTS: usize = LATENCY_BUCKETS.len() + 1;
/// 1xx to 5xx.
const CLASSES: usize = 5;
/// Distinct route labels held; the routes are the application's templates (a few dozen), so
/// this is never reached; past it, a route would count as [`UNMATCHED`].
pub(crate) const MAX_ROUTES: usize = 128;
/// The route label of requests no route served (404s, whatever their path): one label, so a
/// client cannot grow the label set.
pub(crate) const UNMATCHED: &str = "unmatched";

/// One thread's share of one route's histograms, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard {
    counts: [[AtomicU64; SLOTS]; CLASSES],
    sum_ns: [AtomicU64; CLASSES],
}

#[derive(Debug)]
struct Route {
    name: Box<str>,
    shards: Box<[Shard]>,
}

impl Route {
    fn new(name: &str) -> Route {
        Route { name: name.into(), shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }
}

/// OpenTelemetry's `http.server.request.duration` as a Prometheus histogram
/// (`http_server_request_duration_seconds`), by route template and status class: a fixed table
/// of routes found by hash without a lock, each with per-thread shards of atomic counters.
#[derive(Debug)]
pub(crate) struct Latency {
    routes: [OnceLock<Route>; MAX_ROUTES],
    unmatched: Route,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { routes: std::array::from_fn(|_| OnceLock::new()), unmatched: Route::new(UNMATCHED) }
    }
}

/// FNV-1a: a few dozen bytes of a route template, hashed on every request.
fn hash(text: &str) -> usize {
    let h = text
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h ^ (h >> 32)) as usize
}

impl Latency {
    fn route(&self, name: &str) -> &Route {
        if name == UNMATCHED {
            return &self.unmatched;
        }
        let start = hash(name);
        for i in 0..MAX_ROUTES {
            let slot = &self.routes[(start + i) % MAX_ROUTES];
            let route = slot.get_or_init(|| Route::new(name));
            if *route.name == *name {
                return route;
            }
        }
        &self.unmatched
    }

    /// Count one request of `route` (a template, or [`UNMATCHED`]) answered with `status`.
    pub(crate) fn observe(&self, route: &str, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, CLASSES) - 1;
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let slot = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(SLOTS - 1);
        let shard = &self.route(route).shards[shard()];
        shard.counts[class][slot].fetch_add(1, Relaxed);
        shard.sum_ns[class].fetch_add(ns, Relaxed);
    }

    fn render(&self, out: &mut String) {
        let name = "http_server_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of HTTP server requests (OpenTelemetry http.server.request.duration), \
             by route template and status class.\n# TYPE {name} histogram"
        );
        let mut routes: Vec<&Route> =
            self.routes.iter().filter_map(OnceLock::get).chain([&self.unmatched]).collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        for route in routes {
            for class in 0..CLASSES {
                let mut counts = [0u64; SLOTS];
                let mut sum_ns = 0u64;
                for shard in route.shards.iter() {
                    for (c, a) in counts.iter_mut().zip(&shard.counts[class]) {
                        *c += a.load(Relaxed);
                    }
                    sum_ns = sum_ns.wrapping_add(shard.sum_ns[class].load(Relaxed));
                }
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let labels = format!(
                    "route=\"{}\",status_class=\"{}xx\"",
                    route.name.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"),
                    class + 1
                );
                let mut cumulative = 0;
                for (le, c) in LATENCY_BUCKETS.iter().zip(counts) {
                    cumulative += c;
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_ns as f64 / 1e9);
                let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
            }
        }
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

    #[test]
    fn latency_by_route_and_class() {
        let l = Latency::default();
        l.observe("/v1/verify", 200, Duration::from_micros(300));
        l.observe("/v1/verify", 204, Duration::from_millis(3));
        l.observe("/v1/verify", 403, Duration::from_secs(20));
        l.observe(UNMATCHED, 404, Duration::from_micros(1));
        let mut out = String::new();
        l.render(&mut out);
        let v = r#"route="/v1/verify",status_class="2xx""#;
        assert!(
            out.contains(&format!("http_server_request_duration_seconds_bucket{{{v},le=\"0.0005\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("http_server_request_duration_seconds_bucket{{{v},le=\"0.005\"}} 2\n")),
            "{out}"
        );
        assert!(out.contains(&format!("http_server_request_duration_seconds_count{{{v}}} 2\n")), "{out}");
        assert!(out.contains(&format!("http_server_request_duration_seconds_sum{{{v}}} 0.0033\n")), "{out}");
        let d = r#"route="/v1/verify",status_class="4xx""#;
        assert!(
            out.contains(&format!("http_server_request_duration_seconds_bucket{{{d},le=\"10\"}} 0\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("http_server_request_duration_seconds_bucket{{{d},le=\"+Inf\"}} 1\n")),
            "{out}"
        );
        assert!(out.contains(r#"_count{route="unmatched",status_class="4xx"} 1"#), "{out}");
        assert!(!out.contains(r#"status_class="5xx""#), "no series before an observation: {out}");
    }

    #[test]
    fn route_labels_are_bounded() {
        let l = Latency::default();
        for i in 0..(MAX_ROUTES + 10) {
            l.observe(&format!("/r/{i}"), 200, Duration::from_millis(1));
        }
        let mut out = String::new();
        l.render(&mut out);
        let series =
            out.lines().filter(|l| l.starts_with("http_server_request_duration_seconds_count")).count();
        assert_eq!(series, MAX_ROUTES + 1, "the table's routes and the one unmatched label");
        assert!(out.contains(r#"_count{route="unmatched",status_class="2xx"} 10"#), "{out}");
    }
}
