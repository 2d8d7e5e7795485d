//! The guard as a tower layer in an axum router, against a real `tessera-server`: allowed, no
//! token, a read-only token writing, the wrong resource, unmatched and public paths, revoked, a
//! spent budget (429), cache hits (calls to the service counted), a revocation reaching the
//! cache within a second, and the service going away (fail closed); each client behind the guard
//! counted by the service's rate limiter under its own address, that limiter's 429 answered as a
//! 503; method overrides refused (headers in any spelling, `_method` in the query); a refused
//! revocation stream counted in the stats once per episode.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::routing::any;
use axum::{Extension, Router};
use common::{until, Server};
use http::{Request, StatusCode};
use serde_json::{json, Value};
use tessera_guard::{ClientIp, Guard, GuardLayer, Policy, Verified};
use tower::ServiceExt;

const POLICY: &str = r#"
[[rule]]
host = "*"
prefix = "/files"

[[rule]]
host = "*"
prefix = "/health"
public = true
"#;

fn guard(server: &Server) -> Guard {
    Guard::with_policy(&server.url, Policy::from_toml(POLICY).unwrap())
        .staleness(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn app(guard: &Guard) -> Router {
    async fn whoami(v: Option<Extension<Verified>>) -> String {
        v.map_or("public".into(), |Extension(v)| v.subject().unwrap_or_default().to_owned())
    }
    Router::new()
        .route("/files/{*path}", any(whoami))
        .route("/health", any(whoami))
        .layer(GuardLayer::new(guard.clone()))
}

/// One request: status, headers, body.
async fn call(
    guard: &Guard,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    send(guard, request(method, path, token)).await
}

fn request(method: &str, path: &str, token: Option<&str>) -> http::request::Builder {
    let mut req = Request::builder().method(method).uri(path).header("Host", "files.example");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    req
}

/// One request as an outer layer found it from the client at `ip` (a `ClientIp` extension).
async fn call_from(guard: &Guard, ip: &str, token: &str) -> (StatusCode, http::HeaderMap, String) {
    send(guard, request("GET", "/files/x", Some(token)).extension(ClientIp(ip.parse().unwrap()))).await
}

async fn send(guard: &Guard, req: http::request::Builder) -> (StatusCode, http::HeaderMap, String) {
    let res = app(guard).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn live(guard: &Guard) {
    assert!(until(Duration::from_secs(10), async || guard.stream_live()).await, "the stream never connected");
}

fn problem(body: &str, status: u16) {
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["status"], status, "{body}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

#[tokio::test]
async fn requests_are_allowed_refused_and_answered_as_problems() {
    let server = Server::start();
    let g = guard(&server);
    let (reader, _) =
        server.mint(json!({"subject": "alice", "operations": ["read"], "resources": ["files/*"]})).await;
    let (narrow, _) =
        server.mint(json!({"subject": "bob", "operations": ["read"], "resources": ["files/a"]})).await;

    // Allowed: the handler sees the verified subject.
    let (status, _, body) = call(&g, "GET", "/files/report", Some(&reader)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
    // No token: 401 with WWW-Authenticate, problem+json, and no call to the service.
    let calls = g.stats().calls;
    let (status, headers, body) = call(&g, "GET", "/files/report", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(headers["content-type"], "application/problem+json");
    problem(&body, 401);
    // A read-only token writing: 403.
    let (status, _, body) = call(&g, "PUT", "/files/report", Some(&reader)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    problem(&body, 403);
    // The wrong resource: 403.
    let (status, _, _) = call(&g, "GET", "/files/b", Some(&narrow)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = call(&g, "GET", "/files/a", Some(&narrow)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "bob"));
    // A garbage token: 401.
    let (status, _, _) = call(&g, "GET", "/files/a", Some("not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(g.stats().calls, calls + 4, "no token costs no call");
    // Unmatched: 403 without a call; public: through without a token.
    let (status, _, _) = call(&g, "GET", "/admin", Some(&reader)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = call(&g, "GET", "/health", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "public"));
    // A path two readers could take differently is refused before any call.
    let (status, _, _) = call(&g, "GET", "/files/../admin", Some(&reader)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(g.stats().calls, calls + 4);
}

#[tokio::test]
async fn revoked_and_spent_tokens_are_refused_and_never_cached() {
    let server = Server::start();
    let g = guard(&server);
    live(&g).await;
    let (token, tid) = server.mint(json!({"subject": "alice", "operations": ["read"]})).await;
    server.revoke(&tid).await;
    let (status, _, _) = call(&g, "GET", "/files/x", Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A budget of 2: two allowed, then 429 with the service's headers; each one asked the service.
    let (limited, _) =
        server.mint(json!({"subject": "carol", "operations": ["read"], "rate_limit": "2/1h"})).await;
    let before = g.stats().calls;
    for _ in 0..2 {
        assert_eq!(call(&g, "GET", "/files/x", Some(&limited)).await.0, StatusCode::OK);
    }
    let (status, headers, body) = call(&g, "GET", "/files/x", Some(&limited)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(headers.contains_key("ratelimit"));
    assert!(headers.contains_key("ratelimit-policy"));
    problem(&body, 429);
    assert_eq!(g.stats().calls, before + 3, "a budgeted token is never answered from the cache");
    // Refusals are not cached either.
    let again = g.stats().calls;
    let _ = call(&g, "GET", "/files/x", Some(&token)).await;
    assert_eq!(g.stats().calls, again + 1);
}

#[tokio::test]
async fn allowed_decisions_are_cached_until_a_revocation_arrives() {
    let server = Server::start();
    let g = guard(&server);
    live(&g).await;
    let (token, tid) = server.mint(json!({"subject": "alice", "operations": ["read"]})).await;
    assert_eq!(call(&g, "GET", "/files/x", Some(&token)).await.0, StatusCode::OK);
    let calls = g.stats().calls;
    for _ in 0..5 {
        assert_eq!(call(&g, "GET", "/files/x", Some(&token)).await.0, StatusCode::OK);
    }
    assert_eq!(g.stats().calls, calls, "the same request again is answered from the cache");
    assert_eq!(g.stats().hits, 5);
    // Another context is another decision.
    assert_eq!(call(&g, "GET", "/files/y", Some(&token)).await.0, StatusCode::OK);
    assert_eq!(g.stats().calls, calls + 1);
    // Revoked at the service: the cached decision is gone within a second.
    server.revoke(&tid).await;
    let refused = until(Duration::from_secs(1), async || {
        call(&g, "GET", "/files/x", Some(&token)).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "a revoked token was still allowed from the cache after 1 s");
}

#[tokio::test]
async fn the_service_going_away_fails_closed() {
    let mut server = Server::start();
    let g = guard(&server);
    live(&g).await;
    let (token, _) = server.mint(json!({"subject": "alice", "operations": ["read"]})).await;
    assert_eq!(call(&g, "GET", "/files/x", Some(&token)).await.0, StatusCode::OK);
    assert_eq!(call(&g, "GET", "/files/x", Some(&token)).await.0, StatusCode::OK);
    assert_eq!(g.stats().hits, 1);
    server.kill();
    // Within the staleness (2 s here) the cache is dropped and every request is a 503.
    let closed = until(Duration::from_secs(5), async || {
        call(&g, "GET", "/files/x", Some(&token)).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(closed, "still allowed after the service went away");
    let (status, _, body) = call(&g, "GET", "/files/x", Some(&token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    problem(&body, 503);
    assert!(!g.stream_live());
    assert_eq!(g.stats().entries, 0);
}

#[tokio::test]
async fn a_refused_stream_shows_in_the_stats_once_per_episode() {
    // One revocation stream at a time: a second guard is refused (503) until the first goes.
    let server = Server::start_with(&["--max-streams", "1"]);
    let first = guard(&server);
    live(&first).await;
    assert_eq!((first.stats().stream_refusals, first.stats().stream_refused), (0, None));
    let second = guard(&server);
    let refused = until(Duration::from_secs(5), async || second.stats().stream_refused.is_some()).await;
    assert!(refused, "the refusal never showed in the stats");
    assert_eq!(second.stats().stream_refused, Some(503));
    // Retried every 2 s while refused: still one episode.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(!second.stream_live());
    assert_eq!(second.stats().stream_refusals, 1);
    assert_eq!(second.stats().stream_refused, Some(503));
    // The first guard goes: the second connects, the episode is over.
    drop(first);
    assert!(until(Duration::from_secs(10), async || second.stream_live()).await, "never connected");
    assert_eq!((second.stats().stream_refusals, second.stats().stream_refused), (1, None));
}

#[tokio::test]
async fn each_client_spends_its_own_rate_limit_and_the_services_429_is_a_503() {
    // The guard's host is among the service's trusted proxies (as the README says to set it up);
    // the service allows 2 requests/s per client (bursts of 4).
    let server = Server::start_with(&["--rate-limit", "2", "--trusted-proxy", "127.0.0.1/32"]);
    let g = guard(&server);
    let (token, _) = server.mint(json!({"subject": "alice", "operations": ["read"]})).await;
    // One client sends junk until the service's limiter refuses it: the guard answers 503 with
    // the service's Retry-After, never a 429 its client would take for its token's budget.
    let mut refused = None;
    for _ in 0..50 {
        let (status, headers, body) = call_from(&g, "192.0.2.1", "junk").await;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some((headers, body));
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (headers, body) = refused.expect("the service's per-client limit never refused the junk");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["retry-after"], "1");
    problem(&body, 503);
    assert!(body.contains("--rate-limit"), "{body}");
    // Another client behind the same guard is counted under its own address: still served.
    let (status, _, body) = call_from(&g, "192.0.2.2", &token).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
    // IPv6 clients too (sent in both forwarding headers' forms).
    let (status, _, body) = call_from(&g, "2001:db8::7", &token).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
}

#[tokio::test]
async fn method_overrides_are_refused_before_any_call() {
    let server = Server::start();
    let g = guard(&server);
    let (reader, _) = server.mint(json!({"subject": "alice", "operations": ["read"]})).await;
    let calls = g.stats().calls;
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        // CGI, FastCGI and WSGI upstreams read these as the same variable.
        "X_HTTP_METHOD_OVERRIDE",
        "X_HTTP_METHOD",
        "X_METHOD_OVERRIDE",
    ] {
        // A GET judged a read, which a framework honouring the header would run as a DELETE.
        let req = request("GET", "/files/report", Some(&reader)).header(name, "DELETE");
        let (status, headers, body) = send(&g, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert_eq!(headers["content-type"], "application/problem+json");
        problem(&body, 400);
        assert!(body.to_lowercase().contains(&name.to_lowercase()), "{body}");
        // Public paths included.
        let (status, _, _) = send(&g, request("POST", "/health", None).header(name, "DELETE")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name} on a public path");
    }
    // `_method` in the query, in the spellings frameworks decode to it: refused by the policy.
    let (writer, _) = server.mint(json!({"subject": "bob", "operations": ["write"]})).await;
    for q in
        ["%5Fmethod=DELETE", "%5fmethod=DELETE", ".method=DELETE", "[method=DELETE", "a=1;_method=DELETE"]
    {
        let (status, _, body) = call(&g, "POST", &format!("/files/report?{q}"), Some(&writer)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert!(body.contains("_method"), "{q}: {body}");
    }
    assert_eq!(g.stats().calls, calls, "a refused override costs no call to the service");
    assert_eq!(call(&g, "POST", "/files/report?a=1;b=2", Some(&writer)).await.0, StatusCode::OK);
    // Without the header the same request is allowed.
    assert_eq!(call(&g, "GET", "/files/report", Some(&reader)).await.0, StatusCode::OK);
}
