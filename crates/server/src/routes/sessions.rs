//! `/v1/sessions`: create (`POST`), renew (`POST /v1/sessions/refresh`) and revoke
//! (`POST /v1/sessions/{sid}/revoke`). What a session is: [`crate::session`].

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tessera_core::{Context, SessionId, Token, Verifier};
use tessera_store::{Actor, AuditKind, Refreshed, SessionRecord, Target, TokenRecord};
use time::OffsetDateTime;

use crate::http::audit::{actor, credential_actor, note, NOT_YOURS};
use crate::http::auth::{authenticate, authorize, authorize_unnoted, client_ip_of};
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::decode_token;
use std::time::Duration;

use tessera_core::CustomClaims;

use crate::http::auth::Caller;
use crate::mint::{added_by_holder, build, inheritance};
use crate::session::{
    access_token, access_tokens_can_carry, plan, refresh_spec, start, NewSessionRequest, Strategy,
};
use crate::spec::check_subject;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

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
    let actor = actor(&state, &req, Some(&caller.subject), Some(caller.tid));
    let out = start(state, actor, sid, record, spec).await?;
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
    // The refresh token is the credential: its subject and family name the actor.
    let actor = actor(&state, &req, r.subject.as_deref(), Some(presented));
    let st = state.clone();
    let grace = state.config.refresh_grace;
    let outcome = blocking(move || {
        st.store.audited(&actor).refresh_session(sid, presented, new, grace).map_err(ApiError::from)
    })
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
    let sid: SessionId =
        sid.parse().map_err(|_| ApiError::bad_request("session id must be 32 hex digits"))?;
    let actor = credential_actor(&state, &req);
    // Both refusals are noted alike too: the caller reads its own entries back.
    let not_found = |actor: Actor| {
        let target = Target { sid: Some(sid), ..Target::default() };
        note(&state, AuditKind::Refused, actor, target, Some(NOT_YOURS), Some("op=sessions.revoke".into()));
        ApiError::not_found("no such session (or not yours to revoke)")
    };
    let st = state.clone();
    let Some(session) = blocking(move || st.store.session(&sid).map_err(ApiError::from)).await? else {
        return Err(not_found(actor));
    };
    match authorize_unnoted(&state, &req, "sessions.revoke", Some(&session.subject)) {
        Err(e) if e.status().as_u16() == 403 => return Err(not_found(actor)),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let st = state.clone();
    let entries =
        blocking(move || st.store.audited(&actor).revoke_session(sid).map_err(ApiError::from)).await?;
    Ok(HttpResponse::Ok().json(json!({
        "session_id": sid.to_string(),
        "revoked": true,
        "already_revoked": entries.is_empty(),
        "revoked_tokens": entries.len(),
    })))
}
