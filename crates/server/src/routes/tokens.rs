//! `/v1/tokens`: mint (`POST`), list (`GET`) and revoke (`POST /v1/tokens/{tid}/revoke`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tessera_core::TokenId;
use tessera_store::{Actor, AuditKind, RevocationTarget, Target, TokenRecord};
use time::OffsetDateTime;

use crate::http::audit::{actor, credential_actor, note, NOT_YOURS};
use crate::http::auth::{authenticate, authorize, authorize_unnoted};
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::rfc3339;
use crate::mint::{inheritance, mint, Inheritance, MintSpec};
use crate::spec::{check_subject, claims_for, lifetime, restriction_caveats};
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

// ---- mint ------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MintRequest {
    subject: Option<String>,
    #[serde(default)]
    description: String,
    ttl: Option<String>,
    operations: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    client_ips: Option<Vec<String>>,
    #[serde(default)]
    revocable: bool,
    claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// A `rate-limit` budget for the new token, e.g. `100/1m`.
    rate_limit: Option<String>,
}

impl MintRequest {
    /// The subject asked for, if any.
    pub(crate) fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

#[derive(Serialize)]
struct TokenView {
    tid: String,
    kid: String,
    subject: String,
    description: String,
    created: Option<String>,
    expires: Option<String>,
    caveats: Vec<String>,
    revoked: bool,
    revoked_at: Option<String>,
    parent: Option<String>,
    /// Last successful use (written in batches: up to `--housekeeping-interval` stale).
    last_used: Option<String>,
    /// The single use of a `once` token.
    used_at: Option<String>,
}

impl From<TokenRecord> for TokenView {
    fn from(r: TokenRecord) -> Self {
        TokenView {
            tid: r.tid.to_string(),
            kid: r.kid.to_string(),
            subject: r.subject,
            description: r.description,
            created: rfc3339(r.created),
            expires: r.expires.and_then(rfc3339),
            caveats: r.caveats,
            revoked: r.revoked_at.is_some(),
            revoked_at: r.revoked_at.and_then(rfc3339),
            parent: r.parent.map(|p| p.to_string()),
            last_used: r.last_used.and_then(rfc3339),
            used_at: r.used_at.and_then(rfc3339),
        }
    }
}
/// Everything a mint request asks for, checked, on top of what the caller's token passes on.
/// No I/O: the handler and the `http_mint` fuzz target share it.
pub(crate) fn mint_spec(
    config: &crate::config::Config,
    body: MintRequest,
    subject: String,
    inherited: Inheritance,
    parent: Option<TokenId>,
    may_set_claims: bool,
) -> Result<MintSpec> {
    let claims = claims_for(body.claims, inherited.claims, may_set_claims)?;
    let never = body.ttl.as_deref() == Some("never");
    if never && !config.allow_no_expiry {
        return Err(ApiError::bad_request(
            "every token must expire: give a ttl (the service runs without --allow-no-expiry)",
        ));
    }
    let ttl = if never {
        config.max_ttl
    } else {
        lifetime("ttl", body.ttl.as_deref(), config.default_ttl, config.max_ttl)?
    };
    let revocable = body.revocable || inherited.revocable;
    let mut caveats = inherited.caveats;
    caveats.extend(restriction_caveats(&body.operations, &body.resources, &body.client_ips)?);
    if let Some(budget) = &body.rate_limit {
        // Written canonically (`3/120m` is `rate-limit 3/2h`); what does not parse is refused below.
        let c = match tessera_core::RateLimit::parse(budget) {
            Some(limit) => format!("rate-limit {limit}"),
            None => format!("rate-limit {budget}"),
        };
        tessera_core::Predicate::validate(c.as_bytes()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        caveats.push(c);
    }
    if body.description.len() > tessera_store::MAX_DESCRIPTION {
        return Err(ApiError::bad_request(format!(
            "description is over {} bytes",
            tessera_store::MAX_DESCRIPTION
        )));
    }
    let expires = OffsetDateTime::now_utc()
        .checked_add(time::Duration::try_from(ttl).map_err(|_| ApiError::bad_request("ttl is too long"))?)
        .ok_or_else(|| ApiError::bad_request("ttl is too long"))?;
    let expires = (!never).then_some(expires);
    Ok(MintSpec { subject, description: body.description, caveats, expires, revocable, parent, claims })
}

pub(crate) async fn mint_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<MintRequest>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    check_subject(body.subject.as_deref())?;
    let (caller, subject) = authorize(&state, &req, "tokens.mint", body.subject.as_deref())?;
    // The new token is the caller's child: never more authority or life than the caller's token
    // (it inherits its caveats and those of its discharges), revocable if the caller's token is,
    // and revoked with it.
    let mut inherited = inheritance(&state.store, &caller)?;
    let admin = caller.subject == state.config.admin_subject;
    if caller.subject != subject {
        // Claims speak about the caller's subject; a token for someone else starts without them.
        inherited.claims = None;
    }
    let spec = mint_spec(&state.config, body, subject, inherited, Some(caller.tid), admin)?;
    let claims = spec.claims.as_ref().map(|c| c.as_map().clone());
    let revocable = spec.revocable;
    let actor = actor(&state, &req, Some(&caller.subject), Some(caller.tid));
    let st = state.clone();
    let minted =
        blocking(move || mint(&st.store, &actor, &st.location, &st.discharge_location, spec)).await?;
    state.metrics.tokens_minted.inc();
    let view = TokenView::from(minted.record);
    Ok(HttpResponse::Created().json(json!({
        "token": minted.token.encode(),
        "tid": view.tid,
        "kid": view.kid,
        "subject": view.subject,
        "expires": view.expires,
        "caveats": view.caveats,
        "revocable": revocable,
        "parent": view.parent,
        "claims": claims,
    })))
}

// ---- list and revoke ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    subject: Option<String>,
    /// Only unrevoked tokens expiring within this long (e.g. `7d`); expired ones are left out.
    expiring_within: Option<String>,
}

pub(crate) async fn list_tokens(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse> {
    let query = query.into_inner();
    let (_, subject) = authorize(&state, &req, "tokens.list", query.subject.as_deref())?;
    let within =
        match &query.expiring_within {
            None => None,
            Some(w) => Some(humantime::parse_duration(w).map_err(|e| {
                ApiError::bad_request(format!("expiring_within \"{w:.40}\": {e} (use e.g. 7d)"))
            })?),
        };
    let st = state.clone();
    let records = blocking(move || st.store.tokens_of(&subject).map_err(ApiError::from)).await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let records = records.into_iter().filter(|r| match within {
        None => true,
        Some(w) => {
            let until = now.saturating_add(i64::try_from(w.as_secs()).unwrap_or(i64::MAX));
            r.revoked_at.is_none() && r.expires.is_some_and(|e| e > now && e <= until)
        }
    });
    let tokens: Vec<TokenView> = records.map(TokenView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "tokens": tokens })))
}

fn parse_tid(s: &str) -> Result<TokenId> {
    s.parse().map_err(|_| ApiError::bad_request("token id must be 32 hex digits"))
}

pub(crate) async fn revoke_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let tid = parse_tid(&path)?;
    // Authenticate before anything is said about the token id: a bad credential gets 401 for
    // every id. After that, an unknown id and one this credential may not revoke get the same
    // answer, which names nobody.
    authenticate(&state, &req)?;
    let actor = credential_actor(&state, &req);
    // Both refusals are noted alike too: the caller reads its own entries back.
    let hidden = |actor: Actor| {
        let target = Target { tid: Some(tid), ..Target::default() };
        note(&state, AuditKind::Refused, actor, target, Some(NOT_YOURS), Some("op=tokens.revoke".into()));
        ApiError::not_found(format!("no token {tid} that this credential may revoke"))
    };
    let st = state.clone();
    let Some(record) = blocking(move || st.store.token(&tid).map_err(ApiError::from)).await? else {
        return Err(hidden(actor));
    };
    match authorize_unnoted(&state, &req, "tokens.revoke", Some(&record.subject)) {
        Err(e) if e.status() == StatusCode::FORBIDDEN => return Err(hidden(actor)),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let st = state.clone();
    let entries =
        blocking(move || st.store.audited(&actor).revoke_token(tid).map_err(ApiError::from)).await?;
    state.metrics.tokens_revoked.add(entries.len() as u64);
    let descendants: Vec<String> = entries
        .iter()
        .skip(1)
        .filter_map(|e| match e.target {
            RevocationTarget::Token(t) => Some(t.to_string()),
            RevocationTarget::Key(_) => None,
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "tid": tid.to_string(),
        "revoked": true,
        "already_revoked": entries.is_empty(),
        "seq": entries.first().map(|e| e.seq),
        "descendants_revoked": descendants,
    })))
}
