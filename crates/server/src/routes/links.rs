//! Single-use links (magic links): `POST /v1/links` mints a short-lived `once` token for a
//! subject, for an application to put in a link; `POST /v1/links/redeem` uses it up, exactly once
//! across the cluster, and returns what it was minted to give: a session, or a token.
//!
//! Never consume a link on a GET: mail scanners and link previews fetch every URL they see. The
//! link should open a page of the application that asks the user to confirm and then POSTs the
//! token (docs/SESSIONS.md, "Magic links").

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tessera_core::{Context, Verifier};
use time::OffsetDateTime;

use crate::http::audit::actor;
use crate::http::auth::{authorize, client_ip_of, Caller};
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::decode_token;
use crate::mint::{
    added_by_holder, build, inheritance, mint, time_and_network_bounds, Inheritance, MintSpec,
};
use crate::session::{plan, start, NewSessionRequest, Strategy};
use crate::spec::{check_subject, lifetime, restriction_caveats};
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Default life of a link.
const DEFAULT_LINK_TTL: Duration = Duration::from_secs(120);
/// Longest life of a link.
pub(crate) const MAX_LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// What a redeemed link gives.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Issue {
    /// A session (access + refresh token).
    #[default]
    Session,
    /// A Tessera token.
    Token,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewLinkRequest {
    subject: Option<String>,
    /// Life of the link (default 2 min, at most 15 min).
    ttl: Option<String>,
    #[serde(default)]
    issue: Issue,
    operations: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    client_ips: Option<Vec<String>>,
    /// Life of the token a redeemed link gives (`issue: token`; default the service's).
    token_ttl: Option<String>,
    /// Renew strategy of the session a redeemed link gives (`issue: session`).
    strategy: Option<Strategy>,
    #[serde(default)]
    description: String,
}

/// What the link's record keeps (JSON in the token record's `grant`).
#[derive(Serialize, Deserialize)]
struct Grant {
    issue: Issue,
    /// Every caveat the product carries: the creator's, then the requested ones (then, at
    /// redemption, those the link's holder added).
    caveats: Vec<String>,
    /// The creator's token is revocable, so a token the link gives is too (carries the service's
    /// `not-revoked` ticket). Absent in links made before it was kept: they live 15 min at most.
    #[serde(default)]
    revocable: bool,
    /// Token life in seconds (`issue: token`).
    token_ttl: u64,
    strategy: Option<Strategy>,
    description: String,
}

pub(crate) async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<NewLinkRequest>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    check_subject(body.subject.as_deref())?;
    let (caller, subject) = authorize(&state, &req, "links.create", body.subject.as_deref())?;
    let mut inherited = inheritance(&state.store, &caller)?;
    if caller.subject != subject {
        inherited.claims = None;
    }
    let ttl = lifetime("ttl", body.ttl.as_deref(), DEFAULT_LINK_TTL, MAX_LINK_TTL)?;
    let token_ttl =
        lifetime("token_ttl", body.token_ttl.as_deref(), state.config.default_ttl, state.config.max_ttl)?;
    if body.description.len() > tessera_store::MAX_DESCRIPTION {
        return Err(ApiError::bad_request("description is too long"));
    }
    let mut caveats = inherited.caveats.clone();
    caveats.extend(restriction_caveats(&body.operations, &body.resources, &body.client_ips)?);
    let grant = Grant {
        issue: body.issue,
        caveats,
        revocable: inherited.revocable,
        token_ttl: token_ttl.as_secs(),
        strategy: body.strategy,
        description: body.description,
    };
    // The link itself may only be redeemed, once, soon, from where the creator's token may be used.
    // It carries no ticket: only this service accepts it, and it checks revocation on every use
    // (the link is recorded as the creator's child, so it dies with the creator's token).
    let mut link_caveats = time_and_network_bounds(&inherited.caveats);
    link_caveats.push("allow links.redeem".into());
    link_caveats.push("once".into());
    let expires = OffsetDateTime::now_utc() + time::Duration::try_from(ttl).map_err(ApiError::internal)?;
    let spec = MintSpec {
        subject: subject.clone(),
        description: format!(
            "single-use link ({})",
            match grant.issue {
                Issue::Session => "session",
                Issue::Token => "token",
            }
        ),
        caveats: link_caveats,
        expires: Some(expires),
        revocable: false,
        parent: Some(caller.tid),
        claims: inherited.claims,
    };
    let grant_json = serde_json::to_string(&grant).map_err(ApiError::internal)?;
    let actor = actor(&state, &req, Some(&caller.subject), Some(caller.tid));
    let st = state.clone();
    let (token, record) = blocking(move || {
        let (token, new) = build(&st.store, &st.location, &st.discharge_location, spec)?;
        Ok((token, st.store.audited(&actor).record_link(new, grant_json)?))
    })
    .await?;
    Ok(HttpResponse::Created().json(json!({
        "link_token": token.encode(),
        "tid": record.tid.to_string(),
        "subject": subject,
        "expires": crate::http::text::rfc3339(record.expires.unwrap_or_default()),
        "issue": grant.issue,
    })))
}

/// What a redemption will issue, checked, before the link is used up.
enum Product {
    Session(Box<(tessera_core::SessionId, tessera_store::SessionRecord, MintSpec)>),
    Token(MintSpec),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedeemRequest {
    token: String,
}

pub(crate) async fn redeem(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RedeemRequest>,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let token = decode_token(&body.token)?;
    let mut ctx = Context::now().operation("links.redeem");
    if let Some(ip) = client_ip_of(&state, &req)? {
        ctx = ctx.client_ip(ip);
    }
    let verified = Verifier::with_keys(&state.store).service_caveats().verify(&token, &[], &ctx)?;
    let r = verified.restrictions();
    let (Some(tid), true) = (r.tid, r.once) else {
        return Err(ApiError::bad_request("not a link token (it is not single-use)"));
    };
    let id = token.tessera_identifier().ok_or_else(|| ApiError::unauthorized("not a Tessera token"))?;
    let id_sub = id.sub.clone();
    let presented = Caller { token: token.clone(), discharges: Vec::new(), tid, subject: id.sub.clone() };
    let st = state.clone();
    let (grant, added) = blocking(move || {
        let record = st.store.token(&tid)?;
        let Some((recorded, Some(grant))) = record.map(|rec| (rec.caveats, rec.grant)) else {
            return Err(ApiError::bad_request("this token was not minted as a link"));
        };
        // What the holder added to the link binds what it gives (or, when it cannot be
        // copied, refuses the redemption before the link is used up).
        Ok((grant, added_by_holder(&st.store, &presented, &recorded)?))
    })
    .await?;
    let grant: Grant = serde_json::from_str(&grant).map_err(ApiError::internal)?;
    let mut caveats = grant.caveats;
    caveats.extend(added);
    let inherited = Inheritance { caveats, revocable: grant.revocable, claims: id.claims };
    // Everything is checked before the one use is taken: a refusal leaves the link unspent.
    let product = match grant.issue {
        Issue::Session => {
            let body = NewSessionRequest { strategy: grant.strategy, ..NewSessionRequest::default() };
            Product::Session(Box::new(plan(&state, body, id.sub, inherited, Some(tid), false)?))
        }
        Issue::Token => {
            let expires = OffsetDateTime::now_utc()
                + time::Duration::seconds(i64::try_from(grant.token_ttl).unwrap_or(i64::MAX / 2));
            Product::Token(MintSpec {
                subject: id.sub,
                description: if grant.description.is_empty() {
                    "from a single-use link".into()
                } else {
                    grant.description
                },
                caveats: inherited.caveats,
                expires: Some(expires),
                revocable: inherited.revocable,
                parent: Some(tid),
                claims: inherited.claims,
            })
        }
    };
    // The link token is the credential: its subject and family name the actor.
    let actor = actor(&state, &req, Some(&id_sub), Some(tid));
    // The one use, exactly once across the cluster: a second redemption stops here.
    // Its budget headers go on the answer, and a failure from here on gives the budgets back.
    crate::uses::record_for_blocking(&state, &req, r).await?;
    match product {
        Product::Session(planned) => {
            let (sid, record, spec) = *planned;
            let mut out = start(state, actor, sid, record, spec).await?;
            out["issued"] = json!("session");
            Ok(HttpResponse::Ok().json(out))
        }
        Product::Token(spec) => {
            let st = state.clone();
            let minted =
                blocking(move || mint(&st.store, &actor, &st.location, &st.discharge_location, spec)).await?;
            state.metrics.tokens_minted.inc();
            Ok(HttpResponse::Ok().json(json!({
                "issued": "token",
                "token": minted.token.encode(),
                "tid": minted.record.tid.to_string(),
                "subject": minted.record.subject,
                "expires": minted.record.expires.and_then(crate::http::text::rfc3339),
            })))
        }
    }
}
