//! `GET /health` and `GET /metrics`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

pub(crate) async fn health(state: web::Data<AppState>) -> HttpResponse {
    let store = &state.store;
    let active = store.active_key().is_some();
    let backend = if store.is_shared() { "postgres" } else { "redb" };
    let lag = store.follower_lag().as_secs_f64();
    match store.check_fresh() {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ok", "active_key": active, "backend": backend,
            "last_applied": store.last_applied(), "follower_lag_seconds": lag})),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({"status": "stale", "active_key": active,
            "backend": backend, "last_applied": store.last_applied(), "follower_lag_seconds": lag,
            "detail": e.to_string()})),
    }
}

pub(crate) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render(&state.store))
}
