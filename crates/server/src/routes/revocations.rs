//! `GET /v1/revocations`: the revocation feed; `GET /v1/revocations/stream`: the same entries
//! pushed as Server-Sent Events (the hub is `feed`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::feed::{revocation_view, Start};
use crate::http::auth::client_ip_of;
use crate::http::blocking;
use crate::http::guard::Head;
use crate::http::problem::ApiError;
use crate::state::AppState;
use actix_web::HttpMessage as _;

type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub(crate) async fn revocations(
    state: web::Data<AppState>,
    query: web::Query<FeedQuery>,
) -> Result<HttpResponse> {
    // A stale node answers at once rather than after waiting on the database it cannot reach.
    state.store.check_fresh()?;
    let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
    let after = query.after;
    let st = state.clone();
    let entries = blocking(move || st.store.revocations_after(after, limit).map_err(ApiError::from)).await?;
    let last = entries.last().map_or(after, |e| e.seq);
    Ok(HttpResponse::build(StatusCode::OK).json(json!({
        "revocations": entries.iter().map(revocation_view).collect::<Vec<_>>(),
        "last_seq": last,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    after: Option<u64>,
}

/// `GET /v1/revocations/stream`: every revocation this node applies, as Server-Sent Events, from
/// `Last-Event-ID` (or `?after=`; the header wins, as a reconnecting `EventSource` keeps the URL),
/// else from now. Same authorization as the polling feed (none: the feed says only which ids are
/// dead).
pub(crate) async fn stream(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse> {
    // An event stream never ends: only a client that asks for one gets it (a crawler or a
    // generic GET gets an answer that does not hold a stream slot).
    let accepts = req
        .headers()
        .get_all(actix_web::http::header::ACCEPT)
        .any(|v| v.to_str().is_ok_and(|v| v.contains("text/event-stream")));
    if !accepts {
        return Err(ApiError::bad_request("an event stream: send Accept: text/event-stream"));
    }
    state.store.check_fresh()?;
    let start = match req.headers().get("last-event-id") {
        Some(v) => Start::After(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID: a sequence number of the feed"))?,
        ),
        None => query.after.map_or(Start::Now, Start::After),
    };
    if req.extensions().get::<Head>().is_some() {
        // HEAD: the stream's headers and nothing held. Its body would never be sent, so a stream
        // behind it would not see its client leave and keep the slot.
        return Ok(HttpResponse::build(StatusCode::OK)
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("X-Accel-Buffering", "no"))
            .finish());
    }
    // Counted per client address by the trusted-proxy rules (`--max-streams-per-address`); the
    // Unix socket's requests without one together, as one client.
    let client = crate::http::auth::limit_key(&req, client_ip_of(&state, &req)?);
    let body = state.streams.subscribe(&state.store, start, client)?;
    Ok(HttpResponse::build(StatusCode::OK)
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        // nginx would otherwise hold the events in its buffer.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
