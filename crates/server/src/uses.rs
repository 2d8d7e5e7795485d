//! What the service checks and records when a token is used successfully (on `/v1/verify` and
//! on management calls made with it): its `rate-limit` budgets (429 with `Retry-After` and the
//! `RateLimit` fields when one is spent), its single use (`once`), and its last use (in memory,
//! written in batches by the housekeeping thread).

use tessera_core::Restrictions;
use tessera_store::RateDecision;
use time::OffsetDateTime;

use crate::api::rfc3339;
use crate::problem::ApiError;
use crate::AppState;

/// Response headers describing the budgets (empty when the token has none).
pub(crate) type Headers = Vec<(&'static str, String)>;

/// The `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) and the older
/// `RateLimit-Limit/Remaining/Reset`, for the budget closest to running out.
fn headers(decisions: &[RateDecision]) -> Headers {
    let Some(d) = decisions.iter().min_by_key(|d| (d.allowed, d.remaining, d.reset)) else {
        return Vec::new();
    };
    let policy: Vec<String> =
        decisions.iter().map(|d| format!("{};w={}", d.limit.count, d.limit.period)).collect();
    vec![
        ("RateLimit-Policy", policy.join(", ")),
        ("RateLimit", format!("limit={}, remaining={}, reset={}", d.limit.count, d.remaining, d.reset)),
        ("RateLimit-Limit", d.limit.count.to_string()),
        ("RateLimit-Remaining", d.remaining.to_string()),
        ("RateLimit-Reset", d.reset.to_string()),
    ]
}

/// After a successful verification: count every budget (all must hold), record a single use,
/// note the use. The answer's headers, or why the use is refused. May wait for the database
/// (the single use is a durable write; budgets on a cluster lease from a shared counter), so
/// handlers call it on the blocking pool when [`needs_database`] says so.
pub(crate) fn record(state: &AppState, r: &Restrictions) -> Result<Headers, ApiError> {
    let Some(tid) = r.tid else { return Ok(Vec::new()) };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut out = Vec::new();
    if !r.rate_limits.is_empty() {
        let decisions = r
            .rate_limits
            .iter()
            .map(|l| state.store.take_rate(tid, *l, now))
            .collect::<Result<Vec<_>, _>>()?;
        out = headers(&decisions);
        if let Some(spent) = decisions.iter().find(|d| !d.allowed) {
            state.metrics.token_rate_limited.inc();
            let mut h = out;
            h.push(("Retry-After", spent.reset.max(1).to_string()));
            return Err(ApiError::token_rate_limited(format!(
                "this token's budget of {} is spent; it refills in {} s",
                spent.limit,
                spent.reset.max(1)
            ))
            .with_headers(h));
        }
    }
    if r.once {
        if let Some(at) = state.store.consume(tid)? {
            return Err(ApiError::unauthorized(format!(
                "this single-use token was used already ({})",
                rfc3339(at).unwrap_or_default()
            )));
        }
    }
    state.store.note_use(tid, now);
    Ok(out)
}

/// Whether [`record`] may wait for the database for these restrictions.
pub(crate) fn needs_database(state: &AppState, r: &Restrictions) -> bool {
    r.once || (!r.rate_limits.is_empty() && state.store.is_shared())
}
