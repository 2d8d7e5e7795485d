//! JWT envelopes and what public-key verifiers need: `POST /v1/jwt` (HS256, ES256 or EdDSA,
//! optionally for an audience), `GET /.well-known/jwks.json` and
//! `GET /.well-known/openid-configuration` (from memory, with `Cache-Control` and `ETag`), and
//! the rotation of signing keys (`POST /v1/keys/signing/rotate`).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tessera_core::envelope::{self, Algorithm};
use tessera_core::{Context, Predicate, Restrictions, Verifier};
use tessera_store::{AppRecord, SigningKeyInfo, SigningKeyState};
use time::OffsetDateTime;

use crate::api::{blocking, decode_all, decode_token, rfc3339};
use crate::auth::{application, authorize};
use crate::problem::ApiError;
use crate::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Longest accepted `aud` (bytes).
const MAX_AUDIENCE: usize = 256;

pub(crate) fn algorithm(name: &str) -> Result<Algorithm> {
    Algorithm::from_name(name).ok_or_else(|| {
        ApiError::bad_request(format!("alg \"{name}\" is not offered: use ES256, EdDSA or HS256"))
    })
}

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

/// The key that signs an envelope of `alg` now, with its kid: for HS256 the envelope key of the
/// root key `root_kid`; otherwise the active key of `owner` (an application with keys of its own)
/// or of the service.
pub(crate) fn signing_key(
    state: &AppState,
    alg: Algorithm,
    root_kid: tessera_core::KeyId,
    owner: Option<&str>,
) -> Result<(std::sync::Arc<envelope::SigningKey>, String)> {
    match alg {
        Algorithm::Hs256 => {
            let secret =
                state.store.verifying_key(&root_kid).ok_or(ApiError::unauthorized("key is revoked"))?;
            let key = envelope::SigningKey::from_secret_bytes(
                Algorithm::Hs256,
                secret.envelope_key().expose_secret(),
            )?;
            Ok((std::sync::Arc::new(key), root_kid.to_string()))
        }
        public => {
            let (kid, key) = state
                .store
                .active_signing_key(public, owner)
                .ok_or_else(|| ApiError::unavailable(format!("no active {public} signing key")))?;
            Ok((key, kid))
        }
    }
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

/// Fold what the application may request into the token's restrictions; 403 when nothing of
/// what the token allows is left.
pub(crate) fn narrow_to(r: &mut Restrictions, app: &AppRecord) -> Result<()> {
    for (name, allowed) in [("allow", &app.operations), ("resource", &app.resources)] {
        if let Some(allowed) = allowed {
            let text = format!("{name} {}", allowed.join(" "));
            r.add(&Predicate::parse(text.as_bytes())?);
        }
    }
    if r.operations.as_ref().is_some_and(Vec::is_empty) || r.resources.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::forbidden(format!(
            "the token allows none of the operations or resources application \"{}\" may request",
            app.name
        )));
    }
    Ok(())
}

pub(crate) fn signing_key_view(k: &SigningKeyInfo) -> Value {
    json!({
        "kid": k.kid,
        "alg": k.alg,
        "state": match k.state { SigningKeyState::Next => "next", SigningKeyState::Active => "active", SigningKeyState::Retired => "retired" },
        "created": rfc3339(k.created),
        "activated_at": k.activated_at.and_then(rfc3339),
        "retired_at": k.retired_at.and_then(rfc3339),
        "app": k.owner,
    })
}

/// The keys a verifier may meet for `owner` (an application with keys of its own; `None` for the
/// service): the next ones (published ahead), the active ones, and retired ones while an envelope
/// they signed may still be valid (retired + the longest envelope life of the service or any
/// application).
pub(crate) fn published(state: &AppState, owner: Option<&str>) -> Vec<Value> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let longest = state.store.apps().iter().map(|a| a.ttl).fold(state.config.jwt_ttl.as_secs(), u64::max);
    let keep = i64::try_from(longest).unwrap_or(i64::MAX);
    state
        .store
        .signing_keys()
        .iter()
        .filter(|k| k.owner.as_deref() == owner)
        .filter(|k| match k.state {
            SigningKeyState::Next | SigningKeyState::Active => true,
            SigningKeyState::Retired => k.retired_at.is_some_and(|r| r.saturating_add(keep) >= now),
        })
        .filter_map(|k| serde_json::from_str(&k.jwk).ok())
        .collect()
}

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
    authorize(&state, &req, "keys.rotate", None)?;
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
    let keys =
        blocking(move || st.store.rotate_signing_key(alg, min, body.app.as_deref()).map_err(ApiError::from))
            .await?;
    state.metrics.keys_rotated.inc();
    Ok(HttpResponse::Created().json(json!({ "keys": keys.iter().map(signing_key_view).collect::<Vec<_>>() })))
}
