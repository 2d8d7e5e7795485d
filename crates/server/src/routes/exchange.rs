//! `POST /v1/exchange`: a login exchange (RFC 8693 shape); the trusted issuers and the checks
//! are [`crate::exchange`]'s.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::exchange::{admit, ask, is_json, key, Admitted, Issue, ACCESS_TOKEN, TESSERA_TOKEN};
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::mint::{mint, Inheritance, MintSpec};
use crate::session::{plan, start, NewSessionRequest};
use crate::spec::{lifetime, restriction_caveats};
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

pub(crate) async fn exchange(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let Some(exchange) = state.exchange.as_ref() else {
        return Err(ApiError::not_found("no trusted issuers are configured (--exchange-config)"));
    };
    let asked = ask(exchange, is_json(&req)?, &body)?;
    let key = key(exchange, &asked).await?;
    let now = time::OffsetDateTime::now_utc();
    let Admitted { subject, custom, issue, issuer } =
        admit(exchange, &asked, key, now, &state.config.admin_subject)?;
    let i = &exchange.issuers[issuer];
    let t = &i.config.template;
    state.metrics.exchanges.inc();
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
            let (sid, record, spec) = plan(&state, body, subject, inherited, None, false)?;
            let mut out = start(state, sid, record, spec).await?;
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
            let minted =
                blocking(move || mint(&st.store, &st.location, &st.discharge_location, spec)).await?;
            state.metrics.tokens_minted.inc();
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
