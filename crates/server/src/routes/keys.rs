//! `/v1/keys`: list, rotate, revoke root keys, and hand out a key's envelope key.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use tessera_core::KeyId;
use tessera_store::{KeyInfo, KeyState};

use crate::envelope::signing_key_view;
use crate::http::audit::actor;
use crate::http::auth::authorize;
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::rfc3339;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

fn key_view(k: &KeyInfo) -> serde_json::Value {
    json!({
        "kid": k.kid.to_string(),
        "state": match k.state { KeyState::Active => "active", KeyState::Retired => "retired", KeyState::Revoked => "revoked" },
        "created": rfc3339(k.created),
        "retired_at": k.retired_at.and_then(rfc3339),
        "revoked_at": k.revoked_at.and_then(rfc3339),
    })
}

pub(crate) async fn list_keys(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    authorize(&state, &req, "keys.list", None)?;
    let st = state.clone();
    let keys = blocking(move || st.store.list_keys().map_err(ApiError::from)).await?;
    let signing: Vec<_> = state.store.signing_keys().iter().map(signing_key_view).collect();
    Ok(HttpResponse::Ok()
        .json(json!({ "keys": keys.iter().map(key_view).collect::<Vec<_>>(), "signing_keys": signing })))
}

pub(crate) async fn rotate_keys(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    let (caller, _) = authorize(&state, &req, "keys.rotate", None)?;
    let actor = actor(&state, &req, Some(&caller.subject), Some(caller.tid));
    let st = state.clone();
    let key = blocking(move || st.store.audited(&actor).rotate().map_err(ApiError::from)).await?;
    state.metrics.keys_rotated.inc();
    Ok(HttpResponse::Created().json(key_view(&key)))
}

/// `POST /v1/keys/{kid}/revoke`: every token the key signed stops verifying, on every node as it
/// follows the change log. Revoking the active key first makes a new key active, so minting goes
/// on; revoking the key that signed the caller's own credential is allowed (a compromised key's
/// admin token is compromised too): `tessera admin-token` makes a new one.
pub(crate) async fn revoke_key(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    // The credential first: nothing is said about a key id to a caller who may not revoke keys.
    let (caller, _) = authorize(&state, &req, "keys.revoke", None)?;
    let kid: KeyId = path.parse().map_err(|_| ApiError::bad_request("key id must be 16 hex digits"))?;
    let actor = actor(&state, &req, Some(&caller.subject), Some(caller.tid));
    let st = state.clone();
    let (entry, rotated_to) =
        blocking(move || st.store.audited(&actor).revoke_key_replacing(kid).map_err(ApiError::from)).await?;
    Ok(HttpResponse::Ok().json(json!({
        "kid": kid.to_string(),
        "revoked": true,
        "already_revoked": entry.is_none(),
        "seq": entry.map(|e| e.seq),
        "active": rotated_to.map(|k| k.to_string()),
    })))
}

pub(crate) async fn envelope_key(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let kid: KeyId = path.parse().map_err(|_| ApiError::bad_request("key id must be 16 hex digits"))?;
    authorize(&state, &req, "keys.envelope", None)?;
    let key =
        state.store.verifying_key(&kid).ok_or_else(|| ApiError::not_found(format!("no usable key {kid}")))?;
    let hex: String = key.envelope_key().expose_secret().iter().map(|b| format!("{b:02x}")).collect();
    Ok(HttpResponse::Ok()
        .json(json!({ "kid": kid.to_string(), "alg": "HS256", "key_hex": hex, "issuer": state.issuer })))
}
