//! `/v1/authz/{nginx,forward,envoy}`: forward auth. A proxy asks, for each request it forwards,
//! whether to let it through; the `--authz-policy` file turns the original request into an
//! operation on a resource (or a public path, or a refusal) and the token it carries is verified
//! exactly as `POST /v1/verify` does (`verifying`).
//!
//! Which headers describe the original request is fixed by the endpoint, never by the request
//! (a client could add the other family's headers and choose). Every method is served, as proxies
//! call with the original one. Without a policy the endpoints answer 404: nginx's `X-Original-Method` /
//! `X-Original-URI` with `Host`; Caddy's and Traefik's `X-Forwarded-Method` / `-Uri` / `-Host`;
//! Envoy's ext_authz HTTP mode, whose method is the request's and whose path follows the
//! endpoint's own. Answers (docs/PROXIES.md): 200 with the identity headers, every one on every
//! 200 (empty when there is nothing to say) so no proxy lets a client's own copy through; 401
//! with `WWW-Authenticate: Bearer`; 403 with the reason; 429 with `Retry-After` and `RateLimit`.

use std::borrow::Cow;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use tessera_core::{Context, CustomClaims, Restrictions};
use tessera_policy::{is_identity_header, is_method_override_header, Decision};

use crate::http::auth::{client_ip_of, DISCHARGE_HEADER};
use crate::http::problem::ApiError;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The path Envoy's `path_prefix` points at; the original path follows it.
pub(crate) const ENVOY_PREFIX: &str = "/v1/authz/envoy";

/// The identity headers of a 200, in the order they are sent. Header names are made once, here:
/// naming a header by text parses the name again on every request.
const SUBJECT: HeaderName = HeaderName::from_static("x-tessera-subject");
const TID: HeaderName = HeaderName::from_static("x-tessera-tid");
const CLAIMS: HeaderName = HeaderName::from_static("x-tessera-claims");

/// The original request's headers, per family.
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

/// The longest token text read from a header or cookie (a bearer token is bounded by actix's
/// header limits alike).
const MAX_TOKEN_TEXT: usize = 16 * 1024;

/// How the original request reaches the endpoint.
#[derive(Clone, Copy)]
enum Family {
    Nginx,
    Forward,
    Envoy,
}

/// The original request as the family's headers describe it (borrowed from the headers, but for
/// Envoy's target, which is put together).
struct Original<'a> {
    host: &'a str,
    method: &'a str,
    target: Cow<'a, str>,
}

/// The one value of a header, as text; absent, repeated or not text is an error (a proxy sends
/// one; two would let a client choose).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>> {
    let mut all = headers.get_all(name);
    let Some(first) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(ApiError::bad_request(format!("{name} is sent more than once")));
    }
    first.to_str().map(Some).map_err(|_| ApiError::bad_request(format!("{name} is not text")))
}

fn required<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a str> {
    single(headers, name)?.ok_or_else(|| {
        ApiError::bad_request(format!("{name} is missing: configure the proxy as docs/PROXIES.md shows"))
    })
}

fn original(req: &HttpRequest, family: Family) -> Result<Original<'_>> {
    let h = req.headers();
    let host = |name: &HeaderName| single(h, name).map(Option::unwrap_or_default);
    Ok(match family {
        Family::Nginx => Original {
            host: host(&header::HOST)?,
            method: required(h, &X_ORIGINAL_METHOD)?,
            target: Cow::Borrowed(required(h, &X_ORIGINAL_URI)?),
        },
        Family::Forward => Original {
            host: host(&X_FORWARDED_HOST)?,
            method: required(h, &X_FORWARDED_METHOD)?,
            target: Cow::Borrowed(required(h, &X_FORWARDED_URI)?),
        },
        Family::Envoy => {
            // The raw target, before actix decodes it for routing: the policy decodes it once.
            let path = req.uri().path();
            let rest = path.strip_prefix(ENVOY_PREFIX).unwrap_or("");
            let target = match req.uri().query() {
                Some(q) => Cow::Owned(format!("{rest}?{q}")),
                None => Cow::Borrowed(rest),
            };
            // HEAD is routed as GET by the guard; both are `read` unless the policy says more.
            Original { host: host(&header::HOST)?, method: req.method().as_str(), target }
        }
    })
}

/// The token text: `Authorization: Bearer`, else the policy's header, else its cookie.
fn token_text<'a>(req: &'a HttpRequest, source: &tessera_policy::TokenSource) -> Result<Option<&'a str>> {
    let h = req.headers();
    if let Some(v) = single(h, &header::AUTHORIZATION).map_err(|e| ApiError::unauthorized(e.detail()))? {
        let text = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be: Bearer <token>"))?;
        return Ok(Some(text.trim()));
    }
    if let Some(name) = &source.header {
        // The policy's name was checked when it loaded; a name that does not parse finds nothing.
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            if let Some(v) = single(h, &name).map_err(|e| ApiError::unauthorized(e.detail()))? {
                return Ok(Some(v.trim()));
            }
        }
    }
    if let Some(name) = &source.cookie {
        // The first cookie of that name, as browsers send the most specific first.
        for line in h.get_all(header::COOKIE) {
            let line = line.to_str().map_err(|_| ApiError::unauthorized("Cookie is not text"))?;
            for pair in line.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k == name {
                        return Ok(Some(v.trim().trim_matches('"')));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// The discharge texts of the discharge header (comma-separated, every line).
fn discharges(req: &HttpRequest) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for v in req.headers().get_all(DISCHARGE_HEADER) {
        let v = v.to_str().map_err(|_| ApiError::unauthorized("discharge header is not text"))?;
        out.extend(v.split(',').map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned));
        if out.len() > tessera_core::limits::MAX_DISCHARGES {
            return Err(ApiError::unauthorized(format!(
                "at most {} discharges",
                tessera_core::limits::MAX_DISCHARGES
            )));
        }
    }
    Ok(out)
}

/// Refuse a request carrying an identity header or a spelling of one (`X_Tessera_Subject`, any
/// `X-Tessera-*` but the discharge header): only this answer sets them for the upstream.
fn no_identity_headers(req: &HttpRequest) -> Result<()> {
    for name in req.headers().keys() {
        let n = name.as_str();
        if is_identity_header(n) && !n.eq_ignore_ascii_case(DISCHARGE_HEADER) {
            return Err(ApiError::forbidden(format!(
                "the request carries {n}: X-Tessera-* headers (in any spelling) come from Tessera only"
            )));
        }
    }
    Ok(())
}

/// JSON with every character outside printable ASCII escaped (`\uXXXX`: non-ASCII, DEL and C1
/// controls; serde_json already escapes C0), so it is always a valid header value.
fn ascii_json(value: &impl serde::Serialize) -> Result<String> {
    let json = serde_json::to_string(value).map_err(ApiError::internal)?;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            // Outside printable ASCII only occurs inside JSON strings, where an escape means the
            // same (serde_json escapes C0 itself, so this only meets DEL and above).
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    Ok(out)
}

/// A header value that cannot fail, so an allowed request never turns into a 500 after its use
/// was recorded: UTF-8 passes as bytes (as before), a control character or DEL (which no header
/// may hold) is written `\uXXXX`, like the claims.
fn header_value(text: &str) -> HeaderValue {
    if let Ok(v) = HeaderValue::from_bytes(text.as_bytes()) {
        return v;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    HeaderValue::from_bytes(out.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Headers that make many frameworks run a request as another method than the one the policy
/// judged (`POST` + `X-HTTP-Method-Override: DELETE`), in any spelling an upstream folds into the
/// same variable (`X_HTTP_METHOD_OVERRIDE`): refused. The list is the policy crate's, shared with
/// the guard.
fn no_method_override(req: &HttpRequest) -> Result<()> {
    for name in req.headers().keys() {
        let n = name.as_str();
        if is_method_override_header(n) {
            return Err(ApiError::forbidden(format!(
                "the request carries {n}: a method override is refused (the policy judges the request's own method)"
            )));
        }
    }
    Ok(())
}

/// The 200: every identity header, empty when there is nothing to say.
fn allowed(r: Option<&Restrictions>, extra: Vec<(&'static str, String)>) -> Result<HttpResponse> {
    let subject = r.and_then(|r| r.subject.clone()).unwrap_or_default();
    let tid = r.and_then(|r| r.tid.map(|t| t.to_string())).unwrap_or_default();
    let claims = match r.and_then(|r| r.claims.as_ref()) {
        Some(c) => ascii_json(CustomClaims::as_map(c))?,
        None => String::new(),
    };
    let mut res = HttpResponse::Ok();
    res.insert_header((SUBJECT, header_value(&subject)));
    res.insert_header((TID, header_value(&tid)));
    res.insert_header((CLAIMS, header_value(&claims)));
    res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    for (name, value) in extra {
        res.insert_header((name, value));
    }
    Ok(res.finish())
}

/// A credential that does not decode is "missing or invalid" for a proxy (401), not a malformed
/// call: the proxy's request is well-formed, its client's token is not.
fn as_credential_error(e: ApiError) -> ApiError {
    if e.status() == StatusCode::BAD_REQUEST || e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::unauthorized(e.detail().to_owned())
    } else {
        e
    }
}

async fn decide(req: HttpRequest, family: Family) -> Result<HttpResponse> {
    let state = req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::internal("no app state"))?;
    let Some(policy) = &state.config.authz_policy else {
        // 404, like any endpoint this service does not offer as configured.
        return Err(ApiError::not_found(
            "forward auth is not configured: start the service with --authz-policy <file> (docs/PROXIES.md)",
        ));
    };
    let policy = &policy.policy;
    no_identity_headers(&req)?;
    no_method_override(&req)?;
    let o = original(&req, family)?;
    let (operation, resource) = match policy.decide(o.host, o.method, &o.target) {
        Err(e) => return Err(ApiError::forbidden(e.to_string())),
        Ok(Decision::Unmatched) => {
            return Err(ApiError::forbidden(format!(
                "no rule of the authz policy covers {} {} on host \"{}\"",
                o.method,
                o.target.split('?').next().unwrap_or(""),
                o.host
            )))
        }
        Ok(Decision::Public) => return allowed(None, Vec::new()),
        Ok(Decision::Check { operation, resource }) => (operation, resource),
    };
    let token = token_text(&req, policy.token_source())?
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
    if token.len() > MAX_TOKEN_TEXT {
        return Err(ApiError::unauthorized(format!("the token is over {MAX_TOKEN_TEXT} bytes")));
    }
    let discharges = discharges(&req)?;
    let mut ctx = Context::now().operation(operation).resource(resource);
    if let Some(ip) = client_ip_of(state, &req)? {
        ctx = ctx.client_ip(ip);
    }
    let (checked, headers) =
        crate::verifying::verify(&req, token, &discharges, &ctx).await.map_err(as_credential_error)?;
    allowed(Some(checked.restrictions()), headers)
}

/// `/v1/authz/nginx`: the original request in `X-Original-Method`, `X-Original-URI` and `Host`.
pub(crate) async fn nginx(req: HttpRequest) -> Result<HttpResponse> {
    decide(req, Family::Nginx).await
}

/// `/v1/authz/forward`: the original request in `X-Forwarded-Method`, `-Uri` and `-Host`.
pub(crate) async fn forward(req: HttpRequest) -> Result<HttpResponse> {
    decide(req, Family::Forward).await
}

/// `/v1/authz/envoy{/path}`: the request's own method, the path after the prefix.
pub(crate) async fn envoy(req: HttpRequest) -> Result<HttpResponse> {
    decide(req, Family::Envoy).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_json_is_ascii() {
        let v = serde_json::json!({"name": "Zoë 😀", "n": 1});
        let s = ascii_json(&v).unwrap();
        assert!(s.is_ascii(), "{s}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
        // DEL and C1 controls are not valid in a header value: escaped too.
        let v = serde_json::json!({"c": "a\u{7f}b\u{85}c\u{9f}d\u{1}"});
        let s = ascii_json(&v).unwrap();
        assert!(s.bytes().all(|b| (0x20..0x7f).contains(&b)), "{s:?}");
        assert!(HeaderValue::from_str(&s).is_ok(), "{s:?}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }
}
