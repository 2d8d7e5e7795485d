//! The actix-web middleware: `App::new().wrap(tessera_guard::actix::GuardMiddleware::new(guard))`.
//! The handler reads the identity with `req.extensions().get::<Verified>()` (or
//! `web::ReqData<Verified>`).

use std::rc::Rc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{HttpMessage, HttpResponse};
use futures_util::future::{ready, LocalBoxFuture, Ready};

use crate::{Guard, Outcome, Refusal, RequestView};

/// The middleware factory.
#[derive(Clone, Debug)]
pub struct GuardMiddleware {
    guard: Guard,
}

impl GuardMiddleware {
    /// The middleware.
    pub fn new(guard: Guard) -> Self {
        GuardMiddleware { guard }
    }
}

impl<S, B> Transform<S, ServiceRequest> for GuardMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = GuardActix<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(GuardActix { guard: self.guard.clone(), service: Rc::new(service) }))
    }
}

/// The guarded actix service.
pub struct GuardActix<S> {
    guard: Guard,
    service: Rc<S>,
}

fn refusal(r: &Refusal) -> HttpResponse {
    let (status, headers, body) = r.problem();
    let mut res = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE),
    );
    for (k, v) in headers {
        res.insert_header((k, v));
    }
    res.body(body)
}

/// The headers the engine reads, in the `http` 1 types (actix-web 4 is on `http` 0.2).
fn token_headers(req: &ServiceRequest) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (name, value) in req.headers() {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(n, v);
        }
    }
    out
}

impl<S, B> Service<ServiceRequest> for GuardActix<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let (guard, service) = (self.guard.clone(), Rc::clone(&self.service));
        Box::pin(async move {
            let outcome = {
                // The Host header itself: connection_info() would believe X-Forwarded-Host, which a
                // client could set to pick another host's rules.
                let host = req
                    .headers()
                    .get(actix_web::http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                let view = RequestView {
                    method: req.method().as_str(),
                    host: &host,
                    target: &target,
                    client_ip: req.peer_addr().map(|a| a.ip()),
                };
                guard.check(&view, &token_headers(&req)).await
            };
            match outcome {
                Ok(Outcome::Allowed(v)) => {
                    req.extensions_mut().insert(v);
                    Ok(service.call(req).await?.map_into_boxed_body())
                }
                Ok(Outcome::Public) => Ok(service.call(req).await?.map_into_boxed_body()),
                Err(r) => Ok(req.into_response(refusal(&r))),
            }
        })
    }
}
