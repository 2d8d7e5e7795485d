//! The guard as actix-web middleware, against a real `tessera-server`: the handler gets the
//! identity; refusals are problem+json; the cache is shared with the engine; method overrides
//! are refused.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::time::Duration;

use actix_web::test::{call_service, init_service, read_body, TestRequest};
use actix_web::{web, App, HttpMessage, HttpRequest};
use common::Server;
use serde_json::json;
use tessera_guard::actix::GuardMiddleware;
use tessera_guard::{Guard, Verified};

async fn whoami(req: HttpRequest) -> String {
    req.extensions().get::<Verified>().and_then(|v| v.subject().map(str::to_owned)).unwrap_or_default()
}

#[actix_web::test]
async fn the_actix_middleware_checks_tokens() {
    let server = Server::start();
    // The closure form: writes are `write`, everything else `read`, the path is the resource.
    let guard = Guard::with_closure(&server.url, |r| {
        let op = if r.method == "GET" { "read" } else { "write" };
        Some((op.to_owned(), r.target.trim_start_matches('/').to_owned()))
    })
    .staleness(Duration::from_secs(2))
    .build()
    .unwrap();
    let app =
        init_service(App::new().wrap(GuardMiddleware::new(guard.clone())).default_service(web::to(whoami)))
            .await;
    let (token, _) =
        server.mint(json!({"subject": "alice", "operations": ["read"], "resources": ["docs/*"]})).await;
    let bearer = ("Authorization", format!("Bearer {token}"));

    let res =
        call_service(&app, TestRequest::get().uri("/docs/a").insert_header(bearer.clone()).to_request())
            .await;
    assert_eq!(res.status(), 200);
    assert_eq!(read_body(res).await, "alice");
    let res =
        call_service(&app, TestRequest::post().uri("/docs/a").insert_header(bearer.clone()).to_request())
            .await;
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers().get("content-type").unwrap(), "application/problem+json");
    let res =
        call_service(&app, TestRequest::get().uri("/other").insert_header(bearer.clone()).to_request()).await;
    assert_eq!(res.status(), 403);
    let res = call_service(&app, TestRequest::get().uri("/docs/a").to_request()).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
    // A read the handler's framework could run as a DELETE: refused, 400 problem+json.
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X_HTTP_METHOD_OVERRIDE",
        "X_HTTP_METHOD",
        "X_METHOD_OVERRIDE",
    ] {
        let req =
            TestRequest::get().uri("/docs/a").insert_header(bearer.clone()).insert_header((name, "DELETE"));
        let res = call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), 400, "{name}");
        assert_eq!(res.headers().get("content-type").unwrap(), "application/problem+json");
        let body: serde_json::Value = serde_json::from_slice(&read_body(res).await).unwrap();
        assert_eq!(body["status"], 400);
        assert!(body["detail"].as_str().unwrap().contains(&name.to_lowercase()), "{body}");
    }
}
