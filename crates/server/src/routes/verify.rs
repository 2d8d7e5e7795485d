//! `POST /v1/verify`: a token and its discharges checked against a request context, with the
//! checks that need the service (budgets, single use, last use) after a success.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use tessera_core::{Context, CustomClaims, Restrictions, SignatureMemo, Verifier};
use time::OffsetDateTime;

use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::{decode_all, decode_token, parse_time};
use crate::state::AppState;
use crate::view::RestrictionsView;

type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestContext {
    operation: Option<String>,
    resource: Option<String>,
    client_ip: Option<String>,
    time: Option<String>,
    /// The authenticated requester: a token of another subject is refused.
    subject: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyRequest {
    token: String,
    #[serde(default)]
    discharges: Vec<String>,
    #[serde(default)]
    context: RequestContext,
}

fn context(c: RequestContext) -> Result<Context> {
    let time = match &c.time {
        Some(t) => parse_time(t)?,
        None => OffsetDateTime::now_utc(),
    };
    let mut ctx = Context::at(time);
    ctx.operation = c.operation;
    ctx.resource = c.resource;
    ctx.subject = c.subject;
    if let Some(ip) = &c.client_ip {
        let ip = ip.parse().map_err(|_| ApiError::bad_request(format!("\"{ip}\" is not an IP address")))?;
        ctx = ctx.client_ip(ip);
    }
    Ok(ctx)
}

#[derive(Serialize)]
struct Verified<'a> {
    valid: bool,
    subject: Option<&'a str>,
    tid: Option<String>,
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    restrictions: RestrictionsView<'a>,
}

/// The state, borrowed from the request (no reference-count traffic on the hot path).
fn state_of(req: &HttpRequest) -> Result<&AppState> {
    req.app_data::<web::Data<AppState>>().map(|d| &***d).ok_or_else(|| ApiError::internal("no app state"))
}

/// A verify request, decoded and checked against the store's keys: the JSON answer, or why not.
/// No I/O: the handler and the `http_verify` fuzz target share it.
pub(crate) fn verify_request(keys: &dyn tessera_core::KeyProvider, body: VerifyRequest) -> Result<Vec<u8>> {
    verify_checked(keys, None, body).map(|(bytes, _)| bytes)
}

/// [`verify_request`], with the restrictions (for the checks that need the service). A token
/// without discharges goes through the signature memo, when there is one.
fn verify_checked(
    keys: &dyn tessera_core::KeyProvider,
    memo: Option<&SignatureMemo>,
    body: VerifyRequest,
) -> Result<(Vec<u8>, Arc<Restrictions>)> {
    let ctx = context(body.context)?;
    let mut verifier = Verifier::with_keys(keys).service_caveats();
    if body.discharges.is_empty() {
        if let Some(memo) = memo {
            verifier = verifier.memo(memo);
        }
        // A remembered token keeps its answer too: it depends on the restrictions alone.
        let v = verifier.verify_text(&body.token, &ctx)?;
        Ok((v.rendered(answer)?.to_vec(), v.shared_restrictions()))
    } else {
        let token = decode_token(&body.token)?;
        let discharges = decode_all(&body.discharges)?;
        let r = verifier.verify(&token, &discharges, &ctx)?.restrictions();
        Ok((answer(&r)?, Arc::new(r)))
    }
}

/// The JSON answer to a successful verification.
fn answer(r: &Restrictions) -> Result<Vec<u8>> {
    let out = Verified {
        valid: true,
        subject: r.subject.as_deref(),
        tid: r.tid.map(|t| t.to_string()),
        kid: r.kid.map(|k| k.to_string()),
        claims: r.claims.as_ref().map(CustomClaims::as_map),
        restrictions: RestrictionsView::new(r),
    };
    serde_json::to_vec(&out).map_err(ApiError::internal)
}

pub(crate) async fn verify(req: HttpRequest, body: web::Json<VerifyRequest>) -> Result<HttpResponse> {
    let state = state_of(&req)?;
    state.store.check_fresh()?;
    let outcome = match verify_checked(&state.store, Some(&state.memo), body.into_inner()) {
        Ok((bytes, r)) if crate::uses::needs_database(state, &r) => {
            let st = web::Data::clone(
                req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::internal("no app state"))?,
            );
            blocking(move || crate::uses::record(&st, &r)).await.map(|h| (bytes, h))
        }
        Ok((bytes, r)) => crate::uses::record(state, &r).map(|h| (bytes, h)),
        Err(e) => Err(e),
    };
    match outcome {
        Ok((bytes, headers)) => {
            state.metrics.verify_allowed.inc();
            let mut res = HttpResponse::Ok();
            for (name, value) in headers {
                res.insert_header((name, value));
            }
            Ok(res.content_type("application/json").body(bytes))
        }
        Err(e) => {
            state.metrics.verify_denied.inc();
            Err(e)
        }
    }
}
