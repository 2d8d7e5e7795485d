//! Errors as `application/problem+json` (RFC 9457). Client errors keep their message; internal
//! errors are logged and answered with a generic 500.

use actix_web::dev::ServiceResponse;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    title: &'static str,
    detail: String,
    caveat: Option<String>,
    headers: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caveat: Option<&'a str>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.title, self.detail)
    }
}

impl ApiError {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, title, detail: detail.into(), caveat: None, headers: Vec::new() }
    }
    /// What went wrong, in words.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed request", detail)
    }
    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "missing or invalid credential", detail)
    }
    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "not allowed", detail)
    }
    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not found", detail)
    }
    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            "see docs/API.md for the methods of this path",
        )
    }
    /// 413.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "request too large", detail)
    }
    /// 408: the request body did not arrive within `--body-timeout`.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request timeout",
            "the request body did not arrive in time (--body-timeout)",
        )
    }
    /// 415.
    pub fn unsupported_media() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type",
            "send Content-Type: application/json",
        )
    }
    /// 429 from the per-client limiter (`--rate-limit`): `Retry-After: 1` (a second refills at
    /// least one request) and never a `RateLimit-Policy`, which only a token budget's 429
    /// carries: how a client of `/v1/verify` (the guard) tells the service refusing it from a
    /// token's budget being spent.
    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limited",
            "too many requests from this client; slow down",
        )
        .with_headers(vec![("Retry-After", "1".into())])
    }
    /// 429 for a token whose `rate-limit` budget is spent.
    pub(crate) fn token_rate_limited(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "token rate limit", detail)
    }
    /// 429 for a client address that holds its `--max-streams-per-address` revocation streams.
    pub(crate) fn too_many_streams(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too many streams", detail)
    }
    /// 409: the request conflicts with the current state (e.g. a rotation that is too early).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }
    /// 503.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
    /// 500: logs the cause, answers generically.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {cause}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", "the service failed; see its log")
    }
    /// Add response headers (e.g. `Retry-After` and the `RateLimit` fields on a 429).
    pub(crate) fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    fn with_caveat(mut self, caveat: String) -> Self {
        self.caveat = Some(caveat);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let body = Problem {
            kind: "about:blank",
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            caveat: self.caveat.as_deref(),
        };
        let mut res = HttpResponse::build(self.status);
        res.content_type("application/problem+json");
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        for (name, value) in &self.headers {
            res.insert_header((*name, value.as_str()));
        }
        res.body(serde_json::to_string(&body).unwrap_or_default())
    }
}

/// Every error answer as problem+json, whatever produced it: an extractor of actix-web (raw
/// bytes over the limit, a form that does not parse, a body that missed `--body-timeout`)
/// answers `text/plain` on its own. Answers that are problem+json already, and answers a handler
/// built itself, pass unchanged.
pub(crate) fn as_problem(res: ServiceResponse) -> ServiceResponse {
    let status = res.status();
    let is_problem = res
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    // Only answers that carry an error: a handler's own answer (`/health`'s 503) stays as it is.
    let Some(error) = res.response().error() else { return res };
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let error = Some(error);
    let timed_out = error
        .and_then(|e| e.as_error::<actix_web::error::PayloadError>())
        .is_some_and(crate::http::conn::is_body_timeout);
    let detail = match error {
        Some(e) if status.is_client_error() => e.to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let problem = match status {
        _ if timed_out => ApiError::body_timeout(),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(detail),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media(),
        StatusCode::NOT_FOUND => ApiError::not_found(detail),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        s if s.is_client_error() => ApiError::new(s, "malformed request", detail),
        s => ApiError::new(s, "internal error", "the service failed; see its log"),
    };
    let (req, _) = res.into_parts();
    ServiceResponse::new(req, problem.error_response())
}

impl From<tessera_core::Error> for ApiError {
    fn from(e: tessera_core::Error) -> Self {
        use tessera_core::Error as E;
        let detail = e.to_string();
        match e {
            E::CaveatNotMet { caveat, .. } => Self::forbidden(detail).with_caveat(caveat),
            E::UnknownCaveat(caveat) => Self::forbidden(detail).with_caveat(caveat),
            E::MissingDischarge { .. } => Self::forbidden(detail),
            E::TooLarge { .. } => Self::too_large(detail),
            E::InvalidSignature | E::ForeignIdentifier | E::UnknownKey(_) | E::Revoked => {
                Self::unauthorized(detail)
            }
            E::Random => Self::internal(detail),
            _ => Self::bad_request(detail),
        }
    }
}

impl From<tessera_store::Error> for ApiError {
    fn from(e: tessera_store::Error) -> Self {
        use tessera_store::Error as E;
        match e {
            E::UnknownToken(_) => Self::not_found(e.to_string()),
            E::ParentRevoked(_) => Self::unauthorized(e.to_string()),
            E::UnknownKey(_) | E::UnknownApp(_) => Self::not_found(e.to_string()),
            E::AppExists(_) => Self::conflict(e.to_string()),
            E::UnknownSession(_) | E::SessionRevoked(_) | E::NotThisSession(_) => {
                Self::unauthorized(e.to_string())
            }
            E::TooLarge { .. } | E::NulInText(_) => Self::bad_request(e.to_string()),
            E::DuplicateToken(_) | E::KeyRevoked(_) | E::NoActiveKey => Self::unavailable(e.to_string()),
            E::Unavailable(_) | E::Stale { .. } | E::Unconfirmed(_) => Self::unavailable(e.to_string()),
            E::TooEarly { .. } | E::NoNextSigningKey(_) => Self::conflict(e.to_string()),
            other => Self::internal(other),
        }
    }
}

/// A JSON body actix-web refused (too large, wrong type, not JSON), as problem+json.
pub(crate) fn json_error(err: JsonPayloadError) -> actix_web::Error {
    let e = match &err {
        JsonPayloadError::OverflowKnownLength { length, limit } => {
            ApiError::too_large(format!("body of {length} bytes is over the limit of {limit}"))
        }
        JsonPayloadError::Overflow { limit } => {
            ApiError::too_large(format!("body is over the limit of {limit} bytes"))
        }
        JsonPayloadError::ContentType => ApiError::unsupported_media(),
        JsonPayloadError::Payload(p) if crate::http::conn::is_body_timeout(p) => ApiError::body_timeout(),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request(format!("invalid JSON body: {e}")),
        other => ApiError::bad_request(other.to_string()),
    };
    e.into()
}

/// A query string that does not parse, as problem+json.
pub(crate) fn query_error(err: QueryPayloadError) -> actix_web::Error {
    ApiError::bad_request(format!("invalid query: {err}")).into()
}

/// Any path no route serves.
pub(crate) async fn not_found() -> actix_web::HttpResponse {
    ApiError::not_found("no such endpoint; see docs/API.md").error_response()
}

/// A path served, with a method it does not take.
pub(crate) async fn method_not_allowed() -> actix_web::HttpResponse {
    ApiError::method_not_allowed().error_response()
}
