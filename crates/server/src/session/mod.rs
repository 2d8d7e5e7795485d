//! Sessions (JWTIS's token pairs, with the rotation and reuse detection of RFC 9700):
//! `POST /v1/sessions`, `POST /v1/sessions/refresh`, `POST /v1/sessions/{sid}/revoke`.
//!
//! A session pairs short-lived **access tokens** (JWT envelopes in the session's algorithm, with
//! `sid`) with a long-lived **refresh token**: a Tessera token that may do nothing but
//! `sessions.refresh` on `sessions/<sid>`, recorded like every minted token (so revoking it, or
//! the token it was minted from, stops the session on every node). Renewing spends the refresh
//! token when the strategy rotates it; a spent one presented again after the grace window revokes
//! the whole session.

pub(crate) mod strategy;

use std::time::Duration;

use actix_web::web;
use serde::Deserialize;
use serde_json::{json, Value};
use tessera_core::envelope::{self, Algorithm};
use tessera_core::{CustomClaims, Predicate, Restrictions, SessionId, TokenId};
use tessera_store::{Actor, AppRecord, SessionRecord};
use time::OffsetDateTime;

use crate::envelope::{algorithm, narrow_to, signing_key};
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::rfc3339;
use crate::mint::{build, time_and_network_bounds, Inheritance, MintSpec};
use crate::spec::{claims_for, lifetime, restriction_caveats};
use crate::state::AppState;
pub(crate) use strategy::Strategy;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Longest access-token lifetime.
const MAX_ACCESS_TTL: Duration = Duration::from_secs(24 * 3600);

/// Refuse caveats the session's access tokens (JWTs) could not carry: `once` and `rate-limit`
/// (only the service counts uses; a JWT could be replayed past them) and application-defined
/// ones (a JWT verifier would not know them). Checked before anything is written.
pub(crate) fn access_tokens_can_carry(caveats: &[String]) -> Result<()> {
    let mut r = Restrictions::default();
    for c in caveats {
        r.add(&Predicate::parse(c.as_bytes())?);
    }
    let mut cannot: Vec<String> = r.other;
    if r.once {
        cannot.push("once".into());
    }
    cannot.extend(r.rate_limits.iter().map(|l| format!("rate-limit {l}")));
    if cannot.is_empty() {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "a session's access tokens are JWTs, which cannot carry {}: only the service counts uses, \
         and a JWT verifier knows no application-defined caveat",
        cannot.join(", ")
    )))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSessionRequest {
    pub(crate) subject: Option<String>,
    pub(crate) app: Option<String>,
    pub(crate) alg: Option<String>,
    pub(crate) access_ttl: Option<String>,
    pub(crate) refresh_ttl: Option<String>,
    pub(crate) strategy: Option<Strategy>,
    pub(crate) operations: Option<Vec<String>>,
    pub(crate) resources: Option<Vec<String>>,
    pub(crate) client_ips: Option<Vec<String>>,
    pub(crate) claims: Option<serde_json::Map<String, Value>>,
}

pub(crate) fn enabled_app(state: &AppState, name: &str) -> Result<AppRecord> {
    let app = state
        .store
        .app(name)
        .ok_or_else(|| ApiError::not_found(format!("no application named \"{name:.80}\"")))?;
    if app.disabled_at.is_some() {
        return Err(ApiError::forbidden(format!("application \"{name}\" is disabled")));
    }
    Ok(app)
}

/// A checked session and its first refresh token, ready to record. `inherited` is what the
/// creator's token passes on (`None` when the service itself creates it, for a login exchange).
pub(crate) fn plan(
    state: &AppState,
    body: NewSessionRequest,
    subject: String,
    inherited: Inheritance,
    parent: Option<TokenId>,
    may_set_claims: bool,
) -> Result<(SessionId, SessionRecord, MintSpec)> {
    let app = body.app.as_deref().map(|n| enabled_app(state, n)).transpose()?;
    let alg = match (&body.alg, &app) {
        (Some(name), _) => algorithm(name)?,
        (None, Some(app)) => {
            app.algorithms.first().and_then(|a| Algorithm::from_name(a)).unwrap_or(Algorithm::Es256)
        }
        (None, None) => state.config.jwt_alg.algorithm(),
    };
    if let Some(app) = app.as_ref().filter(|a| !a.algorithms.iter().any(|x| x == alg.name())) {
        return Err(ApiError::forbidden(format!(
            "application \"{}\" may use {} only",
            app.name,
            app.algorithms.join(", ")
        )));
    }
    let default_access = app.as_ref().map_or(state.config.session_access_ttl, |a| Duration::from_secs(a.ttl));
    let access_ttl = lifetime("access_ttl", body.access_ttl.as_deref(), default_access, MAX_ACCESS_TTL)?;
    let refresh_ttl = lifetime(
        "refresh_ttl",
        body.refresh_ttl.as_deref(),
        state.config.session_refresh_ttl,
        state.config.max_ttl,
    )?;
    let app_policy = app.as_ref().and_then(|a| a.refresh_strategy.as_deref()).map(Strategy::from_name);
    let strategy = match (body.strategy, app_policy, &app) {
        (Some(asked), Some(policy), Some(app)) => {
            asked.within(policy, &format!("application \"{}\"", app.name))?
        }
        (Some(asked), _, _) => asked,
        (None, Some(policy), _) => policy,
        (None, None, _) => Strategy::NoRefresh,
    };
    let claims = claims_for(body.claims, inherited.claims, may_set_claims)?;
    let mut caveats = inherited.caveats;
    caveats.extend(restriction_caveats(&body.operations, &body.resources, &body.client_ips)?);
    access_tokens_can_carry(&caveats)?;
    let sid = SessionId::generate()?;
    // The refresh token keeps the creator's time and network bounds; what it may do is refresh.
    let mut refresh_caveats = time_and_network_bounds(&caveats);
    refresh_caveats.push("allow sessions.refresh".into());
    refresh_caveats.push(format!("resource sessions/{sid}"));
    let record = SessionRecord {
        subject: subject.clone(),
        app: app.map(|a| a.name),
        created: 0,
        alg: alg.name().to_owned(),
        access_ttl: access_ttl.as_secs(),
        refresh_ttl: refresh_ttl.as_secs(),
        strategy: strategy.name().to_owned(),
        caveats,
        refresh_caveats,
        claims: claims.as_ref().map(|c| c.to_json().to_owned()),
        current: TokenId::from_bytes([0; 16]),
        first: TokenId::from_bytes([0; 16]),
        last_spent: None,
        revoked_at: None,
    };
    let spec = refresh_spec(&record, sid, &[], refresh_ttl, parent)?;
    Ok((sid, record, spec))
}

/// The mint spec of a refresh token of `session`: its refresh caveats, then `held` (what
/// holders added to the refresh tokens before it), then its own expiry.
pub(crate) fn refresh_spec(
    session: &SessionRecord,
    sid: SessionId,
    held: &[String],
    ttl: Duration,
    parent: Option<TokenId>,
) -> Result<MintSpec> {
    let expires = OffsetDateTime::now_utc()
        + time::Duration::try_from(ttl).map_err(|_| ApiError::bad_request("refresh_ttl is too long"))?;
    Ok(MintSpec {
        subject: session.subject.clone(),
        description: format!("refresh token of session {sid}"),
        caveats: session.refresh_caveats.iter().chain(held).cloned().collect(),
        expires: Some(expires),
        revocable: false,
        parent,
        claims: session.claims.as_deref().map(CustomClaims::from_json).transpose()?,
    })
}

/// An access token of the session, now: the session's caveats, then `held` (what holders added to
/// the refresh token presented and to those before it), and its application's limits, folded;
/// `sid`, a fresh `jti`, signed in the session's algorithm.
pub(crate) fn access_token(
    state: &AppState,
    sid: SessionId,
    s: &SessionRecord,
    held: &[String],
    root_kid: tessera_core::KeyId,
) -> Result<Value> {
    let alg = algorithm(&s.alg)?;
    let app = s.app.as_deref().map(|n| enabled_app(state, n)).transpose()?;
    let mut r = Restrictions {
        kid: Some(root_kid),
        tid: Some(TokenId::generate()?),
        subject: Some(s.subject.clone()),
        claims: s.claims.as_deref().map(CustomClaims::from_json).transpose()?,
        ..Restrictions::default()
    };
    for c in s.caveats.iter().chain(held) {
        r.add(&Predicate::parse(c.as_bytes())?);
    }
    if let Some(app) = &app {
        narrow_to(&mut r, app)?;
    }
    let owner = app.as_ref().filter(|a| a.own_keys).map(|a| a.name.as_str());
    let (key, kid) = signing_key(state, alg, root_kid, owner)?;
    let now = OffsetDateTime::now_utc();
    let ttl = time::Duration::seconds(i64::try_from(s.access_ttl).unwrap_or(i64::MAX));
    let sid_text = sid.to_string();
    let how = envelope::Signing {
        key: &key,
        kid: &kid,
        issuer: &state.issuer,
        audience: app.as_ref().map(|a| a.audience.as_str()),
        now,
        ttl,
        session: Some(&sid_text),
    };
    let jwt = envelope::issue_restricted(r.clone(), &how)?;
    let exp = r.expires.map_or(now + ttl, |e| e.min(now + ttl));
    Ok(json!({
        "access_token": jwt,
        "token_type": "Bearer",
        "expires_in": (exp - now).whole_seconds(),
        "alg": alg.name(),
        "kid": kid,
    }))
}

/// Record a planned session (with its `session.create` audit entry naming `actor`, in the same
/// transaction) and answer with its first pair.
pub(crate) async fn start(
    state: web::Data<AppState>,
    actor: Actor,
    sid: SessionId,
    record: SessionRecord,
    spec: MintSpec,
) -> Result<Value> {
    let st = state.clone();
    let (refresh, new, session) = blocking(move || {
        let (token, new) = build(&st.store, &st.location, &st.discharge_location, spec)?;
        let session = st.store.audited(&actor).create_session(sid, record, new.clone())?;
        Ok((token, new, session))
    })
    .await?;
    let mut out = access_token(&state, sid, &session, &[], new.kid)?;
    out["session_id"] = json!(sid.to_string());
    out["refresh_token"] = json!(refresh.encode());
    out["refresh_expires"] = json!(new.expires.and_then(rfc3339));
    out["strategy"] = json!(session.strategy);
    state.metrics.sessions_created.inc();
    Ok(out)
}
