//! JWT envelopes and what public-key verifiers need: `POST /v1/jwt` (HS256, ES256 or EdDSA,
//! optionally for an audience), `GET /.well-known/jwks.json` and
//! `GET /.well-known/openid-configuration` (from memory, with `Cache-Control` and `ETag`), and
//! the rotation of signing keys (`POST /v1/keys/signing/rotate`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tessera_core::envelope::{self, Algorithm};
use tessera_core::{Context, Verifier};
use tessera_store::AppRecord;
use time::OffsetDateTime;

use crate::envelope::{algorithm, narrow_to, published, signing_key, signing_key_view};
use crate::http::audit::actor;
use crate::http::auth::{application, authorize};
use crate::http::blocking;
use crate::http::cached::cached;
use crate::http::problem::ApiError;
use crate::http::text::{decode_all, decode_token};
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Longest accepted `aud` (bytes).
const MAX_AUDIENCE: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtRequest {
    token: String,
    #[serde(default)]
    discharges: Vec<String>,
    /// `ES256` (default unless configured otherwise), `EdDSA` or `HS256`.
    alg: Option<String>,
    /// The audience the envelope is for (its `aud`).
    aud: Option<String>,
}

pub(crate) async fn envelope(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<JwtRequest>,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let body = body.into_inner();
    if let Some(aud) = &body.aud {
        if aud.is_empty() || aud.len() > MAX_AUDIENCE || aud.chars().any(char::is_control) {
            return Err(ApiError::bad_request("aud must be 1 to 256 bytes without control characters"));
        }
    }
    let app = application(&state, &req)?;
    let grant = match &app {
        Some(app) => for_app(app, &body)?,
        None => {
            // A registered audience is its application's alone.
            if let Some(owner) =
                body.aud.as_ref().and_then(|aud| state.store.apps().into_iter().find(|a| a.audience == *aud))
            {
                return Err(ApiError::forbidden(format!(
                    "audience \"{}\" belongs to application \"{}\": it asks for its envelopes with its own credential",
                    owner.audience, owner.name
                )));
            }
            Grant {
                alg: match &body.alg {
                    Some(name) => algorithm(name)?,
                    None => state.config.jwt_alg.algorithm(),
                },
                aud: body.aud.clone(),
                ttl: state.config.jwt_ttl,
            }
        }
    };
    let token = decode_token(&body.token)?;
    let discharges = decode_all(&body.discharges)?;
    let now = OffsetDateTime::now_utc();
    // Time, signature, discharges and revocation are checked now; allow/resource/client-ip are
    // carried in the envelope's cap claim for the JWT-only service to enforce.
    let verified =
        Verifier::with_keys(&state.store).verify(&token, &discharges, &Context::deferring_scope(now))?;
    let mut restrictions = verified.restrictions();
    let root_kid = restrictions.kid.ok_or_else(|| ApiError::unauthorized("not a Tessera token"))?;
    if let Some(app) = &app {
        narrow_to(&mut restrictions, app)?;
    }
    let ttl = time::Duration::try_from(grant.ttl).map_err(ApiError::internal)?;
    let owner = app.as_ref().filter(|a| a.own_keys).map(|a| a.name.as_str());
    let (key, kid) = signing_key(&state, grant.alg, root_kid, owner)?;
    let how = envelope::Signing {
        key: &key,
        kid: &kid,
        issuer: &state.issuer,
        audience: grant.aud.as_deref(),
        now,
        ttl,
        session: None,
    };
    let jwt = envelope::issue_restricted(restrictions, &how)?;
    state.metrics.envelopes_issued.inc();
    Ok(HttpResponse::Ok()
        .json(json!({ "jwt": jwt, "issuer": state.issuer, "kid": kid, "alg": grant.alg.name() })))
}

/// How an envelope is made: algorithm, audience, lifetime.
struct Grant {
    alg: Algorithm,
    aud: Option<String>,
    ttl: std::time::Duration,
}

/// What a registered application gets: its audience (never another), one of its algorithms
/// (its first by default), its lifetime.
fn for_app(app: &AppRecord, body: &JwtRequest) -> Result<Grant> {
    if let Some(aud) = body.aud.as_ref().filter(|aud| **aud != app.audience) {
        return Err(ApiError::forbidden(format!(
            "application \"{}\" gets envelopes for its own audience \"{}\" only, not \"{aud}\"",
            app.name, app.audience
        )));
    }
    let alg = match &body.alg {
        Some(name) => algorithm(name)?,
        None => app.algorithms.first().and_then(|a| Algorithm::from_name(a)).unwrap_or(Algorithm::Es256),
    };
    if !app.algorithms.iter().any(|a| a == alg.name()) {
        return Err(ApiError::forbidden(format!(
            "application \"{}\" may use {} only",
            app.name,
            app.algorithms.join(", ")
        )));
    }
    Ok(Grant { alg, aud: Some(app.audience.clone()), ttl: std::time::Duration::from_secs(app.ttl) })
}

pub(crate) async fn jwks(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    cached(&state, &req, &json!({ "keys": published(&state, None) }))
}

pub(crate) async fn discovery(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let doc = json!({
        "issuer": state.issuer,
        "jwks_uri": format!("{}/.well-known/jwks.json", state.location),
        "id_token_signing_alg_values_supported": ["ES256", "EdDSA"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA"],
        "subject_types_supported": ["public"],
        "claims_supported": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "cap"],
    });
    cached(&state, &req, &doc)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateRequest {
    alg: Option<String>,
    /// Rotate the keys of this application (one registered with keys of its own).
    app: Option<String>,
    /// Promote the next key even if it has been published for less than `--signing-prepublish`
    /// (verifiers with an older cached JWKS will refuse its envelopes until they refetch).
    #[serde(default)]
    force: bool,
}

pub(crate) async fn rotate(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (caller, _) = authorize(&state, &req, "keys.rotate", None)?;
    let actor = actor(&state, &req, Some(&caller.subject), Some(caller.tid));
    // The body is optional, but one that is there must be right (an extractor wrapped in
    // `Option` would silently treat a malformed body as absent).
    let body: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else if !req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        return Err(ApiError::unsupported_media());
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let alg = algorithm(body.alg.as_deref().unwrap_or("ES256"))?;
    if alg == Algorithm::Hs256 {
        return Err(ApiError::bad_request(
            "HS256 envelope keys follow the root keys: rotate those (POST /v1/keys/rotate)",
        ));
    }
    if let Some(name) = &body.app {
        let app = state
            .store
            .app(name)
            .ok_or_else(|| ApiError::not_found(format!("no application named \"{name}\"")))?;
        if !app.own_keys {
            return Err(ApiError::conflict(format!(
                "application \"{name}\" signs with the service's keys: rotate those (no \"app\")"
            )));
        }
    }
    let min = if body.force { std::time::Duration::ZERO } else { state.config.signing_prepublish };
    let st = state.clone();
    let keys = blocking(move || {
        st.store.audited(&actor).rotate_signing_key(alg, min, body.app.as_deref()).map_err(ApiError::from)
    })
    .await?;
    state.metrics.keys_rotated.inc();
    Ok(HttpResponse::Created().json(json!({ "keys": keys.iter().map(signing_key_view).collect::<Vec<_>>() })))
}
