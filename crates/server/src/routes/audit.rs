//! `/v1/audit`: the audit trail, read. `GET /v1/audit` (operation `audit.read`, the admin's: every
//! entry, filtered), `GET /v1/audit/mine` (operation `tokens.list` on the caller's own subject: the
//! entries that concern that subject, like GitHub's security log) and `GET /v1/audit/head` (the
//! chain head an outside copy pins). Entries name things (tids, kids, sids, applications) and never
//! carry token text or secrets: the store refuses to hold any.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use tessera_store::{AuditEntry, AuditFilter, AuditKind, Outcome};
use time::OffsetDateTime;

use crate::http::auth::authorize;
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::parse_time;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Entries in one answer when the query names no `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Most entries in one answer (a larger `limit` is read as this).
pub(crate) const MAX_LIMIT: usize = 1000;
/// Longest `actor` or `subject` filter (bytes): subjects are at most this long.
const MAX_FILTER: usize = 256;

/// The filters of `GET /v1/audit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Entries with an id above this (the previous answer's `next`).
    after: Option<u64>,
    limit: Option<usize>,
    /// The actor's subject, tid or issuer.
    actor: Option<String>,
    /// Entries that concern this subject (as actor, or as the owner of the target token).
    subject: Option<String>,
    kind: Option<String>,
    outcome: Option<String>,
    /// RFC 3339: entries at or after.
    since: Option<String>,
    /// RFC 3339: entries before.
    until: Option<String>,
}

/// The filters of `GET /v1/audit/mine`: those of [`AuditQuery`] but whose entries they concern.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MineQuery {
    after: Option<u64>,
    limit: Option<usize>,
    kind: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn millis(name: &str, t: Option<&str>) -> Result<Option<i64>> {
    let Some(t) = t else { return Ok(None) };
    let at = parse_time(t)
        .map_err(|_| ApiError::bad_request(format!("{name} \"{t:.64}\" is not an RFC 3339 time")))?;
    Ok(Some(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)))
}

fn bounded(name: &str, v: Option<String>) -> Result<Option<String>> {
    match v {
        Some(v) if v.is_empty() || v.len() > MAX_FILTER => {
            Err(ApiError::bad_request(format!("{name} must be 1 to {MAX_FILTER} bytes")))
        }
        v => Ok(v),
    }
}

/// The filter both reads share: cursor, limit, kind, outcome and time window, checked.
fn common(
    after: Option<u64>,
    limit: Option<usize>,
    kind: Option<&str>,
    outcome: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<AuditFilter> {
    let kind = match kind {
        None => None,
        Some(k) => Some(k.parse::<AuditKind>().map_err(|_| {
            ApiError::bad_request(format!(
                "kind \"{k:.64}\" is not an audit kind (see docs/AUDIT.md: token.mint, token.revoke, ...)"
            ))
        })?),
    };
    let outcome = match outcome {
        None => None,
        Some("success") => Some(Outcome::Success),
        Some("refused") => Some(Outcome::Refused),
        Some(o) => {
            return Err(ApiError::bad_request(format!("outcome \"{o:.32}\" must be success or refused")))
        }
    };
    Ok(AuditFilter {
        after: after.unwrap_or(0),
        limit: limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        kind,
        outcome,
        since_ms: millis("since", since)?,
        until_ms: millis("until", until)?,
        ..AuditFilter::default()
    })
}

fn time_ms(ms: i64) -> Value {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok();
    json!(at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()))
}

/// One entry as JSON (docs/AUDIT.md, "Entry format").
pub(crate) fn entry_view(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "seq": (e.seq > 0).then_some(e.seq),
        "at": time_ms(e.at_ms),
        "kind": e.kind.as_str(),
        "outcome": match e.outcome { Outcome::Success => "success", Outcome::Refused => "refused" },
        "actor": {
            "subject": e.actor.subject,
            "tid": e.actor.tid.map(|t| t.to_string()),
            "issuer": e.actor.issuer,
            "address": e.actor.address,
            "request_id": e.actor.request_id,
            "user_agent": e.actor.user_agent,
        },
        "target": {
            "tid": e.target.tid.map(|t| t.to_string()),
            "kid": e.target.kid,
            "sid": e.target.sid.map(|s| s.to_string()),
            "app": e.target.app,
        },
        "reason": e.reason,
        "detail": e.detail,
    })
}

/// The entries `filter` passes. For a `viewer` (`/v1/audit/mine`), another subject's address,
/// request id and user agent are left out of entries it did not make (an admin acting on its
/// tokens, someone refused on one of them): it sees what was done, not where others are.
async fn answer(
    state: &web::Data<AppState>,
    filter: AuditFilter,
    viewer: Option<String>,
) -> Result<HttpResponse> {
    let after = filter.after;
    let st = state.clone();
    let mut entries = blocking(move || st.store.audit(&filter).map_err(ApiError::from)).await?;
    if let Some(viewer) = viewer {
        for e in entries.iter_mut().filter(|e| e.actor.subject.as_deref() != Some(viewer.as_str())) {
            e.actor.address = None;
            e.actor.request_id = None;
            e.actor.user_agent = None;
        }
    }
    // The cursor to poll with next: the last entry's id, or the same place when nothing is new.
    let next = entries.last().map_or(after, |e| e.id);
    let entries: Vec<Value> = entries.iter().map(entry_view).collect();
    Ok(HttpResponse::Ok().json(json!({ "entries": entries, "next": next })))
}

/// `GET /v1/audit`: every entry, filtered (the admin's, operation `audit.read`).
pub(crate) async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse> {
    authorize(&state, &req, "audit.read", None)?;
    let q = query.into_inner();
    let mut filter = common(
        q.after,
        q.limit,
        q.kind.as_deref(),
        q.outcome.as_deref(),
        q.since.as_deref(),
        q.until.as_deref(),
    )?;
    filter.actor = bounded("actor", q.actor)?;
    filter.subject = bounded("subject", q.subject)?;
    answer(&state, filter, None).await
}

/// `GET /v1/audit/mine`: the entries that concern the caller's own subject (made with one of its
/// tokens, or about one of them), for whoever may list that subject's tokens.
pub(crate) async fn mine(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<MineQuery>,
) -> Result<HttpResponse> {
    let (_, subject) = authorize(&state, &req, "tokens.list", None)?;
    let q = query.into_inner();
    let mut filter = common(
        q.after,
        q.limit,
        q.kind.as_deref(),
        q.outcome.as_deref(),
        q.since.as_deref(),
        q.until.as_deref(),
    )?;
    filter.subject = Some(subject.clone());
    answer(&state, filter, Some(subject)).await
}

/// `GET /v1/audit/head`: the newest sealed entry's sequence number and chain MAC, to pin outside.
pub(crate) async fn head(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    authorize(&state, &req, "audit.read", None)?;
    let st = state.clone();
    let head = blocking(move || st.store.audit_head().map_err(ApiError::from)).await?;
    Ok(HttpResponse::Ok().json(match head {
        Some(h) => {
            let mac: String = h.mac.iter().map(|b| format!("{b:02x}")).collect();
            json!({ "seq": h.seq, "mac": mac, "pin": format!("{}:{mac}", h.seq) })
        }
        None => json!({ "seq": 0, "mac": null, "pin": null }),
    }))
}
