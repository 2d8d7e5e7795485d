//! The tower [`Layer`]: axum, hyper, tonic (any `Service<http::Request<B>>` whose response body
//! can be made from bytes, for the refusals).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{ClientIp, Guard, Outcome, Refusal, RequestView};

/// Wraps a service in the guard: `ServiceBuilder::new().layer(GuardLayer::new(guard))`.
#[derive(Clone, Debug)]
pub struct GuardLayer {
    guard: Guard,
}

impl GuardLayer {
    /// The layer.
    pub fn new(guard: Guard) -> Self {
        GuardLayer { guard }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;
    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService { guard: self.guard.clone(), inner }
    }
}

/// The guarded service: the inner service gets the request only when the token allows it, with
/// a [`crate::Verified`] extension.
#[derive(Clone, Debug)]
pub struct GuardService<S> {
    guard: Guard,
    inner: S,
}

/// The refusal as an HTTP response.
fn refusal<RB: From<Bytes>>(r: &Refusal) -> Response<RB> {
    let (status, headers, body) = r.problem();
    let mut res = Response::new(RB::from(Bytes::from(body)));
    *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k), http::HeaderValue::try_from(v)) {
            res.headers_mut().insert(k, v);
        }
    }
    res
}

impl<S, B, RB> Service<Request<B>> for GuardService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let outcome = {
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri().authority().map(|a| a.as_str()))
                    .unwrap_or("");
                let view = RequestView {
                    method: req.method().as_str(),
                    host,
                    target: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                    client_ip: req.extensions().get::<ClientIp>().map(|c| c.0),
                };
                guard.check(&view, req.headers()).await
            };
            match outcome {
                Ok(Outcome::Allowed(v)) => {
                    req.extensions_mut().insert(v);
                    inner.call(req).await
                }
                Ok(Outcome::Public) => inner.call(req).await,
                Err(r) => Ok(refusal(&r)),
            }
        })
    }
}
