//! Registered applications (JWTIS's "register client"): `POST/GET /v1/apps`,
//! `GET/DELETE /v1/apps/{name}` (admin only; `DELETE` disables) and the public
//! `GET /v1/apps/{name}/jwks.json`.
//!
//! An application has an audience (the `aud` of every envelope it gets, and of nobody else's), a
//! default envelope lifetime, the algorithms it may use, optionally signing keys of its own (so
//! one application's rotation or compromise does not touch another's), and the operations and
//! resources its envelopes may carry. It asks for envelopes with its credential, a token for the
//! subject `app:<name>` returned once at registration.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use tessera_core::envelope::Algorithm;
use tessera_core::Predicate;
use tessera_store::AppRecord;

use crate::envelope::published;
use crate::http::audit::actor;
use crate::http::auth::authorize;
use crate::http::blocking;
use crate::http::cached::cached;
use crate::http::problem::ApiError;
use crate::http::text::{rfc3339, words};
use crate::mint::{build, MintSpec};
use crate::spec::APP_SUBJECT_PREFIX;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Longest envelope lifetime an application may be given.
pub(crate) const MAX_APP_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Longest application name (bytes).
const MAX_NAME: usize = 64;
/// Longest audience (bytes).
const MAX_AUDIENCE: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewAppRequest {
    name: String,
    audience: String,
    ttl: Option<String>,
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    own_keys: bool,
    refresh_strategy: Option<crate::session::strategy::Strategy>,
    operations: Option<Vec<String>>,
    resources: Option<Vec<String>>,
}

fn view(state: &AppState, a: &AppRecord) -> Value {
    json!({
        "name": a.name,
        "audience": a.audience,
        "ttl_seconds": a.ttl,
        "algorithms": a.algorithms,
        "own_keys": a.own_keys,
        "refresh_strategy": a.refresh_strategy.as_deref().unwrap_or(crate::session::strategy::Strategy::NoRefresh.name()),
        "operations": a.operations,
        "resources": a.resources,
        "credential_tid": a.credential.to_string(),
        "created": rfc3339(a.created),
        "disabled": a.disabled_at.is_some(),
        "disabled_at": a.disabled_at.and_then(rfc3339),
        "jwks_uri": format!("{}/v1/apps/{}/jwks.json", state.location, a.name),
    })
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(ApiError::bad_request(format!(
            "application name \"{name:.80}\" must be 1 to {MAX_NAME} bytes of a-z, 0-9, '.', '_', '-', starting \
             with a letter or digit"
        )));
    }
    Ok(())
}

/// Everything a registration asks for, checked, as the record to store (its credential and
/// creation time are filled in later).
fn record_of(state: &AppState, body: NewAppRequest) -> Result<AppRecord> {
    check_name(&body.name)?;
    if body.audience.is_empty()
        || body.audience.len() > MAX_AUDIENCE
        || body.audience.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "audience must be 1 to {MAX_AUDIENCE} bytes without control characters"
        )));
    }
    let ttl = match &body.ttl {
        None => state.config.jwt_ttl,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("ttl \"{t}\": {e} (use e.g. 5m, 1h)")))?,
    };
    if ttl.as_secs() == 0 || ttl > MAX_APP_TTL {
        return Err(ApiError::bad_request("ttl must be from 1s to 24h (envelopes are short-lived)"));
    }
    let names = body.algorithms.unwrap_or_else(|| vec![state.config.jwt_alg.algorithm().name().to_owned()]);
    if names.is_empty() {
        return Err(ApiError::bad_request("algorithms must not be empty (omit it for the default)"));
    }
    let mut algorithms: Vec<String> = Vec::new();
    for name in &names {
        let alg = Algorithm::from_name(name).ok_or_else(|| {
            ApiError::bad_request(format!("algorithm \"{name}\" is not offered: use ES256, EdDSA or HS256"))
        })?;
        if algorithms.iter().any(|a| a == alg.name()) {
            return Err(ApiError::bad_request(format!("algorithm {alg} is listed twice")));
        }
        if alg == Algorithm::Hs256 && body.own_keys {
            return Err(ApiError::bad_request(
                "an application with keys of its own uses ES256 or EdDSA: HS256 keys are shared secrets of \
                 the service's root keys",
            ));
        }
        algorithms.push(alg.name().to_owned());
    }
    for (what, caveat, items) in
        [("operations", "allow", &body.operations), ("resources", "resource", &body.resources)]
    {
        if let Some(items) = items {
            let text = format!("{caveat} {}", words(what, items)?);
            Predicate::validate(text.as_bytes()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
    }
    Ok(AppRecord {
        name: body.name,
        audience: body.audience,
        ttl: ttl.as_secs(),
        algorithms,
        own_keys: body.own_keys,
        refresh_strategy: body.refresh_strategy.map(|s| s.name().to_owned()),
        operations: body.operations,
        resources: body.resources,
        credential: tessera_core::TokenId::from_bytes([0; 16]),
        created: 0,
        disabled_at: None,
    })
}

pub(crate) async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<NewAppRequest>,
) -> Result<HttpResponse> {
    let (caller, _) = authorize(&state, &req, "apps.manage", None)?;
    let actor = actor(&state, &req, Some(&caller.subject), Some(caller.tid));
    let mut app = record_of(&state, body.into_inner())?;
    let spec = MintSpec {
        subject: format!("{APP_SUBJECT_PREFIX}{}", app.name),
        description: format!("credential of application {}", app.name),
        caveats: vec!["allow jwt.issue".into(), format!("resource apps/{}", app.name)],
        expires: None,
        revocable: false,
        parent: None,
        claims: None,
    };
    let st = state.clone();
    let (credential, app) = blocking(move || {
        let (token, new) = build(&st.store, &st.location, &st.discharge_location, spec)?;
        app.credential = new.tid;
        Ok((token, st.store.audited(&actor).register_app(app, new)?))
    })
    .await?;
    let mut out = view(&state, &app);
    out["credential"] = json!(credential.encode());
    Ok(HttpResponse::Created().json(out))
}

pub(crate) async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    authorize(&state, &req, "apps.manage", None)?;
    let apps: Vec<Value> = state.store.apps().iter().map(|a| view(&state, a)).collect();
    Ok(HttpResponse::Ok().json(json!({ "apps": apps })))
}

fn find(state: &AppState, name: &str) -> Result<AppRecord> {
    state.store.app(name).ok_or_else(|| ApiError::not_found(format!("no application named \"{name:.80}\"")))
}

pub(crate) async fn show(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse> {
    authorize(&state, &req, "apps.manage", None)?;
    Ok(HttpResponse::Ok().json(view(&state, &find(&state, &name)?)))
}

pub(crate) async fn disable(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse> {
    let (caller, _) = authorize(&state, &req, "apps.manage", None)?;
    let actor = actor(&state, &req, Some(&caller.subject), Some(caller.tid));
    let name = name.into_inner();
    let st = state.clone();
    let app = blocking(move || st.store.audited(&actor).disable_app(&name).map_err(ApiError::from)).await?;
    Ok(HttpResponse::Ok().json(view(&state, &app)))
}

/// The keys that sign this application's envelopes: its own, or the service's.
pub(crate) async fn jwks(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse> {
    let app = find(&state, &name)?;
    let owner = app.own_keys.then_some(app.name.as_str());
    Ok(cached(&state, &req, &json!({ "keys": published(&state, owner) })))
}
