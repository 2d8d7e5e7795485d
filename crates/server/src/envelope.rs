//! JWT envelopes as a service rule several routes apply: the algorithm asked for, the key that
//! signs an envelope now, an application's limits folded into a token's, and the signing keys
//! a verifier may meet.

use serde_json::{json, Value};
use tessera_core::envelope::{self, Algorithm};
use tessera_core::{Predicate, Restrictions};
use tessera_store::{AppRecord, SigningKeyInfo, SigningKeyState};
use time::OffsetDateTime;

use crate::http::problem::ApiError;
use crate::http::text::rfc3339;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

pub(crate) fn algorithm(name: &str) -> Result<Algorithm> {
    Algorithm::from_name(name).ok_or_else(|| {
        ApiError::bad_request(format!("alg \"{name}\" is not offered: use ES256, EdDSA or HS256"))
    })
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
