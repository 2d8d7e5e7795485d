//! Sessions (JWTIS's token pairs, with the rotation and reuse detection of RFC 9700):
//! `POST /v1/sessions`, `POST /v1/sessions/refresh`, `POST /v1/sessions/{sid}/revoke`.
//!
//! A session pairs short-lived **access tokens** (JWT envelopes in the session's algorithm, with
//! `sid`) with a long-lived **refresh token**: a Tessera token that may do nothing but
//! `sessions.refresh` on `sessions/<sid>`, recorded like every minted token (so revoking it, or
//! the token it was minted from, stops the session on every node). Renewing spends the refresh
//! token when the strategy rotates it; a spent one presented again after the grace window revokes
//! the whole session.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tessera_core::envelope::{self, Algorithm};
use tessera_core::{Context, CustomClaims, Predicate, Restrictions, SessionId, Token, TokenId, Verifier};
use tessera_store::{AppRecord, Refreshed, SessionRecord, TokenRecord};
use time::OffsetDateTime;

use crate::api::{blocking, check_subject, claims_for, decode_token, lifetime, restriction_caveats};
use crate::auth::{authenticate, authorize, client_ip_of, Caller};
use crate::jwt::{algorithm, narrow_to, signing_key};
use crate::mint::{added_by_holder, build, inheritance, time_and_network_bounds, Inheritance, MintSpec};
use crate::problem::ApiError;
use crate::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Longest access-token lifetime.
const MAX_ACCESS_TTL: Duration = Duration::from_secs(24 * 3600);

/// When a renewal also replaces the refresh token (JWTIS's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Strategy {
    /// A new access token only (the default).
    NoRefresh,
    /// Also a new refresh token once the old one is within `--refresh-rotate-fraction` of its end.
    RefreshOnExpire,
    /// Always both; the old refresh token is spent.
    RefreshBoth,
}

impl Strategy {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Strategy::NoRefresh => "noRefresh",
            Strategy::RefreshOnExpire => "refreshOnExpire",
            Strategy::RefreshBoth => "refreshBoth",
        }
    }

    fn from_name(name: &str) -> Strategy {
        match name {
            "refreshOnExpire" => Strategy::RefreshOnExpire,
            "refreshBoth" => Strategy::RefreshBoth,
            _ => Strategy::NoRefresh,
        }
    }

    /// How far renewals may extend a session: `noRefresh` never issues a new refresh token (the
    /// session ends with its refresh token), `refreshOnExpire` only near the end of one,
    /// `refreshBoth` at every renewal. Lower is stricter.
    fn looseness(self) -> u8 {
        match self {
            Strategy::NoRefresh => 0,
            Strategy::RefreshOnExpire => 1,
            Strategy::RefreshBoth => 2,
        }
    }

    /// The stricter of the two.
    fn stricter(self, other: Strategy) -> Strategy {
        if other.looseness() < self.looseness() {
            other
        } else {
            self
        }
    }

    /// `self` when it is as strict as `policy` (the session's, its application's or a
    /// template's) or stricter; a looser request is refused (403): the requester may give up
    /// renewals, never add them.
    pub(crate) fn within(self, policy: Strategy, whose: &str) -> Result<Strategy> {
        if self.looseness() > policy.looseness() {
            return Err(ApiError::forbidden(format!(
                "strategy {} is looser than {whose}'s {}: a request may only choose a strategy as strict \
                 or stricter (noRefresh, then refreshOnExpire, then refreshBoth)",
                self.name(),
                policy.name()
            )));
        }
        Ok(self)
    }
}

/// Refuse caveats the session's access tokens (JWTs) could not carry: `once` and `rate-limit`
/// (only the service counts uses; a JWT could be replayed past them) and application-defined
/// ones (a JWT verifier would not know them). Checked before anything is written.
fn access_tokens_can_carry(caveats: &[String]) -> Result<()> {
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

fn enabled_app(state: &AppState, name: &str) -> Result<AppRecord> {
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
fn refresh_spec(
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
fn access_token(
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

/// Record a planned session and answer with its first pair.
pub(crate) async fn start(
    state: web::Data<AppState>,
    sid: SessionId,
    record: SessionRecord,
    spec: MintSpec,
) -> Result<Value> {
    let st = state.clone();
    let (refresh, new, session) = blocking(move || {
        let (token, new) = build(&st.store, &st.location, &st.discharge_location, spec)?;
        let session = st.store.create_session(sid, record, new.clone())?;
        Ok((token, new, session))
    })
    .await?;
    let mut out = access_token(&state, sid, &session, &[], new.kid)?;
    out["session_id"] = json!(sid.to_string());
    out["refresh_token"] = json!(refresh.encode());
    out["refresh_expires"] = json!(new.expires.and_then(crate::api::rfc3339));
    out["strategy"] = json!(session.strategy);
    state.metrics.sessions_created.inc();
    Ok(out)
}

pub(crate) async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<NewSessionRequest>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    check_subject(body.subject.as_deref())?;
    let (caller, subject) = authorize(&state, &req, "sessions.create", body.subject.as_deref())?;
    let admin = caller.subject == state.config.admin_subject;
    if body.app.is_some() && !admin {
        return Err(ApiError::forbidden(
            "only the admin subject creates sessions for a registered application (its backend holds \
             such a token)",
        ));
    }
    let mut inherited = inheritance(&state.store, &caller)?;
    if caller.subject != subject {
        inherited.claims = None;
    }
    let (sid, record, spec) = plan(&state, body, subject, inherited, Some(caller.tid), admin)?;
    let out = start(state, sid, record, spec).await?;
    Ok(HttpResponse::Created().json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    refresh_token: String,
    strategy: Option<Strategy>,
}

/// The session a refresh token names in its `resource sessions/<sid>` caveat.
fn session_of(token: &Token) -> Result<SessionId> {
    token
        .caveats()
        .find_map(|c| match c {
            tessera_core::Caveat::FirstParty(cid) => std::str::from_utf8(cid)
                .ok()
                .and_then(|t| t.strip_prefix("resource sessions/"))
                .and_then(|sid| sid.parse::<SessionId>().ok()),
            _ => None,
        })
        .ok_or_else(|| ApiError::unauthorized("not a refresh token (it names no session)"))
}

fn not_this_session() -> ApiError {
    ApiError::unauthorized("not a refresh token of this session")
}

/// What holders added to the refresh token `record` (it was minted as the session's refresh
/// caveats, the caveats carried from its predecessors, then its own expiry) and to the refresh
/// tokens before it: the carried ones, then `added` (those on the token as presented).
fn held_caveats(session: &SessionRecord, record: &TokenRecord, added: Vec<String>) -> Result<Vec<String>> {
    let carried = record
        .caveats
        .strip_prefix(session.refresh_caveats.as_slice())
        .and_then(<[String]>::split_last)
        .filter(|(expiry, _)| expiry.starts_with("time-before "))
        .map(|(_, carried)| carried)
        .ok_or_else(not_this_session)?;
    Ok(carried.iter().cloned().chain(added).collect())
}

/// The strategy of a renewal: the request's, when it is as strict as the session's and its
/// application's or stricter; else the stricter of those two.
fn strategy_for(state: &AppState, session: &SessionRecord, asked: Option<Strategy>) -> Result<Strategy> {
    let own = Strategy::from_name(&session.strategy);
    let app = session
        .app
        .as_deref()
        .and_then(|name| state.store.app(name))
        .and_then(|a| a.refresh_strategy.as_deref().map(Strategy::from_name).map(|p| (a.name, p)));
    let Some(asked) = asked else {
        return Ok(app.map_or(own, |(_, policy)| own.stricter(policy)));
    };
    asked.within(own, "the session")?;
    if let Some((name, policy)) = app {
        asked.within(policy, &format!("application \"{name}\""))?;
    }
    Ok(asked)
}

/// Rebuild a recorded refresh token (deterministic: same key, identifier and caveats), for the
/// answer repeated within the grace window.
fn rebuild(state: &AppState, record: &TokenRecord, claims: Option<&str>) -> Result<Token> {
    let secret = state.store.verifying_key(&record.kid).ok_or(ApiError::unauthorized("key is revoked"))?;
    let mut id = tessera_core::Identifier::new(record.kid, record.tid, record.subject.clone())?;
    if let Some(c) = claims {
        id = id.with_claims(CustomClaims::from_json(c)?);
    }
    let location = (!state.location.is_empty()).then_some(state.location.as_str());
    let mut token = Token::mint_tessera(location, &secret, &id)?;
    for c in &record.caveats {
        token = token.attenuate(c)?;
    }
    Ok(token)
}

pub(crate) async fn refresh(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RefreshRequest>,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let body = body.into_inner();
    let token = decode_token(&body.refresh_token)?;
    let sid = session_of(&token)?;
    let mut ctx = Context::now().operation("sessions.refresh").resource(format!("sessions/{sid}"));
    if let Some(ip) = client_ip_of(&state, &req)? {
        ctx = ctx.client_ip(ip);
    }
    let verified = Verifier::with_keys(&state.store).verify(&token, &[], &ctx)?;
    let r = verified.restrictions();
    let (Some(presented), Some(root_kid)) = (r.tid, r.kid) else {
        return Err(ApiError::unauthorized("not a Tessera token"));
    };
    state.store.note_use(presented, OffsetDateTime::now_utc().unix_timestamp());
    let caller = Caller {
        token: token.clone(),
        discharges: Vec::new(),
        tid: presented,
        subject: r.subject.clone().unwrap_or_default(),
    };
    let st = state.clone();
    let (session, record, added) = blocking(move || {
        let session =
            st.store.session(&sid)?.ok_or_else(|| ApiError::unauthorized("the session is unknown"))?;
        let record = st.store.token(&presented)?.ok_or_else(not_this_session)?;
        let added = added_by_holder(&st.store, &caller, &record.caveats)?;
        Ok((session, record, added))
    })
    .await?;
    // Caveats holders added to this refresh token and to those before it bind every access
    // token and every next refresh token (../shared/DESIGN.md section 16). Checked, like the
    // strategy, before anything is written.
    let held = held_caveats(&session, &record, added)?;
    let mut all = session.caveats.clone();
    all.extend(held.iter().cloned());
    access_tokens_can_carry(&all)?;
    let strategy = strategy_for(&state, &session, body.strategy)?;
    let now = OffsetDateTime::now_utc();
    let rotate = match strategy {
        Strategy::NoRefresh => false,
        Strategy::RefreshBoth => true,
        // Of the refresh token's own life, which its creator's expiry may have made shorter than
        // the session's refresh_ttl.
        Strategy::RefreshOnExpire => r.expires.is_none_or(|e| {
            let left = (e - now).as_seconds_f64();
            let life = record.expires.map_or(session.refresh_ttl as f64, |x| (x - record.created) as f64);
            left < state.config.refresh_rotate_fraction * life
        }),
    };
    let successor = if rotate {
        let ttl = Duration::from_secs(session.refresh_ttl);
        let spec = refresh_spec(&session, sid, &held, ttl, Some(presented))?;
        Some(build(&state.store, &state.location, &state.discharge_location, spec)?)
    } else {
        None
    };
    let (token_out, new) = match successor {
        Some((t, n)) => (Some(t), Some(n)),
        None => (None, None),
    };
    let st = state.clone();
    let grace = state.config.refresh_grace;
    let outcome =
        blocking(move || st.store.refresh_session(sid, presented, new, grace).map_err(ApiError::from))
            .await?;
    let (session, refresh_text) = match outcome {
        Refreshed::Current { session, rotated_to } => {
            (session, rotated_to.and(token_out).map(|t: Token| t.encode()))
        }
        Refreshed::Replayed { session, successor } => {
            let st = state.clone();
            let record = blocking(move || st.store.token(&successor).map_err(ApiError::from))
                .await?
                .ok_or_else(|| ApiError::internal("a spent refresh token's successor has no record"))?;
            let mut again = rebuild(&state, &record, session.claims.as_deref())?;
            // The same successor, bound by what this presentation carries as well (it may have
            // been narrowed otherwise than the one that spent it).
            for c in held.iter().filter(|c| !record.caveats.contains(c)) {
                again = again.attenuate(c)?;
            }
            (session, Some(again.encode()))
        }
        Refreshed::ReuseDetected => {
            state.metrics.sessions_reuse_detected.inc();
            return Err(ApiError::unauthorized(
                "refresh token reuse detected: this token was already spent, so the whole session is \
                 revoked; sign in again",
            ));
        }
    };
    let mut out = access_token(&state, sid, &session, &held, root_kid)?;
    out["session_id"] = json!(sid.to_string());
    out["refresh_rotated"] = json!(refresh_text.is_some());
    out["refresh_token"] = json!(refresh_text);
    out["strategy"] = json!(strategy.name());
    state.metrics.sessions_refreshed.inc();
    Ok(HttpResponse::Ok().json(out))
}

pub(crate) async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    sid: web::Path<String>,
) -> Result<HttpResponse> {
    // Authenticate first; then an unknown session and one the caller may not revoke look alike.
    authenticate(&state, &req)?;
    let not_found = || ApiError::not_found("no such session (or not yours to revoke)");
    let sid: SessionId =
        sid.parse().map_err(|_| ApiError::bad_request("session id must be 32 hex digits"))?;
    let st = state.clone();
    let session =
        blocking(move || st.store.session(&sid).map_err(ApiError::from)).await?.ok_or_else(not_found)?;
    authorize(&state, &req, "sessions.revoke", Some(&session.subject)).map_err(|e| {
        match e.status().as_u16() {
            403 => not_found(),
            _ => e,
        }
    })?;
    let st = state.clone();
    let entries = blocking(move || st.store.revoke_session(sid).map_err(ApiError::from)).await?;
    Ok(HttpResponse::Ok().json(json!({
        "session_id": sid.to_string(),
        "revoked": true,
        "already_revoked": entries.is_empty(),
        "revoked_tokens": entries.len(),
    })))
}
