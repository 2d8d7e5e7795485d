//! The outermost middleware: `X-Request-Id`, the access log and the latency histogram.
//!
//! Every request gets an id before anything else runs: the client's `X-Request-Id` when it is
//! sane (1 to [`MAX_LEN`] bytes, each visible ASCII `0x21..=0x7e`), otherwise a fresh one (32
//! random hex digits). The id is in the request's extensions as [`RequestId`], on every answer
//! as `X-Request-Id` (errors, 404s, rate-limit refusals and refused bodies included), and in
//! every problem+json body as `"request_id"`.
//!
//! After the answer: one access log line (target [`ACCESS_TARGET`], level info) with the method,
//! the route template (never the raw path, so never a query string), status, duration, request
//! id, the caller's subject and tid when the request authenticated, and the client address by
//! the trusted-proxy rules; and one observation in the latency histogram of `/metrics`. Nothing
//! else of the request is read: no header but `X-Request-Id`, no body, no query.

use std::cell::RefCell;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage;

use crate::http::auth::{self, Principal};
use crate::http::guard::guard;
use crate::http::metrics::UNMATCHED;
use crate::state::AppState;

/// The header, in both directions.
pub(crate) const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen id kept (longer ones are replaced, not cut).
pub(crate) const MAX_LEN: usize = 64;

/// The target of the access log lines (filter it with `--log-level info,tessera::access=off`).
pub(crate) const ACCESS_TARGET: &str = "tessera::access";

/// The request's id, in every request's extensions before any handler runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id: visible ASCII (a sane client id, or hex).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// Whether a client's value may be reused as the request id: 1 to [`MAX_LEN`] bytes, every one
/// visible ASCII (no space, no control byte, nothing beyond ASCII), so it is safe in a header,
/// a log line and a JSON string alike.
pub(crate) fn sane(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Random bytes in an id (written as twice as many hex digits).
const ID_BYTES: usize = 16;
/// Ids made at a time on a thread: one system call for their random bytes and one allocation
/// for their text, which the ids then share (each is a slice of it: no allocation per request).
const BATCH: usize = 64;

/// A fresh id: 16 random bytes as 32 lowercase hex digits, each handed out once. The bytes come
/// from the operating system [`BATCH`] ids at a time; should that ever fail, the process id and
/// a process-wide counter stand in (an id names, it guards nothing).
fn generate() -> HeaderValue {
    thread_local!(static IDS: RefCell<(Bytes, usize)> = const { RefCell::new((Bytes::new(), BATCH)) });
    IDS.with(|ids| {
        let (text, next) = &mut *ids.borrow_mut();
        if *next == BATCH {
            *text = batch();
            *next = 0;
        }
        let id = text.slice(*next * 2 * ID_BYTES..(*next + 1) * 2 * ID_BYTES);
        *next += 1;
        // Hex digits are always a valid header value.
        HeaderValue::from_maybe_shared(id).unwrap_or(HeaderValue::from_static("-"))
    })
}

/// The text of [`BATCH`] ids, one after another.
fn batch() -> Bytes {
    let mut raw = [0u8; BATCH * ID_BYTES];
    if getrandom::fill(&mut raw).is_err() {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for id in raw.chunks_exact_mut(ID_BYTES) {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            id[..8].copy_from_slice(&u64::from(std::process::id()).to_be_bytes());
            id[8..].copy_from_slice(&n.to_be_bytes());
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; BATCH * ID_BYTES * 2];
    for (pair, b) in text.chunks_exact_mut(2).zip(raw) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    Bytes::copy_from_slice(&text)
}

/// The id of a request: the client's when [`sane`], else a fresh one.
fn id_for(req: &ServiceRequest) -> HeaderValue {
    match req.headers().get(&HEADER).filter(|v| sane(v.as_bytes())) {
        Some(v) => v.clone(),
        None => generate(),
    }
}

/// The middleware (see the module's documentation). It runs the guard (`http/guard`) itself,
/// inside it, rather than as a middleware of its own: one layer (one boxed future) less on
/// every request.
pub(crate) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let id = id_for(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    // Before the guard routes HEAD as GET: the log says what the client sent.
    let method = req.method().clone();
    let mut res = guard(req, next).await?;
    // Sane ids and hex are visible ASCII: `to_str` cannot fail.
    let id_text = id.to_str().unwrap_or_default();
    if is_problem(&res) {
        res = with_request_id(res, id_text);
    }
    res.headers_mut().insert(HEADER, id.clone());
    let ended = Instant::now();
    let elapsed = ended.saturating_duration_since(started);
    let http = res.request();
    // The resources are named by their template (`app`), which actix finds without matching the
    // path again; a resource without a name is matched again to read its template.
    let pattern;
    let route = match http.match_name() {
        Some(name) => name,
        None => {
            pattern = http.match_pattern();
            pattern.as_deref().unwrap_or(UNMATCHED)
        }
    };
    let status = res.status().as_u16();
    // Borrowed from the answer's request, never cloned (see `http/guard`).
    let state = http.app_data::<web::Data<AppState>>();
    if let Some(state) = state {
        state.metrics.latency.observe(route, status, elapsed);
    }
    // Decided once when logging starts (the filter for ACCESS_TARGET at info).
    if crate::logging::access_enabled() {
        let extensions = http.extensions();
        let principal = extensions.get::<Principal>();
        // By the trusted-proxy rules; a forwarding header that does not parse (answered 400)
        // leaves the connection's peer, never the header's text.
        let client = state
            .and_then(|s| auth::client_ip_of(s, http).ok().flatten())
            .or_else(|| http.peer_addr().map(|a| a.ip()));
        crate::logging::access(&crate::logging::AccessLine {
            method: method.as_str(),
            route,
            status,
            elapsed,
            ended,
            request_id: Some(id_text),
            subject: principal.map(|p| p.subject.as_str()),
            tid: principal.map(|p| &p.tid as &dyn std::fmt::Display),
            client,
        });
    }
    Ok(res)
}

fn is_problem(res: &ServiceResponse) -> bool {
    res.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
}

/// A problem+json answer with `"request_id"` added to its object (the bodies are small JSON
/// objects built in memory by `http/problem`; anything else passes unchanged).
fn with_request_id(res: ServiceResponse, id: &str) -> ServiceResponse {
    let (req, res) = res.into_parts();
    let (head, body) = res.into_parts();
    let bytes = match body.try_into_bytes() {
        Ok(b) => b,
        Err(body) => return ServiceResponse::new(req, head.set_body(body)),
    };
    let body = match splice(&bytes, id) {
        Some(spliced) => BoxBody::new(spliced),
        None => BoxBody::new(bytes),
    };
    ServiceResponse::new(req, head.set_body(body))
}

/// `{...}` with `"request_id":"<id>"` as its last member; `None` if the body is not an object.
fn splice(body: &[u8], id: &str) -> Option<Vec<u8>> {
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if body.first() != Some(&b'{') || body[end] != b'}' {
        return None;
    }
    let inner = &body[1..end];
    let empty = inner.iter().all(u8::is_ascii_whitespace);
    let id = serde_json::to_string(id).ok()?;
    let mut out = Vec::with_capacity(body.len() + id.len() + 16);
    out.extend_from_slice(&body[..end]);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"request_id\":");
    out.extend_from_slice(id.as_bytes());
    out.push(b'}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids() {
        assert!(sane(b"a"));
        assert!(sane(&[b'x'; MAX_LEN]));
        assert!(sane(b"!~\"{}\\"));
        assert!(!sane(b""));
        assert!(!sane(&[b'x'; MAX_LEN + 1]));
        assert!(!sane(b"a b"));
        assert!(!sane(b"a\tb"));
        assert!(!sane(b"a\x7f"));
        assert!(!sane("é".as_bytes()));
    }

    #[test]
    fn generated_ids_are_hex_and_differ() {
        // Across several batches.
        let ids: std::collections::HashSet<Vec<u8>> =
            (0..BATCH * 15 + 7).map(|_| generate().as_bytes().to_vec()).collect();
        assert_eq!(ids.len(), BATCH * 15 + 7);
        assert!(ids.iter().all(|i| i.len() == 32));
        assert!(ids.iter().all(|i| i.iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
    }

    #[test]
    fn splice_adds_the_member() {
        let out = splice(br#"{"status":404}"#, r#"a"b\c"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["status"], 404);
        assert_eq!(v["request_id"], r#"a"b\c"#);
        let v: serde_json::Value = serde_json::from_slice(&splice(b"{ }\n", "x").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"request_id": "x"}));
        assert!(splice(b"[1]", "x").is_none());
        assert!(splice(b"", "x").is_none());
    }
}
