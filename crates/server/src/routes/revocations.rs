//! `GET /v1/revocations`: the revocation feed.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tessera_store::{Revocation, RevocationTarget};

use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::rfc3339;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

fn revocation_view(r: &Revocation) -> serde_json::Value {
    let (kind, id) = match r.target {
        RevocationTarget::Token(tid) => ("token", tid.to_string()),
        RevocationTarget::Key(kid) => ("key", kid.to_string()),
    };
    json!({ "seq": r.seq, "at": rfc3339(r.at), "kind": kind, "id": id })
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
