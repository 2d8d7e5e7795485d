//! Prometheus metrics in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of the service.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) responses_2xx: AtomicU64,
    pub(crate) responses_4xx: AtomicU64,
    pub(crate) responses_5xx: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) verify_allowed: AtomicU64,
    pub(crate) verify_denied: AtomicU64,
    pub(crate) tokens_minted: AtomicU64,
    pub(crate) tokens_revoked: AtomicU64,
    pub(crate) discharges_issued: AtomicU64,
    pub(crate) envelopes_issued: AtomicU64,
    pub(crate) keys_rotated: AtomicU64,
}

impl Metrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn observe(&self, status: u16) {
        match status {
            200..=299 => Self::inc(&self.responses_2xx),
            400..=499 => Self::inc(&self.responses_4xx),
            500..=599 => Self::inc(&self.responses_5xx),
            _ => {}
        }
        if status == 429 {
            Self::inc(&self.rate_limited);
        }
    }

    /// Render all counters.
    pub fn render(&self, revoked: usize) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, labels: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (label, v) in labels {
                let _ = writeln!(out, "{name}{label} {}", v.load(Relaxed));
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
        let _ = writeln!(
            out,
            "# HELP tessera_revoked_tokens Revoked token families in memory.\n# TYPE tessera_revoked_tokens gauge\ntessera_revoked_tokens {revoked}"
        );
        out
    }
}
