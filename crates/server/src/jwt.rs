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
use tessera_core::{Context, Verifier};
use tessera_store::{SigningKeyInfo, SigningKeyState};
use time::OffsetDateTime;

use crate::api::{blocking, decode_all, decode_token, rfc3339};
use crate::auth::authorize;
use crate::problem::ApiError;
use crate::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Longest accepted `aud` (bytes).
const MAX_AUDIENCE: usize = 256;

fn algorithm(name: &str) -> Result<Algorithm> {
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
    body: web::Json<JwtRequest>,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let body = body.into_inner();
    let alg = match &body.alg {
        Some(name) => algorithm(name)?,
        None => state.config.jwt_alg.algorithm(),
    };
    if let Some(aud) = &body.aud {
        if aud.is_empty() || aud.len() > MAX_AUDIENCE || aud.chars().any(char::is_control) {
            return Err(ApiError::bad_request("aud must be 1 to 256 bytes without control characters"));
        }
    }
    let token = decode_token(&body.token)?;
    let discharges = decode_all(&body.discharges)?;
    let now = OffsetDateTime::now_utc();
    // Time, signature, discharges and revocation are checked now; allow/resource/client-ip are
    // carried in the envelope's cap claim for the JWT-only service to enforce.
    let verified =
        Verifier::with_keys(&state.store).verify(&token, &discharges, &Context::deferring_scope(now))?;
    let root_kid =
        verified.restrictions().kid.ok_or_else(|| ApiError::unauthorized("not a Tessera token"))?;
    let ttl = time::Duration::try_from(state.config.jwt_ttl).map_err(ApiError::internal)?;
    let (jwt, kid) = match alg {
        Algorithm::Hs256 => {
            let secret =
                state.store.verifying_key(&root_kid).ok_or(ApiError::unauthorized("key is revoked"))?;
            let key = envelope::SigningKey::from_secret_bytes(
                Algorithm::Hs256,
                secret.envelope_key().expose_secret(),
            )?;
            let kid = root_kid.to_string();
            (
                envelope::issue_signed(&verified, &key, &kid, &state.issuer, body.aud.as_deref(), now, ttl)?,
                kid,
            )
        }
        public => {
            let (kid, key) = state
                .store
                .active_signing_key(public)
                .ok_or_else(|| ApiError::unavailable(format!("no active {public} signing key")))?;
            (
                envelope::issue_signed(&verified, &key, &kid, &state.issuer, body.aud.as_deref(), now, ttl)?,
                kid,
            )
        }
    };
    state.metrics.envelopes_issued.inc();
    Ok(HttpResponse::Ok().json(json!({ "jwt": jwt, "issuer": state.issuer, "kid": kid, "alg": alg.name() })))
}

pub(crate) fn signing_key_view(k: &SigningKeyInfo) -> Value {
    json!({
        "kid": k.kid,
        "alg": k.alg,
        "state": match k.state { SigningKeyState::Next => "next", SigningKeyState::Active => "active", SigningKeyState::Retired => "retired" },
        "created": rfc3339(k.created),
        "activated_at": k.activated_at.and_then(rfc3339),
        "retired_at": k.retired_at.and_then(rfc3339),
    })
}

/// The keys a verifier may meet: the next ones (published ahead), the active ones, and retired
/// ones while an envelope they signed may still be valid (retired + the longest envelope life).
fn published(state: &AppState) -> Vec<Value> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let keep = i64::try_from(state.config.jwt_ttl.as_secs()).unwrap_or(i64::MAX);
    state
        .store
        .signing_keys()
        .iter()
        .filter(|k| match k.state {
            SigningKeyState::Next | SigningKeyState::Active => true,
            SigningKeyState::Retired => k.retired_at.is_some_and(|r| r.saturating_add(keep) >= now),
        })
        .filter_map(|k| serde_json::from_str(&k.jwk).ok())
        .collect()
}

/// A public document: `Cache-Control`, a strong `ETag`, and 304 when the client has it.
fn cached(state: &AppState, req: &HttpRequest, body: &Value) -> HttpResponse {
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
    cached(&state, &req, &json!({ "keys": published(&state) }))
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
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let alg = algorithm(body.alg.as_deref().unwrap_or("ES256"))?;
    if alg == Algorithm::Hs256 {
        return Err(ApiError::bad_request(
            "HS256 envelope keys follow the root keys: rotate those (POST /v1/keys/rotate)",
        ));
    }
    let min = if body.force { std::time::Duration::ZERO } else { state.config.signing_prepublish };
    let st = state.clone();
    let keys = blocking(move || st.store.rotate_signing_key(alg, min).map_err(ApiError::from)).await?;
    state.metrics.keys_rotated.inc();
    Ok(HttpResponse::Created().json(json!({ "keys": keys.iter().map(signing_key_view).collect::<Vec<_>>() })))
}
