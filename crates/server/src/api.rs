//! The HTTP endpoints. Shapes are documented in `docs/API.md` and `docs/openapi.yaml`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tessera_core::{CustomClaims, KeyId, Token, TokenId};
use tessera_store::{KeyInfo, KeyState, Revocation, RevocationTarget, TokenRecord};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::auth::{authenticate, authorize};
use crate::mint::{inheritance, mint, Inheritance, MintSpec};
use crate::problem::ApiError;
use crate::{ticket, AppState};

type Result<T, E = ApiError> = std::result::Result<T, E>;

pub(crate) fn rfc3339(t: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(t).ok().and_then(|t| t.format(&Rfc3339).ok())
}

pub(crate) fn parse_time(s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| ApiError::bad_request(format!("\"{s}\" is not an RFC 3339 time")))
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    web::block(f).await.map_err(ApiError::internal)?
}

pub(crate) fn decode_token(text: &str) -> Result<Token> {
    Token::decode(text).map_err(ApiError::from)
}

pub(crate) fn decode_all(texts: &[String]) -> Result<Vec<Token>> {
    if texts.len() > tessera_core::limits::MAX_DISCHARGES {
        return Err(ApiError::too_large(format!(
            "at most {} discharges",
            tessera_core::limits::MAX_DISCHARGES
        )));
    }
    texts.iter().map(|t| decode_token(t)).collect()
}

/// One word per argument: caveat arguments are separated by single spaces.
pub(crate) fn words(what: &str, items: &[String]) -> Result<String> {
    if items.is_empty() {
        return Err(ApiError::bad_request(format!("{what} must not be empty (omit it for no restriction)")));
    }
    if let Some(bad) = items.iter().find(|i| i.is_empty() || i.chars().any(char::is_whitespace)) {
        return Err(ApiError::bad_request(format!("{what} entry \"{bad}\" must be one non-empty word")));
    }
    Ok(items.join(" "))
}

// ---- health and metrics --------------------------------------------------------------------

pub(crate) async fn health(state: web::Data<AppState>) -> HttpResponse {
    let store = &state.store;
    let active = store.active_key().is_some();
    let backend = if store.is_shared() { "postgres" } else { "redb" };
    let lag = store.follower_lag().as_secs_f64();
    match store.check_fresh() {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ok", "active_key": active, "backend": backend,
            "last_applied": store.last_applied(), "follower_lag_seconds": lag})),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({"status": "stale", "active_key": active,
            "backend": backend, "last_applied": store.last_applied(), "follower_lag_seconds": lag,
            "detail": e.to_string()})),
    }
}

pub(crate) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render(&state.store))
}

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

/// Subject names: 1 to 256 bytes without control characters.
pub(crate) fn check_subject(subject: Option<&str>) -> Result<()> {
    match subject {
        Some(s) if s.is_empty() || s.len() > tessera_core::MAX_SUBJECT || s.chars().any(char::is_control) => {
            Err(ApiError::bad_request("subject must be 1 to 256 bytes without control characters"))
        }
        Some(s) if s.starts_with(crate::auth::APP_SUBJECT_PREFIX) => Err(ApiError::bad_request(
            "subjects starting with app: are application credentials: register an application (POST /v1/apps)",
        )),
        _ => Ok(()),
    }
}

/// A lifetime like `30m`: `default` when absent; positive and at most `max`.
pub(crate) fn lifetime(
    what: &str,
    asked: Option<&str>,
    default: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration> {
    let ttl = match asked {
        None => default,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("{what} \"{t:.40}\": {e} (use e.g. 30m, 6h, 7d)")))?,
    };
    if ttl > max || ttl.is_zero() {
        return Err(ApiError::bad_request(format!(
            "{what} must be positive and at most {}",
            humantime::format_duration(max)
        )));
    }
    Ok(ttl)
}

/// The caveats of requested `operations`, `resources` and `client_ips`, checked.
pub(crate) fn restriction_caveats(
    operations: &Option<Vec<String>>,
    resources: &Option<Vec<String>>,
    client_ips: &Option<Vec<String>>,
) -> Result<Vec<String>> {
    let mut caveats = Vec::new();
    for (what, name, items) in [
        ("operations", "allow", operations),
        ("resources", "resource", resources),
        ("client_ips", "client-ip", client_ips),
    ] {
        if let Some(items) = items {
            let c = format!("{name} {}", words(what, items)?);
            tessera_core::Predicate::validate(c.as_bytes())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            caveats.push(c);
        }
    }
    Ok(caveats)
}

/// The claims of a new token. Claims are the issuer's word about the subject: a subject cannot
/// vouch for itself. A child keeps the claims of its parent (the handler passes them only for
/// the parent's own subject); only the admin sets new ones.
pub(crate) fn claims_for(
    asked: Option<serde_json::Map<String, serde_json::Value>>,
    inherited: Option<CustomClaims>,
    may_set_claims: bool,
) -> Result<Option<CustomClaims>> {
    match asked {
        None => Ok(inherited),
        Some(_) if !may_set_claims => Err(ApiError::forbidden(
            "only the admin subject sets custom claims; a token you mint for yourself carries the claims \
             of your own token",
        )),
        Some(asked) => {
            let mut all = inherited.map(|c| c.as_map().clone()).unwrap_or_default();
            all.extend(asked);
            Ok(Some(CustomClaims::new(all).map_err(|e| ApiError::bad_request(e.to_string()))?))
        }
    }
}

/// Everything a mint request asks for, checked, on top of what the caller's token passes on.
/// No I/O: the handler and the `http_mint` fuzz target share it.
pub(crate) fn mint_spec(
    config: &crate::Config,
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
    let st = state.clone();
    let minted = blocking(move || mint(&st.store, &st.location, &st.discharge_location, spec)).await?;
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
    let hidden = || ApiError::not_found(format!("no token {tid} that this credential may revoke"));
    let st = state.clone();
    let record = blocking(move || st.store.token(&tid).map_err(ApiError::from)).await?.ok_or_else(hidden)?;
    authorize(&state, &req, "tokens.revoke", Some(&record.subject)).map_err(|e| match e.status() {
        StatusCode::FORBIDDEN => hidden(),
        _ => e,
    })?;
    let st = state.clone();
    let entries = blocking(move || st.store.revoke_token(tid).map_err(ApiError::from)).await?;
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

// ---- discharge ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DischargeRequest {
    ticket: String,
}

pub(crate) async fn discharge(
    state: web::Data<AppState>,
    body: web::Json<DischargeRequest>,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let raw = crate::b64_decode(&body.ticket)
        .ok_or_else(|| ApiError::bad_request("ticket must be the caveat id in base64url"))?;
    let kid = ticket::kid_of(&raw).ok_or_else(|| ApiError::bad_request("not a Tessera discharge ticket"))?;
    let secret = state
        .store
        .verifying_key(&kid)
        .ok_or_else(|| ApiError::forbidden(format!("key {kid} is revoked or unknown")))?;
    let t = ticket::open(&raw, &secret).ok_or_else(|| ApiError::bad_request("ticket does not open"))?;
    if t.condition != ticket::NOT_REVOKED {
        return Err(ApiError::bad_request(format!("unknown ticket condition \"{}\"", t.condition)));
    }
    if state.store.is_token_revoked(&t.tid) {
        return Err(ApiError::forbidden(format!("token {} is revoked", t.tid)));
    }
    let expires = (OffsetDateTime::now_utc() + state.config.discharge_ttl)
        .replace_nanosecond(0)
        .map_err(ApiError::internal)?;
    let d = Token::discharge(Some(&state.discharge_location), &t.caveat_key, &raw)?
        .attenuate(&format!("time-before {}", expires.format(&Rfc3339).map_err(ApiError::internal)?))?;
    state.metrics.discharges_issued.inc();
    Ok(HttpResponse::Ok().json(json!({
        "discharge": d.encode(),
        "expires": expires.format(&Rfc3339).ok(),
        "tid": t.tid.to_string(),
        "kid": t.kid.to_string(),
    })))
}

// ---- keys -----------------------------------------------------------------------------------

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
    let signing: Vec<_> = state.store.signing_keys().iter().map(crate::jwt::signing_key_view).collect();
    Ok(HttpResponse::Ok()
        .json(json!({ "keys": keys.iter().map(key_view).collect::<Vec<_>>(), "signing_keys": signing })))
}

pub(crate) async fn rotate_keys(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    authorize(&state, &req, "keys.rotate", None)?;
    let st = state.clone();
    let key = blocking(move || st.store.rotate().map_err(ApiError::from)).await?;
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
    authorize(&state, &req, "keys.revoke", None)?;
    let kid: KeyId = path.parse().map_err(|_| ApiError::bad_request("key id must be 16 hex digits"))?;
    let st = state.clone();
    let (entry, rotated_to) =
        blocking(move || st.store.revoke_key_replacing(kid).map_err(ApiError::from)).await?;
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

// ---- revocation feed ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

fn revocation_view(r: &Revocation) -> serde_json::Value {
    let (kind, id) = match r.target {
        RevocationTarget::Token(tid) => ("token", tid.to_string()),
        RevocationTarget::Key(kid) => ("key", kid.to_string()),
    };
    json!({ "seq": r.seq, "at": rfc3339(r.at), "kind": kind, "id": id })
}

pub(crate) async fn revocations(
    state: web::Data<AppState>,
    query: web::Query<FeedQuery>,
) -> Result<HttpResponse> {
    // A stale node answers at once rather than after waiting on the database it cannot reach.
    state.store.check_fresh()?;
    let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
    let after = query.after;
    let st = state.clone();
    let entries = blocking(move || st.store.revocations_after(after, limit).map_err(ApiError::from)).await?;
    let last = entries.last().map_or(after, |e| e.seq);
    Ok(HttpResponse::build(StatusCode::OK).json(json!({
        "revocations": entries.iter().map(revocation_view).collect::<Vec<_>>(),
        "last_seq": last,
    })))
}
