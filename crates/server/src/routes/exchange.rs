//! `POST /v1/exchange`: a login exchange (RFC 8693 shape); the trusted issuers and the checks
//! are [`crate::exchange`]'s.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use tessera_store::{Actor, AuditKind, Outcome, Target};

use crate::exchange::{
    admit, ask, claimed, is_json, key, Admitted, Exchange, Issue, ACCESS_TOKEN, TESSERA_TOKEN,
};
use crate::http::audit::{actor, note, note_outcome};
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::mint::{mint, Inheritance, MintSpec};
use crate::session::{plan, start, NewSessionRequest};
use crate::spec::{lifetime, restriction_caveats};
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The request checked and its ID token verified: what it is admitted for.
async fn checked(exchange: &Exchange, json: bool, body: &[u8], admin_subject: &str) -> Result<Admitted> {
    let asked = ask(exchange, json, body)?;
    let key = key(exchange, &asked).await?;
    admit(exchange, &asked, key, time::OffsetDateTime::now_utc(), admin_subject)
}

pub(crate) async fn exchange(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let Some(exchange) = state.exchange.as_ref() else {
        return Err(ApiError::not_found("no trusted issuers are configured (--exchange-config)"));
    };
    let json = is_json(&req)?;
    let admitted = match checked(exchange, json, &body, &state.config.admin_subject).await {
        Ok(a) => a,
        Err(e) => {
            // A refused sign-in (401, 403) is noted with the issuer and `sub` the ID token
            // claims (unverified: that is what was refused); never the ID token itself.
            if matches!(e.status().as_u16(), 401 | 403) {
                let (iss, sub) = claimed(json, &body);
                let mut actor = actor(&state, &req, None, None);
                actor.issuer = iss;
                // Both claims are the caller's word: the entry says so (review finding F2).
                let detail = Some(match sub {
                    Some(s) => format!("iss and sub unverified; sub={s}"),
                    None => "iss unverified".to_owned(),
                });
                note(&state, AuditKind::ExchangeRefuse, actor, Target::default(), Some(e.detail()), detail);
            }
            return Err(e);
        }
    };
    let Admitted { subject, custom, issue, issuer } = admitted;
    let now = time::OffsetDateTime::now_utc();
    let i = &exchange.issuers[issuer];
    let t = &i.config.template;
    state.metrics.exchanges.inc();
    // The trusted issuer is the actor of what the exchange records.
    let mut actor = actor(&state, &req, None, None);
    actor.issuer = Some(i.config.issuer.clone());
    let accepted = |state: &AppState, actor: Actor, target: Target, subject: &str| {
        let detail = Some(format!("sub={subject}"));
        note_outcome(state, AuditKind::ExchangeAccept, Outcome::Success, actor, target, None, detail);
    };
    match issue {
        Issue::Session => {
            let body = NewSessionRequest {
                subject: Some(subject.clone()),
                app: t.app.clone(),
                alg: t.alg.clone(),
                access_ttl: t.access_ttl.clone(),
                refresh_ttl: t.refresh_ttl.clone(),
                strategy: t.strategy,
                operations: t.operations.clone(),
                resources: t.resources.clone(),
                client_ips: t.client_ips.clone(),
                claims: None,
            };
            let inherited = Inheritance { caveats: Vec::new(), revocable: false, claims: custom };
            let (sid, record, spec) = plan(&state, body, subject.clone(), inherited, None, false)?;
            let mut out = start(state.clone(), actor.clone(), sid, record, spec).await?;
            accepted(&state, actor, Target { sid: Some(sid), ..Target::default() }, &subject);
            out["issued_token_type"] = json!(ACCESS_TOKEN);
            Ok(HttpResponse::Ok().json(out))
        }
        Issue::Token => {
            let ttl = lifetime("ttl", t.ttl.as_deref(), Duration::from_secs(3600), state.config.max_ttl)?;
            let expires = time::Duration::try_from(ttl)
                .ok()
                .and_then(|ttl| now.checked_add(ttl))
                .ok_or_else(|| ApiError::bad_request("the template's ttl ends past the calendar"))?;
            let spec = MintSpec {
                subject,
                description: format!("login through {}", i.config.issuer),
                caveats: restriction_caveats(&t.operations, &t.resources, &t.client_ips)?,
                expires: Some(expires),
                revocable: false,
                parent: None,
                claims: custom,
            };
            let st = state.clone();
            let by = actor.clone();
            let minted =
                blocking(move || mint(&st.store, &by, &st.location, &st.discharge_location, spec)).await?;
            state.metrics.tokens_minted.inc();
            let target = Target { tid: Some(minted.record.tid), ..Target::default() };
            accepted(&state, actor, target, &minted.record.subject);
            Ok(HttpResponse::Ok().json(json!({
                "access_token": minted.token.encode(),
                "issued_token_type": TESSERA_TOKEN,
                "token_type": "Bearer",
                "expires_in": ttl.as_secs(),
                "tid": minted.record.tid.to_string(),
                "subject": minted.record.subject,
            })))
        }
    }
}
