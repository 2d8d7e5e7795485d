//! `POST /v1/verify`: a token and its discharges checked against a request context, with the
//! checks that need the service (budgets, single use, last use) after a success.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use tessera_core::{Context, CustomClaims, Restrictions};
use time::OffsetDateTime;

use crate::http::problem::ApiError;
use crate::http::text::parse_time;
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

/// A verify request, decoded and checked against the store's keys: the JSON answer, or why not.
/// No I/O: the handler and the `http_verify` fuzz target share it.
pub(crate) fn verify_request(keys: &dyn tessera_core::KeyProvider, body: VerifyRequest) -> Result<Vec<u8>> {
    let ctx = context(body.context)?;
    crate::verifying::check(keys, None, &body.token, &body.discharges, &ctx)?.rendered(answer)
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
    let body = body.into_inner();
    let ctx = context(body.context).inspect_err(|_| {
        if let Some(state) = req.app_data::<web::Data<AppState>>() {
            state.metrics.verify_denied.inc();
        }
    })?;
    // The one verification every endpoint shares (staleness, memo, revocation, uses).
    let (checked, headers) = crate::verifying::verify(&req, &body.token, &body.discharges, &ctx).await?;
    // A remembered token keeps its answer too: it depends on the restrictions alone.
    let bytes = checked.rendered(answer)?;
    let mut res = HttpResponse::Ok();
    for (name, value) in headers {
        res.insert_header((name, value));
    }
    Ok(res.content_type("application/json").body(bytes))
}
