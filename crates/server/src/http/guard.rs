//! The middleware around every request: HEAD as GET, the per-client rate limiter, the body
//! deadline, problem+json answers, closing connections whose body was not read, the budget
//! give-back of failed management calls, and response counting.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, HttpMessage as _, ResponseError};

use crate::http::problem::{self, ApiError};
use crate::http::{auth, conn};
use crate::state::AppState;
use crate::uses;

/// Paths the rate limiter does not count (compared with the raw path, so a percent-encoded
/// spelling of these is counted like any other request).
const UNLIMITED: &[&str] =
    &["/health", "/metrics", "/.well-known/jwks.json", "/.well-known/openid-configuration"];

/// Whether a request says it carries a body (a length above zero, or a transfer coding).
fn has_body(req: &ServiceRequest) -> bool {
    req.headers().contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || req.headers().get(actix_web::http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

/// Marks a request that came as HEAD and is routed as GET. A handler whose GET answer does not
/// end (the revocation stream) answers it with the headers alone: the connection would send no
/// body and the stream would never notice that its client left, holding its slot for good.
pub(crate) struct Head;

/// Rate limiting (every path but [`UNLIMITED`], whatever it routes to), response counting and the
/// budget headers of management calls, or their give-back when the answer is not a success
/// (`uses::settle`), around every request: run by `http/request_id`'s middleware, inside it. The
/// application's state is borrowed from the request, then from the answer (never cloned: its
/// count is shared by every worker, and each clone passes its cache line between cores).
pub(crate) async fn guard(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    // HEAD is served wherever GET is (RFC 9110): routed as GET; the connection still knows the
    // request was HEAD and sends the headers without the body.
    if req.method() == actix_web::http::Method::HEAD {
        req.head_mut().method = actix_web::http::Method::GET;
        req.extensions_mut().insert(Head);
    }
    // Read once: `body_deadline` replaces the payload, not the headers.
    let has_body = has_body(&req);
    let (refused, body_timeout) = match req.app_data::<web::Data<AppState>>() {
        None => (None, None),
        Some(state) => {
            // The limiter runs before routing, which decodes percent-escapes (`/%761/verify` is
            // served as `/v1/verify`): so it counts every path except the exact unlimited ones.
            let refused = if UNLIMITED.contains(&req.path()) {
                None
            } else {
                match auth::read_client_ip(state, req.request()).map(|ip| auth::limit_key(req.request(), ip))
                {
                    Err(e) => Some(e),
                    Ok(Some(key)) if !state.limiter.allow(key) => Some(ApiError::rate_limited()),
                    Ok(_) => None,
                }
            };
            if let Some(e) = &refused {
                state.metrics.observe(e.status().as_u16());
            }
            (refused, Some(state.config.body_timeout))
        }
    };
    if let Some(e) = refused {
        return Ok(req.into_response(e.error_response()));
    }
    if let (true, Some(timeout)) = (has_body, body_timeout) {
        conn::body_deadline(&mut req, timeout);
    }
    // A refused request whose body was not read to its end (an early error, one that missed
    // `--body-timeout`) ends its connection: actix would otherwise drain a chunked body for as
    // long as the client trickles it.
    let connection = req.conn_data::<std::rc::Rc<conn::Connection>>().cloned();
    let mut res = problem::as_problem(next.call(req).await?.map_into_boxed_body());
    if has_body && (res.status().is_client_error() || res.status().is_server_error()) {
        res.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        if let Some(c) = connection {
            c.stop_reading();
        }
    }
    uses::settle(&mut res).await;
    if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
        state.metrics.observe(res.status().as_u16());
    }
    Ok(res)
}
