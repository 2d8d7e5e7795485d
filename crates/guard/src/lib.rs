//! Tessera in a Rust service: check every request's capability token with a Tessera service,
//! from a tower [`Layer`](tower_layer::Layer) (axum, hyper, tonic) or an actix-web middleware,
//! both over one engine, [`Guard`].
//!
//! For each request the guard reads the token (`Authorization: Bearer`, or the header or cookie a
//! policy names), turns the request into an operation on a resource (a [`tessera_policy::Policy`],
//! the language of `/v1/authz`, or a closure), asks the service (`POST /v1/verify`, connections
//! reused) and either calls the handler with the verified identity as a request extension
//! ([`Verified`]) or answers 400, 401, 403, 429 or 503 as problem+json ([`Refusal`]). The
//! client's address goes to the service in `X-Forwarded-For` and `Forwarded` too, so a service
//! that lists the guard among its trusted proxies counts its per-client rate limit per client;
//! requests carrying a method override header are refused (400).
//!
//! Allowed decisions are cached (see [`GuardBuilder`]): keyed by two keyed hashes of the token
//! text and the context (SipHash-1-3 to index, SipHash-2-4 to check) under keys drawn at start, bounded in entries and bytes, for at most a TTL and
//! the token's expiry, and dropped as soon as the service's revocation stream
//! (`GET /v1/revocations/stream`) names the token's family or key. On a `reset` or the stream's
//! loss the whole cache is dropped, and nothing is cached until it is back; a stream not heard
//! for the staleness counts as lost. Refusals, and tokens with budgets or single use, are never
//! cached. When the service cannot be reached, every request that is not in the cache is
//! refused with 503: the guard fails closed.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cache;
mod engine;
mod stream;

#[cfg(feature = "actix")]
pub mod actix;
#[cfg(feature = "tower")]
mod tower;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
pub use tessera_policy::Policy;

#[cfg(feature = "tower")]
pub use crate::tower::{GuardLayer, GuardService};
pub use engine::Stats;

/// Errors building a guard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service URL is not an `http://` or `https://` URL.
    #[error("the Tessera service URL {0:.100} is not an http:// or https:// URL")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// The operating system gave no random bytes for the cache key.
    #[error("no random bytes for the cache key: {0}")]
    Random(String),
    /// A limit that makes no sense (e.g. a staleness of zero).
    #[error("{0}")]
    Limit(&'static str),
}

/// What a request looks like to the mapping from requests to operations on resources.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method, in capitals.
    pub method: &'a str,
    /// The `Host` the client asked for (empty when unknown).
    pub host: &'a str,
    /// The request target: path and query.
    pub target: &'a str,
    /// The client's address, when the server knows it (actix: the peer; tower: a [`ClientIp`]
    /// extension put there by an outer layer). Sent to the service as the context's `client_ip`.
    pub client_ip: Option<IpAddr>,
}

/// The client's address for a tower service: insert it as a request extension (e.g. from axum's
/// `ConnectInfo`) before the guard layer, so tokens limited to networks are checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// A closure from a request to the operation and resource a token must allow (`None`: refused).
pub type MapFn = dyn Fn(&RequestView<'_>) -> Option<(String, String)> + Send + Sync;

/// How requests become operations on resources.
#[derive(Clone)]
pub enum Mapping {
    /// A forward-auth policy (the same file `/v1/authz` reads): public paths pass without a
    /// token, unmatched ones are refused.
    Policy(Arc<Policy>),
    /// A closure.
    Closure(Arc<MapFn>),
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mapping::Policy(p) => write!(f, "Policy({} rules)", p.rules()),
            Mapping::Closure(_) => f.write_str("Closure"),
        }
    }
}

/// What a token allows, as `/v1/verify` answers it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Restrictions {
    /// Not valid before (RFC 3339).
    pub not_before: Option<String>,
    /// Expiry (RFC 3339).
    pub expires: Option<String>,
    /// Operations allowed (`None`: any).
    pub operations: Option<Vec<String>>,
    /// Resource patterns allowed (`None`: any).
    pub resources: Option<Vec<String>>,
    /// Client networks allowed (`None`: any).
    pub client_ips: Option<Vec<String>>,
    /// Budgets (`100/1m`...).
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// Single use.
    #[serde(default)]
    pub once: bool,
}

#[derive(Debug, Deserialize)]
struct Identity {
    subject: Option<String>,
    tid: Option<String>,
    kid: Option<String>,
    #[serde(default)]
    claims: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    restrictions: Restrictions,
}

/// The verified identity the handler gets as a request extension: cheap to clone.
#[derive(Debug, Clone)]
pub struct Verified(Arc<Identity>);

impl Verified {
    /// The token's subject.
    pub fn subject(&self) -> Option<&str> {
        self.0.subject.as_deref()
    }
    /// The token family's id (what revocation names).
    pub fn tid(&self) -> Option<&str> {
        self.0.tid.as_deref()
    }
    /// The root key's id.
    pub fn kid(&self) -> Option<&str> {
        self.0.kid.as_deref()
    }
    /// The issuer's custom claims.
    pub fn claims(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.0.claims.as_ref()
    }
    /// What the token allows.
    pub fn restrictions(&self) -> &Restrictions {
        &self.0.restrictions
    }

    /// Roughly the bytes this identity holds (for the cache's byte bound).
    fn approx_bytes(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, String::len);
        let v = |o: &Option<Vec<String>>| o.as_ref().map_or(0, |v| v.iter().map(|x| x.len() + 24).sum());
        let r = &self.0.restrictions;
        std::mem::size_of::<Identity>()
            + s(&self.0.subject)
            + s(&self.0.tid)
            + s(&self.0.kid)
            + self.0.claims.as_ref().map_or(0, |c| serde_json::Value::Object(c.clone()).to_string().len() * 2)
            + s(&r.not_before)
            + s(&r.expires)
            + v(&r.operations)
            + v(&r.resources)
            + v(&r.client_ips)
    }
}

/// Why a request is refused; [`Refusal::problem`] is its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token (401).
    NoToken,
    /// The token is invalid, revoked, expired, used up (401).
    Unauthorized(String),
    /// The token does not allow this request, or no rule covers it (403).
    Forbidden(String),
    /// A budget of the token is spent (429), with the service's `Retry-After` and `RateLimit`
    /// headers.
    RateLimited(String, Vec<(String, String)>),
    /// The request's path cannot be read unambiguously, or it carries a method override
    /// (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`) (400).
    BadRequest(String),
    /// The service cannot be reached or cannot answer: fail closed (503).
    Unavailable(String),
    /// The service's own per-client rate limit (`--rate-limit`) refused the call: the service is
    /// refusing this client's address or this guard, not the token (503, with the service's
    /// `Retry-After`).
    Throttled(String, Option<String>),
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NoToken | Refusal::Unauthorized(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::RateLimited(..) => 429,
            Refusal::BadRequest(_) => 400,
            Refusal::Unavailable(_) | Refusal::Throttled(..) => 503,
        }
    }

    /// The answer: status, headers and an `application/problem+json` body (RFC 9457).
    pub fn problem(&self) -> (u16, Vec<(String, String)>, String) {
        let (title, detail) = match self {
            Refusal::NoToken => ("missing or invalid credential", "a bearer token is required"),
            Refusal::Unauthorized(d) => ("missing or invalid credential", d.as_str()),
            Refusal::Forbidden(d) => ("not allowed", d.as_str()),
            Refusal::RateLimited(d, _) => ("token rate limit", d.as_str()),
            Refusal::BadRequest(d) => ("malformed request", d.as_str()),
            Refusal::Unavailable(d) | Refusal::Throttled(d, _) => ("unavailable", d.as_str()),
        };
        let status = self.status();
        let mut headers = vec![("Content-Type".to_owned(), "application/problem+json".to_owned())];
        match self {
            Refusal::NoToken | Refusal::Unauthorized(_) => {
                headers.push(("WWW-Authenticate".into(), "Bearer".into()));
            }
            Refusal::RateLimited(_, h) => headers.extend(h.iter().cloned()),
            Refusal::Throttled(_, Some(retry_after)) => {
                headers.push(("Retry-After".into(), retry_after.clone()));
            }
            _ => {}
        }
        let body =
            serde_json::json!({"type": "about:blank", "title": title, "status": status, "detail": detail});
        (status, headers, body.to_string())
    }
}

/// The outcome of a check that lets the request through.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A public path (a policy's `public = true`): no token was needed or read.
    Public,
    /// The token allows the request.
    Allowed(Verified),
}

/// Builds a [`Guard`].
#[derive(Debug, Clone)]
pub struct GuardBuilder {
    url: String,
    mapping: Mapping,
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    staleness: Duration,
    timeout: Duration,
}

impl GuardBuilder {
    /// How long an allowed decision may be reused at most (default 60 s; never past the token's
    /// expiry). Zero: no cache.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// The most decisions cached (default 10,000); when full, the cache starts over.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }
    /// The most bytes of decisions cached (default 16 MiB, counted approximately per entry).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }
    /// How long the revocation stream may be silent before it counts as lost (default 40 s; set
    /// it above the service's `--stream-heartbeat`, 15 s by default).
    pub fn staleness(mut self, d: Duration) -> Self {
        self.staleness = d;
        self
    }
    /// Deadline of one call to `/v1/verify` (default 5 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The guard, with its revocation stream subscriber running on a thread of its own (it ends
    /// when the last clone of the guard is dropped).
    pub fn build(self) -> Result<Guard, Error> {
        let url = self.url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Url(url));
        }
        if self.staleness.is_zero() || self.timeout.is_zero() {
            return Err(Error::Limit("staleness and timeout must be above zero"));
        }
        let limits = cache::Limits {
            ttl: self.ttl,
            max_entries: if self.ttl.is_zero() { 0 } else { self.max_entries },
            max_bytes: self.max_bytes,
            staleness: self.staleness,
        };
        let engine = engine::Engine::new(url, self.mapping, limits, self.timeout)?;
        let engine = Arc::new(engine);
        stream::spawn(Arc::downgrade(&engine))?;
        Ok(Guard { engine })
    }
}

/// The engine both middlewares share: cheap to clone.
#[derive(Clone)]
pub struct Guard {
    engine: Arc<engine::Engine>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Guard {
    /// A guard asking the Tessera service at `url` (e.g. `https://tessera.internal`), mapping
    /// requests with a policy.
    pub fn with_policy(url: impl Into<String>, policy: Policy) -> GuardBuilder {
        Self::builder(url, Mapping::Policy(Arc::new(policy)))
    }

    /// A guard mapping requests with a closure: `Some((operation, resource))`, or `None` to
    /// refuse (403).
    pub fn with_closure(
        url: impl Into<String>,
        f: impl Fn(&RequestView<'_>) -> Option<(String, String)> + Send + Sync + 'static,
    ) -> GuardBuilder {
        Self::builder(url, Mapping::Closure(Arc::new(f)))
    }

    fn builder(url: impl Into<String>, mapping: Mapping) -> GuardBuilder {
        GuardBuilder {
            url: url.into(),
            mapping,
            ttl: Duration::from_secs(60),
            max_entries: 10_000,
            max_bytes: 16 << 20,
            staleness: Duration::from_secs(40),
            timeout: Duration::from_secs(5),
        }
    }

    /// Check a request: its view and the headers it carries (`Authorization`, or the policy's
    /// token header or cookie).
    pub async fn check(&self, view: &RequestView<'_>, headers: &http::HeaderMap) -> Result<Outcome, Refusal> {
        self.engine.check(view, headers).await
    }

    /// Counters: calls to the service, cache hits, entries held.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Whether the revocation stream is connected (and so the cache in use).
    pub fn stream_live(&self) -> bool {
        self.engine.stream_live()
    }

    /// The cached path alone, for the benchmark (not a stable API).
    #[doc(hidden)]
    pub fn cached(&self, view: &RequestView<'_>, headers: &http::HeaderMap) -> Option<Verified> {
        self.engine.cached(view, headers)
    }
}
