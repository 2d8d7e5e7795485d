//! `POST /v1/discharge`: a discharge for this service's own `not-revoked` ticket.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tessera_core::Token;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::http::problem::ApiError;
use crate::http::text::b64_decode;
use crate::state::AppState;
use crate::ticket;

type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DischargeRequest {
    ticket: String,
}

pub(crate) async fn discharge(
    state: web::Data<AppState>,
    body: web::Json<DischargeRequest>,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let raw = b64_decode(&body.ticket)
        .ok_or_else(|| ApiError::bad_request("ticket must be the caveat id in base64url"))?;
    let kid = ticket::kid_of(&raw).ok_or_else(|| ApiError::bad_request("not a Tessera discharge ticket"))?;
    let secret = state
        .store
        .verifying_key(&kid)
        .ok_or_else(|| ApiError::forbidden(format!("key {kid} is revoked or unknown")))?;
    let t = ticket::open(&raw, &secret).ok_or_else(|| ApiError::bad_request("ticket does not open"))?;
    if t.condition != ticket::NOT_REVOKED {
        return Err(ApiError::bad_request(format!("unknown ticket condition \"{}\"", t.condition)));
    }
    if state.store.is_token_revoked(&t.tid) {
        return Err(ApiError::forbidden(format!("token {} is revoked", t.tid)));
    }
    let expires = (OffsetDateTime::now_utc() + state.config.discharge_ttl)
        .replace_nanosecond(0)
        .map_err(ApiError::internal)?;
    let d = Token::discharge(Some(&state.discharge_location), &t.caveat_key, &raw)?
        .attenuate(&format!("time-before {}", expires.format(&Rfc3339).map_err(ApiError::internal)?))?;
    state.metrics.discharges_issued.inc();
    Ok(HttpResponse::Ok().json(json!({
        "discharge": d.encode(),
        "expires": expires.format(&Rfc3339).ok(),
        "tid": t.tid.to_string(),
        "kid": t.kid.to_string(),
    })))
}
