//! Helpers shared by the in-process API tests.

#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::future::Future;

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use actix_web::web;
use serde_json::{json, Value};
use tessera_server::{app, AppState, Config, Opened};

pub(crate) fn run<F: Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

pub(crate) struct Env {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) state: web::Data<AppState>,
    pub(crate) admin: String,
}

pub(crate) fn env_with(edit: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path().join("data"));
    config.public_url = Some("http://tessera.test".into());
    config.rate_limit = 0;
    edit(&mut config);
    let Opened { state, admin_token } = AppState::open(config).unwrap();
    Env { _dir: dir, state, admin: admin_token.expect("first start mints an admin token") }
}

pub(crate) fn env() -> Env {
    env_with(|_| {})
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) content_type: String,
    pub(crate) body: Value,
    pub(crate) raw: String,
}

pub(crate) async fn send(e: &Env, req: TestRequest) -> Answer {
    let svc = init_service(app(e.state.clone())).await;
    let res = call_service(&svc, req.peer_addr("127.0.0.1:40000".parse().unwrap()).to_request()).await;
    let status = res.status();
    let content_type =
        res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let raw = String::from_utf8(read_body(res).await.to_vec()).unwrap();
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Answer { status, content_type, body, raw }
}

pub(crate) fn post(path: &str, body: Value) -> TestRequest {
    TestRequest::post().uri(path).set_json(body)
}

pub(crate) fn auth(req: TestRequest, token: &str) -> TestRequest {
    req.insert_header(("Authorization", format!("Bearer {token}")))
}

pub(crate) async fn mint(e: &Env, by: &str, body: Value) -> Answer {
    send(e, auth(post("/v1/tokens", body), by)).await
}

pub(crate) async fn mint_ok(e: &Env, by: &str, body: Value) -> String {
    let a = mint(e, by, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
    a.body["token"].as_str().unwrap().to_owned()
}

pub(crate) async fn verify(e: &Env, token: &str, context: Value) -> Answer {
    send(e, post("/v1/verify", json!({"token": token, "context": context}))).await
}

pub(crate) fn assert_problem(a: &Answer, status: StatusCode) {
    assert_eq!(a.status, status, "{}", a.raw);
    assert_eq!(a.content_type, "application/problem+json", "{}", a.raw);
    assert_eq!(a.body["status"], status.as_u16());
    assert!(a.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

/// A token for alice that may read and manage her own tokens.
pub(crate) async fn alice(e: &Env) -> String {
    mint_ok(
        e,
        &e.admin,
        json!({"subject": "alice", "description": "alice's manager",
               "operations": ["read", "tokens.mint", "tokens.list", "tokens.revoke"]}),
    )
    .await
}

pub(crate) async fn get(e: &Env, path: &str) -> Answer {
    send(e, TestRequest::get().uri(path)).await
}

/// Check an envelope the way a gateway does: keys from `jwks` only, the service's issuer.
pub(crate) fn verify_with_jwks(
    jwks: &Value,
    jwt: &str,
    aud: Option<&str>,
    ctx: &tessera_core::Context,
) -> tessera_core::Result<tessera_core::envelope::Claims> {
    use tessera_core::envelope::{self, PublicKey, VerifyKey};
    let lookup = |kid: &str| {
        let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid);
        jwk.map(|k| VerifyKey::Public(PublicKey::from_jwk(k).unwrap()))
            .ok_or_else(|| tessera_core::Error::Envelope(format!("kid {kid} is not in the JWKS")))
    };
    envelope::decode_with(jwt, lookup, "http://tessera.test", aud, ctx)
}
