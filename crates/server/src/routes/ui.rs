//! The token page (`/ui/`), built into the binary: sign in with a token, see, create and revoke
//! tokens; for the admin, any subject's tokens and the keys. Served with a strict Content
//! Security Policy (no inline script or style, no framing, API calls to this origin only).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use tessera_core::{Context, Verifier};

use crate::http::auth::bearer_token;
use crate::http::problem::ApiError;
use crate::state::AppState;
use crate::view::RestrictionsView;

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const ACTIVITY_JS: &str = include_str!("../../ui/activity.js");
const STYLE: &str = include_str!("../../ui/style.css");

/// The page's Content Security Policy.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                              img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub(crate) async fn root() -> HttpResponse {
    HttpResponse::Found().insert_header((header::LOCATION, "/ui/")).finish()
}

/// No icon: an empty answer instead of a 404 in the browser's console.
pub(crate) async fn favicon() -> HttpResponse {
    HttpResponse::NoContent().insert_header((header::CACHE_CONTROL, "max-age=86400")).finish()
}

pub(crate) async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The page's activity views (an ES module `app.js` imports).
pub(crate) async fn activity_script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", ACTIVITY_JS)
}

pub(crate) async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /v1/whoami`: who the bearer token speaks for and what it allows. Checks the token
/// (signature, time, revocation) but no operation; counts no budget and spends no single use.
pub(crate) async fn whoami(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    state.store.check_fresh()?;
    let (token, discharges) = bearer_token(&req)?;
    let now = time::OffsetDateTime::now_utc();
    let v = Verifier::with_keys(&state.store).service_caveats().verify(
        &token,
        &discharges,
        &Context::deferring_scope(now),
    )?;
    let r = v.restrictions();
    let subject = r.subject.clone().ok_or_else(|| ApiError::unauthorized("not a Tessera token"))?;
    Ok(HttpResponse::Ok().json(json!({
        "subject": subject,
        "admin": subject == state.config.admin_subject,
        "tid": r.tid.map(|t| t.to_string()),
        "claims": r.claims.as_ref().map(tessera_core::CustomClaims::as_map),
        "restrictions": RestrictionsView::new(&r),
        "max_ttl_seconds": state.config.max_ttl.as_secs(),
    })))
}
