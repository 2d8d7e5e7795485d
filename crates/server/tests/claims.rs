//! Custom claims through the service: set by the admin at mint, bound into the token (a holder's
//! attenuation keeps them), returned by `/v1/verify`, copied into envelopes; refused when they
//! would override a registered claim, are too large or not an object; a subject cannot give
//! itself claims, and a child it mints keeps its own.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use actix_web::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use tessera_core::Token;

fn payload(jwt: &str) -> Value {
    use base64::Engine;
    let p = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

fn claims() -> Value {
    json!({"roles": ["editor"], "org": {"id": 7, "owner": "alice"}, "beta": true, "quota": 2.5})
}

#[test]
fn claims_are_bound_at_mint_and_come_back_from_verify_and_envelopes() {
    run(async {
        let e = env();
        let a = mint(
            &e,
            &e.admin,
            json!({"subject": "alice", "operations": ["read", "tokens.mint"], "claims": claims()}),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
        assert_eq!(a.body["claims"], claims());
        let token = a.body["token"].as_str().unwrap();

        // A holder narrows it offline; the claims stay.
        let narrow = Token::decode(token).unwrap().attenuate("resource docs/*").unwrap().encode();
        let v = verify(&e, &narrow, json!({"operation": "read", "resource": "docs/1"})).await;
        assert_eq!(v.status, StatusCode::OK, "{}", v.raw);
        assert_eq!(v.body["claims"], claims());
        assert_eq!(v.body["subject"], "alice");

        for alg in ["ES256", "EdDSA", "HS256"] {
            let j = send(&e, post("/v1/jwt", json!({"token": narrow, "alg": alg}))).await;
            assert_eq!(j.status, StatusCode::OK, "{alg}: {}", j.raw);
            let p = payload(j.body["jwt"].as_str().unwrap());
            assert_eq!(p["roles"], json!(["editor"]), "{alg}");
            assert_eq!(p["org"], json!({"id": 7, "owner": "alice"}), "{alg}");
            assert_eq!(p["sub"], "alice", "{alg}");
        }

        // A token without claims answers as before: no claims member at all.
        let plain = mint_ok(&e, &e.admin, json!({"subject": "bob"})).await;
        let v = verify(&e, &plain, json!({})).await;
        assert_eq!(v.status, StatusCode::OK, "{}", v.raw);
        assert!(v.body.get("claims").is_none(), "{}", v.raw);
    })
}

#[test]
fn claims_that_override_registered_ones_or_are_too_large_are_refused() {
    run(async {
        let e = env();
        for name in ["sub", "exp", "aud", "iss", "cap", "jti", "nbf", "iat", "sid"] {
            let a = mint(&e, &e.admin, json!({"subject": "alice", "claims": {name: "x"}})).await;
            assert_problem(&a, StatusCode::BAD_REQUEST);
            assert!(a.body["detail"].as_str().unwrap().contains("registered claim"), "{}", a.raw);
        }
        let big = json!({"subject": "alice", "claims": {"blob": "x".repeat(2100)}});
        let a = mint(&e, &e.admin, big).await;
        assert_problem(&a, StatusCode::BAD_REQUEST);
        assert!(a.body["detail"].as_str().unwrap().contains("too large"), "{}", a.raw);
        for not_an_object in [json!(["a"]), json!("roles"), json!(7)] {
            let a = mint(&e, &e.admin, json!({"subject": "alice", "claims": not_an_object})).await;
            assert_problem(&a, StatusCode::BAD_REQUEST);
        }
        // Nothing was recorded for alice by the refused requests.
        let list =
            send(&e, auth(actix_web::test::TestRequest::get().uri("/v1/tokens?subject=alice"), &e.admin))
                .await;
        assert_eq!(list.body["tokens"].as_array().unwrap().len(), 0, "{}", list.raw);
    })
}

#[test]
fn a_subject_cannot_give_itself_claims_and_its_children_keep_its_own() {
    run(async {
        let e = env();
        let alice = mint_ok(
            &e,
            &e.admin,
            json!({"subject": "alice", "operations": ["read", "tokens.mint"], "claims": {"role": "viewer"}}),
        )
        .await;
        let escalate = mint(&e, &alice, json!({"claims": {"role": "admin"}})).await;
        assert_problem(&escalate, StatusCode::FORBIDDEN);
        let add = mint(&e, &alice, json!({"claims": {"extra": 1}})).await;
        assert_problem(&add, StatusCode::FORBIDDEN);

        let child = mint(&e, &alice, json!({"operations": ["read"]})).await;
        assert_eq!(child.status, StatusCode::CREATED, "{}", child.raw);
        assert_eq!(child.body["claims"], json!({"role": "viewer"}));
        let v = verify(&e, child.body["token"].as_str().unwrap(), json!({"operation": "read"})).await;
        assert_eq!(v.body["claims"], json!({"role": "viewer"}), "{}", v.raw);
    })
}
