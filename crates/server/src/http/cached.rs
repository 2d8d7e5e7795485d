//! Public documents (JWKS, discovery) answered with `Cache-Control`, a strong `ETag`, and 304.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::state::AppState;

/// A public document: `Cache-Control`, a strong `ETag`, and 304 when the client has it.
pub(crate) fn cached(state: &AppState, req: &HttpRequest, body: &Value) -> HttpResponse {
    let bytes = body.to_string();
    let digest = Sha256::digest(bytes.as_bytes());
    let etag: String =
        format!("\"{}\"", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>());
    let max_age = format!("public, max-age={}", state.config.jwks_max_age.as_secs());
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    res.insert_header((header::CACHE_CONTROL, max_age)).insert_header((header::ETAG, etag));
    if fresh {
        res.finish()
    } else {
        res.content_type("application/json").body(bytes)
    }
}
