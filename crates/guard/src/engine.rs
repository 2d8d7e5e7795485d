//! The engine both middlewares share: the mapping, the token, the cache, the call to
//! `POST /v1/verify`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_policy::{is_method_override_header, DecisionRef};

use crate::cache::{Cache, Limits};
use crate::{Error, Identity, Mapping, Outcome, Refusal, RequestView, Verified};

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls made to `/v1/verify`.
    pub calls: u64,
    /// Requests answered from the cache.
    pub hits: u64,
    /// Decisions in the cache.
    pub entries: usize,
    /// Bytes the cache counts for them.
    pub bytes: usize,
    /// Times the service refused the revocation stream (a 429 or 503 when its stream limits are
    /// reached, or any other status that is not a success), counted once per episode: the
    /// retries every 2 s while it keeps refusing do not add up, a connection ends the episode.
    pub stream_refusals: u64,
    /// The status of the ongoing refusal of the revocation stream, `None` when the stream is not
    /// being refused (connected, or not reachable at all).
    pub stream_refused: Option<u16>,
}

pub(crate) struct Engine {
    pub(crate) url: String,
    pub(crate) client: reqwest::Client,
    mapping: Mapping,
    pub(crate) cache: Cache,
    pub(crate) limits: Limits,
    timeout: Duration,
    calls: AtomicU64,
    hits: AtomicU64,
    /// Refusal episodes of the revocation stream.
    stream_refusals: AtomicU64,
    /// The status of the ongoing refusal, 0 for none.
    stream_refused: AtomicU16,
}

/// A 429 from the service carries this header when a token's budget is spent, never when the
/// service's own per-client limiter (`--rate-limit`) refuses the caller (docs/API.md).
const BUDGET_HEADER: &str = "ratelimit-policy";

/// What the request needs once mapped: borrowed from the request and the policy (a policy
/// allocates only for a percent-encoded path or a host not in lower case).
enum Need<'a> {
    Public,
    Check { token: &'a str, operation: Cow<'a, str>, resource: Cow<'a, str> },
}

impl Engine {
    pub(crate) fn new(
        url: String,
        mapping: Mapping,
        limits: Limits,
        timeout: Duration,
    ) -> Result<Engine, Error> {
        // rustls on ring, as everywhere in the workspace (reqwest's own default pulls aws-lc). The
        // process's provider is set only if nobody set one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        let cache = Cache::new(limits).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Engine {
            url,
            client,
            mapping,
            cache,
            limits,
            timeout,
            calls: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            stream_refusals: AtomicU64::new(0),
            stream_refused: AtomicU16::new(0),
        })
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            calls: self.calls.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            entries: self.cache.len(),
            bytes: self.cache.bytes(),
            stream_refusals: self.stream_refusals.load(Ordering::Relaxed),
            stream_refused: Some(self.stream_refused.load(Ordering::Relaxed)).filter(|s| *s != 0),
        }
    }

    /// The service refused the revocation stream with `status`: a new episode unless one is
    /// already going on.
    pub(crate) fn stream_refused(&self, status: u16) {
        if self.stream_refused.swap(status.max(1), Ordering::Relaxed) == 0 {
            self.stream_refusals.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The revocation stream is connected: the refusal episode, if any, is over.
    pub(crate) fn stream_accepted(&self) {
        self.stream_refused.store(0, Ordering::Relaxed);
    }

    pub(crate) fn stream_live(&self) -> bool {
        self.cache.trusted()
    }

    fn need<'a>(&'a self, view: &RequestView<'a>, headers: &'a http::HeaderMap) -> Result<Need<'a>, Refusal> {
        // Before any mapping, public paths included: the handler would run another method.
        // Headers that make many frameworks run a request as another method than the one the
        // mapping judged (`POST` + `X-HTTP-Method-Override: DELETE`), in any spelling an upstream
        // folds into the same variable (`X_HTTP_METHOD_OVERRIDE`): refused, as `/v1/authz` does.
        if let Some(name) =
            headers.keys().map(http::HeaderName::as_str).find(|n| is_method_override_header(n))
        {
            return Err(Refusal::BadRequest(format!(
                "the request carries {name}: a method override is refused (the guard judges the request's own method)"
            )));
        }
        let (operation, resource) = match &self.mapping {
            Mapping::Policy(p) => match p.decide_ref(view.host, view.method, view.target) {
                Ok(DecisionRef::Public) => return Ok(Need::Public),
                Ok(DecisionRef::Check { operation, resource }) => (Cow::Borrowed(operation), resource),
                Ok(DecisionRef::Unmatched) => {
                    return Err(Refusal::Forbidden("no rule covers this request".into()))
                }
                Err(e) => return Err(Refusal::BadRequest(e.to_string())),
            },
            Mapping::Closure(f) => {
                let (o, r) =
                    f(view).ok_or_else(|| Refusal::Forbidden("no rule covers this request".into()))?;
                (Cow::Owned(o), Cow::Owned(r))
            }
        };
        let token = self.token(headers).ok_or(Refusal::NoToken)?;
        Ok(Need::Check { token, operation, resource })
    }

    /// The token: `Authorization: Bearer`, else the policy's header, else its cookie.
    fn token<'h>(&self, headers: &'h http::HeaderMap) -> Option<&'h str> {
        let bearer = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
        if let Some(t) = bearer.filter(|t| !t.is_empty()) {
            return Some(t);
        }
        let Mapping::Policy(p) = &self.mapping else { return None };
        let source = p.token_source();
        if let Some(h) = &source.header {
            if let Some(t) = headers.get(h.as_str()).and_then(|v| v.to_str().ok()).map(str::trim) {
                if !t.is_empty() {
                    return Some(t);
                }
            }
        }
        let name = source.cookie.as_deref()?;
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim())
            .filter(|t| !t.is_empty())
    }

    /// The cached path alone: `None` for a miss (or a request that is not a token check).
    pub(crate) fn cached(&self, view: &RequestView<'_>, headers: &http::HeaderMap) -> Option<Verified> {
        let Ok(Need::Check { token, operation, resource }) = self.need(view, headers) else { return None };
        let key = self.cache.key(token, &operation, &resource, view.client_ip);
        self.cache.get(&key, Instant::now())
    }

    pub(crate) async fn check(
        &self,
        view: &RequestView<'_>,
        headers: &http::HeaderMap,
    ) -> Result<Outcome, Refusal> {
        let (token, operation, resource) = match self.need(view, headers)? {
            Need::Public => return Ok(Outcome::Public),
            Need::Check { token, operation, resource } => (token, operation, resource),
        };
        let key = self.cache.key(token, &operation, &resource, view.client_ip);
        // The request's one clock reading on the hit path (expiry and staleness both use it).
        if let Some(v) = self.cache.get(&key, Instant::now()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome::Allowed(v));
        }
        // Read before asking: a revocation heard while the answer travels keeps it out.
        let epoch = self.cache.epoch();
        let (verified, cacheable) = self.verify(token, &operation, &resource, view).await?;
        if cacheable {
            let expires = verified.restrictions().expires.as_deref().and_then(until);
            self.cache.insert(key, verified.clone(), epoch, expires);
        }
        Ok(Outcome::Allowed(verified))
    }

    /// One call to `/v1/verify`: the identity and whether it may be cached, or the refusal.
    async fn verify(
        &self,
        token: &str,
        operation: &str,
        resource: &str,
        view: &RequestView<'_>,
    ) -> Result<(Verified, bool), Refusal> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut context = json!({"operation": operation, "resource": resource});
        let mut call = self.client.post(format!("{}/v1/verify", self.url)).timeout(self.timeout);
        if let Some(ip) = view.client_ip {
            context["client_ip"] = json!(ip.to_string());
            // The client's address as the service's trusted-proxy rules read it, in both headers
            // (the service reads the one `--forwarded-header` names): with this guard's address
            // in the service's `--trusted-proxy`, its per-client rate limit counts each client,
            // not the guard. Otherwise the service ignores them and counts the guard.
            let node = match ip {
                std::net::IpAddr::V4(v4) => format!("for={v4}"),
                std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
            };
            call = call.header("X-Forwarded-For", ip.to_string()).header("Forwarded", node);
        }
        let unreachable = |_| Refusal::Unavailable("the Tessera service cannot be reached".into());
        let res =
            call.json(&json!({"token": token, "context": context})).send().await.map_err(unreachable)?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body: serde_json::Value = res.json().await.map_err(unreachable)?;
        let detail = body["detail"].as_str().unwrap_or("refused").to_owned();
        match status {
            200 => {
                let identity: Identity = serde_json::from_value(body).map_err(|_| {
                    Refusal::Unavailable("the Tessera service answered what is not a verification".into())
                })?;
                // A token with a budget or single use must be counted by the service every time.
                let counted = headers.contains_key("ratelimit-policy")
                    || !identity.restrictions.rate_limits.is_empty()
                    || identity.restrictions.once;
                Ok((Verified(Arc::new(identity)), !counted))
            }
            400 | 401 => Err(Refusal::Unauthorized(detail)),
            403 => Err(Refusal::Forbidden(detail)),
            // The service's own per-client limiter, not the token's budget: the service refuses
            // this caller for a while, whatever the token. A 503, not a 429 the client would read
            // as its token's budget.
            429 if !headers.contains_key(BUDGET_HEADER) => Err(Refusal::Throttled(
                format!(
                    "the Tessera service is refusing requests from this client's address or from this guard \
                     (its --rate-limit), not the token's budget: {detail:.200}"
                ),
                headers.get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned),
            )),
            429 => {
                let keep = [
                    "retry-after",
                    "ratelimit",
                    "ratelimit-policy",
                    "ratelimit-limit",
                    "ratelimit-remaining",
                    "ratelimit-reset",
                ];
                let h = keep
                    .iter()
                    .filter_map(|k| {
                        headers.get(*k).and_then(|v| v.to_str().ok()).map(|v| ((*k).to_owned(), v.to_owned()))
                    })
                    .collect();
                Err(Refusal::RateLimited(detail, h))
            }
            _ => Err(Refusal::Unavailable(format!("the Tessera service answered {status}: {detail:.200}"))),
        }
    }
}

/// The instant an RFC 3339 time falls on, if it is in the future.
fn until(rfc3339: &str) -> Option<Instant> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).ok()?;
    let left = t - time::OffsetDateTime::now_utc();
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}
