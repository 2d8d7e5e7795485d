//! What the service checks and records when a token is used successfully (on `/v1/verify` and
//! on management calls made with it): its `rate-limit` budgets (429 with `Retry-After` and the
//! `RateLimit` fields when one is spent), its single use (`once`), and its last use (in memory,
//! written in batches by the housekeeping thread).

use actix_web::dev::ServiceResponse;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest};
use tessera_core::{RateLimit, Restrictions, TokenId};
use tessera_store::{Actor, AuditKind, RateDecision, RateTake, Target};
use time::OffsetDateTime;

use crate::http::audit::note;
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::rfc3339;
use crate::state::AppState;

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

/// After a successful verification: take a use from every budget (all or none: a refusal spends
/// nothing), record a single use, note the use. The answer's headers, or why the use is refused.
/// May wait for the database (the single use is a durable write; budgets on a cluster lease from
/// a shared counter), so handlers call it on the blocking pool when [`needs_database`] says so.
///
/// On `/v1/verify` (the hot path builds nothing per request) a spent budget's audit entry names
/// the token verified, as actor and target, without the verifying service's address.
pub(crate) fn record(state: &AppState, r: &Restrictions) -> Result<Headers, ApiError> {
    let token = || Actor { subject: r.subject.clone(), tid: r.tid, ..Actor::default() };
    record_at(state, r, OffsetDateTime::now_utc().unix_timestamp(), &token)
}

/// `actor` is asked for only when the audit trail needs it (a budget spent for the first time in
/// its window): nothing is built for a use that is not refused.
fn record_at(
    state: &AppState,
    r: &Restrictions,
    now: i64,
    actor: &dyn Fn() -> Actor,
) -> Result<Headers, ApiError> {
    let Some(tid) = r.tid else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    if !r.rate_limits.is_empty() {
        let take = state.store.take_rates(tid, &r.rate_limits, now)?;
        let first_refusal = take.first();
        match take {
            RateTake::Taken(decisions) => out = headers(&decisions),
            RateTake::Spent(decisions) => {
                state.metrics.token_rate_limited.inc();
                let mut h = headers(&decisions);
                let spent = decisions.iter().filter(|d| !d.allowed).max_by_key(|d| d.reset);
                let (limit, reset) =
                    spent.map_or((String::new(), 1), |d| (d.limit.to_string(), d.reset.max(1)));
                // Once per token and window: the store says whether this refusal is the first.
                if first_refusal {
                    let target = Target { tid: Some(tid), ..Target::default() };
                    let reason = format!("budget {limit} spent");
                    note(state, AuditKind::BudgetExhausted, actor(), target, Some(&reason), None);
                }
                h.push(("Retry-After", reset.to_string()));
                return Err(ApiError::token_rate_limited(format!(
                    "this token's budget of {limit} is spent; it refills in {reset} s"
                ))
                .with_headers(h));
            }
            RateTake::TooManyBudgets { adding, limit, .. } if adding > limit => {
                return Err(ApiError::forbidden(format!(
                    "too many distinct budgets: this token carries {adding} distinct rate-limit budgets, \
                     and a token family holds at most {limit} at once"
                )));
            }
            RateTake::TooManyBudgets { held, adding, limit } => {
                return Err(ApiError::forbidden(format!(
                    "too many distinct budgets: a token family holds at most {limit} distinct rate-limit \
                     budgets at once; this family holds {held} and this token would add {adding}"
                )));
            }
            RateTake::Full { capacity } => {
                return Err(ApiError::unavailable(format!(
                    "this node holds its limit of {capacity} rate-limit counters; a token with a new \
                     budget is refused until some windows end"
                ))
                .with_headers(vec![("Retry-After", "60".to_owned())]));
            }
        }
    }
    if r.once {
        // A link's one use is its redemption: `link.redeem` in the same transaction (the store
        // writes no entry for the single use of any other token, so a verification writes none).
        let refused = match state.store.audited(&actor()).consume(tid) {
            Ok(None) => None,
            Ok(Some(at)) => Some(ApiError::unauthorized(format!(
                "this single-use token was used already ({})",
                rfc3339(at).unwrap_or_default()
            ))),
            Err(e) => Some(e.into()),
        };
        if let Some(e) = refused {
            // A refused use spends no budget. (Should the give-back fail, the unit stays taken:
            // the budget errs on the side of refusing.)
            let _ = state.store.give_back_rates(tid, &r.rate_limits, now);
            return Err(e);
        }
    }
    state.store.note_use(tid, now);
    Ok(out)
}

/// The budgets a use of a request took, kept with the request until its answer is written
/// ([`settle`]).
#[derive(Clone)]
pub(crate) struct Taken {
    tid: TokenId,
    limits: Vec<RateLimit>,
    /// When they were taken (a give-back is for that window).
    now: i64,
    headers: Headers,
}

/// [`record`] for a request whose use counts only if its answer is a success (a management call):
/// the budgets it took are given back when it is not ([`settle`]), and its headers go on it when
/// it is.
pub(crate) fn record_for(state: &AppState, req: &HttpRequest, r: &Restrictions) -> Result<(), ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let by = || crate::http::audit::actor(state, req, r.subject.as_deref(), r.tid);
    let headers = record_at(state, r, now, &by)?;
    keep(req, r, now, headers);
    Ok(())
}

/// [`record_for`] on the blocking pool (for a request whose use may wait for the database).
pub(crate) async fn record_for_blocking(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    r: Restrictions,
) -> Result<(), ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let by = crate::http::audit::actor(state, req, r.subject.as_deref(), r.tid);
    let st = state.clone();
    let (r, headers) = blocking(move || record_at(&st, &r, now, &|| by.clone()).map(|h| (r, h))).await?;
    keep(req, &r, now, headers);
    Ok(())
}

fn keep(req: &HttpRequest, r: &Restrictions, now: i64, headers: Headers) {
    let (Some(tid), false) = (r.tid, r.rate_limits.is_empty()) else { return };
    let mut ext = req.extensions_mut();
    let taken = Taken { tid, limits: r.rate_limits.clone(), now, headers };
    match ext.get_mut::<Vec<Taken>>() {
        Some(all) => all.push(taken),
        None => {
            ext.insert(vec![taken]);
        }
    }
}

/// When the answer is a success, put on it the headers of the budgets the request took
/// ([`record_for`]); otherwise give them back, exactly: a use counts only when it succeeds.
pub(crate) async fn settle<B>(res: &mut ServiceResponse<B>) {
    let taken = res.request().extensions_mut().remove::<Vec<Taken>>();
    let Some(taken) = taken else { return };
    if res.status().is_success() {
        let Some(last) = taken.last() else { return };
        for (name, value) in &last.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            {
                res.headers_mut().insert(name, value);
            }
        }
        return;
    }
    let Some(state) = res.request().app_data::<web::Data<AppState>>().cloned() else { return };
    let shared = state.store.is_shared();
    let give_back = move || {
        for t in &taken {
            // Should it fail, the units stay taken: the budget errs on the side of refusing.
            let _ = state.store.give_back_rates(t.tid, &t.limits, t.now);
        }
    };
    if shared {
        // May return units to the shared counter.
        let _ = web::block(give_back).await;
    } else {
        give_back();
    }
}

/// Whether [`record`] may wait for the database for these restrictions.
pub(crate) fn needs_database(state: &AppState, r: &Restrictions) -> bool {
    r.once || (!r.rate_limits.is_empty() && state.store.is_shared())
}
