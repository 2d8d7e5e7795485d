//! `POST /v1/backup` (issue 24 §2): the admin gets a snapshot that opens with the master key and
//! holds what was written before; anyone else is refused and nothing is written on the node.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use common::*;
use serde_json::json;
use tessera_core::{Context, Token, Verifier};
use tessera_server::app;
use tessera_store::{MasterKey, Store};

#[test]
fn the_admin_gets_a_snapshot_that_opens_with_the_master_key() {
    let e = env();
    run(async {
        let token = mint_ok(&e, &e.admin, json!({"subject": "alice", "operations": ["read"]})).await;
        let svc = init_service(app(e.state.clone())).await;
        let req = auth(TestRequest::post().uri("/v1/backup"), &e.admin)
            .peer_addr("127.0.0.1:40000".parse().unwrap());
        let res = call_service(&svc, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers().get("content-type").unwrap(), "application/octet-stream");
        let last: u64 = res.headers().get("tessera-last-change").unwrap().to_str().unwrap().parse().unwrap();
        let body = read_body(res).await;
        let data_dir = e.state.config.data_dir.clone();
        // The node kept no copy.
        let left: Vec<_> = std::fs::read_dir(&data_dir)
            .unwrap()
            .filter_map(|d| d.ok())
            .filter(|d| d.file_name().to_string_lossy().starts_with(".backup-"))
            .collect();
        assert!(left.is_empty(), "the snapshot was left on the node");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.redb");
        std::fs::write(&path, &body).unwrap();
        let (master, _) = MasterKey::load_or_create(&data_dir.join("master.key")).unwrap();
        let copy = Store::open(&path, master).unwrap();
        assert_eq!(copy.last_applied(), last);
        let t = Token::decode(&token).unwrap();
        let ctx = Context::now().operation("read");
        Verifier::with_keys(&copy).service_caveats().verify(&t, &[], &ctx).unwrap();
    });
}

#[test]
fn only_the_admin_may_take_a_backup() {
    let e = env();
    run(async {
        let alice = alice(&e).await;
        let a = send(&e, auth(TestRequest::post().uri("/v1/backup"), &alice)).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        let a = send(&e, TestRequest::post().uri("/v1/backup")).await;
        assert_problem(&a, StatusCode::UNAUTHORIZED);
        // An admin token narrowed to other operations does not back up either.
        let narrowed = Token::decode(&e.admin).unwrap().attenuate("allow keys.list").unwrap().encode();
        let a = send(&e, auth(TestRequest::post().uri("/v1/backup"), &narrowed)).await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        let a = send(&e, TestRequest::get().uri("/v1/backup")).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    });
}
